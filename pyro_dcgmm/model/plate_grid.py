"""Where the sites of a joint stack's enumerated Pyro program live: its plates and index tensors.

The program (:meth:`JointStack._enumerated_model <pyro_dcgmm.model.joint.JointStack>`) nests, inside the
data plate, plates over the top's rows and columns and, for every level below the top, plates over
the (u, v) offset of a position in its parent's block, so that every component site sits in the
plates of its position and its parent's component broadcasts against it.  The position of level
``l`` is ``h_l = h_{l+1} bh + u``; positions beyond a level's grid (where a block at the edge is cut
short) are absent: their components have no observations below them and sum to one.
"""

from __future__ import annotations

import contextlib

import pyro
import torch
import torch.nn.functional as F


class PlateGrid:
    """The plates and index tensors of a joint stack's enumerated program, for its tree as grown so
    far (see the module docstring)."""

    def __init__(self, stack, device: torch.device):
        self.stack, self.device = stack, device
        self.top = stack.root_level
        self.nesting = stack.max_plate_nesting
        _, height, width = stack.mixture_layers[self.top].output_shape
        sizes = [("h", height), ("w", width)]
        for upper in range(self.top, 0, -1):
            bh, bw = stack.mixture_layers[upper].block
            sizes += [(f"u{upper}", bh), (f"v{upper}", bw)]
        self._plates = [  # None for an axis of size 1: no plate (compute_marginals mishandles those)
            pyro.plate(name, size, dim=-self.nesting + 1 + axis) if size > 1 else None
            for axis, (name, size) in enumerate(sizes)
        ]

    def _axis(self, size: int, dim: int) -> torch.Tensor:
        return torch.arange(size, device=self.device).view(size, *[1] * (-dim - 1))

    def plates(self, level: int) -> contextlib.ExitStack:
        """The plates of level ``level`` below the data plate, as one context manager."""
        stack = contextlib.ExitStack()
        for plate in self._plates[: 2 + 2 * (self.top - level)]:
            if plate is not None:
                stack.enter_context(plate)
        return stack

    def position(self, level: int, clamped: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """Row and column index of level ``level``'s positions, laid out over the plates."""
        _, height, width = self.stack.mixture_layers[self.top].output_shape
        rows, columns = self._axis(height, -self.nesting + 1), self._axis(width, -self.nesting + 2)
        for upper in range(self.top, level, -1):
            bh, bw = self.stack.mixture_layers[upper].block
            dim = -self.nesting + 3 + 2 * (self.top - upper)
            rows, columns = rows * bh + self._axis(bh, dim), columns * bw + self._axis(bw, dim + 1)
        if clamped:
            _, h, w = self.stack.mixture_layers[level].output_shape
            rows, columns = rows.clamp(max=h - 1), columns.clamp(max=w - 1)
        return rows, columns

    def offset(self, level: int) -> torch.Tensor:
        """Offset index ``u bw + v`` of level ``level - 1``'s positions in their parents' blocks."""
        bh, bw = self.stack.mixture_layers[level].block
        dim = -self.nesting + 3 + 2 * (self.top - level)
        return self._axis(bh, dim) * bw + self._axis(bw, dim + 1)

    def present(self, level: int) -> torch.Tensor:
        """Which positions of level ``level`` lie on its grid."""
        rows, columns = self.position(level)
        _, height, width = self.stack.mixture_layers[level].output_shape
        return (rows < height) & (columns < width)

    def root_parameter(self, values: torch.Tensor, shared: bool) -> torch.Tensor:
        """Per-component values of the top ((J,) or (H, W, J)) laid out over its plates."""
        if shared:
            return values
        rows, columns = self.position(self.top)
        return values[rows, columns]

    def arrange(self, x: torch.Tensor, leaf) -> torch.Tensor:
        """The leaves' patches of images ``x`` laid out over the plates: (N, ..., D), absent ones 0."""
        n = x.shape[0]
        patches = F.unfold(x, leaf.patch, stride=leaf.stride)  # (N, D, L)
        _, height, width = leaf.output_shape
        grid = patches.view(n, -1, height, width)
        rows, columns = self.position(0, clamped=True)
        arranged = grid[:, :, rows, columns]  # (N, D, ...)
        return arranged.movedim(1, -1) * self.present(0).unsqueeze(-1)
