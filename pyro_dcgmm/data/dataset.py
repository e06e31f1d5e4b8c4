"""A data set: its train and test images and labels."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class Dataset:
    """Train and test splits of one image data set.

    :ivar levels: number of quantisation levels of the pixels (256 for 8-bit images), for
        dequantisation and bits per dimension.
    """

    name: str
    train_images: torch.Tensor
    train_labels: torch.Tensor
    test_images: torch.Tensor
    test_labels: torch.Tensor
    levels: int
    class_names: tuple[str, ...]

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return tuple(self.train_images.shape[1:])
