"""Differentiable all-gather for in-batch contrastive losses under DDP.

With DDP each rank holds a shard of the global batch; an InfoNCE loss over the shard alone would see
fewer negatives than single-process training. Gathering the shards makes every rank compute the
global-batch loss. Backward all-reduces the gradient and keeps the local slice, which (after DDP's
gradient averaging) yields exactly the single-process gradient. Needs equal shard sizes; works on gloo
and NCCL since it only uses all_gather and all_reduce.
"""

from __future__ import annotations

import torch
import torch.distributed as dist


class _GatherRows(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        world, rank = dist.get_world_size(), dist.get_rank()
        ctx.rank, ctx.rows = rank, x.shape[0]
        parts = [torch.empty_like(x) for _ in range(world)]
        dist.all_gather(parts, x.contiguous())
        return torch.cat(parts)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        grad = grad.contiguous().clone()
        dist.all_reduce(grad)  # every rank's loss depends on this rank's rows
        start = ctx.rank * ctx.rows
        return grad[start : start + ctx.rows]


def gather_rows(x: torch.Tensor) -> torch.Tensor:
    """Concatenate ``x`` from all ranks in rank order (identity outside a process group)."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return x
    return _GatherRows.apply(x)
