"""Natural-image patches: zero-meaned, textured, and split by region with no overlap."""

import torch

from pyro_dcgmm.data.datasets import load_natural_patches
from pyro_dcgmm.data.patches import (
    BLOCKS_PER_SIDE,
    FLATNESS_THRESHOLD,
    grey_sample_images,
    split_blocks,
    textured_patches,
)


def overlaps(a, b, size):
    """Whether two (image, top, left) patches of side ``size`` share a pixel."""
    return a[0] == b[0] and abs(a[1] - b[1]) < size and abs(a[2] - b[2]) < size


def test_no_test_patch_overlaps_a_training_patch():
    images, _ = grey_sample_images()
    size = 8
    generator = torch.Generator().manual_seed(0)
    train_blocks, test_blocks = split_blocks(
        [i.shape for i in images], BLOCKS_PER_SIDE * size, 0.2, generator
    )
    assert not set(train_blocks) & set(test_blocks)
    _, _, train = textured_patches(images, train_blocks, 3000, size, generator)
    _, _, test = textured_patches(images, test_blocks, 1000, size, generator)
    by_image = {}
    for row in train.tolist():
        by_image.setdefault(row[0], []).append(row)
    train_rows = {k: torch.tensor(v) for k, v in by_image.items()}
    for row in test.tolist():
        candidates = train_rows.get(row[0])
        if candidates is None:
            continue
        close = ((candidates[:, 1] - row[1]).abs() < size) & ((candidates[:, 2] - row[2]).abs() < size)
        assert not bool(close.any()), f"test patch {row} overlaps a training patch"
    assert overlaps((0, 0, 0), (0, 7, 7), size) and not overlaps((0, 0, 0), (0, 8, 0), size)


def test_patches_are_zero_mean_and_textured():
    dataset = load_natural_patches(size=8, train=500, test=100, seed=1)
    assert dataset.train_images.shape == (500, 1, 8, 8) and dataset.test_images.shape == (100, 1, 8, 8)
    for images in (dataset.train_images, dataset.test_images):
        flat = images.flatten(1).double()
        assert float(flat.mean(1).abs().max()) < 1e-6
        assert float(flat.std(1, unbiased=False).min()) >= FLATNESS_THRESHOLD - 1e-6
    assert set(dataset.train_labels.tolist()) <= {0, 1} and dataset.class_names == ("china", "flower")
