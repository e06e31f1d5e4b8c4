"""Checks of user-supplied arrays and counts; each failure names the argument, the value and the fix."""

from __future__ import annotations

import math
import numbers

import numpy as np
import torch

from pyro_dcgmm.errors import DataError


def check_positive_int(value, name: str) -> None:
    """Refuse a ``value`` that is not an integer of at least 1 (a count or a batch size; numpy's
    integers count)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise DataError(f"{name} must be a positive int, got {value!r}")


def as_tensor(x, name: str = "x") -> torch.Tensor:
    """``x`` (a tensor, numpy array or nested list of numbers) as a tensor; anything else, sparse
    matrices, strings and object arrays among them, is refused naming what it is."""
    if torch.is_tensor(x):
        if x.is_meta:
            raise DataError(f"{name} is on the 'meta' device, which holds shapes but no values")
        return x
    if hasattr(x, "toarray"):
        raise DataError(f"{name} is a sparse matrix; images are dense: pass {name}.toarray()")
    if isinstance(x, (str, bytes)):
        raise DataError(f"{name} is a string, not an array of numbers")
    array = np.asarray(x)
    if array.dtype.kind == "O":
        try:
            array = array.astype(np.float64)
        except (TypeError, ValueError) as error:  # a TypeError stays one: the entries have the wrong type
            raise type(error)(f"{name} holds objects that are not numbers: {error}") from None
    if array.dtype.kind == "c":
        raise DataError(f"Complex data not supported: {name} holds {array.dtype} values")
    if array.dtype.kind not in "biuf":
        raise DataError(f"{name} holds {array.dtype} values; it must hold numbers")
    return torch.from_numpy(array if array.flags.writeable else array.copy())


def as_images(
    x,
    input_shape: tuple[int, int, int],
    data_range: tuple[float, float] = (0.0, 1.0),
    name: str = "x",
    model: str = "the stack",
) -> torch.Tensor:
    """Return ``x`` as a floating tensor of shape (N, C, H, W) after checking it (``model`` names
    what expects that shape, in messages).

    Accepts tensors or numpy arrays of shape (N, C, H, W), (N, H, W) when C == 1, or flattened
    (N, C * H * W).  Raises :class:`~pyro_dcgmm.errors.DataError` for a wrong rank or shape, a
    non-float dtype, an empty batch, NaN/inf values and values outside ``data_range``.
    """
    x = as_tensor(x, name)
    if not x.dtype.is_floating_point:
        raise DataError(
            f"{name} has dtype {x.dtype}; convert it to floating point in "
            f"[{data_range[0]}, {data_range[1]}] first (e.g. x.float() / 255)"
        )
    x = _shaped(x, input_shape, name, model)
    if x.shape[0] == 0:
        raise DataError(f"{name} is empty: it has shape {tuple(x.shape)}")
    if not bool(torch.isfinite(x).all()):
        bad = int((~torch.isfinite(x)).sum())
        raise DataError(f"{name} contains {bad} NaN or infinite values")
    low, high = data_range
    lo, hi = float(x.min()), float(x.max())
    if lo < low or hi > high:
        raise DataError(
            f"{name} has values in [{lo:.9g}, {hi:.9g}], outside the data range "
            f"[{low}, {high}]; rescale it (e.g. divide 8-bit images by 255), or widen the data range "
            "(the estimators' data_range; data_range=None for unbounded, tabular data)"
        )
    return x


def _shaped(x: torch.Tensor, input_shape: tuple[int, int, int], name: str, model: str) -> torch.Tensor:
    """``x`` as (N, C, H, W): from (N, H, W) when C == 1 or flattened (N, C * H * W)."""
    channels, height, width = input_shape
    if x.dim() == 3 and channels == 1:
        x = x.unsqueeze(1)
    if x.dim() == 2 and x.shape[1] == math.prod(input_shape):
        x = x.view(-1, *input_shape)
    if x.dim() == 2 and x.shape[1] != math.prod(input_shape):
        raise DataError(
            f"{name} has {x.shape[1]} features, but {model} is expecting {math.prod(input_shape)} "
            "features as input"
        )
    if x.dim() != 4 or tuple(x.shape[1:]) != tuple(input_shape):
        reshape = "; Reshape your data: one sample needs a batch axis" if x.dim() < 2 else ""
        raise DataError(
            f"{name} has shape {tuple(x.shape)}; expected (N, {channels}, {height}, {width})"
            + (f" or (N, {height}, {width})" if channels == 1 else "")
            + f" or (N, {math.prod(input_shape)}){reshape}"
        )
    return x


def image_shape(x: torch.Tensor, name: str = "x") -> tuple[int, int, int]:
    """(C, H, W) of images given as (N, C, H, W), (N, H, W) (one channel) or flattened (N, D).

    A flattened row of D features is a square one-channel image when D is a square (64: 8x8, 784:
    28x28) and otherwise D channels at a single position (tabular data: a flat mixture over them).
    """
    if x.dim() == 4:
        return tuple(x.shape[1:])
    if x.dim() == 3:
        return (1, *x.shape[1:])
    if x.dim() == 2:
        features = x.shape[1]
        if features == 0:
            raise DataError(
                f"{name} has 0 feature(s) (shape={tuple(x.shape)}) while a minimum of 1 is required."
            )
        side = math.isqrt(features)
        return (1, side, side) if side * side == features else (features, 1, 1)
    raise DataError(f"{name} has shape {tuple(x.shape)}; expected (N, C, H, W), (N, H, W) or (N, D)")


def as_labels(labels, num_samples: int, num_classes: int | None = None, name: str = "labels"):
    """Return ``labels`` as an int64 tensor (N,) after checking its length and range."""
    if labels is None:
        return None
    labels = as_tensor(labels, name)
    if labels.dtype == torch.bool or (
        labels.dtype.is_floating_point and not bool((labels == labels.round()).all())
    ):
        raise DataError(
            f"{name} must hold integer class indices, got {labels.dtype} values such as {labels[0]}"
        )
    if labels.dim() != 1 or labels.shape[0] != num_samples:
        raise DataError(f"{name} has shape {tuple(labels.shape)}; expected ({num_samples},), one per image")
    if num_classes is not None and (int(labels.min()) < 0 or int(labels.max()) >= num_classes):
        raise DataError(
            f"{name} must lie in [0, {num_classes - 1}], got values in "
            f"[{int(labels.min())}, {int(labels.max())}]"
        )
    return labels.long()
