"""Natural-image patches, as the convolutional GMM of the second source trains on them.

Grey versions of the photographs that ship inside scikit-learn (``load_sample_images``: a Chinese
temple and a flower, 427 x 640 each) are cut into square blocks; a seeded share of the blocks is
held out for testing.  Patches are drawn at random positions wholly inside one block, so no test
patch overlaps a training patch.  Each patch is zero-meaned and kept only if its standard
deviation reaches ``FLATNESS_THRESHOLD`` (flat patches carry no structure), as in the write-up.
"""

from __future__ import annotations

import numpy as np
import torch

from pyro_dcgmm.errors import DataError

FLATNESS_THRESHOLD = 0.04  # patches with a smaller pixel standard deviation (pixels in [0, 1]) are dropped
BLOCKS_PER_SIDE = 4  # a block is this many patch sides wide and high


def grey_sample_images() -> tuple[list[np.ndarray], tuple[str, ...]]:
    """scikit-learn's sample photographs as float64 grey images in [0, 1], and their names."""
    from sklearn.datasets import load_sample_images

    photos = load_sample_images()
    names = tuple(name.rsplit("/", 1)[-1].split(".")[0] for name in photos.filenames)
    return [
        photo.astype(np.float64) @ np.array([0.299, 0.587, 0.114]) / 255.0 for photo in photos.images
    ], names


def split_blocks(shapes, block: int, test_fraction: float, generator: torch.Generator):
    """(train, test) lists of blocks ``(image, top, left)`` of side ``block`` tiling each image shape."""
    blocks = [
        (index, top, left)
        for index, (height, width) in enumerate(shapes)
        for top in range(0, height - block + 1, block)
        for left in range(0, width - block + 1, block)
    ]
    order = torch.randperm(len(blocks), generator=generator).tolist()
    held = max(1, round(test_fraction * len(blocks)))
    return [blocks[i] for i in order[held:]], [blocks[i] for i in order[:held]]


def patch_locations(blocks, count: int, size: int, block: int, generator: torch.Generator) -> torch.Tensor:
    """``count`` random ``(image, top, left)`` rows (int64) of ``size`` patches inside ``blocks``."""
    chosen = torch.as_tensor(blocks)[torch.randint(len(blocks), (count,), generator=generator)]
    offsets = torch.randint(block - size + 1, (count, 2), generator=generator)
    return torch.stack([chosen[:, 0], chosen[:, 1] + offsets[:, 0], chosen[:, 2] + offsets[:, 1]], 1)


def cut_patches(images, locations: torch.Tensor, size: int) -> torch.Tensor:
    """Zero-meaned patches (M, 1, size, size) at ``locations``."""
    patches = np.stack(
        [images[i][top : top + size, left : left + size] for i, top, left in locations.tolist()]
    )
    patches = torch.from_numpy(patches - patches.mean((1, 2), keepdims=True))
    return patches.unsqueeze(1)


def textured_patches(images, blocks, count: int, size: int, generator: torch.Generator):
    """``count`` zero-meaned patches with standard deviation >= the threshold, and their labels
    (the image each came from) and locations."""
    block = BLOCKS_PER_SIDE * size
    kept, labels, where = [], [], []
    found = 0
    for _ in range(20):
        locations = patch_locations(blocks, 2 * (count - found), size, block, generator)
        patches = cut_patches(images, locations, size)
        textured = patches.flatten(1).std(1, unbiased=False) >= FLATNESS_THRESHOLD
        kept.append(patches[textured])
        labels.append(locations[textured, 0])
        where.append(locations[textured])
        found += int(textured.sum())
        if found >= count:
            break
    if found < count:
        raise DataError(f"found only {found} of {count} patches of {size} px above the flatness threshold")
    return torch.cat(kept)[:count].float(), torch.cat(labels)[:count], torch.cat(where)[:count]


def natural_patches(size: int, train: int, test: int, test_fraction: float = 0.2, seed: int = 0):
    """``(train_patches, train_labels, test_patches, test_labels, names)``: zero-meaned grey patches
    (N, 1, size, size) from training and test regions, labelled by photograph (``names``)."""
    images, names = grey_sample_images()
    generator = torch.Generator().manual_seed(seed)
    block = BLOCKS_PER_SIDE * size
    shapes = [image.shape for image in images]
    train_blocks, test_blocks = split_blocks(shapes, block, test_fraction, generator)
    train_patches, train_labels, _ = textured_patches(images, train_blocks, train, size, generator)
    test_patches, test_labels, _ = textured_patches(images, test_blocks, test, size, generator)
    return train_patches, train_labels, test_patches, test_labels, names
