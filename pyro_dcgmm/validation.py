"""Checks of user-supplied arrays; each failure names the argument, the value and the fix."""

from __future__ import annotations

import math

import numpy as np
import torch

from pyro_dcgmm.errors import DataError


def as_images(
    x,
    input_shape: tuple[int, int, int],
    data_range: tuple[float, float] = (0.0, 1.0),
    name: str = "x",
) -> torch.Tensor:
    """Return ``x`` as a floating tensor of shape (N, C, H, W) after checking it.

    Accepts tensors or numpy arrays of shape (N, C, H, W), (N, H, W) when C == 1, or flattened
    (N, C * H * W).  Raises :class:`~pyro_dcgmm.errors.DataError` for a wrong rank or shape, a
    non-float dtype, an empty batch, NaN/inf values and values outside ``data_range``.
    """
    if isinstance(x, np.ndarray):
        x = torch.from_numpy(x)
    if not isinstance(x, torch.Tensor):
        raise DataError(f"{name} must be a torch.Tensor or numpy array, got {type(x).__name__}")
    if not x.dtype.is_floating_point:
        raise DataError(
            f"{name} has dtype {x.dtype}; convert it to floating point in "
            f"[{data_range[0]}, {data_range[1]}] first (e.g. x.float() / 255)"
        )
    channels, height, width = input_shape
    if x.dim() == 3 and channels == 1:
        x = x.unsqueeze(1)
    if x.dim() == 2 and x.shape[1] == math.prod(input_shape):
        x = x.view(-1, *input_shape)
    if x.dim() != 4 or tuple(x.shape[1:]) != tuple(input_shape):
        raise DataError(
            f"{name} has shape {tuple(x.shape)}; expected (N, {channels}, {height}, {width})"
            + (f" or (N, {height}, {width})" if channels == 1 else "")
        )
    if x.shape[0] == 0:
        raise DataError(f"{name} is empty: it has shape {tuple(x.shape)}")
    if not bool(torch.isfinite(x).all()):
        bad = int((~torch.isfinite(x)).sum())
        raise DataError(f"{name} contains {bad} NaN or infinite values")
    low, high = data_range
    lo, hi = float(x.min()), float(x.max())
    if lo < low or hi > high:
        raise DataError(
            f"{name} has values in [{lo:.4g}, {hi:.4g}], outside the data range "
            f"[{low}, {high}]; rescale it (e.g. divide 8-bit images by 255)"
        )
    return x


def image_shape(x: torch.Tensor, name: str = "x") -> tuple[int, int, int]:
    """(C, H, W) of images given as (N, C, H, W), (N, H, W) (one channel) or flattened (N, H * W)
    (one channel, square)."""
    if x.dim() == 4:
        return tuple(x.shape[1:])
    if x.dim() == 3:
        return (1, *x.shape[1:])
    if x.dim() == 2:
        side = math.isqrt(x.shape[1])
        if side * side != x.shape[1]:
            raise DataError(
                f"{name} has {x.shape[1]} features, not a square image; pass input_shape=(C, H, W)"
            )
        return (1, side, side)
    raise DataError(f"{name} has shape {tuple(x.shape)}; expected (N, C, H, W), (N, H, W) or (N, D)")


def as_labels(labels, num_samples: int, num_classes: int | None = None, name: str = "labels"):
    """Return ``labels`` as an int64 tensor (N,) after checking its length and range."""
    if labels is None:
        return None
    if isinstance(labels, np.ndarray):
        labels = torch.from_numpy(labels)
    if not isinstance(labels, torch.Tensor):
        raise DataError(f"{name} must be a torch.Tensor or numpy array, got {type(labels).__name__}")
    if labels.dtype.is_floating_point or labels.dtype == torch.bool:
        raise DataError(f"{name} must hold integer class indices, got dtype {labels.dtype}")
    if labels.dim() != 1 or labels.shape[0] != num_samples:
        raise DataError(f"{name} has shape {tuple(labels.shape)}; expected ({num_samples},), one per image")
    if num_classes is not None and (int(labels.min()) < 0 or int(labels.max()) >= num_classes):
        raise DataError(
            f"{name} must lie in [0, {num_classes - 1}], got values in "
            f"[{int(labels.min())}, {int(labels.max())}]"
        )
    return labels.long()
