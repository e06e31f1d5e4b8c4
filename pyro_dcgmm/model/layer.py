"""The protocol every DCGMM layer follows.

Layers work on channels-first tensors ``(N, C, H, W)``.  A layer is configured by its dataclass
(:mod:`pyro_dcgmm.config`) and built for an input shape ``(C, H, W)`` by the stack, which creates
parameters whose shapes depend on that input.
"""

from __future__ import annotations

import functools
import os
import weakref

import pyro
import pyro.distributions as dist
import torch
from pyro.nn import PyroModule

from pyro_dcgmm.errors import ArchitectureError

Shape = tuple[int, int, int]


def as_pair(value: int | tuple[int, int]) -> tuple[int, int]:
    """An int or a pair (checked by the layer's config) as a pair."""
    return (value, value) if isinstance(value, int) else tuple(value)


def window_output_size(size: int, window: int, stride: int, what: str) -> int:
    """Positions of a sliding window of ``window`` with ``stride`` over ``size`` (no padding)."""
    if window > size:
        raise ArchitectureError(
            f"{what} of {window} is larger than its input of {size}; use a smaller {what} or "
            "remove a layer below"
        )
    return (size - window) // stride + 1


def record(name: str, value: torch.Tensor) -> None:
    """``pyro.deterministic(name, value)`` with no event dimensions, in ``value``'s dtype.

    Pyro 1.9's deterministic site returns float32 zeros as its log-density whatever the value's
    dtype, which breaks ``TraceEnum_ELBO`` on float64 models; a tensor mask keeps the dtype.
    """
    off = torch.zeros((), dtype=torch.bool, device=value.device)
    pyro.sample(name, dist.Delta(value).mask(off), obs=value, infer={"_deterministic": True})


def physical_memory() -> int | None:
    """Bytes of physical memory of this machine (``None`` where the system does not say)."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):
        return None


def check_parameter_memory(count: int, what: str) -> None:
    """Refuse parameters that could not train in this machine's memory: float32 values, gradients and
    two optimiser moments, 16 bytes each."""
    needed, total = 16 * count, physical_memory()
    if total is not None and needed > total:
        raise ArchitectureError(
            f"{what} would have {count:,} parameters, {needed / 2**30:.1f} GiB to train with "
            f"gradients and optimiser state; this machine has {total / 2**30:.1f} GiB"
        )


PRUNED_LOGIT = -1e4  # a ruled-out component's logit: weight exp(-1e4) = 0, no NaN from -inf - -inf


def component_classes(components: int, classes: int, device=None) -> torch.Tensor:
    """The class of every one of ``components`` components (K,) split into ``classes`` equal groups:
    component k belongs to class ``k // (K / C)``."""
    return torch.arange(components, device=device) // (components // classes)


def class_logits(components: int, classes: int, device=None, dtype=torch.float32) -> torch.Tensor:
    """``log p(class = c | z = k)`` (K, C) of components split by class: 0 for each component's own
    class, ``PRUNED_LOGIT`` for the others."""
    own = component_classes(components, classes, device)[:, None] == torch.arange(classes, device=device)
    return torch.where(own, 0.0, PRUNED_LOGIT).to(dtype)


def class_log_likelihood(components: int, classes: int, labels: torch.Tensor, dtype) -> torch.Tensor:
    """``log p(class | z = k)`` (n, K, 1, 1) of components split by class: 0 for the components of
    each sample's class (``labels`` (n,)), ``PRUNED_LOGIT`` for the others."""
    return class_logits(components, classes, labels.device, dtype)[:, labels].T[:, :, None, None]


def component_map(values: torch.Tensor, shared: bool) -> torch.Tensor:
    """Per-component ``values`` (K,) when ``shared``, else (H', W', K), laid out like a table:
    (1, K, 1 | H', 1 | W')."""
    shaped = values[:, None, None] if shared else values.permute(2, 0, 1)
    return shaped.unsqueeze(0)


class SviModule(PyroModule):
    """A PyroModule whose parameters plain ``pyro.infer.SVI`` can step with a ``pyro.optim`` optimiser.

    Its parameters are module-local (:func:`local_params`), so they are not in Pyro's param store;
    ``SVI.step`` collects them from the model's ``param`` sites and asks each for
    ``.unconstrained()``, which Pyro gives only to its constrained parameters (``PyroParam``).
    Every parameter here is unconstrained, so it answers with itself.  The layers' bounds (precision
    bounds, probability floors) are kept by :meth:`Stack.project_ <pyro_dcgmm.model.stack.Stack.project_>`,
    which a plain SVI loop calls after every step.
    """

    def __getattr__(self, name: str):
        value = super().__getattr__(name)
        if isinstance(value, torch.nn.Parameter) and not hasattr(value, "unconstrained"):
            value.unconstrained = weakref.ref(value)
        return value


def local_params(model):
    """Run a PyroModule method with module-local parameters.

    Parameters then live in the modules (``state_dict``) instead of Pyro's global param store, so
    several stacks with the same attribute names coexist in one process without sharing values.
    """

    @functools.wraps(model)
    def wrapper(*args, **kwargs):
        with pyro.settings.context(module_local_params=True):
            return model(*args, **kwargs)

    return wrapper


def _note_loaded_initialisation(layer, incompatible_keys) -> None:
    """After ``load_state_dict``: the host copy of the loaded ``initialised`` buffer."""
    layer.is_initialised = bool(layer.initialised)


class Layer(SviModule):
    """Base class: shape bookkeeping plus the upward pass and the Pyro model of one layer.

    A layer is its config dataclass (checked when it was made) plus what :meth:`build` creates.
    The subclasses' constructors only turn keyword arguments into that dataclass;
    :meth:`from_config` builds a layer from the dataclass itself.
    """

    config_class: type

    def __init__(self, config):
        super().__init__()
        if not isinstance(config, self.config_class):
            raise ArchitectureError(
                f"{type(self).__name__} needs a {self.config_class.__name__}, got {config!r}"
            )
        self.config = config
        self.input_shape: Shape | None = None
        self.output_shape: Shape | None = None
        self.site_prefix = ""
        self._init_state()

    @classmethod
    def from_config(cls, config) -> Layer:
        """The layer ``config`` (an instance of :attr:`config_class`) describes."""
        layer = cls.__new__(cls)
        Layer.__init__(layer, config)
        return layer

    def _init_state(self) -> None:
        """Create what the layer derives from its config before it is built (nothing by default)."""

    def register_initialised(self, value: bool) -> None:
        """Register the buffer ``initialised`` (whether the parameters were initialised from data;
        saved with them) and its host copy :attr:`is_initialised`, which training reads before
        every step without waiting for the device; :meth:`mark_initialised_` and loading a state
        keep the two equal."""
        self.register_buffer("initialised", torch.tensor(value))
        self.is_initialised = value
        self.register_load_state_dict_post_hook(_note_loaded_initialisation)

    @torch.no_grad()
    def mark_initialised_(self) -> None:
        self.initialised.fill_(True)
        self.is_initialised = True

    def build(self, input_shape: Shape) -> Shape:
        """Check ``input_shape`` (C, H, W), create parameters, return the output shape."""
        raise NotImplementedError

    def transform(self, x: torch.Tensor) -> torch.Tensor:
        """Deterministic upward pass: ``(N, C, H, W)`` to ``(N, C', H', W')``."""
        raise NotImplementedError

    def model(
        self, x: torch.Tensor, *, labels=None, annealed: bool = True, enumerated: bool = True
    ) -> torch.Tensor:
        """This layer's part of the stack's Pyro program; returns what the layer passes upward.

        Layers without random variables just transform their input.
        """
        return self.transform(x)

    @property
    def lossless_down(self) -> bool:
        """Whether :meth:`sample_down` inverts :meth:`transform` exactly (no sharpening needed)."""
        return True

    def sample_down(self, signal, n: int, options):
        """Top-down pass: from what this layer outputs (``signal``, or ``None`` for no
        information) to a sample of what it takes as input, for ``n`` samples.

        :param options: a :class:`~pyro_dcgmm.inference.sampling.SamplingOptions`.
        """
        raise NotImplementedError

    def site(self, name: str) -> str:
        """Name of a Pyro site of this layer, prefixed by its place in a stack."""
        return f"{self.site_prefix}.{name}" if self.site_prefix else name

    def _require_built(self) -> None:
        if self.input_shape is None:
            raise ArchitectureError(
                f"{type(self).__name__} has not been built: put it in a Stack or call build()"
            )
