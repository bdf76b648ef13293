"""A real 2-worker training run (Ray Train + DeepSpeed ZeRO-1 over gloo) with the cached loss, the Matryoshka loss,
hard negatives, false-negative masking and gradient accumulation together. The gradients themselves are checked
against the uncached loss in tests/test_grad_cache.py; here the whole loop runs them: unmanaged accumulation steps
the optimizer once per step, a checkpoint is written mid-run, every worker's peak memory is reported, and the
exported model has moved away from the base."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import pyarrow as pa
import pyarrow.parquet as pq

from fastemb.data.pairs import load_pairs
from fastemb.model.encoder import Encoder
from fastemb.spec import parse_spec
from fastemb.train.job import run_train


def _pairs_with_negatives(path, n: int) -> str:
    """WordNet pairs, each with one hard negative: the next pair's definition."""
    rows, _ = load_pairs("wordnet", n, 0, 5)
    table = [{"query": r["query"], "positive": r["positive"], "negatives": [rows[(i + 1) % n]["positive"]]}
             for i, r in enumerate(rows)]
    pq.write_table(pa.Table.from_pylist(table), path)
    return str(path)


def test_cached_matryoshka_run_on_two_workers(ray_local, tmp_path, tiny_eval, tiny_model):
    pairs = _pairs_with_negatives(tmp_path / "pairs.parquet", 256)
    spec = parse_spec({"name": "cached", "storage_path": str(tmp_path), "model": {"base": tiny_model, "max_length": 24},
                       "data": {"train": pairs, "eval": tiny_eval}, "general": None,
                       "loss": {"hard_negatives": 1, "matryoshka_dims": [32, 128, 384]},
                       "train": {"num_workers": 2, "zero_stage": 1, "micro_batch_size": 32, "cache_mini_batch": 12,
                                 "grad_accum": 2, "checkpoint_every": 1, "eval_every": 1000, "log_every": 1,
                                 "lr": 2e-4, "warmup_ratio": 0.0}})
    report = run_train(spec)

    assert report["plan"]["total_steps"] == 2  # 256 pairs / (32 × 2 workers) = 4 micro-batches, 2 accumulated
    steps = [h for h in report["history"] if "loss" in h]
    assert [h["step"] for h in steps] == [1, 2] and all(math.isfinite(h["loss"]) for h in steps)
    # one optimizer (and schedule) step per training step, not per micro-batch or chunk: linear decay 2e-4 → 0
    assert [h["lr"] for h in steps] == pytest.approx([1e-4, 0.0])
    checkpoints = [p for p in (tmp_path / "cached").glob("checkpoint_*") if p.is_dir()]  # not Ray's snapshot file
    assert len(checkpoints) == 2  # step 1 (unmanaged engine state) and final
    peaks = report["peak_rss_mib"]
    assert len(peaks) == 2 and all(p > 100 for p in peaks)
    assert json.loads((tmp_path / "cached" / "report.json").read_text())["peak_rss_mib"] == peaks
    texts = ["a member of the genus Canis", "relating to the stars"]
    tuned = Encoder.load(report["model_dir"]).encode(texts)
    base = Encoder.load(tiny_model).encode(texts)
    assert np.abs(tuned - base).max() > 1e-4, "the exported model is the untrained base"
