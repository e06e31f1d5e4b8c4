"""Data-parallel training over a ``torch.distributed`` process group (``torchrun``).

Every process draws the same permutation, takes its share (``rank::world_size``) of each global
mini-batch, and gradients and per-layer losses are summed over processes before every step, so all
processes take the same step as one process with the whole batch (up to the order of floating-point
sums).  Only rank 0 evaluates, logs and writes checkpoints.  The ``DistributedDataParallel`` wrapper
is not used: Pyro's loss is built from the trace's factors, not from the module's output, which its
gradient-readiness tracking relies on.
"""

from __future__ import annotations

import torch
import torch.distributed as dist


def distributed_rank_and_size() -> tuple[int, int]:
    """(rank, world size) of the ``torch.distributed`` process group, (0, 1) without one."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def leave_process_group() -> None:
    """Leave the ``torch.distributed`` process group, if there is one, together with every other process.

    The barrier keeps one process from tearing its connections down while another still finishes its
    last collective or writes its results: a gloo process doing so was once seen aborting (SIGABRT).
    """
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def broadcast_state(module: torch.nn.Module) -> None:
    """In a process group, give every process rank 0's values of ``module``'s tensors."""
    if distributed_rank_and_size()[1] > 1:
        for tensor in module.state_dict().values():
            if torch.is_tensor(tensor):
                dist.broadcast(tensor, 0)


def sum_over_processes(module: torch.nn.Module, totals: torch.Tensor) -> None:
    """Sum every gradient of ``module`` and the loss ``totals`` over all processes, in place.

    A parameter without a gradient in every process (a readout without labels) keeps none.
    """
    params = list(module.parameters())
    flags = torch.tensor([p.grad is not None for p in params], dtype=totals.dtype, device=totals.device)
    flat = torch.cat(
        [(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1) for p in params]
        + [totals, flags]
    )
    dist.all_reduce(flat)
    offset = 0
    for p, flag in zip(params, flat[-len(params) :].tolist(), strict=True):
        p.grad = flat[offset : offset + p.numel()].view_as(p).clone() if flag > 0 else None
        offset += p.numel()
    totals.copy_(flat[offset : offset + totals.numel()])
