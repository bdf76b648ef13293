"""The cached loss (fastemb/train/grad_cache.py): its gradients equal the uncached loss's, in one process (with
dropout: the replayed RNG), on 2 gloo processes gathering negatives, and through DeepSpeed ZeRO-0/1/2 with gradient
accumulation; the Matryoshka loss against a plain reference."""
from __future__ import annotations

import functools
import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from fastemb.data.pairs import load_pairs
from fastemb.losses import InfoNCELoss, MatryoshkaLoss
from fastemb.model.encoder import Encoder
from fastemb.spec import LossSpec, TrainSpec
from fastemb.train.batching import batch_hashes
from fastemb.train.grad_cache import cached_backward
from fastemb.train.tasks import Contrastive

TOLERANCE = 1e-5


def tiny_encoder(tokenizer_path: str, dropout: float = 0.0, seed: int = 0, dtype=torch.float64) -> Encoder:
    """A 2-layer, 32-wide BERT (random weights, seeded) with all-MiniLM-L6-v2's tokenizer; float64 by default, so
    the comparisons are not limited by float32 rounding (padding differs between a chunk and the whole batch)."""
    from transformers import AutoTokenizer, BertConfig, BertModel

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_path, local_files_only=True)
    torch.manual_seed(seed)
    config = BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=64, hidden_dropout_prob=dropout,
                        attention_probs_dropout_prob=dropout)
    return Encoder(BertModel(config).to(dtype), tokenizer, "mean", True, max_length=24).train()


@functools.lru_cache(maxsize=1)
def _pairs() -> list[dict]:
    return load_pairs("wordnet", 100, 0, 1)[0]


def _rows(n: int, k: int, offset: int = 0) -> list[dict]:
    """Real WordNet pairs with k negatives each: the next rows' definitions."""
    rows = _pairs()[offset:offset + n]
    return [{**r, "negatives": [rows[(i + 1 + j) % n]["positive"] for j in range(k)]} for i, r in enumerate(rows)]


def _ids(rows: list[dict], k: int) -> dict:
    return {name: torch.from_numpy(v) for name, v in batch_hashes(rows, k).items()}


def _grads(model) -> dict[str, torch.Tensor]:
    return {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}


def _max_diff(a: dict, b: dict) -> float:
    """The largest absolute difference of two gradients (by parameter name), relative to the largest entry of b."""
    assert a.keys() == b.keys() and a
    return max(float((a[n] - b[n]).abs().max()) for n in a) / max(float(b[n].abs().max()) for n in b)


def _loss_spec(k: int, matryoshka: bool) -> LossSpec:
    return LossSpec(temperature=0.05, hard_negatives=k, gather_across_workers=False,
                    matryoshka_dims=[8, 16, 32] if matryoshka else None,
                    matryoshka_weights=[1.0, 0.5, 2.0] if matryoshka else None)


@pytest.mark.parametrize("k, matryoshka, block_rows", [(0, False, None), (2, True, 4)])
def test_cached_gradients_equal_the_uncached_loss(minilm_path, k, matryoshka, block_rows):
    """No dropout: chunks of 3 texts, then the loss on the whole batch (its terms one by one, its rows in blocks),
    give the full-batch gradient."""
    rows = _rows(10, k)
    model = tiny_encoder(minilm_path)
    objective = Contrastive(model, _loss_spec(k, matryoshka), block_rows)
    loss, _ = objective(rows, _ids(rows, k))
    loss.backward()
    full = _grads(model)
    model.zero_grad()
    cached = cached_backward(model.embed, objective.columns(rows), lambda e: objective.loss_terms(e, _ids(rows, k)), 3,
                             torch.Tensor.backward)
    assert abs(float(cached) - loss.item()) <= TOLERANCE
    assert _max_diff(_grads(model), full) <= TOLERANCE


def test_cached_gradients_replay_dropout(minilm_path):
    """With dropout the cached gradient is that of the loss on the first pass's embeddings: the second pass replays
    each chunk's RNG state, so it equals chunked forwards with the graph from the same seed."""
    rows, k = _rows(9, 1), 1
    model = tiny_encoder(minilm_path, dropout=0.3)
    objective = Contrastive(model, _loss_spec(k, False))
    columns = objective.columns(rows)
    torch.manual_seed(7)
    with_graph = [torch.cat([model.embed(c[i:i + 4]) for i in range(0, len(c), 4)]) for c in columns]
    reference = objective.loss_of(with_graph, _ids(rows, k))
    reference.backward()
    expected = _grads(model)
    model.zero_grad()
    torch.manual_seed(7)
    cached = cached_backward(model.embed, columns, lambda e: objective.loss_terms(e, _ids(rows, k)), 4,
                             torch.Tensor.backward)
    assert abs(float(cached) - reference.item()) <= TOLERANCE
    assert _max_diff(_grads(model), expected) <= TOLERANCE


def test_matryoshka_loss_is_the_weighted_sum_over_prefixes():
    g = torch.Generator().manual_seed(3)
    q, p, n = (torch.randn(*s, generator=g, dtype=torch.float64, requires_grad=True) for s in ((5, 12), (5, 12),
                                                                                              (5, 2, 12)))
    inner = InfoNCELoss(0.1, gather_across_workers=False)
    loss = MatryoshkaLoss(inner, [4, 12], [0.5, 2.0])(q, p, n)
    ref = 0.5 * inner(q[:, :4], p[:, :4], n[:, :, :4]) + 2.0 * inner(q, p, n)
    assert torch.allclose(loss, ref, atol=1e-12)
    for a, b in zip(torch.autograd.grad(loss, (q, p, n)), torch.autograd.grad(ref, (q, p, n))):
        assert torch.allclose(a, b, atol=1e-12)
    with pytest.raises(ValueError, match="exceed the embedding width 12"):
        MatryoshkaLoss(inner, [4, 16])(q, p)
    with pytest.raises(ValueError, match="increasing"):
        MatryoshkaLoss(inner, [8, 4])


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _reference_grads(tokenizer_path: str, batches: list[list[dict]], k: int) -> dict:
    """The uncached gradient of the mean over micro-batches of the loss on each whole (global) micro-batch."""
    model = tiny_encoder(tokenizer_path)
    objective = Contrastive(model, _loss_spec(k, True))
    for rows in batches:
        (objective(rows, _ids(rows, k))[0] / len(batches)).backward()
    return _grads(model)


def _deepspeed_worker(rank: int, world: int, port: int, tokenizer_path: str, out) -> None:
    """Each ZeRO stage with 2 accumulated micro-batches of 6 pairs per rank, cached in chunks of 4 texts, SGD with
    lr 1 and no clipping: the update is minus the gradient DeepSpeed reduced."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank), DS_ACCELERATOR="cpu")
    dist.init_process_group("gloo", rank=rank, world_size=world)
    import deepspeed

    from fastemb.logs import hidden_prints
    from fastemb.train.deepspeed_config import deepspeed_config, preload_cpu_comm_op

    preload_cpu_comm_op()  # the prebuilt op, not DeepSpeed's JIT loader
    k, per_rank, accum = 1, 6, 2
    global_batches = [_rows(per_rank * world, k, offset=40 * a) for a in range(accum)]
    expected = _reference_grads(tokenizer_path, global_batches, k)
    results = {}
    for stage in (0, 1, 2):
        model = tiny_encoder(tokenizer_path, dtype=torch.float32)  # as DeepSpeed trains it (fp32)
        before = {n: p.detach().clone() for n, p in model.named_parameters()}
        spec = TrainSpec(num_workers=world, zero_stage=stage, micro_batch_size=per_rank, grad_accum=accum,
                         cache_mini_batch=4, max_grad_norm=0)
        with hidden_prints():
            engine, *_ = deepspeed.initialize(model=model, optimizer=torch.optim.SGD(model.parameters(), lr=1.0),
                                              config=deepspeed_config(spec, "fp32"))
        objective = Contrastive(engine.module, _loss_spec(k, True).model_copy(update={"gather_across_workers": True}),
                                block_rows=4)  # as the loop builds it: the score matrix 4 query rows at a time
        for rows in global_batches:
            mine = rows[rank * per_rank:(rank + 1) * per_rank]
            cached_backward(engine.module.embed, objective.columns(mine),
                            lambda e: objective.loss_terms(e, _ids(mine, k)), 4, engine.backward)
        engine.step()
        got = {n: (before[n] - p.detach()).double() for n, p in engine.module.named_parameters() if n in expected}
        results[stage] = _max_diff(got, expected)
    out[rank] = results
    dist.destroy_process_group()


def test_cached_loss_through_deepspeed_zero_stages_on_two_gloo_processes(minilm_path):
    """2 ranks gathering negatives across workers, hard negatives, false-negative masks, the Matryoshka loss, scores
    in blocks of rows, gradient accumulation 2: every ZeRO stage's update equals the uncached gradient of the global
    batch."""
    with mp.Manager() as manager:
        out = manager.dict()
        mp.spawn(_deepspeed_worker, args=(2, _free_port(), minilm_path, out), nprocs=2, join=True)
        results = [dict(out[0]), dict(out[1])]
    for rank, by_stage in enumerate(results):
        for stage, diff in by_stage.items():
            assert diff <= TOLERANCE, f"rank {rank}, ZeRO-{stage}: max |update + gradient| {diff:.2e}"
