"""ZeRO-3 on CPU: two Ray Train workers over gloo, each holding a slice of every parameter. A tiny run of the training
job's trainer (fastemb/train/trainer.py) checkpoints, evaluates on the dev set (every rank runs the forward passes,
which gather the slices) and exports the consolidated model, which sentence-transformers loads with fastemb's
vectors."""
from __future__ import annotations

import numpy as np
from sentence_transformers import SentenceTransformer

from fastemb.model.encoder import Encoder
from fastemb.spec import parse_spec
from fastemb.train.tasks import job_tasks, load_task_pairs
from fastemb.train.trainer import fit_and_export, make_trainer, plan_steps

TEXTS = ["a member of the genus Canis", "dog, domestic dog", "relating to the stars", "a written promise to pay"]


def test_zero3_two_gloo_workers_export_a_consolidated_model(ray_local, tmp_path, tiny_eval):
    spec = parse_spec({"name": "zero3", "storage_path": str(tmp_path), "model": {"max_length": 32},
                       "data": {"max_pairs": 64, "eval": tiny_eval, "dev_queries": 20, "dev_corpus": 100},
                       "train": {"num_workers": 2, "zero_stage": 3, "micro_batch_size": 16, "max_steps": 2,
                                 "eval_every": 2, "checkpoint_every": 1, "log_every": 1, "lr": 1e-4,
                                 "warmup_ratio": 0.0}})
    task = job_tasks(spec)[0]
    pairs, _ = load_task_pairs(spec, task)
    plan = plan_steps(spec, len(pairs))
    model_dir, history = fit_and_export(make_trainer(spec, pairs, plan), spec)

    engine = next(h for h in history if h.get("event") == "engine")
    assert (engine["zero_stage"], engine["accelerator"], engine["backend"], engine["precision"]) == \
        (3, "cpu", "gloo", "fp32")
    assert [h["step"] for h in history if "loss" in h] == [1, 2]
    dev = [h for h in history if "dev_ndcg@10" in h]
    assert [h["step"] for h in dev] == [2] and 0 < dev[0]["dev_ndcg@10"] <= 1
    assert any((tmp_path / "zero3").glob("checkpoint_*"))  # the step-1 ZeRO-3 checkpoint, then the final one

    ours = Encoder.load(str(model_dir)).encode(TEXTS)  # the gathered weights, not this rank's empty slices
    st = SentenceTransformer(str(model_dir), device="cpu").encode(TEXTS)
    assert np.abs(ours - st).max() <= 1e-5
    base = Encoder.load("all-MiniLM-L6-v2").encode(TEXTS)
    assert np.abs(ours - base).max() > 1e-4, "the exported model is the untrained base"
