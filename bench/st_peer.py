"""The sentence-transformers peer of the training benchmarks: ``SentenceTransformerTrainer`` on N processes (torch's
launcher, DDP over gloo on CPU), with the loss the benchmark compares against (CachedMultipleNegativesRankingLoss,
MatryoshkaLoss around MultipleNegativesRankingLoss or its cached form), gathering embeddings across processes as
fastemb gathers them across workers.

``train_st(...)`` launches the processes and returns the saved model, the training time and each process's peak
resident memory (``ru_maxrss``, as fastemb reports its workers'). Run as a script, this file is one such process.
"""
from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parents[1]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def train_st(pairs: list[dict], out_dir: str | Path, *, batch: int, lr: float, epochs: float, temperature: float,
             max_length: int, workers: int, threads: int = 1, mini_batch: int | None = None,
             matryoshka_dims: list[int] | None = None, seed: int = 42) -> dict:
    """Train all-MiniLM-L6-v2 on ``pairs`` (query, positive) with the trainer on ``workers`` processes; returns
    ``{model_dir, train_s, peak_rss_mib: [per process], loss}``. ``mini_batch``: CachedMultipleNegativesRankingLoss
    with that mini-batch (else MultipleNegativesRankingLoss); ``matryoshka_dims``: wrapped by MatryoshkaLoss."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "pairs.json").write_text(json.dumps([{"anchor": p["query"], "positive": p["positive"]} for p in pairs]))
    config = {"batch": batch, "lr": lr, "epochs": epochs, "temperature": temperature, "max_length": max_length,
              "threads": threads, "mini_batch": mini_batch, "matryoshka_dims": matryoshka_dims, "seed": seed}
    (out / "config.json").write_text(json.dumps(config))
    return launch(__file__, out, workers, threads)


def launch(script: str, out: Path, workers: int, threads: int) -> dict:
    """Run ``script --out out`` on ``workers`` processes of ``threads`` threads (torch's launcher, one machine); its
    rank 0 writes ``out/result.json``, returned. Output goes to ``out/train.log``."""
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={workers}", "--nnodes=1",
           f"--master_port={_free_port()}", script, "--out", str(out)]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "PYTHONPATH": str(ROOT), "TOKENIZERS_PARALLELISM": "false"}
    with open(out / "train.log", "w") as log:
        rc = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, env=env).returncode
    if rc != 0:
        raise SystemExit(f"sentence-transformers training failed (exit {rc}); see {out / 'train.log'}")
    return json.loads((out / "result.json").read_text())


def _worker(out: Path) -> None:
    """One training process (launched by torch.distributed.run)."""
    import torch
    from datasets import Dataset
    from sentence_transformers import (SentenceTransformer, SentenceTransformerTrainer,
                                       SentenceTransformerTrainingArguments, losses)

    from fastemb.model.encoder import default_model_path

    cfg = json.loads((out / "config.json").read_text())
    torch.set_num_threads(cfg["threads"])
    model = SentenceTransformer(default_model_path(), device="cpu")
    model.max_seq_length = cfg["max_length"]
    scale, gather = 1 / cfg["temperature"], True
    if cfg["mini_batch"]:
        loss = losses.CachedMultipleNegativesRankingLoss(model, scale=scale, mini_batch_size=cfg["mini_batch"],
                                                         gather_across_devices=gather)
    else:
        loss = losses.MultipleNegativesRankingLoss(model, scale=scale, gather_across_devices=gather)
    if cfg["matryoshka_dims"]:
        loss = losses.MatryoshkaLoss(model, loss, matryoshka_dims=sorted(cfg["matryoshka_dims"], reverse=True))
    data = Dataset.from_list(json.loads((out / "pairs.json").read_text()))
    args = SentenceTransformerTrainingArguments(
        output_dir=str(out / "trainer"), per_device_train_batch_size=cfg["batch"], learning_rate=cfg["lr"],
        num_train_epochs=cfg["epochs"], warmup_ratio=0.1, lr_scheduler_type="linear", weight_decay=0.01,
        max_grad_norm=1.0, save_strategy="no", report_to="none", logging_steps=10, use_cpu=True,
        ddp_backend="gloo", seed=cfg["seed"], dataloader_drop_last=True, batch_sampler="no_duplicates")
    trainer = SentenceTransformerTrainer(model=model, args=args, train_dataset=data, loss=loss)
    train_and_report(trainer, model, out)


def train_and_report(trainer, model, out: Path, extra: Callable[[float], dict] | None = None) -> None:
    """Run ``trainer``; rank 0 saves ``model`` to ``out/model`` and writes ``out/result.json``: the training seconds,
    every process's peak resident memory, the loss and ``extra(train seconds)``."""
    import resource

    import torch.distributed as dist

    t0 = time.time()
    metrics = trainer.train().metrics
    train_s = time.time() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    peaks = [peak]
    if dist.is_available() and dist.is_initialized():
        peaks = [None] * dist.get_world_size()
        dist.all_gather_object(peaks, peak)
    if int(os.environ.get("RANK", "0")) == 0:
        model_dir = out / "model"
        model.save(str(model_dir))
        (out / "result.json").write_text(json.dumps({"model_dir": str(model_dir), "train_s": train_s,
                                                     "peak_rss_mib": peaks, "loss": metrics.get("train_loss"),
                                                     **(extra(train_s) if extra else {})}))


def worker_main(description: str, worker: Callable[[Path], None]) -> None:
    """The entry point of one launched process: ``worker(--out)``, offline."""
    sys.path.insert(0, str(ROOT))
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    ap = argparse.ArgumentParser(description=description)
    ap.add_argument("--out", required=True)
    worker(Path(ap.parse_args().out))


if __name__ == "__main__":
    worker_main("one sentence-transformers training process (see train_st)", _worker)
