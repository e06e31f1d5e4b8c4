"""Where a run computes, and in what float32 precision."""

from __future__ import annotations

import contextlib

import torch

from pyro_dcgmm.errors import ConfigError


def resolve_device(name: str) -> torch.device:
    """``"auto"`` is CUDA when available, else CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device 'cuda' was requested but CUDA is not available; use 'cpu' or 'auto'")
    return torch.device(name)


@contextlib.contextmanager
def float32_precision(tf32: bool):
    """Inside: float32 matmuls and convolutions on CUDA run on TF32 tensor cores (``tf32``) or in
    full float32, whatever PyTorch's flags said before; the flags are restored on exit.

    PyTorch lets cuDNN convolve in TF32 by default, which rounds both operands to 10 mantissa bits:
    a GMM layer's table is a sum of large terms that nearly cancel, and TF32 would move its
    log-likelihoods by nats per image (``scripts/tf32_emulation.py``).  CPUs ignore the flags."""
    before = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = tf32
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = before
