"""Readout: a linear classifier on the responsibilities of the layer below."""

from __future__ import annotations

import pyro
import pyro.distributions as dist
import torch

from pyro_dcgmm.config import ReadoutConfig
from pyro_dcgmm.inference.sampling import ComponentLikelihood
from pyro_dcgmm.model.layer import Layer, Shape


class Readout(Layer):
    """``logits = W . flatten(x) + b``, trained by the cross-entropy of observed labels.

    In the stack's Pyro model the labels are a site ``y ~ Categorical(logits)`` inside the data
    plate, observed when labels are given and left out otherwise.  Its input is detached like every
    layer's, so the classifier never changes the generative layers.

    :param int num_classes: number of classes.
    """

    config_class = ReadoutConfig

    def __init__(self, num_classes: int = 10, wait: float = 0.0):
        super().__init__(ReadoutConfig(num_classes=num_classes, wait=wait))

    @property
    def num_classes(self) -> int:
        return self.config.num_classes

    def build(self, input_shape: Shape) -> Shape:
        features = input_shape[0] * input_shape[1] * input_shape[2]
        self.weight = torch.nn.Parameter(torch.zeros(self.num_classes, features))
        self.bias = torch.nn.Parameter(torch.zeros(self.num_classes))
        self.input_shape = input_shape
        self.output_shape = (self.num_classes, 1, 1)
        return self.output_shape

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """Class logits (N, num_classes) of inputs (N, C, H, W)."""
        self._require_built()
        return torch.nn.functional.linear(x.flatten(1), self.weight, self.bias)

    def transform(self, x: torch.Tensor) -> torch.Tensor:
        """Class probabilities as a (N, num_classes, 1, 1) map."""
        return torch.softmax(self.logits(x), dim=-1)[:, :, None, None]

    def model(
        self, x: torch.Tensor, *, labels=None, annealed: bool = True, enumerated: bool = True
    ) -> torch.Tensor:
        """Observe ``labels`` (N,) as site ``y`` when given; must run inside the data plate."""
        logits = self.logits(x)  # (N, num_classes)
        if labels is not None:
            pyro.sample(
                self.site("y"),
                dist.Categorical(logits=logits[:, None, None, :]),
                obs=labels[:, None, None],
            )  # (N, 1, 1)
        return torch.softmax(logits.detach(), dim=-1)[:, :, None, None]

    def sample_down(self, signal, n, options):
        """Class labels (n,) to evidence about the components of the layer below.

        Returns :class:`~pyro_dcgmm.inference.sampling.ComponentLikelihood` with ``log p(class | z_hw = k)``
        for every position: the readout's class probabilities for a one-hot input at that position,
        exact for the presets' top layer (one position), a per-position approximation otherwise.
        ``None`` (no labels) passes through.
        """
        if signal is None:
            return None
        channels, height, width = self.input_shape
        weight = self.weight.view(self.num_classes, channels, height, width)
        log_class = torch.log_softmax(weight + self.bias[:, None, None, None], dim=0)  # over classes
        return ComponentLikelihood(log_class[signal])  # (n, C, H, W)

    def parameter_groups(self) -> list[tuple[list[torch.nn.Parameter], float]]:
        return [([self.weight, self.bias], 1.0)]
