"""Multi-view items: multi-view training against training on one concatenated text field, at the same budget
(issue 19, part 2).

One run, all through fastemb's own code on an embedded local Ray:
1. the catalog (``python -m fastemb.data.build_catalog``: one item per Debian source package, views attributes,
   title, description and tags; query = keywords of the one-line description paraphrased with WordNet synonyms;
   split by source; the general set's sources excluded), built once into ``--data``;
2. per seed, ``fastemb train`` (jobs/multi_view.yaml: Ray Train + DeepSpeed) twice with the same items, steps, items
   per step, learning rate, seed and tokens per text:
   - **multi-view**: ``data.format: multi_view``, the multi-view loss (query ↔ each view, view ↔ view);
   - **single field**: ``data.format: pairs`` on ``train_concat.parquet``: each item's views concatenated into one
     text (title, attributes, tags, description), InfoNCE (query ↔ item text);
3. query → item nDCG@10 on the test split (or a seeded sample of its items): the single-field model searches the
   concatenated texts (one vector per item, as it was trained); the multi-view model fuses its view vectors (the
   job's ``item_score``, ``fused``) and also reports max over views and each view alone. The base model and the
   single-field model are scored both ways too.
Figures go to bench/RESULTS.md (``--no-write``: printed only).

The same budget is the same optimizer steps of the same items: a multi-view step embeds up to four (shorter) texts
per item where the single-field step embeds one (longer, truncated at ``--max-length`` tokens); the table gives both
runs' training seconds.

    .venv/bin/python bench/multi_view.py [--steps 60] [--batch 16] [--seeds 42 43] [--test-items 1000]
"""
from __future__ import annotations

import argparse
import json
import logging
import random
import shutil
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.results import code_fingerprint, record_run, reusable, spread, verdict, write_section  # noqa: E402
from fastemb.logs import configure as configure_logging  # noqa: E402
from fastemb.spec import load_spec  # noqa: E402

logger = logging.getLogger("fastemb.bench.multi_view")
SECTION = "multi-view items: multi-view loss vs one concatenated field on a Debian catalog (issue 19)"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", default=str(ROOT / "bench" / "out" / "multi_view" / "data"))
    ap.add_argument("--out", default=str(ROOT / "bench" / "out" / "multi_view" / "runs"))
    src = ap.add_mutually_exclusive_group()
    src.add_argument("--lists", default="/tmp/apt-en", help="apt lists folder fetched with Acquire::Languages=en")
    src.add_argument("--status", default=None, help="build from a dpkg status file instead (installed packages)")
    ap.add_argument("--test", type=int, default=2000, help="builder: test items")
    ap.add_argument("--dev", type=int, default=500, help="builder: dev items")
    ap.add_argument("--max-train", type=int, default=None, help="builder: at most this many train items")
    ap.add_argument("--model", default="all-MiniLM-L6-v2")
    ap.add_argument("--steps", type=int, default=60, help="optimizer steps per run")
    ap.add_argument("--batch", type=int, default=16, help="items per worker per step")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--lr", type=float, default=5e-5)
    ap.add_argument("--max-length", type=int, default=128, help="tokens per text (a view, or the concatenated item)")
    ap.add_argument("--seeds", type=int, nargs="+", default=[42])
    ap.add_argument("--test-items", type=int, default=1000, help="a seeded sample of the test split's items, each "
                    "item's query against the sampled items (0: the whole split)")
    ap.add_argument("--no-write", action="store_true", help="print the section, leave bench/RESULTS.md alone")
    args = ap.parse_args()
    configure_logging()
    data = Path(args.data)
    build = _build_set(data, args)
    from fastemb.data.eval_sets import load_eval_set
    from fastemb.eval.multi_view import evaluate_multi_view
    from fastemb.model.encoder import Encoder
    from fastemb.ray_env import init_ray
    from fastemb.train.job import run_train

    eval_dir = _test_sample(data, args.test_items, args.seeds[0])
    test = load_eval_set(str(eval_dir), "test")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    code, t0 = code_fingerprint(), time.time()
    init_ray(num_cpus=2)
    runs: dict[str, list[dict]] = {"multi-view": [], "single field": []}
    for seed in args.seeds:
        common = [f"storage_path={out}", f"data.eval={eval_dir}", f"model.base={args.model}",
                  f"model.max_length={args.max_length}", f"train.max_steps={args.steps}",
                  f"train.micro_batch_size={args.batch}", f"train.num_workers={args.workers}", f"train.lr={args.lr}",
                  f"train.seed={seed}", "train.eval_every=100000", "train.checkpoint_every=100000", "general=null"]
        specs = {"multi-view": [f"name=multi-view-s{seed}", f"data.train={data / 'train.parquet'}", *common],
                 "single field": [f"name=single-field-s{seed}", "data.format=pairs", "multi_view=null",
                                  f"data.train={data / 'train_concat.parquet'}", *common]}
        for name, overrides in specs.items():
            spec = load_spec(ROOT / "jobs" / "multi_view.yaml", overrides, "train")
            dump, t = spec.model_dump(mode="json"), time.time()
            if reusable(spec.run_dir, dump, code):
                report = json.loads((spec.run_dir / "report.json").read_text())
                logger.info(f"{name} seed {seed}: reusing the finished run {spec.run_dir}")
            else:
                shutil.rmtree(spec.run_dir, ignore_errors=True)
                report = run_train(spec)
                record_run(spec.run_dir, dump, code)
            report["seconds"] = time.time() - t
            if name == "single field":  # its model scored from views too, for the comparison's other side
                options = load_spec(ROOT / "jobs" / "multi_view.yaml", [], "train").multi_view.eval_options(
                    str(eval_dir))
                report["tuned_views"] = _cached(spec.run_dir / "views_metrics.json", {"code": code}, lambda: (
                    evaluate_multi_view(Encoder.load(report["model_dir"]), test, split="test", **options)))
            runs[name].append(report)
    steps = {name: {r["plan"]["total_steps"] for r in rs} for name, rs in runs.items()}
    assert len(set().union(*steps.values())) == 1, f"the runs differ in steps: {steps}"
    base_concat = runs["single field"][0]["base"]  # the base on the concatenated texts, at the export length
    body = report_md(args, build, runs, base_concat, time.time() - t0)
    print(body)
    if not args.no_write:
        write_section(SECTION, body)
    return 0


def _cached(path: Path, key: dict, measure) -> dict:
    """``measure()``, or the figures an earlier run with the same ``key`` wrote to ``path``."""
    if path.exists() and json.loads(path.read_text()).get("key") == json.loads(json.dumps(key)):
        return json.loads(path.read_text())["metrics"]
    metrics = measure()
    path.write_text(json.dumps({"key": key, "metrics": metrics}, indent=1))
    return metrics


def _build_set(data: Path, args) -> dict:
    """The catalog's build report; built when the folder has none."""
    if not (data / "report.json").exists():
        from collections import Counter

        from fastemb.data.build_catalog import build, read_lists, read_status
        from fastemb.data.build_debian import lists_origin

        counts: Counter = Counter()
        if args.status:
            origin, items = f"the installed packages of {args.status}", read_status(Path(args.status), counts)
        else:
            origin, items = lists_origin(Path(args.lists), "bookworm"), read_lists(Path(args.lists), "bookworm",
                                                                                    counts)
        build(items, data, origin, args.test, args.dev, args.max_train, counts=counts)
    return json.loads((data / "report.json").read_text())


def _test_sample(data: Path, items: int, seed: int) -> Path:
    """The set's folder, or (``items`` > 0) a folder with its dev split and a seeded sample of its test items."""
    import pyarrow.parquet as pq

    queries = pq.read_table(data / "test_queries.parquet")
    if not items or items >= queries.num_rows:
        return data
    out = data.parent / f"{data.name}_test{items}_seed{seed}"
    out.mkdir(exist_ok=True)
    keep = sorted(random.Random(seed).sample(range(queries.num_rows), items))
    pq.write_table(queries.take(keep), out / "test_queries.parquet")
    pq.write_table(pq.read_table(data / "test_corpus.parquet").take(keep), out / "test_corpus.parquet")  # same order
    for kind in ("queries", "corpus"):
        shutil.copyfile(data / f"dev_{kind}.parquet", out / f"dev_{kind}.parquet")
    return out


def report_md(args, build: dict, runs: dict, base_concat: dict, total_s: float) -> str:
    mv, sf = runs["multi-view"], runs["single field"]
    base_views = mv[0]["base"]  # every multi-view run's base: the same measurement (the shared metrics cache)
    # (name, nDCG@10 per seed, the metrics whose MRR/recall belong to the row or None, the runs or None)
    rows = [("base, concatenated text (one vector per item)", [base_concat["ndcg@10"]], base_concat, None),
            ("base, fused views (mean)", [base_views["ndcg@10_fused"]], base_views, None),
            ("base, max over views", [base_views["ndcg@10_max"]], None, None),
            ("single field trained, concatenated text", [r["tuned"]["ndcg@10"] for r in sf], sf[0]["tuned"], sf),
            ("single field trained, fused views (mean)", [r["tuned_views"]["ndcg@10_fused"] for r in sf],
             sf[0]["tuned_views"], sf),
            ("single field trained, max over views", [r["tuned_views"]["ndcg@10_max"] for r in sf], None, sf),
            ("multi-view trained, fused views (mean)", [r["tuned"]["ndcg@10_fused"] for r in mv], mv[0]["tuned"], mv),
            ("multi-view trained, max over views", [r["tuned"]["ndcg@10_max"] for r in mv], None, mv)]
    per_view = ", ".join(f"{v} {mv[0]['tuned'][f'ndcg@10_view_{v}']:.4f}" if f"ndcg@10_view_{v}" in mv[0]["tuned"]
                         else f"{v}: no item has it" for v in ("attributes", "title", "description", "tags"))
    lines = [
        f"Data: `python -m fastemb.data.build_catalog` ({build['origin']}; {build['packages_read']} binary packages "
        f"read): items {json.dumps(build['items'])}, dropped by reason {json.dumps(build['dropped'])}; views present "
        f"(test) {json.dumps(build['views_present']['test'])}. Every source package of the general set "
        "(debian-descriptions) is excluded; that set is close to this domain. Queries: keywords of the one-line "
        "description (stop words and the package name removed, 60 % kept), paraphrased with WordNet synonyms "
        f"(queries equal to their title: {json.dumps(build['queries_equal_title'])}; whose synopsis no synonym "
        f"changed: {json.dumps(build['queries_without_synonym'])}). Weakness: the query is derived from the title "
        "view, so the title carries most of the signal.",
        "",
        f"Evaluation: the test split ({'all of it' if not args.test_items else 'a seeded sample of its items'}: "
        f"{base_concat['queries']} queries against {base_concat['corpus']} items), nDCG@10. Training: `fastemb train "
        f"jobs/multi_view.yaml` ({args.model}, Ray Train, {args.workers} worker(s), DeepSpeed ZeRO-2, fp32 on CPU), "
        f"{args.steps} steps of {args.batch} items per worker, {args.max_length} tokens per text in training (every "
        f"evaluation at the exported model's length, the base's own: 256 tokens for all-MiniLM-L6-v2), lr {args.lr}, "
        f"seeds {args.seeds}; the two runs of a seed differ only in the data format and loss (views + the multi-view "
        f"loss, or the concatenated text + InfoNCE). Multi-view pairs report: {json.dumps(mv[0]['pairs'])}.",
        "",
        "| configuration | nDCG@10 | MRR@10 (first seed) | recall@10 (first seed) | train seconds |",
        "|---|---|---|---|---|",
    ]
    for name, values, m, rs in rows:
        secs = "" if rs is None else f"{sum(r['train_seconds'] for r in rs) / len(rs):.0f}"
        figure = f"{values[0]:.4f}" if len(values) == 1 else spread(values)
        mrr, recall = (f"{m['mrr@10']:.4f}", f"{m['recall@10']:.4f}") if m is not None else ("", "")
        lines.append(f"| {name} | {figure} | {mrr} | {recall} | {secs} |")
    ours = [r["tuned"]["ndcg@10_fused"] for r in mv]
    theirs = [r["tuned"]["ndcg@10"] for r in sf]
    beats = sum(ours) / len(ours) > sum(theirs) / len(theirs)
    lines += [
        "",
        f"Multi-view trained, each view alone (seed {args.seeds[0]}): {per_view}.",
        "",
        f"Target: multi-view training beats training on one concatenated field at the same budget (query → item "
        f"nDCG@10, multi-view with fused views against single field on its concatenated text): "
        f"**{'met' if beats else 'NOT met'}** on the mean ({sum(ours) / len(ours):.4f} against "
        f"{sum(theirs) / len(theirs):.4f}); {verdict(ours, theirs, 'multi-view', 'single field')}. "
        f"Whole run {total_s / 60:.1f} min.",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
