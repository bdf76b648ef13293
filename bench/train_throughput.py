"""Training throughput and quality: fastemb (Ray Train + DeepSpeed, 1 worker) vs sentence-transformers'
trainer with MultipleNegativesRankingLoss, on the same WordNet pairs, model, batch size, max length,
learning rate, schedule and thread count, in one run.

Both sides train in ``--rounds`` alternating rounds (order swapped every round; Ray shut down while the peer
runs). Writes the median pairs/s of both, the median per-round ratio and its spread, each side's engine, batch
policy and threads, model-FLOPs utilisation (MFU) against this machine's measured fp32 GEMM peak, and test nDCG@10
of both after the same number of pairs to bench/RESULTS.md.

    .venv/bin/python bench/train_throughput.py --pairs 8000 --rounds 4
    .venv/bin/python bench/train_throughput.py --quick      # 512 pairs, 2 rounds: a smoke run
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("DS_ACCELERATOR", "cpu")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

from bench.results import ratio_verdict, spread, write_section  # noqa: E402
from fastemb.data.pairs import load_pairs  # noqa: E402
from fastemb.eval.retrieval import evaluate_model  # noqa: E402
from fastemb.model.encoder import Encoder, default_model_path  # noqa: E402
from fastemb.spec import parse_spec  # noqa: E402
from fastemb.train.job import run_train  # noqa: E402

logger = logging.getLogger(__name__)


def gemm_peak_gflops(threads: int, n: int = 2048, reps: int = 5) -> float:
    """Measured fp32 GEMM throughput with ``threads`` threads (best of ``reps``)."""
    torch.set_num_threads(threads)
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    best = 0.0
    for _ in range(reps):
        t = time.perf_counter()
        a @ b
        best = max(best, 2 * n**3 / (time.perf_counter() - t) / 1e9)
    return best


def train_flops_per_pair(pairs: list[dict], max_length: int) -> float:
    """6 × non-embedding parameters × real tokens (query + positive), averaged per pair."""
    enc = Encoder.load("all-MiniLM-L6-v2")
    params = sum(p.numel() for n, p in enc.transformer.named_parameters() if "embeddings" not in n)
    texts = [p["query"] for p in pairs] + [p["positive"] for p in pairs]
    tokens = sum(min(len(ids), max_length) for ids in enc.tokenizer(texts)["input_ids"])
    return 6 * params * tokens / len(pairs)


def run_sentence_transformers(pairs, args, out_dir: str) -> tuple[float, str]:
    """Train with SentenceTransformerTrainer + MNRL; returns (pairs/s of the training loop, model path)."""
    from datasets import Dataset
    from sentence_transformers import SentenceTransformer, SentenceTransformerTrainer, losses
    from sentence_transformers import SentenceTransformerTrainingArguments

    torch.set_num_threads(args.threads)
    model = SentenceTransformer(default_model_path(), device="cpu")
    model.max_seq_length = args.max_length
    data = Dataset.from_dict({"anchor": [p["query"] for p in pairs], "positive": [p["positive"] for p in pairs]})
    targs = SentenceTransformerTrainingArguments(
        output_dir=out_dir, per_device_train_batch_size=args.batch, learning_rate=args.lr, num_train_epochs=1,
        warmup_ratio=0.1, lr_scheduler_type="linear", save_strategy="no", report_to="none", logging_steps=50,
        use_cpu=True, seed=42, dataloader_drop_last=True)
    trainer = SentenceTransformerTrainer(model=model, args=targs, train_dataset=data,
                                         loss=losses.MultipleNegativesRankingLoss(model, scale=1 / args.temperature))
    out = trainer.train()
    path = os.path.join(out_dir, "st-model")
    model.save(path)
    return out.metrics["train_samples_per_second"], path


def run_fastemb(args, work: str, round_no: int) -> tuple[float, dict]:
    """One fastemb training run; Ray is shut down afterwards, so its daemons do not run while the peer trains.
    Returns (pairs/s of the training loop, report)."""
    import ray

    spec = parse_spec({"name": f"bench-throughput-{round_no}", "storage_path": work,
                       "model": {"max_length": args.max_length},
                       "data": {"max_pairs": args.pairs},
                       "loss": {"temperature": args.temperature},
                       "train": {"num_workers": 1, "cpus_per_worker": args.threads, "zero_stage": 2,
                                 "micro_batch_size": args.batch, "lr": args.lr, "warmup_ratio": 0.1,
                                 "eval_every": 10**6, "log_every": 10, "checkpoint_every": 10**6}})
    try:
        report = run_train(spec)
    finally:
        if ray.is_initialized():
            ray.shutdown()
    return [h["pairs_per_s"] for h in report["history"] if "pairs_per_s" in h][-1], report


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pairs", type=int, default=8000)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--max-length", type=int, default=64)
    ap.add_argument("--lr", type=float, default=5e-5)
    ap.add_argument("--temperature", type=float, default=0.05)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=4, help="alternating rounds (order swapped every round), >= 2 "
                    "so each side runs first at least once")
    ap.add_argument("--quick", action="store_true", help="a smoke run: 512 pairs, 2 rounds")
    args = ap.parse_args()
    if args.quick:
        args.pairs, args.rounds = 512, 2

    pairs, _ = load_pairs("wordnet", args.pairs, seed=42)
    flops_pair = train_flops_per_pair(pairs, args.max_length)
    peak = gemm_peak_gflops(args.threads)
    work = tempfile.mkdtemp(prefix="fastemb-bench-")

    fe_rates, st_rates, orders = [], [], []
    fe_report = st_path = None
    for r in range(args.rounds):
        order = ("fastemb", "st") if r % 2 == 0 else ("st", "fastemb")
        orders.append(" → ".join("fastemb" if o == "fastemb" else "sentence-transformers" for o in order))
        for side in order:
            if side == "fastemb":
                rate, fe_report = run_fastemb(args, work, r)
                fe_rates.append(rate)
            else:
                rate, st_path = run_sentence_transformers(pairs, args, os.path.join(work, f"st-{r}"))
                st_rates.append(rate)
        logger.info("round %d (%s): fastemb %.2f, sentence-transformers %.2f pairs/s", r + 1, orders[-1],
                    fe_rates[-1], st_rates[-1])
    ratios = [f / s for f, s in zip(fe_rates, st_rates)]
    fe_rate, st_rate, ratio = (statistics.median(x) for x in (fe_rates, st_rates, ratios))
    spec = parse_spec({"model": {"max_length": args.max_length}})
    fe_ndcg, base_ndcg = fe_report["tuned"]["ndcg@10"], fe_report["base"]["ndcg@10"]
    st_ndcg = evaluate_model(spec.model, spec.data, path=st_path)["ndcg@10"]

    mfu = lambda rate: rate * flops_pair / (peak * 1e9)  # noqa: E731
    rounds = "; ".join(f"{i + 1}. {o}: {f:.2f} / {s:.2f}" for i, (o, f, s) in
                       enumerate(zip(orders, fe_rates, st_rates)))
    body = f"""
Same {args.pairs} WordNet pairs, all-MiniLM-L6-v2, batch {args.batch}, max length {args.max_length}, lr {args.lr},
linear schedule with 10% warmup, temperature {args.temperature} (scale {1 / args.temperature:g}), 1 epoch, on the same
{args.threads} CPU threads. {args.rounds} alternating rounds (order swapped every round); each figure is the median over
the rounds, and Ray is shut down while sentence-transformers trains, so its daemons do not share the cores.

| side | engine | batch policy | threads |
|---|---|---|---|
| fastemb | Ray Train, 1 worker, DeepSpeed ZeRO-2, torch fp32 | {args.batch} pairs, dynamic padding + length grouping | {args.threads} |
| sentence-transformers | SentenceTransformerTrainer + MNRL, torch fp32 | {args.batch} pairs, padding per batch, shuffled | {args.threads} |

Throughput is the training loop's (fastemb: its progress line; sentence-transformers: the trainer's
`train_samples_per_second`). MFU = pairs/s × {flops_pair / 1e9:.3f} GFLOP/pair (6 × non-embedding params ×
real tokens) / measured fp32 GEMM peak {peak:.1f} GFLOP/s. nDCG@10 is the last round's model.

| | pairs/s (median) | MFU | test nDCG@10 |
|---|---|---|---|
| base model (no training) | – | – | {base_ndcg:.4f} |
| sentence-transformers trainer (MNRL) | {st_rate:.2f} | {mfu(st_rate):.1%} | {st_ndcg:.4f} |
| fastemb (Ray Train + DeepSpeed, 1 worker) | {fe_rate:.2f} | {mfu(fe_rate):.1%} | {fe_ndcg:.4f} |

Rounds (fastemb / sentence-transformers, pairs/s): {rounds}. Per-round ratio: {spread(ratios, 2, "rounds")}.

**Throughput ratio fastemb / sentence-transformers: {ratio:.2f}× (median over {args.rounds} rounds)**: the training
stack (Ray Train + DeepSpeed with length grouping vs the Hugging Face trainer), both on torch fp32 with the same
threads; {ratio_verdict(ratios, "fastemb", "sentence-transformers")}. nDCG@10 difference {fe_ndcg - st_ndcg:+.4f}.
"""
    write_section("Training throughput (issue: foundation)", body)
    print(json.dumps({"fastemb_pairs_per_s": fe_rates, "st_pairs_per_s": st_rates, "ratios": ratios,
                      "median_ratio": ratio, "fastemb_ndcg": fe_ndcg, "st_ndcg": st_ndcg, "peak_gflops": peak},
                     indent=2))


if __name__ == "__main__":
    main()
