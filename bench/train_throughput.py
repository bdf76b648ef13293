"""Training throughput and quality: fastemb (Ray Train + DeepSpeed, 1 worker) vs sentence-transformers'
trainer with MultipleNegativesRankingLoss, on the same WordNet pairs, model, batch size, max length,
learning rate, schedule and thread count, in one run.

Writes pairs/s of both, their ratio, model-FLOPs utilisation (MFU) of each against this machine's
measured fp32 GEMM peak, and test nDCG@10 of both after the same number of pairs to bench/RESULTS.md.

With ``--tracking-rounds N`` it measures instead what MLflow tracking costs training (issue 21): N rounds, each one
fastemb run with ``tracking.mlflow`` off and one with it on (a local store in the run folder; rank 0 logs every
progress step), in alternating order, the same pairs and settings; pairs/s of each and their ratio.

    .venv/bin/python bench/train_throughput.py --pairs 8000
    .venv/bin/python bench/train_throughput.py --tracking-rounds 3 --pairs 4000 --log-every 1
    .venv/bin/python bench/train_throughput.py --tracking-rounds 1 --quick     # a minute: checks the script runs
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("DS_ACCELERATOR", "cpu")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

from bench.results import write_section  # noqa: E402
from fastemb.data.eval_sets import write_eval_subset  # noqa: E402
from fastemb.data.pairs import load_pairs  # noqa: E402
from fastemb.eval.retrieval import evaluate_model  # noqa: E402
from fastemb.model.encoder import Encoder, default_model_path  # noqa: E402
from fastemb.spec import parse_spec  # noqa: E402
from fastemb.train.job import run_train  # noqa: E402


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


def fastemb_spec(args, work: str, name: str, tracking: bool = False, eval_dir: str = "wordnet"):
    """The fastemb side: 1 worker with all threads, ZeRO-2 fp32, one epoch over ``args.pairs`` pairs."""
    return parse_spec({"name": name, "storage_path": work,
                       "model": {"max_length": args.max_length},
                       "data": {"max_pairs": args.pairs, "eval": eval_dir, "test_queries": args.test_queries},
                       "loss": {"temperature": args.temperature},
                       "train": {"num_workers": 1, "cpus_per_worker": args.threads, "zero_stage": 2,
                                 "micro_batch_size": args.batch, "lr": args.lr, "warmup_ratio": 0.1,
                                 "eval_every": 10**6, "log_every": args.log_every, "checkpoint_every": 10**6},
                       "tracking": {"mlflow": tracking}})


def tracking_rounds(args) -> None:
    """fastemb with MLflow tracking off and on, alternating, ``args.tracking_rounds`` rounds; writes the section."""
    import statistics

    work = tempfile.mkdtemp(prefix="fastemb-bench-tracking-")
    # the evaluations around each run are not what is measured: a small set keeps them short
    eval_dir = args.eval or str(write_eval_subset(Path(work) / "eval", queries=200, others=1800))
    rates: dict[str, list[float]] = {"off": [], "on": []}
    logged = []
    for r in range(args.tracking_rounds):
        for mode in (("off", "on") if r % 2 == 0 else ("on", "off")):
            report = run_train(fastemb_spec(args, work, f"tracking-{mode}-{r}", mode == "on", eval_dir))
            rates[mode].append([h["pairs_per_s"] for h in report["history"] if "pairs_per_s" in h][-1])
            if mode == "on":
                from mlflow.tracking import MlflowClient

                m = report["mlflow"]
                logged.append(len(MlflowClient(m["uri"]).get_metric_history(m["run_id"], "loss")))
            print(f"round {r + 1} tracking {mode}: {rates[mode][-1]:.2f} pairs/s", file=sys.stderr)
    med = {k: statistics.median(v) for k, v in rates.items()}
    spread = {k: f"{min(v):.2f}–{max(v):.2f}" for k, v in rates.items()}
    ratio = med["on"] / med["off"]
    per_round = [f"{on / off:.3f}" for on, off in zip(rates["on"], rates["off"])]
    body = f"""
fastemb training with `tracking.mlflow` off and on, {args.tracking_rounds} round(s) in alternating order (off/on,
then on/off, ...), each a fresh run: the same {args.pairs} WordNet pairs, all-MiniLM-L6-v2, batch {args.batch}, max
length {args.max_length}, 1 Ray Train worker with {args.threads} threads, DeepSpeed ZeRO-2 fp32, one epoch, a progress
line every {args.log_every} step(s). With tracking on, the job is an MLflow run in a local store in the run folder
(SQLite, mlflow-skinny), and rank 0 queues every progress step's metrics (loss, pairs/s, lr) to a background thread
that writes them to the run (runs logged {logged} loss points). pairs/s: the training loop's own rate over the whole run
(its last progress line).

| tracking | pairs/s (median) | spread (min–max) |
|---|---|---|
| off | {med['off']:.2f} | {spread['off']} |
| on (MLflow, local store) | {med['on']:.2f} | {spread['on']} |

**Throughput with tracking / without: {ratio:.3f}×** (per round: {', '.join(per_round)}).
"""
    write_section("Training throughput with MLflow tracking (issue 21)", body)
    print(json.dumps({"pairs_per_s": rates, "median": med, "ratio_on_off": ratio, "logged_loss_points": logged},
                     indent=2))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pairs", type=int, default=8000)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--max-length", type=int, default=64)
    ap.add_argument("--lr", type=float, default=5e-5)
    ap.add_argument("--temperature", type=float, default=0.05)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--log-every", type=int, default=10, help="steps between progress lines (and tracked points)")
    ap.add_argument("--test-queries", type=int, default=None, help="limit the test queries of the evaluations")
    ap.add_argument("--eval", default=None, help="tracking rounds: evaluation folder (default: 200 WordNet test "
                    "queries against 2,000 definitions)")
    ap.add_argument("--tracking-rounds", type=int, default=0,
                    help="measure MLflow tracking on vs off over this many rounds instead of the peer comparison")
    ap.add_argument("--quick", action="store_true", help="a tiny setting that only checks the script runs")
    args = ap.parse_args()
    if args.quick:
        args.pairs, args.batch, args.max_length, args.log_every = 256, 32, 32, 1
    if args.tracking_rounds:
        tracking_rounds(args)
        return

    pairs, _ = load_pairs("wordnet", args.pairs, seed=42)
    flops_pair = train_flops_per_pair(pairs, args.max_length)
    peak = gemm_peak_gflops(args.threads)
    work = tempfile.mkdtemp(prefix="fastemb-bench-")

    spec = fastemb_spec(args, work, "bench-throughput")
    report = run_train(spec)
    fe_rate = [h["pairs_per_s"] for h in report["history"] if "pairs_per_s" in h][-1]
    fe_ndcg, base_ndcg = report["tuned"]["ndcg@10"], report["base"]["ndcg@10"]

    st_rate, st_path = run_sentence_transformers(pairs, args, work)
    st_ndcg = evaluate_model(spec.model, spec.data, path=st_path)["ndcg@10"]

    mfu = lambda rate: rate * flops_pair / (peak * 1e9)  # noqa: E731
    body = f"""
Same {args.pairs} WordNet pairs, all-MiniLM-L6-v2, batch {args.batch}, max length {args.max_length}, lr {args.lr},
linear schedule with 10% warmup, temperature {args.temperature} (scale {1 / args.temperature:g}), {args.threads} threads,
1 epoch. fastemb: Ray Train, 1 worker, DeepSpeed ZeRO-2 fp32, dynamic padding + length grouping.
Throughput is the training loop's (fastemb: its progress line; sentence-transformers: the trainer's
`train_samples_per_second`). MFU = pairs/s × {flops_pair / 1e9:.3f} GFLOP/pair (6 × non-embedding params ×
real tokens) / measured fp32 GEMM peak {peak:.1f} GFLOP/s.

| | pairs/s | MFU | test nDCG@10 |
|---|---|---|---|
| base model (no training) | – | – | {base_ndcg:.4f} |
| sentence-transformers trainer (MNRL) | {st_rate:.2f} | {mfu(st_rate):.1%} | {st_ndcg:.4f} |
| fastemb (Ray Train + DeepSpeed, 1 worker) | {fe_rate:.2f} | {mfu(fe_rate):.1%} | {fe_ndcg:.4f} |

**Throughput ratio fastemb / sentence-transformers: {fe_rate / st_rate:.2f}×**; nDCG@10 difference
{fe_ndcg - st_ndcg:+.4f}.
"""
    write_section("Training throughput (issue: foundation)", body)
    print(json.dumps({"fastemb_pairs_per_s": fe_rate, "st_pairs_per_s": st_rate, "ratio": fe_rate / st_rate,
                      "fastemb_ndcg": fe_ndcg, "st_ndcg": st_ndcg, "peak_gflops": peak}, indent=2))


if __name__ == "__main__":
    main()
