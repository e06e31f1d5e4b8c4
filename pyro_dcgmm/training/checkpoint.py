"""Checkpoints: tensors and plain data only, written atomically, loaded with ``weights_only=True``.

A checkpoint is a dictionary with the keys

- ``format`` (``"pyro_dcgmm.training.checkpoint"``) and ``version`` (:data:`CHECKPOINT_VERSION`),
- ``model_config``: the resolved :class:`~pyro_dcgmm.config.ModelConfig` as plain data,
- ``run_config``: the resolved :class:`~pyro_dcgmm.config.RunConfig` as plain data (or ``None``),
- ``state_dict``: the stack's parameters and annealing widths,
- ``training``: optimiser state, RNG state, epoch, step and history (:func:`training_state`; the
  annealing schedules are in the GMM layers' ``state_dict``).

Nothing is unpickled: constraints and modules are rebuilt from the config.  A checkpoint of an
earlier version is brought to this one by :func:`migrate` when it is read.
"""

from __future__ import annotations

import pickle
import zipfile
from pathlib import Path

import torch

from pyro_dcgmm.config import ModelConfig, from_dict, to_dict
from pyro_dcgmm.errors import CheckpointError
from pyro_dcgmm.model.stack import Stack
from pyro_dcgmm.training.files import atomic_write

CHECKPOINT_FORMAT = "pyro_dcgmm.training.checkpoint"
CHECKPOINT_VERSION = 3  # 3: GMM parameters under ``covariance.`` and the ``active`` mask always present


def training_state(state, optimizer, generator: torch.Generator, seconds: float) -> dict:
    """The ``training`` entry: the optimiser's and the random generator's state and the
    :class:`~pyro_dcgmm.training.state.TrainingState`, its clock advanced by ``seconds``."""
    return {
        "optimizer": optimizer.state_dict(),
        "generator": generator.get_state(),
        **state.state_dict(),
        "seconds": state.seconds + seconds,
    }


def migrate(state: dict, path) -> dict:
    """``state`` read from ``path`` in this version's schema: a checkpoint of version 2 is upgraded
    (:func:`_from_version_2`); any other version is refused."""
    if state.get("version") == 2:
        state = _from_version_2(state)
    if state.get("version") != CHECKPOINT_VERSION:
        raise CheckpointError(
            f"checkpoint {str(path)!r} has format version {state.get('version')!r}; this "
            f"pyro_dcgmm reads versions 2 to {CHECKPOINT_VERSION}"
        )
    return state


def _from_version_2(state: dict) -> dict:
    """Version 2 was written before covariance structures and pruning too: a GMM layer's
    log-precisions may sit at ``<layer>.log_precision``, with no ``active`` mask (all active)."""
    values = dict(state.get("state_dict") or {})
    for key in [k for k in values if k.endswith(".log_precision") and ".covariance." not in k]:
        prefix = key[: -len("log_precision")]
        values[prefix + "covariance.log_precision"] = values.pop(key)
        if prefix + "mixing_logits" in values:
            values.setdefault(
                prefix + "active", torch.ones_like(values[prefix + "mixing_logits"], dtype=torch.bool)
            )
    return {**state, "state_dict": values, "version": 3}


def save_checkpoint(path: str | Path, stack: Stack, training: dict | None = None, run_config=None) -> None:
    """Write ``stack`` (and optional training state) to ``path`` atomically."""
    state = {
        "format": CHECKPOINT_FORMAT,
        "version": CHECKPOINT_VERSION,
        "model_config": to_dict(stack.config),
        "run_config": to_dict(run_config) if run_config is not None else None,
        "state_dict": {
            k: v.detach().cpu() if torch.is_tensor(v) else v for k, v in stack.state_dict().items()
        },
        "training": training,
    }
    try:
        atomic_write(path, lambda handle: torch.save(state, handle))
    except (OSError, RuntimeError) as error:  # disk full, permissions: torch reports both ways
        raise CheckpointError(
            f"could not write checkpoint {str(path)!r} ({str(error).splitlines()[0]}); any earlier "
            "checkpoint there is intact"
        ) from None


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict:
    """Read and check a checkpoint written by :func:`save_checkpoint`."""
    path = Path(path)
    if path.is_dir():
        raise CheckpointError(f"checkpoint {str(path)!r} is a folder; give the checkpoint file in it")
    if not path.is_file():
        raise CheckpointError(f"checkpoint {str(path)!r} does not exist")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError:  # torch's message would suggest weights_only=False: never do that
        raise CheckpointError(
            f"{str(path)!r} holds objects other than tensors and plain data; it was not written by "
            "pyro_dcgmm and will not be loaded"
        ) from None
    except (RuntimeError, EOFError, OSError, zipfile.BadZipFile, ValueError, KeyError, IndexError) as error:
        raise CheckpointError(
            f"checkpoint {str(path)!r} is truncated, corrupt or not a pyro_dcgmm checkpoint "
            f"({type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''})"
        ) from None
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{str(path)!r} is not a pyro_dcgmm checkpoint")
    state = migrate(state, path)
    missing = [key for key in ("model_config", "run_config", "state_dict", "training") if key not in state]
    if missing:
        raise CheckpointError(f"checkpoint {str(path)!r} lacks {', '.join(missing)}; it is damaged")
    return state


def stack_from_checkpoint(path_or_state, map_location: str | torch.device = "cpu") -> Stack:
    """Rebuild a stack from its config and load its parameters."""
    state = path_or_state if isinstance(path_or_state, dict) else load_checkpoint(path_or_state, map_location)
    stack = Stack.from_config(from_dict(ModelConfig, state["model_config"], "model_config"))
    load_state_into(stack, state)
    return stack


def load_state_into(stack: Stack, state: dict) -> None:
    """Load a checkpoint's parameters into ``stack``, which must have the same architecture."""
    saved = from_dict(ModelConfig, state["model_config"], "model_config")
    if saved != stack.config:
        raise CheckpointError(
            "the checkpoint was written by a different architecture: checkpoint "
            f"{to_dict(saved)} vs model {to_dict(stack.config)}"
        )
    values = state["state_dict"]
    broken = [
        k
        for k, v in values.items()
        if torch.is_tensor(v) and v.is_floating_point() and not v.isfinite().all()
    ]
    if broken:
        raise CheckpointError(
            f"the checkpoint holds NaN or infinite values in {', '.join(broken)}; it is damaged"
        )
    try:
        stack.load_state_dict(values)
    except RuntimeError as error:
        raise CheckpointError(f"the checkpoint's parameters do not fit the model: {error}") from None
