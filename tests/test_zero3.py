"""ZeRO-3 on CPU: two Ray Train workers over gloo, each holding a slice of every parameter. A tiny run through
``run_train`` evaluates on the dev set mid-run (every rank runs the forward passes that gather the slices),
checkpoints, and exports the consolidated model, which sentence-transformers loads with fastemb's vectors."""
from __future__ import annotations

from pathlib import Path

import numpy as np
from sentence_transformers import SentenceTransformer

from fastemb.model.encoder import Encoder
from fastemb.spec import parse_spec
from fastemb.train.job import run_train

TEXTS = ["a member of the genus Canis", "dog, domestic dog", "relating to the stars", "a written promise to pay"]


def test_zero3_two_gloo_workers_export_a_consolidated_model(ray_local, tmp_path, tiny_eval):
    spec = parse_spec({"name": "zero3", "storage_path": str(tmp_path), "model": {"max_length": 32},
                       "data": {"max_pairs": 128, "eval": tiny_eval},
                       "train": {"num_workers": 2, "zero_stage": 3, "micro_batch_size": 16, "max_steps": 3,
                                 "eval_every": 2, "checkpoint_every": 2, "log_every": 1, "lr": 1e-4,
                                 "warmup_ratio": 0.0}})
    report = run_train(spec)
    engine = next(h for h in report["history"] if h.get("event") == "engine")
    assert (engine["zero_stage"], engine["accelerator"], engine["backend"], engine["precision"]) == \
        (3, "cpu", "gloo", "fp32")
    dev = [h for h in report["history"] if "dev_ndcg@10" in h]
    assert [h["step"] for h in dev] == [2, 3] and all(0 < h["dev_ndcg@10"] <= 1 for h in dev)
    assert sorted(p.name for p in (tmp_path / "zero3").glob("checkpoint_*"))  # the step-2 checkpoint and the final

    model_dir = Path(report["model_dir"])
    ours = Encoder.load(str(model_dir)).encode(TEXTS)
    st = SentenceTransformer(str(model_dir), device="cpu").encode(TEXTS)
    assert np.abs(ours - st).max() <= 1e-5
    base = Encoder.load("all-MiniLM-L6-v2").encode(TEXTS)
    assert np.abs(ours - base).max() > 1e-4, "the exported model is the untrained base"
    assert 0 < report["tuned"]["ndcg@10"] <= 1
