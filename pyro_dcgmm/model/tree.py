"""Tree: a layer of a joint stack, whose components are the parents of the components below it.

At each position (h, w) of its grid a component ``z_hw`` in 1..J; the child at offset ``o = (u, v)``
of its block, position ``(h bh + u, w bw + v)`` of the layer below, has component ``k`` with
probability ``A[o, z_hw, k]`` (one table for all positions, or one per position).  Given the upward
messages ``m`` (N, K, Hc, Wc) of the layer below, ``m[n, k, c] = log p(everything below child c |
z_c = k)``, the message of a position sums over its children and their components:

.. math:: M[n, j, h, w] = \\sum_{(o, c)} \\log \\sum_k A[o, j, k] \\exp m[n, k, c] ,

computed as a matrix product of ``exp(m - max_k m)`` with ``A`` (never underflowing, since every
``A`` is at least ``probability_floor``), the log-space contraction Pyro's ``DiscreteHMM`` makes.
The top of the tree adds its mixing weights: ``log p(x) = sum_hw logsumexp_j (log pi_j + M[j, h, w])``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from pyro_dcgmm.config import TreeConfig, from_dict
from pyro_dcgmm.errors import ArchitectureError
from pyro_dcgmm.model.layer import (
    Layer,
    Shape,
    as_pair,
    check_parameter_memory,
    class_log_likelihood,
    component_classes,
    component_map,
)


def floored_log_probabilities(probabilities: torch.Tensor, floor: float) -> torch.Tensor:
    """``log`` of ``probabilities`` (..., K) normalised over the last axis, with every entry raised to
    at least ``floor`` first (rows that already respect it are only normalised; rows of zeros become
    uniform)."""
    total = probabilities.sum(-1, keepdim=True).clamp_min(torch.finfo(probabilities.dtype).tiny)
    probabilities = probabilities / total
    raised = probabilities.clamp_min(floor)
    return (raised / raised.sum(-1, keepdim=True)).log()


class Tree(Layer):
    """J components per position, each the parent of the components of a block of positions below.

    :param int components: number of components J.
    :param block: (height, width) of the block below one position, an int for a square, ``"full"``
        for the whole grid below (one position: the top of the tree).
    :param bool shared: one transition table for all positions (True) or one per position.
    :param options: any other field of :class:`~pyro_dcgmm.config.TreeConfig`.

    Parameters (after :meth:`build`): ``transition_logits`` (O, J, K) when shared or
    (H', W', O, J, K) per position, O = bh bw offsets in a block, ``A = softmax`` over K; and
    ``mixing_logits`` (J,) or (H', W', J), the weights of the layer's components while it is the top
    of the tree.  The buffer ``initialised`` records whether the layer has been initialised from its
    children's posteriors (:func:`pyro_dcgmm.training.initialisation.initialise_tree`).
    """

    config_class = TreeConfig

    def __init__(self, components: int = 32, block: int | tuple[int, int] | str = 2, **options):
        super().__init__(from_dict(TreeConfig, {"components": components, "block": block, **options}, "Tree"))

    @property
    def components(self) -> int:
        return self.config.components

    def build(self, input_shape: Shape) -> Shape:
        children, height, width = input_shape
        block = (height, width) if self.config.block == "full" else as_pair(self.config.block)
        self.block = (min(block[0], height), min(block[1], width))  # a block past the grid is cut short
        if self.config.probability_floor * children >= 1:
            raise ArchitectureError(
                f"Tree probability_floor {self.config.probability_floor:g} times the {children} components "
                "below must be below 1"
            )
        out_h, out_w = math.ceil(height / self.block[0]), math.ceil(width / self.block[1])
        lead = () if self.config.shared else (out_h, out_w)
        offsets, k = self.block[0] * self.block[1], self.config.components
        check_parameter_memory(math.prod(lead) * k * (offsets * children + 1), f"Tree with J={k}")
        self.transition_logits = torch.nn.Parameter(torch.zeros(*lead, offsets, k, children))
        self.mixing_logits = torch.nn.Parameter(torch.zeros(*lead, k))
        self.register_initialised(False)
        self.input_shape = input_shape
        self.output_shape = (k, out_h, out_w)
        present = self.slots(torch.ones(1, 1, height, width))[0, ..., 0] > 0.5  # (H', W', O)
        self.register_buffer("present", present, persistent=False)
        return self.output_shape

    @property
    def offsets(self) -> int:
        return self.block[0] * self.block[1]

    def slots(self, values: torch.Tensor) -> torch.Tensor:
        """Values (N, K, Hc, Wc) of the grid below, by block: (N, H', W', O, K); absent children 0."""
        n, k, height, width = values.shape
        (bh, bw), (_, out_h, out_w) = self.block, self.output_shape
        padded = F.pad(values, (0, out_w * bw - width, 0, out_h * bh - height))
        blocks = padded.view(n, k, out_h, bh, out_w, bw).permute(0, 2, 4, 3, 5, 1)
        return blocks.reshape(n, out_h, out_w, self.offsets, k)

    def unslot(self, values: torch.Tensor) -> torch.Tensor:
        """Inverse of :meth:`slots`: (N, H', W', O, K) to the grid below (N, K, Hc, Wc)."""
        n, out_h, out_w, _, k = values.shape
        (bh, bw), (_, height, width) = self.block, self.input_shape
        grid = values.view(n, out_h, out_w, bh, bw, k).permute(0, 5, 1, 3, 2, 4)
        return grid.reshape(n, k, out_h * bh, out_w * bw)[..., :height, :width]

    def log_transitions(self) -> torch.Tensor:
        """``log A`` (O, J, K) or (H', W', O, J, K), normalised over the children's components K."""
        return torch.log_softmax(self.transition_logits, dim=-1)

    def log_mixing(self) -> torch.Tensor:
        """Log mixing weights (J,) or (H', W', J), used while the layer is the top of the tree."""
        return torch.log_softmax(self.mixing_logits, dim=-1)

    def log_mixing_map(self) -> torch.Tensor:
        """``log pi`` laid out like a table, (1, J, 1 | H', 1 | W')."""
        return component_map(self.log_mixing(), self.config.shared)

    def transform(self, x: torch.Tensor) -> torch.Tensor:
        """The upward message (N, J, H', W') from the messages ``x`` (N, K, Hc, Wc) of the layer below."""
        return self.upward(x, self.log_transitions())

    def upward(self, messages: torch.Tensor, log_transitions: torch.Tensor) -> torch.Tensor:
        """:meth:`transform` with the transitions given (so that their gradient can be watched)."""
        slots = self.slots(messages)  # (N, H', W', O, K)
        shift = slots.amax(-1, keepdim=True)  # (N, H', W', O, 1)
        weights, probabilities = (slots - shift).exp(), log_transitions.exp()
        pattern = "nhwok,ojk->nhwoj" if self.config.shared else "nhwok,hwojk->nhwoj"
        per_child = torch.einsum(pattern, weights, probabilities).log() + shift  # (N, H', W', O, J)
        per_child = per_child.masked_fill(~self.present.unsqueeze(-1), 0.0)  # absent children: nothing
        return per_child.sum(3).permute(0, 3, 1, 2)  # (N, J, H', W')

    def child_log_probabilities(self, z: torch.Tensor) -> torch.Tensor:
        """``log p(z_child = k | z)`` (n, K, Hc, Wc) of every position below, given components ``z``
        (n, H', W') of this layer."""
        log_a = self.log_transitions()
        _, out_h, out_w = z.shape
        offset = torch.arange(self.offsets, device=z.device)
        if self.config.shared:
            rows = log_a[offset, z.unsqueeze(-1)]  # (n, H', W', O, K)
        else:
            h = torch.arange(out_h, device=z.device)[:, None, None]
            w = torch.arange(out_w, device=z.device)[None, :, None]
            rows = log_a[h, w, offset, z.unsqueeze(-1)]  # (n, H', W', O, K)
        return self.unslot(rows)

    def child_probabilities(self, probabilities: torch.Tensor) -> torch.Tensor:
        """``p(z_child = k)`` (n, K, Hc, Wc) of every position below, given ``p(z = j)`` (n, J, H', W')
        of this layer's positions."""
        pattern = "nhwj,ojk->nhwok" if self.config.shared else "nhwj,hwojk->nhwok"
        rows = torch.einsum(pattern, probabilities.permute(0, 2, 3, 1), self.log_transitions().exp())
        return self.unslot(rows)

    def component_classes(self) -> torch.Tensor:
        """The class of every component (J,) of a layer split by class (``config.classes``)."""
        return component_classes(self.components, self.config.classes, self.mixing_logits.device)

    def class_log_likelihood(self, classes: torch.Tensor) -> torch.Tensor:
        """``log p(class | z = j)`` (n, J, 1, 1): 0 within each sample's class, a large negative
        number outside it."""
        return class_log_likelihood(self.components, self.config.classes, classes, self.mixing_logits.dtype)

    def assign_(self, transitions: torch.Tensor, mixing: torch.Tensor | None = None) -> None:
        """Set ``A`` (and the mixing weights) from counts or probabilities shaped like them, each
        normalised and floored at ``probability_floor``."""
        floor = self.config.probability_floor
        with torch.no_grad():
            self.transition_logits.copy_(floored_log_probabilities(transitions, floor))
            if mixing is not None:
                self.mixing_logits.copy_(floored_log_probabilities(mixing, floor))

    def project_(self) -> None:
        """Keep every probability at or above the floor after an optimiser step."""
        self.assign_(self.log_transitions().exp(), self.log_mixing().exp())

    def parameter_groups(self) -> list[tuple[list[torch.nn.Parameter], float]]:
        """(parameters, learning-rate factor) pairs for the optimiser."""
        return [([self.transition_logits, self.mixing_logits], 1.0)]
