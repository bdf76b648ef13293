"""Measure, over seeds, how much a tiny training run raises dev nDCG@10 over the base: the figures the quality test's
margin comes from (issue 22: the margin sits well below the smallest gain and above 0).

Each seed trains all-MiniLM-L6-v2, or its cut to ``--layers`` evenly spaced layers (``model.num_layers``; the test's
run keeps one, the cut of tests/conftest.py's ``tiny_model``), on WordNet train pairs with the training job's trainer
(2 Ray Train workers, so InfoNCE gathers its negatives across workers; DeepSpeed ZeRO-2 fp32), exports it, and scores
the starting model (the same cut, untrained) and the exported model on the full WordNet dev split (500 queries x 5,000
definitions) at the exported model's length (``sentence_bert_config.json``). Writes each seed's gain, their mean ± std,
the smallest gain and the test's margin to bench/RESULTS.md. ``TEST_RUN`` is the run tests/test_train_quality.py
makes, and ``MARGIN`` what it must gain.

Earlier, with tests/conftest.py's ``tiny_eval`` (40 dev queries x 300 definitions), max length 16, 2 x 32 pairs, 20
steps, lr 1e-4: gains -0.0192 (seed 0) and +0.0225 (seed 1), so that dev set is too small (one query moving a rank
changes nDCG@10 by ~0.025).

    .venv/bin/python bench/train_quality.py [--seeds 0,1,2,3,4] [--steps 20] [--batch 32] [--lr 2e-4] [--layers 1]
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.results import spread, write_section  # noqa: E402

SECTION = "train quality: the dev gain of a tiny seeded run (issue 22)"
# The quality test's run: pairs per worker per step, optimizer steps, learning rate, training length (tokens), and the
# layers of all-MiniLM-L6-v2 it keeps (None: all six).
TEST_RUN = {"batch": 32, "steps": 20, "lr": 2e-4, "max_length": 32, "layers": 1}
MARGIN = 0.03  # the dev nDCG@10 gain the test requires: below every measured seed's gain (RESULTS.md), above
# what a broken build gained on seed 0 (a gather pointing at the other worker's positives: +0.0047; a flipped loss
# sign: -0.1897)


def quality_spec(storage: str, seed: int, batch: int, steps: int, lr: float, max_length: int, layers: int | None,
                 eval_dir: str = "wordnet") -> dict:
    """The job spec of one seeded run: ``steps`` optimizer steps of 2 workers x ``batch`` WordNet pairs, on the base
    cut to ``layers`` layers (None: all)."""
    return {"name": f"quality-{seed}", "storage_path": storage,
            "model": {"max_length": max_length, "num_layers": layers},
            "data": {"max_pairs": 2 * batch * steps, "eval": eval_dir},
            "train": {"num_workers": 2, "micro_batch_size": batch, "max_steps": steps, "lr": lr, "seed": seed,
                      "warmup_ratio": 0.1, "eval_every": 10**6, "checkpoint_every": 10**6, "log_every": 10**6}}


def train_and_export(spec_dict: dict) -> Path:
    """The training job's trainer on ``spec_dict`` (no base or test evaluation, no report): the exported folder."""
    from fastemb.spec import parse_spec
    from fastemb.train.tasks import job_tasks, load_task_pairs
    from fastemb.train.trainer import fit_and_export, make_trainer, plan_steps

    spec = parse_spec(spec_dict)
    pairs, _ = load_task_pairs(spec, job_tasks(spec)[0])
    model_dir, _ = fit_and_export(make_trainer(spec, pairs, plan_steps(spec, len(pairs))), spec)
    return Path(model_dir)


def dev_scores(model_dir: Path, layers: int | None, base: str = "all-MiniLM-L6-v2",
               eval_dir: str = "wordnet") -> tuple[float, float]:
    """(starting, exported) dev nDCG@10, both at the exported model's length, as a consumer of the folder runs it; the
    starting model is ``base`` cut to ``layers`` layers as the training job cuts it (None: all)."""
    from fastemb.data.eval_sets import load_eval_set
    from fastemb.eval.retrieval import evaluate
    from fastemb.model.encoder import Encoder
    from fastemb.model.layers import cut_to_student

    length = json.loads((model_dir / "sentence_bert_config.json").read_text())["max_seq_length"]
    dev = load_eval_set(eval_dir, "dev")
    start = Encoder.load(base, max_length=length)
    cut_to_student(start.transformer, None, layers)
    return evaluate(start, dev)["ndcg@10"], evaluate(Encoder.load(str(model_dir)), dev)["ndcg@10"]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", type=lambda v: [int(x) for x in v.split(",")], default=[0, 1, 2, 3, 4])
    ap.add_argument("--batch", type=int, default=TEST_RUN["batch"], help="pairs per worker per step")
    ap.add_argument("--steps", type=int, default=TEST_RUN["steps"])
    ap.add_argument("--lr", type=float, default=TEST_RUN["lr"])
    ap.add_argument("--max-length", type=int, default=TEST_RUN["max_length"])
    ap.add_argument("--layers", type=lambda v: None if v == "all" else int(v), default=TEST_RUN["layers"],
                    help="layers of all-MiniLM-L6-v2 kept, evenly spaced (model.num_layers), or 'all'")
    args = ap.parse_args()
    from fastemb.logs import configure
    from fastemb.ray_env import init_ray

    configure()
    init_ray(num_cpus=2)
    run = {"batch": args.batch, "steps": args.steps, "lr": args.lr, "max_length": args.max_length,
           "layers": args.layers}
    rows, gains = [], []
    with tempfile.TemporaryDirectory() as storage:
        for seed in args.seeds:
            base, trained = dev_scores(train_and_export(quality_spec(storage, seed, **run)), args.layers)
            gains.append(trained - base)
            rows.append(f"| {seed} | {base:.4f} | {trained:.4f} | {gains[-1]:+.4f} |")
            print(f"seed {seed}: dev nDCG@10 {base:.4f} -> {trained:.4f} ({gains[-1]:+.4f})", flush=True)
    is_test_run = run == TEST_RUN
    holds = min(gains) > MARGIN > 0
    cut = "all-MiniLM-L6-v2" if args.layers is None else f"all-MiniLM-L6-v2 cut to {args.layers} layer(s)"
    body = "\n".join([
        f"{cut}: {args.steps} optimizer steps of 2 Ray Train workers x {args.batch} WordNet train pairs (InfoNCE, "
        f"negatives gathered across workers, DeepSpeed ZeRO-2 fp32), lr {args.lr:g}, 10 % warm-up, training length "
        f"{args.max_length} tokens; the starting model (the same cut, untrained) and the exported model scored on the "
        "full WordNet dev split (500 queries x 5,000 definitions) at the exported model's length.", "",
        "| seed | starting dev nDCG@10 | exported dev nDCG@10 | gain |", "|---|---|---|---|", *rows, "",
        f"Gain: {spread(gains)}; smallest {min(gains):+.4f}.",
        (f"This is tests/test_train_quality.py's run; its margin, a gain of at least {MARGIN:g}, "
         + ("sits below every seed's gain." if holds else "does NOT sit below every seed's gain: the test can fail "
            "on a correct build."))
        if is_test_run else f"Not the test's run ({TEST_RUN}).",
    ])
    write_section(SECTION, body)
    print(f"gain {spread(gains)}; smallest {min(gains):+.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
