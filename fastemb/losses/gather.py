"""Collectives for contrastive losses: all-gather that keeps the gradient, and one that does not."""
from __future__ import annotations

import torch
import torch.distributed as dist


def _is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


class _AllGatherWithGrad(torch.autograd.Function):
    """Forward: concatenate every rank's tensor. Backward: sum the gradient that every rank computed
    for each slice (all-reduce) and hand each rank the slice of its own tensor, so the gradient flowing
    back to a rank's embeddings includes the terms that other ranks' losses contributed."""

    @staticmethod
    def forward(ctx, tensor: torch.Tensor) -> torch.Tensor:
        world, rank = dist.get_world_size(), dist.get_rank()
        ctx.rank, ctx.size = rank, tensor.shape[0]
        parts = [torch.empty_like(tensor) for _ in range(world)]
        dist.all_gather(parts, tensor.contiguous())
        return torch.cat(parts, dim=0)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.contiguous().clone()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        return grad[ctx.rank * ctx.size:(ctx.rank + 1) * ctx.size]


def all_gather_with_grad(tensor: torch.Tensor) -> torch.Tensor:
    """Concatenate ``tensor`` (same shape on every rank) over all ranks along dim 0, keeping autograd.

    Returns ``tensor`` itself when not running distributed."""
    return _AllGatherWithGrad.apply(tensor) if _is_distributed() else tensor


def all_gather_no_grad(tensor: torch.Tensor) -> torch.Tensor:
    """Concatenate ``tensor`` over all ranks along dim 0 (no gradient; ids, hashes)."""
    if not _is_distributed():
        return tensor
    parts = [torch.empty_like(tensor) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, tensor.contiguous())
    return torch.cat(parts, dim=0)


def rank_and_world() -> tuple[int, int]:
    """(rank, world size); (0, 1) outside a process group."""
    return (dist.get_rank(), dist.get_world_size()) if _is_distributed() else (0, 1)


def same_text_mask(target: torch.Tensor, n_candidates: int, item_ids: torch.Tensor | None,
                   query_ids: torch.Tensor | None, gather_ids) -> torch.Tensor:
    """(B, N) true where candidate item ``j`` of the gathered batch is a false negative for query ``i``: its item text
    (``item_ids``) or its query's text (``query_ids``) equals row ``i``'s, other than ``i``'s own item
    (``target[i]``); all false without ``item_ids``. ``gather_ids`` concatenates ids over the ranks (or not)."""
    mask = torch.zeros(len(target), n_candidates, dtype=torch.bool, device=target.device)
    if item_ids is not None:
        mask |= gather_ids(item_ids).unsqueeze(0) == item_ids.unsqueeze(1)
        if query_ids is not None:
            mask |= gather_ids(query_ids).unsqueeze(0) == query_ids.unsqueeze(1)
    mask[torch.arange(len(target)), target] = False
    return mask
