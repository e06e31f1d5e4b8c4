"""Top-down sampling through a stack: unconditional and class-conditional samples, variants of
images and in-painting (see :mod:`pyro_dcgmm.inference.sampling` for the options and the sharpening)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from pyro_dcgmm.data.validation import as_labels, check_positive_int
from pyro_dcgmm.errors import ArchitectureError, DataError
from pyro_dcgmm.inference import queries
from pyro_dcgmm.inference.sampling import ComponentLikelihood, SamplingOptions, Sharpening, resolved, sharpen
from pyro_dcgmm.model.gmm import GMM
from pyro_dcgmm.model.layer import physical_memory
from pyro_dcgmm.model.readout import Readout

DRAWN_ROWS = 16384  # images drawn down at once (samples, or variants times draws): bounds the memory


def check_images_fit(stack, count: int) -> None:
    """Refuse to draw more images (float32) than this machine's memory holds."""
    needed, total = 4 * count * math.prod(stack.input_shape), physical_memory()
    if total is not None and needed > total:
        raise DataError(
            f"{count:,} images of shape {stack.input_shape} need {needed / 2**30:.1f} GiB and this machine "
            f"has {total / 2**30:.1f} GiB: draw fewer at a time"
        )


def sample(stack, n: int, classes=None, options: SamplingOptions | None = None) -> torch.Tensor:
    """``n`` images (n, C, H, W) drawn from the top stage down, conditioned on ``classes`` if given."""
    check_positive_int(n, "n")
    check_images_fit(stack, n)
    if classes is not None:
        if not stack.samples_by_class:
            raise ArchitectureError(
                "class-conditional sampling needs a Readout as the top layer or a top GMM layer "
                "split by class (gmm.classes)"
            )
        classes = as_labels(torch.as_tensor(classes), n, stack.num_classes, "classes")
    options = resolved(stack, options)
    drawn = []
    for rows in queries.row_slices(n, DRAWN_ROWS):
        start, signal = (
            (top_model_layer(stack), None) if classes is None else class_signal(stack, classes[rows])
        )
        drawn.append(sample_from(stack, start, signal, rows.stop - rows.start, options))
    return torch.cat(drawn)


def class_signal(stack, classes: torch.Tensor) -> tuple[object, object]:
    """Where class-conditional sampling starts, and what it starts from: a top GMM split by class
    draws within the class's components (exact), else the Readout turns the labels into evidence
    about the components below it."""
    top = stack.gmm_layers[-1]
    if not top.config.classes:
        return top_model_layer(stack), classes
    log_likelihood = top.class_log_likelihood(classes).expand(-1, -1, *top.output_shape[1:])
    return top, ComponentLikelihood(log_likelihood)


def top_model_layer(stack):
    """The highest layer with a generative model (a GMM or the Readout): sampling starts there,
    since a Fold or MaxPool above the top GMM only transforms what it outputs."""
    return next(layer for layer in reversed(stack.pass_layers) if isinstance(layer, (GMM, Readout)))


def variants(stack, x, layer: int, n_per_image: int, options=None, mask=None) -> torch.Tensor:
    """Images drawn down from the responsibilities of ``x`` at GMM layer ``layer``: (N * n_per_image,
    C, H, W), variants of image ``i`` in rows ``i * n_per_image ...``; with a ``mask``, the observed
    pixels are kept and every layer's components are drawn given them (:class:`Observed`).  Drawn
    for as many images at a time as keep ``DRAWN_ROWS`` rows."""
    check_positive_int(n_per_image, "n_per_image")
    start = stack.mixture_layer(layer)
    x, mask = queries.checked_inputs(stack, x, mask)
    check_images_fit(stack, n_per_image * x.shape[0])
    parameter = next(stack.parameters())
    observed = None
    if mask is None:

        def posterior(chunk, _):
            return torch.softmax(queries.scores_at(stack, chunk, start, None), 1)  # (n, K, H', W')

        responsibilities = queries.map_chunks(stack, x, None, posterior, 1024).to(parameter.device)
    else:
        images = x.to(parameter.device, parameter.dtype)
        observed, responsibilities = Observed.of(stack, images, mask.to(parameter.device), start)
    options = resolved(stack, options, inpainting=mask is not None)
    drawn = []
    for rows in queries.row_slices(x.shape[0], max(1, DRAWN_ROWS // n_per_image)):
        signal = responsibilities[rows].repeat_interleave(n_per_image, dim=0)
        given = None if observed is None else observed.rows(rows).repeated(n_per_image)
        drawn.append(sample_from(stack, start, signal, signal.shape[0], options, given))
    return torch.cat(drawn).to(x.device)


@dataclass(frozen=True)
class Observed:
    """What in-painting knows: the ``images`` with their ``mask`` (true = observed) and, by GMM
    layer, the ``evidence`` of the observed pixels about every layer's components
    (:func:`~pyro_dcgmm.inference.queries.observed_evidence`)."""

    mask: torch.Tensor
    images: torch.Tensor
    evidence: dict[GMM, torch.Tensor]

    @classmethod
    def of(cls, stack, images: torch.Tensor, mask: torch.Tensor, start: GMM) -> tuple[Observed, torch.Tensor]:
        """What is observed, with the evidence for every GMM layer below ``start``, and the
        posterior (N, K, H', W') at ``start``: one masked upward pass, in chunks of 1024 images."""
        with torch.no_grad():
            chunks = [
                queries.observed_evidence(stack, images[rows], mask[rows], start)
                for rows in queries.row_slices(images.shape[0], 1024)
            ]
            evidence = {gmm: torch.cat([chunk[gmm] for chunk in chunks]) for gmm in chunks[0]}
            posterior = torch.softmax(evidence.pop(start) + start.log_mixing_map(), 1)
        return cls(mask, images, evidence), posterior

    def rows(self, selected: slice) -> Observed:
        """What is observed of the ``selected`` images."""
        evidence = {i: e[selected] for i, e in self.evidence.items()}
        return Observed(self.mask[selected], self.images[selected], evidence)

    def repeated(self, times: int) -> Observed:
        """Every image ``times`` times in a row, as :func:`variants` lays out its draws."""
        evidence = {i: e.repeat_interleave(times, 0) for i, e in self.evidence.items()}
        mask, images = self.mask.repeat_interleave(times, 0), self.images.repeat_interleave(times, 0)
        return Observed(mask, images, evidence)


def sample_from(stack, start, signal, n: int, options: SamplingOptions, observed=None):
    """Run ``sample_down`` from layer ``start`` to the pixels, every GMM layer below the start
    drawing given the ``observed`` evidence about its components if there is any."""
    bottom = stack.pass_layers[0]

    def step(layer, signal):
        if observed is not None and layer in observed.evidence:
            signal = layer.sample_down(signal, n, options, evidence=observed.evidence[layer])
        else:
            signal = layer.sample_down(signal, n, options)
        if not torch.is_tensor(signal):  # no information yet, or evidence about components
            return signal
        fixed = None
        if layer is bottom and observed is not None:
            fixed = observed.mask
            signal = torch.where(fixed, observed.images, signal)
        if options.sharpening is not None and not layer.lossless_down:
            signal = sharpen_towards(stack, signal, layer, options.sharpening, fixed)
        return signal

    with torch.no_grad():
        signal = stack.pass_down(signal, step, start)
    signal = signal.clamp(*stack.data_range)
    return signal if observed is None else torch.where(observed.mask, observed.images, signal)


def sharpen_target(stack, layer, target):
    """The GMM layer that sharpening the input of ``layer`` aims at, if any."""
    above = stack.pass_layers[stack.pass_layers.index(layer) :]
    if target == "next":
        return next((gmm for gmm in above if isinstance(gmm, GMM)), None)  # None below a Readout
    gmm = stack.mixture_layer(target)
    return gmm if gmm in above else None


def sharpen_towards(stack, v: torch.Tensor, layer, sharpening: Sharpening, fixed) -> torch.Tensor:
    """Sharpen ``v``, the input of ``layer``, towards the GMM layer it aims at."""
    target = sharpen_target(stack, layer, sharpening.target)
    if target is None:
        return v

    def log_likelihood(h):
        return target.log_prob(stack.pass_up(h, start=layer, stop=target))

    below = stack.pass_layers[: stack.pass_layers.index(layer)]
    gmms_below = [gmm for gmm in below if isinstance(gmm, GMM)]
    value_range = gmms_below[-1].output_range if gmms_below else stack.data_range
    return sharpen(v, log_likelihood, sharpening, value_range, fixed)
