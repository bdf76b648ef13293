"""Batch size through the cached loss (issue 15): test nDCG@10 and per-worker peak memory at batch 64, 512 and 4096
pairs per worker, at equal pairs and epochs, on 2 workers; fastemb and sentence-transformers' trainer with
CachedMultipleNegativesRankingLoss at the same settings, in one run.

fastemb: Ray Train, 2 workers × 1 CPU, DeepSpeed ZeRO-2 fp32, the cached InfoNCE (``train.cache_mini_batch``) with
negatives gathered across workers and false negatives masked. Peer: ``SentenceTransformerTrainer`` on 2 DDP
processes (gloo) × 1 thread, ``CachedMultipleNegativesRankingLoss(mini_batch_size, gather_across_devices=True)``,
no-duplicates batch sampler. Both: all-MiniLM-L6-v2, max length 64, temperature 0.05 (scale 20), AdamW, weight decay
0.01, linear schedule with 10 % warm-up, clipping 1.0, the same pairs, epochs and learning rate. Memory: each
training process's peak resident memory (``ru_maxrss``); targets: the best large batch beats batch 64, and batch
4096's memory is at most 1.3× batch 64's.

    python bench/batch_size.py              # full: 92,659 pairs, 1 epoch, batches 64,512,4096, mini-batch 32 (~6 h)
    python bench/batch_size.py --quick      # a trial of the script: 512 pairs, batches 16 and 128 (~6 min)
"""
from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("DS_ACCELERATOR", "cpu")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from bench.eval_subset import eval_subset  # noqa: E402
from bench.results import write_section  # noqa: E402
from bench.st_peer import train_st  # noqa: E402
from fastemb.spec import load_spec  # noqa: E402

SECTION = "batch size: cached loss at batch 64, 512 and 4096"


def fastemb_run(args, batch: int, lr: float, first_run: Path | None) -> dict:
    """One fastemb training run at ``batch`` pairs per worker; returns its report."""
    from fastemb.train.job import run_train

    name = f"fastemb-b{batch}"
    spec = load_spec(ROOT / "jobs" / "contrastive.yaml", [
        f"name={name}", f"storage_path={args.out}", f"data.max_pairs={args.pairs}", f"data.eval={args.eval}",
        f"train.micro_batch_size={batch}", f"train.cache_mini_batch={min(args.mini_batch, batch)}",
        "train.num_workers=2", "train.cpus_per_worker=1", f"train.epochs={args.epochs}", f"train.lr={lr}",
        "train.eval_every=1000000", "train.checkpoint_every=1000000", "train.log_every=5"])
    shutil.rmtree(spec.run_dir, ignore_errors=True)
    if first_run is not None:  # the base model's test metrics: the same for every run, computed once
        spec.run_dir.mkdir(parents=True)
        shutil.copy(first_run / "base_metrics.json", spec.run_dir / "base_metrics.json")
    return run_train(spec)


def lr_for(args, batch: int) -> float:
    """The learning rate at ``batch``: the same for all (``--lr-rule same``) or scaled by sqrt(batch / smallest)."""
    if args.lr_rule == "same":
        return args.lr
    return args.lr * math.sqrt(batch / min(args.batches))


def measure(args) -> tuple[float, list[dict]]:
    """Every batch size: fastemb, then the peer; returns the base test nDCG@10 and one row per batch size."""
    from fastemb.data.pairs import load_pairs
    from fastemb.eval.retrieval import evaluate_model

    pairs, _ = load_pairs("wordnet", args.pairs, 0, 42)
    spec = load_spec(ROOT / "jobs" / "contrastive.yaml", [f"data.eval={args.eval}"])
    test_ndcg = lambda path=None: evaluate_model(spec.model, spec.data, path=path)["ndcg@10"]  # noqa: E731
    rows, first_run, base = [], None, test_ndcg()  # every model scored alike: max length 64, the same split
    for batch in args.batches:
        lr = lr_for(args, batch)
        report = fastemb_run(args, batch, lr, first_run)
        first_run = first_run or Path(report["model_dir"]).parent
        st = train_st(pairs, Path(args.out) / f"st-b{batch}", batch=batch, lr=lr, epochs=args.epochs,
                      temperature=0.05, max_length=64, workers=2, threads=1, mini_batch=min(args.mini_batch, batch))
        rows.append({"batch": batch, "lr": lr, "steps": report["plan"]["total_steps"],
                     "fastemb_ndcg": test_ndcg(report["model_dir"]), "st_ndcg": test_ndcg(st["model_dir"]),
                     "fastemb_peak": max(report["peak_rss_mib"]), "st_peak": max(st["peak_rss_mib"]),
                     "fastemb_s": report["train_seconds"], "st_s": st["train_s"]})
        print(json.dumps(rows[-1]), flush=True)
    return base, rows


def report(args, base: float, rows: list[dict]) -> str:
    """The RESULTS.md section: one row per batch size, then the two targets for each side."""
    small, large = rows[0], rows[1:]
    lines = ["| batch / worker (global) | lr | steps | fastemb test nDCG@10 | sentence-transformers test nDCG@10 | "
             "fastemb peak MiB / worker (× smallest) | sentence-transformers peak MiB / process (× smallest) | "
             "fastemb train s | sentence-transformers train s |", "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['batch']} ({2 * r['batch']}) | {r['lr']:.2g} | {r['steps']} | {r['fastemb_ndcg']:.4f} | "
                     f"{r['st_ndcg']:.4f} | {r['fastemb_peak']:.0f} ({r['fastemb_peak'] / small['fastemb_peak']:.2f}×)"
                     f" | {r['st_peak']:.0f} ({r['st_peak'] / small['st_peak']:.2f}×) | {r['fastemb_s']:.0f} | "
                     f"{r['st_s']:.0f} |")
    verdict = []
    for side, label in (("fastemb", "fastemb"), ("st", "sentence-transformers")):
        best = max(large, key=lambda r: r[f"{side}_ndcg"])
        gain = best[f"{side}_ndcg"] - small[f"{side}_ndcg"]
        ratio = rows[-1][f"{side}_peak"] / small[f"{side}_peak"]
        verdict.append(f"- {label}: best large batch {best['batch']} vs {small['batch']}: {gain:+.4f} nDCG@10 "
                       f"({'beats' if gain > 0 else 'does not beat'} it); batch {rows[-1]['batch']} peak memory "
                       f"{ratio:.2f}× batch {small['batch']}'s (target ≤ 1.3×: {'met' if ratio <= 1.3 else 'not met'})")
    head = (f"WordNet pairs: {args.pairs}, {args.epochs:g} epoch(s), the same pairs for every run; cached mini-batch "
            f"{args.mini_batch} texts (fastemb `train.cache_mini_batch`, sentence-transformers `mini_batch_size`); "
            f"learning rate {'the same for every batch' if args.lr_rule == 'same' else 'scaled by sqrt(batch)'} "
            f"(base {args.lr:g}). Test split: `{args.eval}` (base all-MiniLM-L6-v2: nDCG@10 {base:.4f}). "
            "fastemb: Ray Train, 2 workers × 1 CPU, DeepSpeed ZeRO-2 fp32, cached InfoNCE gathered across workers, "
            "false negatives masked, score matrix in blocks of the mini-batch's rows. sentence-transformers: "
            "SentenceTransformerTrainer, 2 DDP processes (gloo) × 1 thread, CachedMultipleNegativesRankingLoss "
            "(gather_across_devices), no-duplicates sampler. Both: max length 64, temperature 0.05, AdamW, weight "
            "decay 0.01, linear schedule with 10 % warm-up, clipping 1.0. Memory: peak resident memory of each "
            "training process (the larger of the two).\n\n")
    return head + "\n".join(lines) + "\n\n" + "\n".join(verdict)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pairs", type=int, default=92659)
    ap.add_argument("--epochs", type=float, default=1.0)
    ap.add_argument("--batches", default="64,512,4096", help="pairs per worker, smallest first")
    ap.add_argument("--mini-batch", type=int, default=32, help="texts per cached forward/backward pass")
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--lr-rule", choices=["same", "sqrt"], default="same")
    ap.add_argument("--eval", default="wordnet", help="evaluation folder (default: the shipped WordNet splits)")
    ap.add_argument("--quick", action="store_true", help="a trial of the script: small data and batches")
    ap.add_argument("--out", default=str(ROOT / "bench" / "out" / "batch_size"))
    args = ap.parse_args()
    if args.quick:
        args.pairs, args.batches, args.mini_batch = 512, "16,128", 8
        args.eval = eval_subset(Path(args.out) / "eval", 100, 1000)
    args.batches = [int(b) for b in args.batches.split(",")]
    Path(args.out).mkdir(parents=True, exist_ok=True)
    from fastemb.ray_env import init_ray

    init_ray(num_cpus=2)
    base, rows = measure(args)
    path = write_section(SECTION, report(args, base, rows))
    print(f"written to {path}")


if __name__ == "__main__":
    main()
