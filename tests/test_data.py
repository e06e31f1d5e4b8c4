import gzip
import hashlib
import http.server
import socket
import threading
from pathlib import Path

import numpy as np
import pytest
import torch

from pyro_dcgmm.config import DataConfig
from pyro_dcgmm.data.datasets import (
    FASHION_MNIST_ROOT,
    dequantize,
    download_mnist,
    load_dataset,
    load_digits,
    load_fashion_mnist,
    load_mnist,
    read_idx,
    subset_classes,
)
from pyro_dcgmm.errors import DataError


def idx_bytes(array: np.ndarray) -> bytes:
    header = bytes([0, 0, 0x08, array.ndim]) + np.array(array.shape, dtype=">u4").tobytes()
    return header + array.astype(np.uint8).tobytes()


def write_mnist_like(folder: Path, n_train=12, n_test=5, compress=True) -> dict[str, bytes]:
    rng = np.random.default_rng(0)
    arrays = {
        "train-images-idx3-ubyte": rng.integers(0, 256, (n_train, 28, 28)),
        "train-labels-idx1-ubyte": rng.integers(0, 10, n_train),
        "t10k-images-idx3-ubyte": rng.integers(0, 256, (n_test, 28, 28)),
        "t10k-labels-idx1-ubyte": rng.integers(0, 10, n_test),
    }
    files = {}
    folder.mkdir(parents=True, exist_ok=True)
    for stem, array in arrays.items():
        data = idx_bytes(array)
        name = f"{stem}.gz" if compress else stem
        files[name] = gzip.compress(data) if compress else data
        (folder / name).write_bytes(files[name])
    return files


@pytest.mark.parametrize("compress", [True, False])
def test_read_idx(tmp_path, compress):
    write_mnist_like(tmp_path, compress=compress)
    suffix = ".gz" if compress else ""
    images = read_idx(tmp_path / f"train-images-idx3-ubyte{suffix}")
    assert images.shape == (12, 28, 28) and images.dtype == np.uint8


def test_read_idx_rejects_bad_files(tmp_path):
    (tmp_path / "magic").write_bytes(b"\x01\x02\x08\x01" + b"\x00" * 8)
    with pytest.raises(DataError, match="magic number"):
        read_idx(tmp_path / "magic")
    good = idx_bytes(np.zeros((4, 3, 3)))
    (tmp_path / "short").write_bytes(good[:-5])
    with pytest.raises(DataError, match="truncated"):
        read_idx(tmp_path / "short")
    (tmp_path / "short.gz").write_bytes(gzip.compress(good)[:-6])
    with pytest.raises(DataError, match="corrupt or truncated gzip"):
        read_idx(tmp_path / "short.gz")
    with pytest.raises(DataError, match="does not exist"):
        read_idx(tmp_path / "missing")


def test_mismatched_images_and_labels(tmp_path):
    write_mnist_like(tmp_path)
    (tmp_path / "train-labels-idx1-ubyte.gz").write_bytes(gzip.compress(idx_bytes(np.zeros(11))))
    with pytest.raises(DataError, match="12 images but 11 labels"):
        load_mnist(tmp_path)


def test_digits():
    data = load_digits()
    assert data.train_images.shape[1:] == (1, 8, 8) and data.train_images.dtype == torch.float32
    assert data.train_images.shape[0] + data.test_images.shape[0] == 1797
    assert float(data.train_images.min()) >= 0.0 and float(data.train_images.max()) <= 1.0
    assert data.levels == 17


def test_subset_classes():
    data = subset_classes(load_digits(), [3, 5])
    assert set(data.train_labels.tolist()) == {3, 5} and set(data.test_labels.tolist()) == {3, 5}
    with pytest.raises(DataError, match=r"classes \[12\] do not occur"):
        subset_classes(load_digits(), [3, 12])


def test_dequantize_stays_in_the_level_cell():
    levels = 17
    x = torch.randint(0, levels, (1000,)).float() / (levels - 1)
    noisy = dequantize(x, levels, torch.Generator().manual_seed(0))
    k = torch.round(x * (levels - 1))
    assert torch.all(noisy >= k / levels) and torch.all(noisy <= (k + 1) / levels)


@pytest.mark.skipif(not FASHION_MNIST_ROOT.is_dir(), reason="dataset-fashion-mnist not installed")
def test_fashion_mnist_from_debian_package():
    data = load_fashion_mnist()
    assert data.train_images.shape == (60000, 1, 28, 28)
    assert data.test_images.shape == (10000, 1, 28, 28)
    assert data.train_labels.bincount().tolist() == [6000] * 10


class _Server:
    """Serves a folder on 127.0.0.1 for the length of a test."""

    def __init__(self, folder: Path):
        handler = lambda *a, **k: http.server.SimpleHTTPRequestHandler(*a, directory=str(folder), **k)  # noqa: E731
        handler.log_message = lambda *a: None
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_port}/"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()


def test_mnist_download_with_checksums(tmp_path):
    served = write_mnist_like(tmp_path / "served")
    checksums = {name: hashlib.sha256(data).hexdigest() for name, data in served.items()}
    with _Server(tmp_path / "served") as server:
        data = load_mnist(tmp_path / "cache", download=True, mirrors=(server.url,), checksums=checksums)
    assert data.train_images.shape == (12, 1, 28, 28) and data.test_labels.shape == (5,)
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == sorted(served)


def test_mnist_download_rejects_wrong_checksum(tmp_path):
    served = write_mnist_like(tmp_path / "served")
    checksums = {name: "0" * 64 for name in served}
    with _Server(tmp_path / "served") as server, pytest.raises(DataError, match="does not match"):
        download_mnist(tmp_path / "cache", mirrors=(server.url,), checksums=checksums)
    assert not (tmp_path / "cache").exists() or not any((tmp_path / "cache").iterdir())


def test_mnist_download_offline_fails_clearly(tmp_path):
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    mirror = f"http://127.0.0.1:{port}/"
    with pytest.raises(DataError, match="offline, or no mirror served the right file"):
        download_mnist(tmp_path, mirrors=(mirror,), timeout=2.0)


def test_mnist_missing_without_download(tmp_path):
    with pytest.raises(DataError, match="pass download=True"):
        load_mnist(tmp_path)


def test_train_limit_is_one_seeded_random_subset_for_every_script():
    full = load_dataset(DataConfig())
    first = load_dataset(DataConfig(train_limit=100), seed=3)
    again = load_dataset(DataConfig(train_limit=100), seed=3)
    other = load_dataset(DataConfig(train_limit=100), seed=4)
    assert first.train_images.shape[0] == 100 and torch.equal(first.train_images, again.train_images)
    assert not torch.equal(first.train_images, full.train_images[:100])  # was "the first N" in train_svi
    assert not torch.equal(first.train_images, other.train_images)
    assert torch.equal(first.test_images, full.test_images)
