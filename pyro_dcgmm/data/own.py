"""Your own images as a data set: a ``.npy`` array, a ``.npz`` archive or a folder of image files.

- ``.npy``: images (N, H, W), (N, C, H, W) or (N, H, W, C) with C of 1, 3 or 4; no labels.
- ``.npz``: the array ``images`` as above and, optionally, ``labels`` (N,) of class indices.
- A folder: PNG, JPEG, BMP, GIF or TIFF files (read by Pillow), all of one size; in sub-folders, one
  per class (labelled by the sorted sub-folder names), or directly in it (no labels).  Images are
  read in grey when every one is grey, else in colour (RGB).

Bytes are scaled to [0, 1] (256 levels); floating-point values must already lie in [0, 1].  A
seeded :data:`TEST_FRACTION` of the images is the test set.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from pyro_dcgmm.data.dataset import Dataset
from pyro_dcgmm.errors import DataError

ARRAY_SUFFIXES = (".npy", ".npz")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff")
TEST_FRACTION = 0.2  # held out as the test set of your own data, drawn with the data seed
UNLABELLED = ("all",)  # the one class of images that come without labels


def is_own_data(name: str) -> bool:
    """Whether a data set name is a path to your own data (an array file or a folder)."""
    return Path(name).suffix in ARRAY_SUFFIXES or Path(name).is_dir()


def load_own_data(path: str | Path, seed: int = 0):
    """The :class:`~pyro_dcgmm.data.dataset.Dataset` of the images at ``path``."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"data set {str(path)!r}: there is no such file or folder")
    if path.is_dir():
        images, labels, class_names = read_image_folder(path)
    else:
        images, labels = read_array_file(path)
        class_names = UNLABELLED if labels is None else tuple(str(c) for c in range(int(labels.max()) + 1))
    x = unit_images(images, str(path))
    y = (
        torch.zeros(len(x), dtype=torch.int64)
        if labels is None
        else checked_labels(labels, len(x), str(path))
    )
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))
    test, train = order[: round(TEST_FRACTION * len(x))], order[round(TEST_FRACTION * len(x)) :]
    if len(train) < 2 or len(test) < 1:
        raise DataError(f"data set {str(path)!r} holds {len(x)} images; it needs at least 3")
    return Dataset(path.name, x[train], y[train], x[test], y[test], levels=256, class_names=class_names)


def read_array_file(path: Path) -> tuple[np.ndarray, np.ndarray | None]:
    """Images (and labels, from a ``.npz``) of an array file; pickled objects are never loaded."""
    try:
        if path.suffix == ".npy":
            return np.load(path, allow_pickle=False), None
        with np.load(path, allow_pickle=False) as archive:
            if "images" not in archive:
                raise DataError(f"{str(path)!r} holds {sorted(archive)}; it needs an array named 'images'")
            return archive["images"], archive.get("labels")
    except (ValueError, OSError) as error:
        raise DataError(f"{str(path)!r} is not a numpy array file ({error})") from None


def read_image_folder(path: Path) -> tuple[np.ndarray, np.ndarray | None, tuple[str, ...]]:
    """The images of a folder (labelled by their sub-folder), as one array."""
    from PIL import Image

    classes = sorted(p.name for p in path.iterdir() if p.is_dir() and image_files(p))
    groups = [image_files(path / name) for name in classes] if classes else [image_files(path)]
    files = [file for group in groups for file in group]
    if not files:
        raise DataError(f"{str(path)!r} holds no image files ({', '.join(IMAGE_SUFFIXES)})")
    opened = [Image.open(file) for file in files]
    mode = "L" if all(image.mode in ("1", "L", "I;16", "I") for image in opened) else "RGB"
    sizes = {image.size: file for image, file in zip(opened, files, strict=True)}
    if len(sizes) > 1:
        (a, first), (b, second) = list(sizes.items())[:2]
        raise DataError(
            f"the images differ in size: {a[0]}x{a[1]} ({first.name}) and {b[0]}x{b[1]} ({second.name}); "
            "resize them to one size first"
        )
    images = np.stack([np.asarray(image.convert(mode)) for image in opened])
    labels = np.repeat(np.arange(len(groups)), [len(group) for group in groups]) if classes else None
    return images, labels, tuple(classes) or UNLABELLED


def image_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def unit_images(images: np.ndarray, what: str) -> torch.Tensor:
    """Images as float32 (N, C, H, W) in [0, 1]: bytes scaled by 1/255, floats as they are."""
    if images.ndim == 3:
        images = images[:, None]
    elif images.ndim == 4 and images.shape[1] not in (1, 3, 4) and images.shape[-1] in (1, 3, 4):
        images = images.transpose(0, 3, 1, 2)  # channels last
    if images.ndim != 4 or images.shape[0] == 0:
        raise DataError(f"{what}: images must be (N, H, W), (N, C, H, W) or (N, H, W, C), got {images.shape}")
    if images.dtype.kind in "biu":
        if images.min() < 0 or images.max() > 255:
            raise DataError(
                f"{what}: integer pixels must be bytes (0 to 255), got {images.min()} to {images.max()}"
            )
        return torch.from_numpy(images.astype(np.float32) / 255.0)
    if images.dtype.kind != "f":
        raise DataError(f"{what}: images hold {images.dtype} values; they must be numbers")
    if not np.isfinite(images).all() or images.min() < 0 or images.max() > 1:
        raise DataError(
            f"{what}: floating-point pixels must lie in [0, 1]; scale them (bytes: divide by 255)"
        )
    return torch.from_numpy(np.ascontiguousarray(images, dtype=np.float32))


def checked_labels(labels: np.ndarray, count: int, what: str) -> torch.Tensor:
    """``labels`` as class indices, checked: one per image, whole numbers from 0."""
    if labels.shape != (count,) or labels.dtype.kind not in "iu" or labels.min() < 0:
        raise DataError(
            f"{what}: labels must be {count} class indices >= 0, got {labels.dtype} {labels.shape}"
        )
    return torch.from_numpy(labels.astype(np.int64))
