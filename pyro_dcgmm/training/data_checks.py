"""What training needs of its data: images, labels and validation images checked against the
stack, and a warning for data a run can learn nothing from."""

from __future__ import annotations

import warnings

import torch

from pyro_dcgmm.data.validation import as_images, as_labels
from pyro_dcgmm.errors import DataError, TrainingWarning


def checked_data(stack, images, labels, validation):
    """The training images, labels and validation images, checked against ``stack``."""
    images = as_images(images, stack.input_shape, stack.data_range, "images")
    labels = as_labels(labels, images.shape[0], stack.num_classes)
    if validation is not None:
        validation = as_images(validation, stack.input_shape, stack.data_range, "validation")
    return images, labels, validation


def require_trainable(stack, images: torch.Tensor, labels) -> None:
    """What training needs of its data: two images at least, and labels for layers split by class."""
    if images.shape[0] < 2:
        raise DataError(f"images holds {images.shape[0]} sample; training needs at least 2")
    split = [n for n, layer in enumerate(stack.mixture_layers) if layer.config.classes]
    if labels is None and split:
        raise DataError(f"layer(s) {split} split their components by class: training needs labels")
    warn_of_uninformative_data(images, labels)


def warn_of_uninformative_data(images: torch.Tensor, labels) -> None:
    """Data a run can learn nothing from train, with a warning: identical images, one class."""
    if bool((images == images[:1]).all()):
        warnings.warn(
            "every training image is the same: the model can learn nothing", TrainingWarning, stacklevel=5
        )
    if labels is not None and int(labels.unique().numel()) < 2:
        only = int(labels[0])
        warnings.warn(
            f"every label is {only}: a classifier learns nothing from one class",
            TrainingWarning,
            stacklevel=5,
        )
