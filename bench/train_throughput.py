"""Training throughput and quality: fastemb (Ray Train + DeepSpeed, 1 worker) vs sentence-transformers'
trainer with MultipleNegativesRankingLoss, on the same WordNet pairs, model, batch size, max length,
learning rate, schedule and thread count, in one run.

Both sides train in ``--rounds`` alternating rounds (order swapped every round; Ray shut down while the peer
runs). Writes the median pairs/s of both, the median per-round ratio and its spread, each side's engine, batch
policy and threads, model-FLOPs utilisation (MFU) against this machine's measured fp32 GEMM peak, and test nDCG@10
of both after the same number of pairs to bench/RESULTS.md.

``--gpu`` runs both on this machine's GPU in bf16 (fastemb: ``train.use_gpu: true``, whose ``precision: auto`` picks
bf16; sentence-transformers: ``bf16=True``), MFU against the measured bf16 GEMM peak of the GPU (bench/gpu.sh).

    .venv/bin/python bench/train_throughput.py --pairs 8000 --rounds 4
    .venv/bin/python bench/train_throughput.py --gpu --pairs 32000 --batch 128
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
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

from bench.results import ratio_verdict, spread, write_section  # noqa: E402
from fastemb.data.pairs import load_pairs  # noqa: E402
from fastemb.eval.retrieval import evaluate_model  # noqa: E402
from fastemb.model.encoder import Encoder, default_model_path  # noqa: E402
from fastemb.spec import parse_spec  # noqa: E402
from fastemb.train.job import run_train  # noqa: E402

logger = logging.getLogger(__name__)


def gemm_peak_gflops(threads: int, n: int = 2048, reps: int = 5, gpu: bool = False) -> float:
    """Measured GEMM throughput (best of ``reps``): fp32 with ``threads`` CPU threads, or bf16 on the GPU."""
    torch.set_num_threads(threads)
    if gpu:
        n = max(n, 8192)
        a, b = (torch.randn(n, n, device="cuda", dtype=torch.bfloat16) for _ in range(2))
    else:
        a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    best = 0.0
    for _ in range(reps):
        if gpu:
            torch.cuda.synchronize()
        t = time.perf_counter()
        a @ b
        if gpu:
            torch.cuda.synchronize()
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
    model = SentenceTransformer(default_model_path(), device="cuda" if args.gpu else "cpu")
    model.max_seq_length = args.max_length
    data = Dataset.from_dict({"anchor": [p["query"] for p in pairs], "positive": [p["positive"] for p in pairs]})
    targs = SentenceTransformerTrainingArguments(
        output_dir=out_dir, per_device_train_batch_size=args.batch, learning_rate=args.lr, num_train_epochs=1,
        warmup_ratio=0.1, lr_scheduler_type="linear", save_strategy="no", report_to="none", logging_steps=50,
        use_cpu=not args.gpu, bf16=args.gpu, seed=42, dataloader_drop_last=True)
    trainer = SentenceTransformerTrainer(model=model, args=targs, train_dataset=data,
                                         loss=losses.MultipleNegativesRankingLoss(model, scale=1 / args.temperature))
    out = trainer.train()
    path = os.path.join(out_dir, "st-model")
    model.save(path)
    return out.metrics["train_samples_per_second"], path


def data_spec(args) -> dict:
    """The spec's ``data`` section: the pairs trained on and the test queries both sides are evaluated on."""
    return {"max_pairs": args.pairs, "test_queries": args.test_queries}


def run_fastemb(args, work: str, round_no: int) -> tuple[float, dict]:
    """One fastemb training run; Ray is shut down afterwards, so its daemons do not run while the peer trains.
    Returns (pairs/s of the training loop, report); the report's history opens with the engine entry."""
    import ray

    spec = parse_spec({"name": f"bench-throughput-{round_no}", "storage_path": work,
                       "model": {"max_length": args.max_length},
                       "data": data_spec(args),
                       "loss": {"temperature": args.temperature},
                       "train": {"num_workers": 1, "cpus_per_worker": args.threads, "zero_stage": 2,
                                 "use_gpu": args.gpu, "precision": "auto",
                                 "micro_batch_size": args.batch, "lr": args.lr, "warmup_ratio": 0.1,
                                 "eval_every": 10**6, "log_every": 10, "checkpoint_every": 10**6}})
    try:
        report = run_train(spec)
    finally:
        if ray.is_initialized():
            ray.shutdown()
    return [h["pairs_per_s"] for h in report["history"] if "pairs_per_s" in h][-1], report


def engines(args, fe_report: dict) -> tuple[str, str, str, str]:
    """For the report: fastemb's engine (from its report's engine entry on a GPU), the peer's, the dtype of both, and
    where they ran."""
    if not args.gpu:
        return "torch fp32", "torch fp32", "fp32", f"on the same {args.threads} CPU threads"
    engine = next((h for h in fe_report["history"] if h.get("event") == "engine"), {})
    fe = (f"torch {engine.get('precision')} on {engine.get('accelerator')} / {engine.get('backend')} "
          "(`train.use_gpu`, `precision: auto`)")
    where = f"on one {torch.cuda.get_device_name()} with {args.threads} CPU threads"
    return fe, "torch bf16 (`bf16=True`)", "bf16", where


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
    ap.add_argument("--gpu", action="store_true", help="both on this machine's GPU in bf16 (see the docstring)")
    ap.add_argument("--test-queries", type=int, default=None, help="limit the test queries (default: all 2,000)")
    args = ap.parse_args()
    if args.gpu and not torch.cuda.is_available():
        ap.error("--gpu: torch sees no CUDA GPU here")
    if args.quick:
        args.pairs, args.rounds = 512, 2

    pairs, _ = load_pairs("wordnet", args.pairs, seed=42)
    flops_pair = train_flops_per_pair(pairs, args.max_length)
    peak = gemm_peak_gflops(args.threads, gpu=args.gpu)
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
    spec = parse_spec({"model": {"max_length": args.max_length}, "data": data_spec(args)})
    fe_ndcg, base_ndcg = fe_report["tuned"]["ndcg@10"], fe_report["base"]["ndcg@10"]
    st_ndcg = evaluate_model(spec.model, spec.data, path=st_path)["ndcg@10"]

    mfu = lambda rate: rate * flops_pair / (peak * 1e9)  # noqa: E731
    fe_engine, st_engine, dtype, where = engines(args, fe_report)
    rounds = "; ".join(f"{i + 1}. {o}: {f:.2f} / {s:.2f}" for i, (o, f, s) in
                       enumerate(zip(orders, fe_rates, st_rates)))
    body = f"""
Same {args.pairs} WordNet pairs, all-MiniLM-L6-v2, batch {args.batch}, max length {args.max_length}, lr {args.lr},
linear schedule with 10% warmup, temperature {args.temperature} (scale {1 / args.temperature:g}), 1 epoch, {where}.
{args.rounds} alternating rounds (order swapped every round); each figure is the median over
the rounds, and Ray is shut down while sentence-transformers trains, so its daemons do not share the cores.

| side | engine | batch policy | threads |
|---|---|---|---|
| fastemb | Ray Train, 1 worker, DeepSpeed ZeRO-2, {fe_engine} | {args.batch} pairs, dynamic padding + length grouping | {args.threads} |
| sentence-transformers | SentenceTransformerTrainer + MNRL, {st_engine} | {args.batch} pairs, padding per batch, shuffled | {args.threads} |

Throughput is the training loop's (fastemb: its progress line; sentence-transformers: the trainer's
`train_samples_per_second`). MFU = pairs/s × {flops_pair / 1e9:.3f} GFLOP/pair (6 × non-embedding params ×
real tokens) / measured {dtype} GEMM peak {peak:.1f} GFLOP/s. nDCG@10 is the last round's model.

| | pairs/s (median) | MFU | test nDCG@10 |
|---|---|---|---|
| base model (no training) | – | – | {base_ndcg:.4f} |
| sentence-transformers trainer (MNRL) | {st_rate:.2f} | {mfu(st_rate):.1%} | {st_ndcg:.4f} |
| fastemb (Ray Train + DeepSpeed, 1 worker) | {fe_rate:.2f} | {mfu(fe_rate):.1%} | {fe_ndcg:.4f} |

Rounds (fastemb / sentence-transformers, pairs/s): {rounds}. Per-round ratio: {spread(ratios, 2, "rounds")}.

**Throughput ratio fastemb / sentence-transformers: {ratio:.2f}× (median over {args.rounds} rounds)**: the training
stack (Ray Train + DeepSpeed with length grouping vs the Hugging Face trainer), both on torch {dtype} with the same
threads; {ratio_verdict(ratios, "fastemb", "sentence-transformers")}. nDCG@10 difference {fe_ndcg - st_ndcg:+.4f}.
"""
    write_section("Training throughput on GPU (issue 23)" if args.gpu else "Training throughput (issue: foundation)",
                  body)
    print(json.dumps({"fastemb_pairs_per_s": fe_rates, "st_pairs_per_s": st_rates, "ratios": ratios,
                      "median_ratio": ratio, "fastemb_ndcg": fe_ndcg, "st_ndcg": st_ndcg, "peak_gflops": peak},
                     indent=2))


if __name__ == "__main__":
    main()
