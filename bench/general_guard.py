"""The general-quality guard (issue 15): the base model, the demo's training recipe as exported, the same model merged
with the base, and sentence-transformers' trainer on the same pairs and budget, on the in-domain WordNet test split
and on the shipped general set (Debian package descriptions), in one run.

1. ``fastemb train`` with jobs/demo.yaml's train section (all-MiniLM-L6-v2, 2 Ray Train workers × 32 pairs,
   DeepSpeed ZeRO-2 fp32, InfoNCE with negatives gathered across workers, training length 64) and ``export.merge``
   (WiSE-FT, the weight chosen on both dev sets: fastemb/merge/select.py). Its report gives the base, the exported
   (merged) model and the merge; ``{run}/model_unmerged`` is the trained model before merging.
2. The unmerged model scored at the exported length (the base's 256) and at the training length 64, which is how
   fastemb exported models before this issue.
3. The peer: ``SentenceTransformerTrainer`` + ``MultipleNegativesRankingLoss`` (scale 1/temperature) on the same
   pairs, global batch, learning rate, warm-up, schedule and epochs, at its default length (the model's 256), one
   process with the same number of threads.

Every model is scored by the same code (fastemb's exact search, nDCG@10) at the length it runs with.

    .venv/bin/python bench/general_guard.py            # full: 4,000 pairs, full test splits
    .venv/bin/python bench/general_guard.py --quick    # a small check: 512 pairs, subsets of both sets
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("DS_ACCELERATOR", "cpu")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from bench.results import write_section  # noqa: E402
from fastemb.data.eval_sets import load_eval_set, write_subset  # noqa: E402
from fastemb.data.pairs import load_pairs  # noqa: E402
from fastemb.eval.retrieval import evaluate  # noqa: E402
from fastemb.merge.select import gain_kept  # noqa: E402
from fastemb.model.encoder import Encoder, default_model_path  # noqa: E402
from fastemb.spec import TrainJob, load_spec  # noqa: E402

SECTION = "general_guard: faithful export, general set, merging (issue 15)"
TOLERANCE = 0.005


def train_spec(args, in_domain: str, general: str) -> TrainJob:
    """jobs/demo.yaml's training job, with this run's pairs, sets and output folder."""
    raw = load_spec(ROOT / "jobs" / "demo.yaml").train.model_dump()
    raw.update(name="guard", storage_path=str(args.out))
    raw["data"].update(max_pairs=args.pairs, eval=in_domain)
    raw["general"]["eval"] = general
    if args.grid:
        raw["export"]["merge"]["grid"] = args.grid
    raw["train"]["cpus_per_worker"] = max(args.threads // raw["train"]["num_workers"], 1)
    return TrainJob.model_validate(raw)


def run_sentence_transformers(spec: TrainJob, threads: int, out_dir: Path) -> tuple[str, float, int]:
    """Train with SentenceTransformerTrainer + MNRL on the job's pairs and budget; returns (model folder, seconds,
    the model's max_seq_length)."""
    import torch
    from datasets import Dataset
    from sentence_transformers import (SentenceTransformer, SentenceTransformerTrainer,
                                       SentenceTransformerTrainingArguments, losses)

    t = spec.train
    pairs, _ = load_pairs(spec.data.train, spec.data.max_pairs, 0, t.seed)  # the sample fastemb trained on
    torch.set_num_threads(threads)
    model = SentenceTransformer(default_model_path(), device="cpu")  # its default length: the model's own
    data = Dataset.from_dict({"anchor": [p["query"] for p in pairs], "positive": [p["positive"] for p in pairs]})
    targs = SentenceTransformerTrainingArguments(
        output_dir=str(out_dir), per_device_train_batch_size=t.micro_batch_size * t.num_workers,
        learning_rate=t.lr, num_train_epochs=t.epochs, warmup_ratio=t.warmup_ratio, lr_scheduler_type=t.schedule,
        weight_decay=t.weight_decay, max_grad_norm=t.max_grad_norm, save_strategy="no", report_to="none",
        logging_steps=50, use_cpu=True, seed=t.seed, dataloader_drop_last=True)
    loss = losses.MultipleNegativesRankingLoss(model, scale=1 / spec.loss.temperature)
    trainer = SentenceTransformerTrainer(model=model, args=targs, train_dataset=data, loss=loss)
    t0 = time.time()
    trainer.train()
    seconds = time.time() - t0
    path = out_dir / "st-model"
    model.save(str(path))
    return str(path), seconds, model.max_seq_length


def score(model: Encoder, sets: dict) -> dict[str, float]:
    """nDCG@10 of a model on each test set."""
    return {name: evaluate(model, data)["ndcg@10"] for name, data in sets.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="512 pairs, subsets (per split 200 WordNet queries "
                    "against 1,000 definitions, 100 general queries against 400 descriptions), a 3-weight grid")
    ap.add_argument("--pairs", type=int, default=None, help="training pairs (default: the demo's 4,000; quick 512)")
    ap.add_argument("--grid", type=float, nargs="*", default=None, help="merge weights (default: the spec's)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "out" / "general_guard")
    args = ap.parse_args()
    args.pairs = args.pairs or (512 if args.quick else 4000)
    if args.quick and args.grid is None:
        args.grid = [0.5, 0.8, 1.0]
    shutil.rmtree(args.out, ignore_errors=True)
    args.out.mkdir(parents=True)
    in_domain, general = "wordnet", "debian-descriptions"
    if args.quick:
        in_domain = write_subset("wordnet", args.out / "sets" / "wordnet", 200, 800)
        general = write_subset("debian-descriptions", args.out / "sets" / "general", 100, 300)
    spec = train_spec(args, in_domain, general)

    from fastemb.ray_env import init_ray
    from fastemb.train.job import run_train

    init_ray(num_cpus=args.threads)
    t0 = time.time()
    report = run_train(spec)
    fe_seconds = time.time() - t0
    run_dir = spec.run_dir
    sets = {"in_domain": load_eval_set(in_domain, "test"), "general": load_eval_set(general, "test")}
    unmerged = Encoder.load(str(run_dir / "model_unmerged"))
    train_length = spec.model.max_length
    rows = {
        "base": ({"in_domain": report["base"]["ndcg@10"], "general": report["general"]["base"]["ndcg@10"]},
                 report["lengths"]["export"]),
        "unmerged_64": (score(Encoder.load(str(run_dir / "model_unmerged"), max_length=train_length), sets),
                        train_length),
        "unmerged": (score(unmerged, sets), unmerged.max_length),
        "merged": ({"in_domain": report["tuned"]["ndcg@10"], "general": report["general"]["tuned"]["ndcg@10"]},
                   report["lengths"]["export"]),
    }
    (args.out / "fastemb_rows.json").write_text(json.dumps(rows, indent=2))  # kept if the peer's run is cut short
    st_path, st_seconds, st_length = run_sentence_transformers(spec, args.threads, args.out / "st")
    rows["st"] = (score(Encoder.load(st_path), sets), st_length)
    write_section(SECTION, body(args, spec, report, rows, fe_seconds, st_seconds))
    print(json.dumps({k: {"ndcg@10": v, "length": n} for k, (v, n) in rows.items()} | {"merge": {
        "weight": report["merge"]["weight"], "dev_gain_kept": report["merge"].get("dev_gain_kept")}}, indent=2))


def body(args, spec: TrainJob, report: dict, rows: dict, fe_seconds: float, st_seconds: float) -> str:
    """The RESULTS.md section: the table, then each acceptance line with its verdict."""
    base = rows["base"][0]
    merge = report["merge"]
    w = merge["weight"]
    names = {"base": "base all-MiniLM-L6-v2 (no training)",
             "unmerged_64": "fastemb, unmerged, at the training length (as fastemb exported before issue 15)",
             "unmerged": "fastemb, unmerged, as exported", "merged": f"fastemb, merged with the base (w = {w:g})",
             "st": "sentence-transformers trainer (MNRL), at its default length"}
    table = ["| model | tokens per text | in-domain test nDCG@10 | Δ base | general test nDCG@10 | Δ base |",
             "|---|---|---|---|---|---|"]
    for key, (s, length) in rows.items():
        table.append(f"| {names[key]} | {length} | {s['in_domain']:.4f} | {s['in_domain'] - base['in_domain']:+.4f} | "
                     f"{s['general']:.4f} | {s['general'] - base['general']:+.4f} |")
    t = spec.train
    kept = gain_kept(rows["merged"][0]["in_domain"], rows["unmerged"][0]["in_domain"], base["in_domain"])
    within = {k: rows[k][0]["general"] >= base["general"] - TOLERANCE for k in ("unmerged", "merged")}
    grid = ", ".join(f"{r['weight']:g}: {r['in_domain']:.4f} / {r['general']:.4f}" for r in merge.get("grid", []))
    sets = ("subsets: 200 WordNet test queries against 1,000 definitions, 100 general queries against 400 "
            "descriptions" if args.quick else "full test splits: 2,000 WordNet queries against 20,000 definitions, "
            "1,000 general queries against 2,000 descriptions")
    return f"""
Training: jobs/demo.yaml's recipe on {args.pairs} WordNet pairs (seed {t.seed}), all-MiniLM-L6-v2, {t.epochs:g}
epoch, lr {t.lr:g}, warm-up {t.warmup_ratio:g}, {t.schedule} schedule, temperature {spec.loss.temperature:g}.
fastemb: Ray Train, {t.num_workers} workers × {t.micro_batch_size} pairs (global batch
{t.num_workers * t.micro_batch_size}, negatives gathered across workers), DeepSpeed ZeRO-{t.zero_stage} {t.precision},
{t.cpus_per_worker} thread(s) per worker, training length {spec.model.max_length} tokens, {fe_seconds:.0f} s for the
whole job (base and final evaluations and the merge's grid included). sentence-transformers
{_st_version()}: SentenceTransformerTrainer + MultipleNegativesRankingLoss (scale {1 / spec.loss.temperature:g}),
batch {t.num_workers * t.micro_batch_size}, one process, {args.threads} torch threads, training length: the model's
default, {st_seconds:.0f} s of training. Evaluation ({sets}): fastemb's exact search on every model, nDCG@10, at
the length each model runs with. General set: Debian package one-line descriptions → long descriptions
(fastemb/data/build_debian.py).

{chr(10).join(table)}

Merge (WiSE-FT, θ = w·θ_trained + (1 − w)·θ_base): weight **{w:g}**, chosen on the dev sets by the rule
"{merge.get('rule', merge['chosen_by'])}" (tolerance {TOLERANCE}); dev nDCG@10 in-domain / general per weight:
{grid or 'fixed weight'}; base dev {merge.get('base_dev', {}).get('in_domain', float('nan')):.4f} /
{merge.get('base_dev', {}).get('general', float('nan')):.4f}.

- The exported model runs at the base's inference length: **{rows['merged'][1]} tokens** (base 256; trained at
  {spec.model.max_length}) — {"done" if rows['merged'][1] == 256 else "NOT MET"}.
- General set within {TOLERANCE} nDCG@10 of the base, or better: unmerged {"yes" if within['unmerged'] else "no"}
  ({rows['unmerged'][0]['general'] - base['general']:+.4f}), merged {"yes" if within['merged'] else "no"}
  ({rows['merged'][0]['general'] - base['general']:+.4f}) — {"met" if any(within.values()) else "NOT MET"}.
- The merge keeps **{_pct(kept)}** of the unmerged in-domain test gain (target ≥ 90 %) —
  {"met" if kept is not None and kept >= 0.9 else "NOT MET"}.
- fastemb (merged) minus sentence-transformers: in-domain
  {rows['merged'][0]['in_domain'] - rows['st'][0]['in_domain']:+.4f}, general {rows['merged'][0]['general'] - rows['st'][0]['general']:+.4f}; unmerged minus sentence-transformers:
  in-domain {rows['unmerged'][0]['in_domain'] - rows['st'][0]['in_domain']:+.4f}, general
  {rows['unmerged'][0]['general'] - rows['st'][0]['general']:+.4f}.
"""


def _pct(x: float | None) -> str:
    return "n/a (no in-domain gain)" if x is None else f"{x:.0%}"


def _st_version() -> str:
    import sentence_transformers

    return sentence_transformers.__version__


if __name__ == "__main__":
    main()
