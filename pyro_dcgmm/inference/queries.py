"""Queries of a stack on images: posteriors, MAP components, log-likelihoods, class probabilities.

Every query checks its images (and optional mask of observed pixels) once, then runs over chunks
of ``batch_size`` images on the stack's device, without gradients.  Responsibilities keep the
layers' axis order, (N, K, H', W'): components on the channel axis, like images' (N, C, H, W).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import torch
import torch.nn.functional as F

from pyro_dcgmm.data.validation import as_images, as_tensor, check_positive_int
from pyro_dcgmm.errors import ArchitectureError, DataError
from pyro_dcgmm.model.gmm import GMM
from pyro_dcgmm.model.logsumexp import table_log_likelihood

Chunk = Callable[[torch.Tensor, torch.Tensor | None], torch.Tensor]


def checked_inputs(stack, x, mask=None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Images (N, C, H, W) checked against the stack, and the boolean mask (1 = observed) or ``None``.

    Missing entries may hold anything (NaN included): they are zeroed before the range check.
    """
    if mask is None:
        return as_images(x, stack.input_shape, stack.data_range), None
    if stack.pass_layers[0] is not stack.gmm_layers[0]:
        raise ArchitectureError("masked inputs need a GMM (after an optional Fold) as the first layer")
    x, mask = as_tensor(x, "x"), as_tensor(mask, "mask")
    if stack.input_shape[0] == 1:
        x = x.unsqueeze(1) if x.dim() == 3 else x
        mask = mask.unsqueeze(1) if mask.dim() == 3 else mask
    if mask.shape != x.shape:
        raise DataError(f"mask has shape {tuple(mask.shape)}; expected the images' shape {tuple(x.shape)}")
    if mask.dtype != torch.bool:
        if not bool(((mask == 0) | (mask == 1)).all()):
            raise DataError("mask must be boolean or hold only 0 and 1 (1 = observed)")
        mask = mask.bool()
    x = torch.where(mask, x, torch.zeros((), dtype=x.dtype))
    return as_images(x, stack.input_shape, stack.data_range), mask


def row_slices(total: int, size: int) -> list[slice]:
    """Consecutive slices of at most ``size`` rows covering ``total`` rows."""
    return [slice(start, min(start + size, total)) for start in range(0, total, size)]


def map_chunks(stack, x: torch.Tensor, mask, fn: Chunk, batch_size: int) -> torch.Tensor:
    """``fn(chunk, chunk_mask)`` over chunks of checked images, on the stack's device, concatenated."""
    check_positive_int(batch_size, "batch_size")
    parameter = next(stack.parameters())
    outputs = []
    with torch.no_grad():
        for rows in row_slices(x.shape[0], batch_size):
            chunk = x[rows].to(device=parameter.device, dtype=parameter.dtype)
            chunk_mask = None if mask is None else mask[rows].to(parameter.device)
            outputs.append(fn(chunk, chunk_mask))
    return torch.cat(outputs).to(x.device)


def query(stack, x, fn: Chunk, batch_size: int, mask=None) -> torch.Tensor:
    """:func:`map_chunks` on images and mask checked by :func:`checked_inputs`."""
    return map_chunks(stack, *checked_inputs(stack, x, mask), fn, batch_size)


OBSERVED_FRACTION = 0.5  # an upper-layer input counts as observed when this much of its patch is


def output_mask(layer, mask: torch.Tensor, output: torch.Tensor) -> torch.Tensor:
    """Which entries of ``layer``'s ``output`` count as observed, given its input ``mask``.

    For a GMM layer: the positions whose patch is at least :data:`OBSERVED_FRACTION` observed (all
    K channels alike); for a Fold or MaxPool, the entries its transform takes from an observed input.
    """
    if isinstance(layer, GMM):
        seen = F.avg_pool2d(mask.to(output.dtype).mean(1, keepdim=True), layer.patch, layer.stride)
        return (seen >= OBSERVED_FRACTION).expand_as(output)  # (N, K, H', W')
    return layer.transform(mask.to(output.dtype)) > 0.5


def upward_scores(stack, x: torch.Tensor, mask: torch.Tensor | None) -> Iterator[tuple[GMM, torch.Tensor]]:
    """(GMM layer, log-scores (N, K, H', W')) of every GMM layer, in one upward pass.

    With a ``mask`` of observed pixels the first layer marginalises the missing ones exactly, and
    every layer above marginalises the inputs that come from mostly missing patches
    (:func:`output_mask`), so each layer's posterior is given what is observed.
    """

    def step(layer, carried):
        h, m, _ = carried
        scores = layer.log_scores(h, m) if isinstance(layer, GMM) else None
        output = layer.transform(h) if scores is None else layer.output(scores)
        return output, None if m is None else output_mask(layer, m, output), scores

    for layer, (_, _, scores) in stack.upward((x, mask, None), step):
        if scores is not None:
            yield layer, scores


def observed_evidence(stack, x: torch.Tensor, mask: torch.Tensor, until: GMM) -> dict[GMM, torch.Tensor]:
    """``log p(observed part of a patch | z = k)`` (N, K, H', W') of every GMM layer up to
    ``until``, by layer: the log-densities of one masked upward pass (:func:`upward_scores`;
    zero where nothing of a patch counts as observed).  In-painting adds them to every layer's
    component logits, so each component is drawn given what is seen of its patch."""
    evidence = {}
    for gmm, scores in upward_scores(stack, x, mask):
        evidence[gmm] = scores - gmm.log_mixing_map()
        if gmm is until:
            break
    return evidence


def scores_at(stack, x: torch.Tensor, gmm: GMM, mask: torch.Tensor | None) -> torch.Tensor:
    """Log-scores (N, K, H', W') of ``gmm``, one of the stack's GMM layers."""
    return next(scores for layer, scores in upward_scores(stack, x, mask) if layer is gmm)


def responsibilities(stack, x, layer: int, batch_size: int, mask=None) -> torch.Tensor:
    gmm = stack.mixture_layer(layer)
    return query(stack, x, lambda c, m: torch.softmax(scores_at(stack, c, gmm, m), 1), batch_size, mask)


def map_components(stack, x, layer: int, batch_size: int, mask=None) -> torch.Tensor:
    gmm = stack.mixture_layer(layer)
    return query(stack, x, lambda c, m: scores_at(stack, c, gmm, m).argmax(dim=1), batch_size, mask)


def layer_log_probs(stack, x, batch_size: int, mask=None) -> torch.Tensor:
    def all_layers(chunk, chunk_mask):
        scores = upward_scores(stack, chunk, chunk_mask)
        return torch.stack([table_log_likelihood(s) for _, s in scores], dim=1)

    return query(stack, x, all_layers, batch_size, mask)


def log_prob(stack, x, layer: int, batch_size: int, mask=None) -> torch.Tensor:
    gmm = stack.mixture_layer(layer)
    return query(stack, x, lambda c, m: table_log_likelihood(scores_at(stack, c, gmm, m)), batch_size, mask)


def predict_proba(stack, x, batch_size: int) -> torch.Tensor:
    readout = stack.readout
    if readout is None:
        raise ArchitectureError("this stack has no Readout layer to predict classes with")
    return query(
        stack, x, lambda c, _: torch.softmax(readout.logits(stack.input_of(c, readout)), -1), batch_size
    )
