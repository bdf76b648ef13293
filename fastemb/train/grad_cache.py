"""The cached contrastive loss (GradCache): a big batch's loss and gradient in the memory of a small one.

Gao et al., "Scaling Deep Contrastive Learning Batch Size under Memory Limited Setup" (RepL4NLP 2021); the same
scheme as sentence-transformers' ``CachedMultipleNegativesRankingLoss`` and Tevatron's GradCache trainer.

Per micro-batch, with ``train.cache_mini_batch = m`` (:func:`cached_backward`):

1. each column of texts (queries, positives, hard negatives) is embedded in chunks of ``m`` texts without the
   autograd graph, keeping the RNG state before each chunk (dropout);
2. the loss (InfoNCE, its Matryoshka wrapping; gathered across workers and masked as usual) is computed on the whole
   micro-batch of embeddings, held as leaf tensors, and backpropagated to them alone: the cached gradients (a loss
   given as terms, e.g. one per Matryoshka dimension, is backpropagated term by term: one score matrix at a time);
3. each chunk is embedded again from its saved RNG state, so with the same dropout masks it gives the same
   embeddings, this time with the graph, and ``(embeddings · cached gradients).sum()`` is backpropagated into the
   model. Summed over the chunks this is the gradient of the uncached loss (tests/test_grad_cache.py).

Peak memory is one chunk's activations plus the micro-batch's embeddings and score matrix, whatever the batch.

Under DeepSpeed each chunk's backward is an ``engine.backward``. The engine then runs with
``managed_gradient_accumulation: false`` (fastemb/train/deepspeed_config.py): a backward only accumulates gradients,
and the loop's single ``engine.step()`` per optimizer step is the accumulation boundary, where ZeRO-0/1 all-reduce,
ZeRO-2 finalises the partitions it reduced at each backward, and clipping and the update happen once. Each backward
is scaled by ``1 / train.grad_accum`` as usual, so accumulation over micro-batches composes with the chunks.
"""
from __future__ import annotations

from typing import Callable, Iterable

import torch


class RandState:
    """The RNG state (CPU, and the current CUDA device's when CUDA is in use) at creation. ``with state:`` runs its
    block from that state and leaves the global RNG as it was before the block."""

    def __init__(self) -> None:
        self.cpu = torch.get_rng_state()
        self.cuda_device = torch.cuda.current_device() if torch.cuda.is_available() and torch.cuda.is_initialized() \
            else None
        self.cuda = torch.cuda.get_rng_state(self.cuda_device) if self.cuda_device is not None else None
        self._fork = None

    def __enter__(self) -> RandState:
        self._fork = torch.random.fork_rng(devices=[] if self.cuda_device is None else [self.cuda_device])
        self._fork.__enter__()
        torch.set_rng_state(self.cpu)
        if self.cuda is not None:
            torch.cuda.set_rng_state(self.cuda, self.cuda_device)
        return self

    def __exit__(self, *exc) -> None:
        self._fork.__exit__(*exc)
        self._fork = None


def _chunks(texts: list[str], size: int) -> list[list[str]]:
    return [texts[i:i + size] for i in range(0, len(texts), size)]


def cached_backward(embed: Callable[[list[str]], torch.Tensor], columns: list[list[str]],
                    loss_terms: Callable[[list[torch.Tensor]], Iterable[torch.Tensor]], mini_batch: int,
                    backward: Callable[[torch.Tensor], object]) -> torch.Tensor:
    """Steps 1-3 of the module docstring for one micro-batch; returns the loss (detached).

    ``embed``: texts → embeddings with the graph (train mode); ``columns``: the micro-batch's texts, one list per
    column (empty lists are skipped); ``loss_terms``: one embedding tensor per non-empty column → scalar terms whose
    sum is the loss, each computed when taken (one term: the loss itself); ``backward``: backpropagates a scalar
    into the model (``engine.backward`` under DeepSpeed, else ``Tensor.backward``)."""
    if mini_batch < 1:
        raise ValueError(f"train.cache_mini_batch must be >= 1, got {mini_batch}")
    chunked = [_chunks(texts, mini_batch) for texts in columns if texts]
    states: list[list[RandState]] = []
    leaves: list[torch.Tensor] = []
    with torch.no_grad():
        for chunks in chunked:
            column_states, parts = [], []
            for chunk in chunks:
                column_states.append(RandState())
                parts.append(embed(chunk))
            states.append(column_states)
            leaves.append(torch.cat(parts).requires_grad_(True))
    loss = leaves[0].new_zeros(())
    for term in loss_terms(leaves):
        term.backward()  # to the leaf embeddings only: nothing behind them has a graph
        loss += term.detach()
    for chunks, column_states, leaf in zip(chunked, states, leaves):
        grads = leaf.grad.split([len(chunk) for chunk in chunks])
        for chunk, state, grad in zip(chunks, column_states, grads):
            with state:
                again = embed(chunk)
            backward((again * grad.to(again.dtype)).sum())
    return loss
