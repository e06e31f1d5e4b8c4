"""Data sets: an IDX reader, scikit-learn's digits, Fashion-MNIST, MNIST and natural-image patches.

Every loader returns a :class:`Dataset` with images as float32 tensors (N, 1, H, W) in [0, 1] and
labels as int64 tensors (N,).
"""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import os
import urllib.error
import urllib.request
import warnings
from pathlib import Path

import numpy as np
import torch

from pyro_dcgmm.config import DataConfig
from pyro_dcgmm.data.dataset import Dataset
from pyro_dcgmm.data.own import load_own_data
from pyro_dcgmm.data.patches import natural_patches
from pyro_dcgmm.errors import DataError
from pyro_dcgmm.training.files import atomic_write

FASHION_MNIST_ROOT = Path("/usr/share/datasets/fashion-mnist")
FASHION_MNIST_CLASSES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)
MNIST_MIRRORS = (
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "https://storage.googleapis.com/cvdf-datasets/mnist/",
)
MNIST_SHA256 = {
    "train-images-idx3-ubyte.gz": "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609",
    "train-labels-idx1-ubyte.gz": "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c",
    "t10k-images-idx3-ubyte.gz": "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6",
    "t10k-labels-idx1-ubyte.gz": "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6",
}
IDX_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
_IDX_TYPES = {
    0x08: np.dtype(np.uint8),
    0x09: np.dtype(np.int8),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}


def read_idx(path: str | Path) -> np.ndarray:
    """Read an IDX file (gzip-compressed or raw) into a numpy array, checking its header and size."""
    path = Path(path)
    try:
        raw = path.read_bytes()
        if raw[:2] == b"\x1f\x8b":
            raw = gzip.decompress(raw)
    except FileNotFoundError:
        raise DataError(f"IDX file {str(path)!r} does not exist") from None
    except (OSError, EOFError) as error:
        raise DataError(f"IDX file {str(path)!r} is a corrupt or truncated gzip file: {error}") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_TYPES or raw[3] == 0:
        raise DataError(
            f"{str(path)!r} is not an IDX file: its magic number is {raw[:4].hex() or 'missing'}, "
            "expected 0000 then a type code (08, 09, 0b, 0c, 0d, 0e) and a dimension count"
        )
    dtype, ndim = _IDX_TYPES[raw[2]], raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataError(f"IDX file {str(path)!r} is truncated inside its header")
    shape = tuple(int(d) for d in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4))
    expected = header + int(np.prod(shape)) * dtype.itemsize
    if len(raw) != expected:
        raise DataError(
            f"IDX file {str(path)!r} holds {len(raw)} bytes but its header {shape} needs {expected}"
            + ("; the file is truncated" if len(raw) < expected else "")
        )
    return np.frombuffer(raw, dtype=dtype, offset=header).reshape(shape).astype(dtype.newbyteorder("="))


def _find_idx(root: Path, stem: str) -> Path:
    for name in (f"{stem}.gz", stem):
        if (root / name).is_file():
            return root / name
    raise DataError(f"{stem}(.gz) not found in {str(root)!r}")


def _images_and_labels(images: np.ndarray, labels: np.ndarray, what: str):
    if images.ndim != 3:
        raise DataError(f"{what} images must have 3 dimensions (N, H, W), got shape {images.shape}")
    if images.shape[0] == 0:
        raise DataError(f"{what} holds no images")
    if labels.ndim != 1 or labels.shape[0] != images.shape[0]:
        raise DataError(
            f"{what} has {images.shape[0]} images but {labels.shape[0] if labels.ndim else 0} "
            "labels; the image and label files do not belong together"
        )
    x = torch.from_numpy(images.astype(np.float32) / 255.0).unsqueeze(1)  # (N, 1, H, W)
    return x, torch.from_numpy(labels.astype(np.int64))


def load_idx_folder(root: str | Path, name: str, class_names: tuple[str, ...]) -> Dataset:
    """A data set stored as the four MNIST-style IDX files in ``root``."""
    root = Path(root)
    arrays = {key: read_idx(_find_idx(root, stem)) for key, stem in IDX_FILES.items()}
    train = _images_and_labels(arrays["train_images"], arrays["train_labels"], f"{name} train")
    test = _images_and_labels(arrays["test_images"], arrays["test_labels"], f"{name} test")
    return Dataset(name, *train, *test, levels=256, class_names=class_names)


def load_digits(test_fraction: float = 0.2, seed: int = 0) -> Dataset:
    """scikit-learn's 8x8 digits (1,797 images, 17 grey levels), split stratified into train/test."""
    from sklearn.datasets import load_digits as sklearn_digits
    from sklearn.model_selection import train_test_split

    digits = sklearn_digits()
    images = (digits.images / 16.0).astype(np.float32)[:, None]  # (1797, 1, 8, 8)
    x_train, x_test, y_train, y_test = train_test_split(
        images, digits.target, test_size=test_fraction, random_state=seed, stratify=digits.target
    )
    return Dataset(
        "digits",
        torch.from_numpy(x_train),
        torch.from_numpy(y_train.astype(np.int64)),
        torch.from_numpy(x_test),
        torch.from_numpy(y_test.astype(np.int64)),
        levels=17,
        class_names=tuple(str(d) for d in range(10)),
    )


def load_natural_patches(size: int = 16, train: int = 200_000, test: int = 20_000, seed: int = 0) -> Dataset:
    """Natural-image patches (:mod:`pyro_dcgmm.data.patches`): ``train`` and ``test`` zero-meaned grey
    patches (N, 1, size, size), values in about [-1, 1], from disjoint regions of scikit-learn's
    sample photographs; labels say which photograph."""
    *splits, names = natural_patches(size, train, test, seed=seed)
    return Dataset(f"natural-patches-{size}", *splits, levels=256, class_names=names)


def load_fashion_mnist(root: str | Path | None = None) -> Dataset:
    """Fashion-MNIST from the IDX files of Debian's ``dataset-fashion-mnist`` (or ``root``)."""
    root = Path(root) if root is not None else FASHION_MNIST_ROOT
    if not root.is_dir():
        raise DataError(
            f"Fashion-MNIST folder {str(root)!r} does not exist; install it with "
            "'apt-get install -y dataset-fashion-mnist' or pass the folder holding the IDX files"
        )
    return load_idx_folder(root, "fashion-mnist", FASHION_MNIST_CLASSES)


def default_mnist_root() -> Path:
    cache = os.environ.get("PYRO_DCGMM_DATA", Path.home() / ".cache" / "pyro_dcgmm")
    return Path(cache) / "mnist"


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def download_mnist(
    root: str | Path,
    mirrors: tuple[str, ...] = MNIST_MIRRORS,
    checksums: dict[str, str] = MNIST_SHA256,
    timeout: float = 30.0,
) -> None:
    """Fetch the MNIST IDX files into ``root``, checking each file's SHA-256.

    Files already present with the right checksum are kept.  A file is written only after its
    checksum matched, atomically, so an interrupted download never leaves a partial file.
    Raises :class:`~pyro_dcgmm.errors.DataError` naming every mirror tried when none answers (as
    offline) or when a download does not match its checksum.
    """
    root = Path(root)
    for filename, expected in checksums.items():
        target = root / filename
        if target.is_file() and _sha256(target.read_bytes()) == expected:
            continue
        failures = []
        for mirror in mirrors:
            url = mirror.rstrip("/") + "/" + filename
            try:
                with urllib.request.urlopen(url, timeout=timeout) as response:
                    data = response.read()
            except (urllib.error.URLError, OSError) as error:
                failures.append(f"{url}: {getattr(error, 'reason', error)}")
                continue
            digest = _sha256(data)
            if digest != expected:
                failures.append(f"{url}: SHA-256 {digest} does not match the expected {expected}")
                continue
            atomic_write(target, lambda handle, data=data: handle.write(data))
            break
        else:
            raise DataError(
                f"could not download {filename} (offline, or no mirror served the right file). "
                f"Tried: {'; '.join(failures)}. Put the MNIST IDX files in {str(root)!r} by hand "
                "or pass root= a folder that holds them"
            )


def load_mnist(root: str | Path | None = None, download: bool = False, **download_options) -> Dataset:
    """MNIST from the IDX files in ``root``; with ``download=True`` fetches missing files first."""
    root = Path(root) if root is not None else default_mnist_root()
    if download:
        download_mnist(root, **download_options)
    try:
        return load_idx_folder(root, "mnist", tuple(str(d) for d in range(10)))
    except DataError as error:
        if "not found" not in str(error):
            raise
        raise DataError(
            f"MNIST files are missing in {str(root)!r} ({error}); pass download=True "
            "(--download on the command line) or copy the four IDX files there"
        ) from None


def subset_classes(dataset: Dataset, classes) -> Dataset:
    """Keep only the images whose label is in ``classes`` (labels are not renumbered)."""
    wanted = torch.as_tensor(sorted(set(classes)), dtype=torch.int64)
    known = torch.unique(dataset.train_labels)
    missing = set(wanted.tolist()) - set(known.tolist())
    if missing:
        raise DataError(
            f"classes {sorted(missing)} do not occur in {dataset.name}; its labels are {known.tolist()}"
        )
    train = torch.isin(dataset.train_labels, wanted)
    test = torch.isin(dataset.test_labels, wanted)
    return Dataset(
        dataset.name,
        dataset.train_images[train],
        dataset.train_labels[train],
        dataset.test_images[test],
        dataset.test_labels[test],
        dataset.levels,
        dataset.class_names,
    )


def limit_training_set(dataset: Dataset, limit: int | None, seed: int = 0) -> Dataset:
    """A random ``limit`` of the training images, drawn with ``seed`` (all when ``limit`` is ``None``
    or larger); the test set is kept whole."""
    if limit is not None and limit > dataset.train_images.shape[0]:
        warnings.warn(
            f"train_limit {limit} exceeds the {dataset.train_images.shape[0]} training images of "
            f"{dataset.name}: training on all of them",
            stacklevel=3,
        )
    if limit is None or limit >= dataset.train_images.shape[0]:
        return dataset
    keep = torch.randperm(dataset.train_images.shape[0], generator=torch.Generator().manual_seed(seed))[
        :limit
    ]
    return dataclasses.replace(
        dataset, train_images=dataset.train_images[keep], train_labels=dataset.train_labels[keep]
    )


def load_dataset(config: DataConfig, seed: int = 0) -> Dataset:
    """The data set a :class:`~pyro_dcgmm.config.DataConfig` names, with its class subset and its
    ``train_limit`` (a random subset drawn with ``seed``)."""
    if config.dataset == "digits":
        dataset = load_digits()
    elif config.dataset == "fashion-mnist":
        dataset = load_fashion_mnist(config.root)
    elif config.dataset == "natural-patches":
        dataset = load_natural_patches(config.patch_size, seed=seed)
    elif config.dataset == "mnist":
        dataset = load_mnist(config.root, download=config.download)
    else:
        dataset = load_own_data(config.dataset, seed)
    if config.classes is not None:
        dataset = subset_classes(dataset, config.classes)
    return limit_training_set(dataset, config.train_limit, seed)


def split_validation(images: torch.Tensor, labels: torch.Tensor, fraction: float, seed: int = 0):
    """Random ``(train_images, train_labels, val_images, val_labels)`` split of a training set,
    ``fraction`` (in [0, 1), as :class:`~pyro_dcgmm.config.DataConfig` checks it) held out."""
    order = torch.randperm(images.shape[0], generator=torch.Generator().manual_seed(seed))
    held = round(fraction * images.shape[0])
    val, train = order[:held], order[held:]
    return images[train], labels[train], images[val], labels[val]


def dequantize(x: torch.Tensor, levels: int, generator: torch.Generator) -> torch.Tensor:
    """Uniform dequantisation of data on the grid ``k / (levels - 1)``: ``(k + u) / levels``."""
    noise = torch.rand(x.shape, generator=generator).to(x.device, x.dtype)
    return (x * (levels - 1) + noise) / levels
