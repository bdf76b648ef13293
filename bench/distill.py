"""Distillation vs contrastive training of the student, and a 3-layer student (issue: mining and distillation).

Part A, the recipe users follow (tune the teacher, then mine and distill from it), every step a fastemb job on
one embedded local Ray, every model scored on the WordNet test split (2,000 queries x 20,000 definitions):

1. a seeded sample of ``--pairs`` WordNet train pairs, written once and shared by every step;
2. ``fastemb train`` all-mpnet-base-v2 on them (InfoNCE, in-batch negatives): the tuned teacher;
3. ``fastemb mine`` with the tuned teacher: ``--negatives`` hard negatives per pair, with the teacher's scores;
   the rows that got all their negatives are the students' pairs;
4. the student all-MiniLM-L6-v2 trained contrastively on them (InfoNCE: in-batch + the mined negatives);
5. the same student, pairs, steps, batch and learning rate, distilled from the tuned teacher
   (KL over the positive, the mined negatives and the other queries' positives, plus the InfoNCE term).

Steps 4 and 5 run once per seed of ``--seeds`` (at least 3): the table gives each arm's mean ± std over the seeds,
and one arm "wins" only when the difference of the means exceeds the spread (``bench.results.verdict``).

Part B: a 3-layer student (layers 0, 3, 5 of a tuned 6-layer model: part A's distilled student, or ``--six``)
distilled from that model
on ``--small-pairs`` WordNet train pairs (embedding MSE onto the teacher's vectors of the queries and positives;
optionally KL over in-batch candidates, InfoNCE, hidden states of the kept layers); its test nDCG@10 as a share of
the 6-layer model's, and encode speed of both through the same encoder code, interleaved rounds on the same
definitions and threads (median docs/s; the ratio is the figure). The recipe is chosen on the **dev** split, never on
test: ``bench/distill_pilot.py`` trains each candidate recipe and scores it on dev, and ``--pilot`` hands its choice
to part B, which then reports test once.

Figures go to bench/RESULTS.md. ``--resume`` reuses a step only when ``--out`` holds its finished report made from
the same spec and the same code (``bench_run.json``: the validated spec and ``bench.results.code_fingerprint``);
otherwise the step runs again.

    .venv/bin/python bench/distill.py [--pairs 6000] [--negatives 3] [--seeds 42,43,44] [--part a|b|both]
    .venv/bin/python bench/distill_pilot.py --six runs/<6-layer>/report.json       # writes bench/out/distill_pilot.json
    .venv/bin/python bench/distill.py --part b --six runs/<6-layer>/report.json --pilot bench/out/distill_pilot.json
"""
from __future__ import annotations

import argparse
import json
import logging
import shutil
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.results import cell, code_fingerprint, record_run, reusable, spread, verdict, write_section  # noqa: E402
from fastemb.logs import configure as configure_logging  # noqa: E402
from fastemb.spec import load_spec  # noqa: E402

log = logging.getLogger("fastemb.bench")

TEACHER = "all-mpnet-base-v2"
STUDENT = "all-MiniLM-L6-v2"


def common_train(out: Path, pairs: str, seed: int = 42) -> list[str]:
    """Overrides every training run of part A shares: data, one epoch, batch 2 x 32, no dev evaluations."""
    return [f"storage_path={out}", f"data.train={pairs}", "data.max_pairs=null", "train.epochs=1",
            "train.micro_batch_size=32", "train.num_workers=2", f"train.seed={seed}", "train.checkpoint_every=1000",
            "train.eval_every=100000"]


def train(name: str, job: str, overrides: list[str], out: Path, resume: bool) -> dict:
    """Run one ``fastemb train`` job, or with ``--resume`` reuse its report when it was made from the same spec by the
    same code (``bench.results.reusable``); its report."""
    from fastemb.train.job import run_train

    spec = load_spec(ROOT / "jobs" / job, [f"name={name}", *overrides], "train")
    recipe, code = spec.model_dump(mode="json"), code_fingerprint()
    if resume and reusable(out / name, recipe, code):
        log.info(f"reusing {out / name / 'report.json'} (same spec, same code)")
        return json.loads((out / name / "report.json").read_text())
    if resume and (out / name / "report.json").exists():
        log.info(f"not reusing {out / name}: its spec or code differs (or was not recorded); training again")
    log.info(f"training {name}")
    report = run_train(spec)
    record_run(out / name, recipe, code)
    return report


def sample_pairs(out: Path, n: int) -> str:
    """A seeded sample of ``n`` WordNet train pairs, written as a pairs file."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from fastemb.data.pairs import load_pairs

    path = out / f"pairs_{n}.parquet"
    if not path.exists():
        rows, _ = load_pairs("wordnet", n, seed=42)
        pq.write_table(pa.table({"query": [r["query"] for r in rows], "positive": [r["positive"] for r in rows]}),
                       path)
    return str(path)


def part_a(args, out: Path) -> dict:
    """Tuned teacher → mined pairs → contrastive student vs distilled student."""
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    from fastemb.mine.job import run_mine

    pairs = sample_pairs(out, args.pairs)
    teacher = train("teacher", "contrastive.yaml", [
        f"model.base={TEACHER}", f"train.lr={args.teacher_lr}", *common_train(out, pairs)], out, args.resume)
    teacher_dir = teacher["model_dir"]

    mine_spec = load_spec(ROOT / "jobs" / "mine.yaml", [
        "name=mine", f"storage_path={out}", f"model.base={teacher_dir}", f"data.train={pairs}",
        "data.max_pairs=null", f"mining.num_negatives={args.negatives}", "mining.write_scores=true"], "mine")
    recipe, code = mine_spec.model_dump(mode="json"), code_fingerprint()
    if args.resume and (out / "mine" / "mine_report.json").exists() and reusable(out / "mine", recipe, code):
        mined = json.loads((out / "mine" / "mine_report.json").read_text())
    else:
        mined = run_mine(mine_spec)
        (out / "mine" / "report.json").write_text(json.dumps(mined, default=str))
        record_run(out / "mine", recipe, code)
    table = pq.read_table(out / "mine" / "pairs.parquet")
    table = table.filter(pc.greater_equal(pc.list_value_length(table["negatives"]), args.negatives))
    full = str(out / "pairs_mined_full.parquet")
    pq.write_table(table, full)
    mined["pairs_used"] = table.num_rows

    runs: dict[str, list[dict]] = {"contrastive": [], "distilled": []}
    for seed in args.seeds:
        student = [f"model.base={STUDENT}", f"loss.hard_negatives={args.negatives}", f"train.lr={args.student_lr}",
                   *common_train(out, full, seed)]
        runs["contrastive"].append(train(f"student-contrastive-s{seed}", "contrastive.yaml", student, out,
                                         args.resume))
        runs["distilled"].append(train(f"student-distilled-s{seed}", "distill.yaml", [
            *student, f"distill.teacher={teacher_dir}"], out, args.resume))
    steps = {r["name"]: r["plan"]["total_steps"] for arm in runs.values() for r in arm}
    assert len(set(steps.values())) == 1, f"the student runs differ in steps: {steps}"
    return {"teacher": teacher, "mined": mined, "runs": runs}


def encode_speed(models: dict[str, str], texts: list[str], rounds: int, threads: int) -> dict[str, dict]:
    """docs/s of each model folder through fastemb's encoder, interleaved rounds on the same texts and threads."""
    import torch

    from fastemb.model.encoder import Encoder

    torch.set_num_threads(threads)
    encoders = {k: Encoder.load(v, max_length=64).eval() for k, v in models.items()}
    for e in encoders.values():
        e.encode(texts[:256], batch_size=128)  # warm-up
    rates: dict[str, list[float]] = {k: [] for k in encoders}
    for _ in range(rounds):
        for k, e in encoders.items():
            t = time.perf_counter()
            e.encode(texts, batch_size=128)
            rates[k].append(len(texts) / (time.perf_counter() - t))
    return {k: {"median": statistics.median(v), "rounds": v} for k, v in rates.items()}


def small_recipe(args) -> tuple[list[str], str]:
    """The 3-layer student's distillation overrides, and the recipe in words."""
    terms, words = [f"distill.embedding_mse.weight={args.mse_weight}"], [f"embedding MSE (weight {args.mse_weight:g})"]
    if args.hidden_weight:
        terms += [f"distill.hidden_state.weight={args.hidden_weight}",
                  "distill.hidden_state.layer_map={1: 1, 2: 4, 3: 6}"]  # kept layers 0, 3, 5 -> their outputs
        words.append(f"hidden states of the kept layers onto the same layers' outputs (weight {args.hidden_weight:g})")
    if args.kl:
        terms.append("distill.kl.in_batch=true")
        words.insert(0, "KL over in-batch candidates")
    else:
        terms.append("distill.kl=null")
    terms.append(f"distill.infonce_weight={args.infonce_weight}")
    if args.infonce_weight:
        words.append(f"InfoNCE (weight {args.infonce_weight:g})")
    return terms, " + ".join(words)


def part_b(args, out: Path, six: dict) -> dict:
    """A 3-layer student distilled from the tuned 6-layer model; quality share and encode speed-up."""
    from fastemb.data.eval_sets import load_eval_set

    pairs = sample_pairs(out, args.small_pairs)
    terms, _ = small_recipe(args)
    small = train("student-3-layers", "distill.yaml", [
        f"model.base={six['model_dir']}", "model.num_layers=3", "loss.hard_negatives=0",
        f"distill.teacher={six['model_dir']}", *terms, f"train.lr={args.small_lr}",
        *common_train(out, pairs), f"train.epochs={args.small_epochs}"], out, args.resume)
    texts = load_eval_set("wordnet", "test", None).corpus[:args.speed_docs]
    speed = encode_speed({"6 layers": six["model_dir"], "3 layers": small["model_dir"]}, texts, args.speed_rounds,
                         threads=2)
    return {"small": small, "speed": speed}


def general_ndcg(report: dict, which: str = "tuned") -> float | None:
    """nDCG@10 of a train report's model (``which``: base or tuned) on its general-domain set, or None without one."""
    general = report.get("general") or {}
    return (general.get(which) or {}).get("ndcg@10")


def _arm_row(label: str, arm: list[dict]) -> str:
    """A table row of one student arm: each metric's mean ± std over the seeds (test split, then the general set)."""
    cells = [spread([r["tuned"][k] for r in arm], 4).split(" (")[0] for k in ("ndcg@10", "mrr@10", "recall@10")]
    general = [general_ndcg(r) for r in arm]
    cells.append("–" if None in general else spread(general, 4).split(" (")[0])
    return f"| {label} | {' | '.join(cells)} | {statistics.fmean(r['train_seconds'] for r in arm):.0f} |"


def report_a(args, a: dict) -> str:
    t, m, runs = a["teacher"], a["mined"], a["runs"]
    c, d = runs["contrastive"][0], runs["distilled"][0]
    rows = [("teacher all-mpnet-base-v2, zero-shot", t["base"], general_ndcg(t, "base"), None),
            (f"teacher all-mpnet-base-v2, tuned on the {args.pairs} pairs", t["tuned"], general_ndcg(t),
             t["train_seconds"]),
            ("student all-MiniLM-L6-v2, zero-shot", c["base"], general_ndcg(c, "base"), None)]
    lines = [f"Pairs: a seeded sample of {args.pairs} WordNet train pairs. Teacher: all-mpnet-base-v2 tuned on them "
             f"(InfoNCE, in-batch negatives, 1 epoch, 2 workers x 32, lr {args.teacher_lr:g}, "
             f"{t['plan']['total_steps']} steps). Mining with the tuned teacher: {m['negatives_written']} negatives "
             f"written, skipped candidates {json.dumps(m['skipped'])}; the {m['pairs_used']} pairs with all "
             f"{args.negatives} negatives are the students' pairs. Both students: the same "
             f"{c['plan']['total_steps']} optimizer steps (1 epoch, 2 workers x 32, lr {args.student_lr:g}), once per seed "
             f"({', '.join(map(str, args.seeds))}; students' rows: mean ± std over the seeds), "
             f"InfoNCE over in-batch + {args.negatives} mined negatives; the distilled one adds the KL term over "
             "the teacher's scores (stored once by the Ray Data teacher stage, "
             f"{(d.get('teacher_outputs') or {}).get('embed_s', float('nan')):.0f} s). "
             f"Test split: 2,000 queries x 20,000 definitions. General: nDCG@10 on the general-domain set "
             f"({(c.get('general') or {}).get('eval', 'none')}), at the exported length.", "",
             "| model | test nDCG@10 | MRR@10 | recall@10 | general nDCG@10 | training wall (s) |",
             "|---|---|---|---|---|---|"]
    for label, mt, general, secs in rows:
        lines.append(f"| {label} | {mt['ndcg@10']:.4f} | {mt['mrr@10']:.4f} | {mt['recall@10']:.4f} | "
                     f"{cell(general)} | {'–' if secs is None else f'{secs:.0f}'} |")
    lines += [_arm_row("student, contrastive (InfoNCE, in-batch + mined negatives)", runs["contrastive"]),
              _arm_row("student, distilled from the tuned teacher (KL + InfoNCE)", runs["distilled"])]
    ours, theirs = ([r["tuned"]["ndcg@10"] for r in runs[k]] for k in ("distilled", "contrastive"))
    gain = statistics.fmean(ours) - statistics.fmean(theirs)
    lines += ["", f"Test nDCG@10 per seed: distilled {spread(ours)}; contrastive {spread(theirs)}.", "",
              f"**Distilled minus contrastive: {gain:+.4f} test nDCG@10 (mean over {len(ours)} seeds)** at the same "
              f"pairs and student budget; {verdict(ours, theirs, 'distillation', 'contrastive training')}. The tuned "
              f"teacher scores {t['tuned']['ndcg@10']:.4f} (zero-shot {t['base']['ndcg@10']:.4f})."]
    return "\n".join(lines)


RECIPE_ARGS = ("small_lr", "mse_weight", "hidden_weight", "kl", "infonce_weight")


def apply_pilot(args, pilot: dict) -> None:
    """Take part B's recipe from bench/distill_pilot.py's output: the candidate with the best dev nDCG@10."""
    for key in RECIPE_ARGS:
        setattr(args, key, pilot["chosen"]["recipe"][key])
    args.pilot_summary = pilot


def report_b(args, six: dict, b: dict) -> str:
    small, speed = b["small"], b["speed"]
    share = small["tuned"]["ndcg@10"] / six["tuned"]["ndcg@10"]
    ratio = speed["3 layers"]["median"] / speed["6 layers"]["median"]
    rounds = lambda k: ", ".join(f"{r:.0f}" for r in speed[k]["rounds"])  # noqa: E731
    lines = [f"The tuned 6-layer model: `{six['model_dir']}` (all-MiniLM-L6-v2 trained by fastemb, run "
             f"`{six['name']}`). The 3-layer student keeps its layers 0, 3, 5 (`model.num_layers=3`) "
             f"and is distilled from it on a seeded sample of {args.small_pairs} WordNet train pairs: "
             f"{small_recipe(args)[1]}, {args.small_epochs:g} epoch(s), 2 workers x 32, "
             f"lr {args.small_lr:g}, {small['plan']['total_steps']} steps, {small['train_seconds']:.0f} s. "
             f"Encode speed: fastemb's encoder, {args.speed_docs} test definitions, batch 128, max length 64, "
             f"2 threads, {args.speed_rounds} interleaved rounds each (median). {pilot_words(args)} General: nDCG@10 on the "
             f"general-domain set ({(small.get('general') or {}).get('eval', 'none')}), at the exported length.", "",
             "| model | test nDCG@10 | MRR@10 | recall@10 | general nDCG@10 | encode docs/s (rounds) |",
             "|---|---|---|---|---|---|",
             f"| 6 layers (tuned) | {six['tuned']['ndcg@10']:.4f} | {six['tuned']['mrr@10']:.4f} | "
             f"{six['tuned']['recall@10']:.4f} | {cell(general_ndcg(six))} | {speed['6 layers']['median']:.0f} "
             f"({rounds('6 layers')}) |",
             f"| 3 layers (distilled) | {small['tuned']['ndcg@10']:.4f} | {small['tuned']['mrr@10']:.4f} | "
             f"{small['tuned']['recall@10']:.4f} | {cell(general_ndcg(small))} | "
             f"{speed['3 layers']['median']:.0f} ({rounds('3 layers')}) |", "",
             f"**The 3-layer student keeps {share:.1%} of the 6-layer model's test nDCG@10 (target ≥ 95%) and "
             f"encodes {ratio:.2f}x faster (target ≥ 1.8x).** {general_words(six, small)}"]
    return "\n".join(lines)


def general_words(six: dict, small: dict) -> str:
    """The general-set share the 3-layer student keeps, said beside the headline (a loss there is a regression)."""
    ours, theirs = general_ndcg(small), general_ndcg(six)
    if ours is None or theirs is None:
        return "No general-domain set was measured."
    return (f"On the general-domain set it keeps {ours / theirs:.1%} of the 6-layer model's nDCG@10 "
            f"({theirs:.4f} → {ours:.4f}, {ours - theirs:+.4f}).")


def pilot_words(args) -> str:
    """How the recipe was chosen: on dev by the pilot (its candidates' dev scores), or not chosen (the defaults)."""
    pilot = getattr(args, "pilot_summary", None)
    if not pilot:
        return ("Recipe: the script's defaults (the dev pilot's last choice), not chosen by a dev pilot in this run "
                "(run bench/distill_pilot.py, pass --pilot).")
    scores = "; ".join(f"{c['label']}: {c['dev_ndcg@10']:.4f}" for c in pilot["candidates"])
    return (f"Recipe chosen on the dev split by bench/distill_pilot.py ({pilot['steps']} steps each; dev nDCG@10 "
            f"{scores}); test is scored once, here.")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--pairs", type=int, default=6000, help="WordNet train pairs for the teacher and students")
    ap.add_argument("--negatives", type=int, default=3)
    ap.add_argument("--seeds", type=lambda v: [int(x) for x in v.split(",")], default=[42, 43, 44],
                    help="part A: the students' seeds, comma-separated (at least 3)")
    ap.add_argument("--teacher-lr", type=float, default=5e-5)
    ap.add_argument("--student-lr", type=float, default=1e-4)
    ap.add_argument("--small-pairs", type=int, default=92659, help="pairs for the 3-layer student (default: all)")
    # part B's recipe defaults: the one bench/distill_pilot.py chose on dev (RESULTS.md, "distillation: 3-layer student")
    ap.add_argument("--small-lr", type=float, default=5e-4)
    ap.add_argument("--small-epochs", type=float, default=1.0)
    ap.add_argument("--mse-weight", type=float, default=500.0)
    ap.add_argument("--hidden-weight", type=float, default=0.0, help="hidden-state term of the 3-layer student (0: off)")
    ap.add_argument("--kl", action=argparse.BooleanOptionalAction, default=True, help="3-layer student: KL term")
    ap.add_argument("--infonce-weight", type=float, default=1.0, help="3-layer student: InfoNCE term (0: off)")
    ap.add_argument("--speed-docs", type=int, default=5000)
    ap.add_argument("--speed-rounds", type=int, default=3)
    ap.add_argument("--six", help="report.json of the tuned 6-layer model for part B (default: part A's distilled "
                                  "student of the first seed)")
    ap.add_argument("--pilot", help="part B: the recipe chosen on dev by bench/distill_pilot.py (its JSON output)")
    ap.add_argument("--part", choices=["a", "b", "both"], default="both")
    ap.add_argument("--resume", action="store_true", help="reuse the steps already done in --out")
    ap.add_argument("--out", default=str(ROOT / "bench" / "out" / "distill"))
    args = ap.parse_args()
    if args.part in ("a", "both") and len(args.seeds) < 3:
        ap.error("--seeds: part A needs at least 3 seeds per arm")
    if args.pilot:
        apply_pilot(args, json.loads(Path(args.pilot).read_text()))
    configure_logging()
    from fastemb.ray_env import init_ray

    out = Path(args.out)
    if not args.resume:
        shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True, exist_ok=True)
    init_ray(num_cpus=2)
    if args.part in ("a", "both"):
        a = part_a(args, out)
        body = report_a(args, a)
        print(body)
        write_section("distillation: distilled vs contrastive student", body)
    if args.part in ("b", "both"):
        six = json.loads(Path(args.six or out / f"student-distilled-s{args.seeds[0]}" / "report.json").read_text())
        b = part_b(args, out, six)
        body = report_b(args, six, b)
        print(body)
        write_section("distillation: 3-layer student", body)
    return 0


if __name__ == "__main__":
    sys.exit(main())
