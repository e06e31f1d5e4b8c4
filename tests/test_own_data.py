"""Your own images as a data set: .npy and .npz arrays and folders of image files, in the library
and through the commands."""

import numpy as np
import pytest
import torch
from PIL import Image

from pyro_dcgmm.cli import train as train_command
from pyro_dcgmm.config import DataConfig
from pyro_dcgmm.data.datasets import load_dataset
from pyro_dcgmm.data.own import TEST_FRACTION, UNLABELLED
from pyro_dcgmm.errors import ConfigError, DataError


@pytest.fixture(scope="module")
def digit_bytes():
    from sklearn.datasets import load_digits

    digits = load_digits()
    return (digits.images * 15).astype(np.uint8), digits.target


def own(path) -> object:
    return load_dataset(DataConfig(dataset=str(path)), seed=0)


def test_arrays_load_scaled_and_split(tmp_path, digit_bytes):
    images, labels = digit_bytes
    np.save(tmp_path / "x.npy", images)
    data = own(tmp_path / "x.npy")
    assert data.input_shape == (1, 8, 8) and data.class_names == UNLABELLED and data.levels == 256
    assert len(data.test_images) == round(TEST_FRACTION * len(images))
    assert float(data.train_images.max()) == pytest.approx(240 / 255)
    colour = np.repeat(images[..., None], 3, axis=-1)  # (N, H, W, 3): channels last
    np.savez(tmp_path / "xy.npz", images=colour, labels=labels)
    data = own(tmp_path / "xy.npz")
    assert data.input_shape == (3, 8, 8) and data.class_names == tuple(str(c) for c in range(10))
    seen = torch.cat([data.train_labels, data.test_labels]).sort().values
    assert torch.equal(seen, torch.from_numpy(np.sort(labels)))


def test_a_folder_of_images_labelled_by_sub_folder(tmp_path, digit_bytes):
    images, labels = digit_bytes
    for c in (3, 7):
        (tmp_path / f"digit{c}").mkdir()
        for i, image in enumerate(images[labels == c][:20]):
            Image.fromarray(image).save(tmp_path / f"digit{c}" / f"{i}.png")
    data = own(tmp_path)
    assert data.class_names == ("digit3", "digit7") and data.input_shape == (1, 8, 8)
    assert len(data.train_images) + len(data.test_images) == 40
    Image.fromarray(np.zeros((9, 8), np.uint8)).save(tmp_path / "digit3" / "odd.png")
    with pytest.raises(DataError, match=r"the images differ in size: 8x8 .* and 8x9 \(odd\.png\); resize"):
        own(tmp_path)


def test_own_data_that_cannot_be_images_is_named(tmp_path):
    np.save(tmp_path / "big.npy", np.full((10, 4, 4), 300, dtype=np.int32))
    with pytest.raises(DataError, match=r"integer pixels must be bytes \(0 to 255\), got 300 to 300"):
        own(tmp_path / "big.npy")
    np.savez(tmp_path / "named.npz", x=np.zeros((10, 4, 4)))
    with pytest.raises(DataError, match=r"holds \['x'\]; it needs an array named 'images'"):
        own(tmp_path / "named.npz")
    with pytest.raises(DataError, match="there is no such file or folder"):
        own(tmp_path / "missing.npz")
    with pytest.raises(ConfigError, match=r"got 'fashion-mnst'; did you mean 'fashion-mnist'"):
        DataConfig(dataset="fashion-mnst")


def test_the_commands_train_on_your_own_images(tmp_path, digit_bytes):
    images, labels = digit_bytes
    np.savez(tmp_path / "mine.npz", images=images, labels=labels)
    common = ["--epochs", "2", "--no-progress", "--device", "cpu"]
    summary = train_command.main(
        ["--dataset", str(tmp_path / "mine.npz"), *common, "--out", str(tmp_path / "a")]
    )
    assert summary["test_accuracy"] > 0.8  # the digits preset's Readout, on the archive's labels
    np.save(tmp_path / "unlabelled.npy", images)
    summary = train_command.main(
        ["--dataset", str(tmp_path / "unlabelled.npy"), *common, "--out", str(tmp_path / "b")]
    )
    assert "test_accuracy" not in summary and summary["test_log_likelihood_after"][0] > 0
