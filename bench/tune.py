"""A Tune search that pays (issue 15), and ASHA vs running every trial to completion, on the same trial budget, in
one run.

Both searches run ``jobs/tune.yaml`` (the WordNet training job driven by Ray Tune) with the same random-search seed,
so they try exactly the same configurations; the first trial of each is the spec's own (default) configuration. The
search space covers what moves quality: temperature, lr, the batch size through the cached loss
(``train.cache_mini_batch``: batches above it run in its memory), the Matryoshka dimension the vectors are truncated
to before PQ (a trial truncating trains with the Matryoshka loss), and the PQ code size; ``--negatives`` adds the
number of hard negatives (the pairs must carry them: ``--train`` a mined pairs file, e.g. from
bench/mined_negatives.py). A merge-weight axis joins once ``export.merge`` exists (fastemb/tune/trial.py ``AXES``).
ASHA's grace period is derived so no trial is judged before its learning-rate warm-up ends. The only difference
between the searches is the scheduler: ASHA stops trials whose dev nDCG@10 (measured through the compressed code)
trails at a rung, FIFO runs every trial to the end. The two run at the same time, each in its own process and local
Ray with half the CPUs, so both see the same machine load (this machine is shared and noisy).

Selection is on dev only; after each search the winner and the default configuration are scored ONCE on the test
split at the winner's compression (fastemb/tune/holdout.py; target: winner − default ≥ +0.01 nDCG@10 at ≥ 16×).

Writes, for each: wall time, dev evaluations run, trials stopped early, the winner and its dev nDCG@10 (compressed
and not), the default configuration's, and the test-split verdict, to bench/RESULTS.md.

    .venv/bin/python bench/tune.py                      # full: 12 trials × 2 searches, 4,000 pairs (~5 h)
    .venv/bin/python bench/tune.py --quick              # a trial of the script: 2 trials, 300 pairs (~6 min)
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from bench.results import cell, write_section  # noqa: E402
from fastemb.spec import load_spec  # noqa: E402
from fastemb.tune.job import run_tune  # noqa: E402
from fastemb.tune.tuner import METRIC  # noqa: E402


def run_search(scheduler: str, args) -> dict:
    """One search from scratch (in this process); returns its summary plus wall time."""
    name = f"bench-tune-{scheduler}"
    overrides = [f"name={name}", f"storage_path={args.out}", f"data.max_pairs={args.pairs}",
                 f"tune.num_samples={args.trials}", "tune.search=random", f"tune.scheduler={scheduler}",
                 "tune.registry=null", f"ray.num_cpus={args.cpus // 2}", f"train.cpus_per_worker={args.cpus // 2}",
                 f"data.dev_corpus={args.dev_corpus}", f"data.test_queries={args.test_queries}",
                 f"train.cache_mini_batch={args.cache_mini_batch}", f"space.micro_batch_size=[{args.batches}]",
                 f"space.matryoshka_dim=[{args.matryoshka_dims}]", "tune.grace_period=null"]
    if args.train:
        overrides.append(f"data.train={args.train}")
    if args.negatives:
        overrides.append(f"space.hard_negatives=[{args.negatives}]")
    spec = load_spec(ROOT / "jobs" / "tune.yaml", overrides)
    for old in Path(args.out).glob(f"{name}*"):
        shutil.rmtree(old)
    t0 = time.time()
    summary = run_tune(spec)
    summary["wall_s"] = time.time() - t0
    summary["plot"] = str(spec.run_dir / "tune_trials.png")
    return summary


def run_both(args) -> dict[str, dict]:
    """Both searches at once, each in its own process (and local Ray); returns their summaries."""
    procs = {}
    for scheduler in ("asha", "none"):
        log = open(Path(args.out) / f"{scheduler}.log", "w")
        cmd = [sys.executable, __file__, "--run", scheduler, *[f"--{k.replace('_', '-')}={v}" for k, v in
                                                                 vars(args).items() if k not in ("run", "quick")]]
        procs[scheduler] = (subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT), log)
    runs = {}
    for scheduler, (proc, log) in procs.items():
        if proc.wait() != 0:
            raise SystemExit(f"the {scheduler} search failed; see {log.name}")
        runs[scheduler] = json.loads((Path(args.out) / f"{scheduler}.json").read_text())
        if len(runs[scheduler]["trials"]) < args.trials:  # interrupted: its figures would compare unequal budgets
            raise SystemExit(f"the {scheduler} search ran {len(runs[scheduler]['trials'])} of {args.trials} trials; "
                             f"nothing written (see {log.name})")
    return runs


def report(runs: dict[str, dict], args) -> str:
    """Markdown: one row per scheduler, the ratio, and both trial tables."""
    lines = ["| scheduler | wall (s) | dev evaluations | stopped early | winner (temperature, lr, batch, negatives, "
             f"Matryoshka dim, PQ bytes) | winner {METRIC} | winner dev_ndcg@10 | default {METRIC} | default "
             "dev_ndcg@10 | dev: winner − default | TEST nDCG@10: winner vs default (compression) | TEST: winner − "
             "default |", "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for name, s in runs.items():
        rows, w, d = s["trials"], s["winner"] or {}, s["default"] or {}
        evals = sum(r["reports"] or 0 for r in rows)
        stopped = sum(r["status"] == "STOPPED EARLY" for r in rows)
        params = (f"{w['temperature']:.3f}, {w['lr']:.1e}, {w['micro_batch_size']}, {w.get('hard_negatives', '–')}, "
                  f"{w.get('matryoshka_dim') or 'full'}, {w['pq_bytes']}" if w else "–")
        gain = s["winner_vs_default"][METRIC] if s.get("winner_vs_default") else None
        t = s.get("test")
        test = (f"{t['winner']['ndcg@10']:.4f} vs {t['default']['ndcg@10']:.4f} ({t['winner']['compression_x']:.0f}×;"
                f" default {t['default']['setting_name']})" if t else "–")
        lines.append(f"| {name} | {s['wall_s']:.0f} | {evals} | {stopped}/{len(rows)} | {params} | "
                     f"{cell(w.get(METRIC))} | {cell(w.get('dev_ndcg@10'))} | {cell(d.get(METRIC))} | "
                     f"{cell(d.get('dev_ndcg@10'))} | {'–' if gain is None else f'{gain:+.4f}'} | {test} | "
                     f"{'–' if not t else format(t['gain_ndcg@10'], '+.4f')} |")
    asha, fifo = runs["asha"], runs["none"]
    lines += ["", f"**Wall-time ratio ASHA / run-to-completion: {asha['wall_s'] / fifo['wall_s']:.2f}×**; "
              f"winner {METRIC}: ASHA {cell((asha['winner'] or {}).get(METRIC))} vs "
              f"run-to-completion {cell((fifo['winner'] or {}).get(METRIC))}.", ""]
    if asha.get("test"):
        g = asha["test"]["gain_ndcg@10"]
        lines += [f"**TEST split, ASHA winner − default at {asha['test']['winner']['compression_x']:.0f}× compression: "
                  f"{g:+.4f} nDCG@10** (target ≥ +0.01: {'met' if g >= 0.01 else 'not met'}).", ""]
    for name, s in runs.items():
        from fastemb.tune.results import markdown_table

        lines += [f"Trials, scheduler `{name}` (plot: `{Path(s['plot']).relative_to(ROOT)}`):", "",
                  markdown_table(s["trials"]), ""]
    head = (f"{args.trials} trials per search, random search (seed 42, identical configurations in both searches; "
            f"trial 1 = the spec's default configuration), WordNet pairs: {args.pairs} per trial, 1 epoch; "
            f"space: batch per worker {{{args.batches}}} (cached mini-batch {args.cache_mini_batch}), Matryoshka "
            f"dimension {{{args.matryoshka_dims}}}, hard negatives {{{args.negatives or 'not searched'}}}, temperature, "
            f"lr and PQ bytes as jobs/tune.yaml; ASHA's grace period derived from the warm-up; "
            f"objective `{METRIC}` = dev nDCG@10 (500 queries × {args.dev_corpus:,} definitions: every relevant one plus "
            f"others) through the compressed code, measured at 1/4, 1/2, 3/4 and the end of each trial; winner = "
            f"best trial at ≥ 16× compression; the two searches run at the same time, each on its own local Ray "
            f"with {args.cpus // 2} CPU(s): 1 training worker × {args.cpus // 2} CPU per trial, trials one at a "
            f"time.\n\n")
    return head + "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trials", type=int, default=12)
    ap.add_argument("--pairs", type=int, default=4000)
    ap.add_argument("--batches", default="32, 128, 256", help="space.micro_batch_size choices")
    ap.add_argument("--cache-mini-batch", type=int, default=32, help="train.cache_mini_batch")
    ap.add_argument("--matryoshka-dims", default="null, 128, 64", help="space.matryoshka_dim choices")
    ap.add_argument("--negatives", default="", help="space.hard_negatives choices, e.g. '0, 1, 3' (needs --train)")
    ap.add_argument("--train", default="", help="training pairs (default: the job's, WordNet)")
    ap.add_argument("--test-queries", type=int, default=1000, help="test queries of the final verdict")
    ap.add_argument("--quick", action="store_true", help="a trial of the script: 2 trials, 300 pairs")
    ap.add_argument("--cpus", type=int, default=2)
    ap.add_argument("--dev-corpus", type=int, default=1500, help="dev texts searched by the objective")
    ap.add_argument("--out", default=str(ROOT / "bench" / "out" / "tune"))
    ap.add_argument("--run", choices=["asha", "none"], help="internal: run one search and write its summary")
    args = ap.parse_args()
    if args.quick:
        args.trials, args.pairs, args.dev_corpus, args.test_queries, args.batches = 2, 300, 600, 100, "32, 64"
    Path(args.out).mkdir(parents=True, exist_ok=True)
    if args.run:
        summary = run_search(args.run, args)
        (Path(args.out) / f"{args.run}.json").write_text(json.dumps(summary, default=str))
        return
    runs = run_both(args)
    path = write_section("tune: ASHA vs run-to-completion", report(runs, args))
    print(f"written to {path}")


if __name__ == "__main__":
    main()
