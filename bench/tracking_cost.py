"""What MLflow tracking costs training (issue 21): fastemb with ``tracking.mlflow`` off and on, in one run.

``--rounds`` rounds, each one fresh fastemb run with tracking off and one with it on (a local SQLite store in the run
folder; rank 0 queues every progress step's metrics to a background thread), in alternating order, on the same pairs
and settings. Writes pairs/s of each (median, spread), the per-round ratio on/off and its verdict to bench/RESULTS.md.

    .venv/bin/python bench/tracking_cost.py --rounds 3 --pairs 4000
    .venv/bin/python bench/tracking_cost.py --quick        # one round, 256 pairs: checks the script runs
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("DS_ACCELERATOR", "cpu")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from bench.results import ratio_verdict, write_section  # noqa: E402
from fastemb.data.eval_sets import write_subset  # noqa: E402
from fastemb.spec import parse_spec  # noqa: E402
from fastemb.train.job import run_train  # noqa: E402

logger = logging.getLogger("bench.tracking_cost")


def train_spec(args, work: str, name: str, tracking: bool, eval_dir: str):
    """One fastemb run: 1 worker with all threads, ZeRO-2 fp32, one epoch over ``args.pairs`` pairs."""
    return parse_spec({"name": name, "storage_path": work, "model": {"max_length": args.max_length},
                       "data": {"max_pairs": args.pairs, "eval": eval_dir},
                       "general": None,  # a throughput figure: no general-set evaluation around each run
                       "train": {"num_workers": 1, "cpus_per_worker": args.threads, "zero_stage": 2,
                                 "micro_batch_size": args.batch, "lr": 5e-5, "warmup_ratio": 0.1,
                                 "eval_every": 10**6, "log_every": args.log_every, "checkpoint_every": 10**6},
                       "tracking": {"mlflow": tracking}})


def logged_points(report: dict) -> int:
    """How many loss points the tracked run holds in its MLflow store (what tracking did)."""
    from mlflow.tracking import MlflowClient

    m = report["mlflow"]
    return len(MlflowClient(m["uri"]).get_metric_history(m["run_id"], "loss"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--pairs", type=int, default=4000)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--max-length", type=int, default=64)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--log-every", type=int, default=1, help="steps between progress lines (and tracked points)")
    ap.add_argument("--quick", action="store_true", help="one round of 256 pairs: checks the script runs")
    args = ap.parse_args()
    if args.quick:
        args.rounds, args.pairs = 1, 256
    logging.basicConfig(level=logging.INFO, format="[bench tracking] %(message)s")
    work = tempfile.mkdtemp(prefix="fastemb-bench-tracking-")
    # the evaluations around each run are not what is measured: a small real set keeps them short
    eval_dir = write_subset("wordnet", Path(work) / "eval", 200, 1800)
    rates: dict[str, list[float]] = {"off": [], "on": []}
    logged = []
    for r in range(args.rounds):
        for mode in ("off", "on") if r % 2 == 0 else ("on", "off"):
            report = run_train(train_spec(args, work, f"tracking-{mode}-{r}", mode == "on", eval_dir))
            rates[mode].append([h["pairs_per_s"] for h in report["history"] if "pairs_per_s" in h][-1])
            if mode == "on":
                logged.append(logged_points(report))
            logger.info(f"round {r + 1}, tracking {mode}: {rates[mode][-1]:.2f} pairs/s")
    med = {k: statistics.median(v) for k, v in rates.items()}
    ratios = [on / off for on, off in zip(rates["on"], rates["off"])]
    body = f"""
fastemb training with `tracking.mlflow` off and on, {args.rounds} round(s) in alternating order, each a fresh run:
the same {args.pairs} WordNet pairs, all-MiniLM-L6-v2, batch {args.batch}, max length {args.max_length}, 1 Ray Train
worker with {args.threads} threads, DeepSpeed ZeRO-2 fp32, one epoch, a progress line every {args.log_every} step(s).
Tracking on: the job is an MLflow run in a local store in the run folder (SQLite, mlflow-skinny); rank 0 queues every
progress step's metrics to a background thread (loss points logged per tracked run: {logged}). pairs/s: the training
loop's own rate over the whole run.

| tracking | pairs/s (median) | min–max |
|---|---|---|
| off | {med['off']:.2f} | {min(rates['off']):.2f}–{max(rates['off']):.2f} |
| on (MLflow, local store) | {med['on']:.2f} | {min(rates['on']):.2f}–{max(rates['on']):.2f} |

**Throughput with tracking / without: {statistics.median(ratios):.3f}×** (per round: {', '.join(f'{x:.3f}' for x in ratios)};
{ratio_verdict(ratios, 'tracking on', 'tracking off')}).
"""
    write_section("Training throughput with MLflow tracking (issue 21)", body)
    print(json.dumps({"pairs_per_s": rates, "ratios_on_off": ratios, "logged_loss_points": logged}, indent=2))


if __name__ == "__main__":
    main()
