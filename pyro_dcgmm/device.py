"""Where a run computes."""

from __future__ import annotations

import torch

from pyro_dcgmm.errors import ConfigError


def resolve_device(name: str) -> torch.device:
    """``"auto"`` is CUDA when available, else CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device 'cuda' was requested but CUDA is not available; use 'cpu' or 'auto'")
    return torch.device(name)
