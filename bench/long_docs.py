"""Long documents: query → man page retrieval with the base model and with the hierarchical loss (issue 19, part 1).

One run, all through fastemb's own code on an embedded local Ray:
1. the set (``python -m fastemb.data.build_manpages``: every page of Debian's manpages and manpages-dev, query = the
   NAME summary, document = the rest of the page, split by page name), built once into ``--data``;
2. the base all-MiniLM-L6-v2 on the test split, pages cut into chunks of ``--chunk`` tokens: every chunk embedded
   on its own, and late chunking (each 512-token window embedded once, each chunk its tokens' mean); a page's score
   is the max (also the mean and the attention pool) of its chunks' scores;
3. ``fastemb train`` (jobs/long_docs.yaml: Ray Train + DeepSpeed, 2 workers) three times with the same pages, steps,
   batch, learning rate and seed: chunk-level term only, document-level term only, both (the hierarchical loss);
   each exported model scored on the test split like the base (max over chunks);
4. the peer: sentence-transformers with the same base model, each page truncated at its 256 tokens (what it does
   with a long text), cosine top-k.
Figures go to bench/RESULTS.md.

    .venv/bin/python bench/long_docs.py [--steps 30] [--batch 8] [--max-chunks 4] [--eval-max-chunks 8]
"""
from __future__ import annotations

import argparse
import json
import logging
import shutil
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.results import code_fingerprint, record_run, reusable, write_section  # noqa: E402
from fastemb.logs import configure as configure_logging  # noqa: E402
from fastemb.spec import load_spec  # noqa: E402

logger = logging.getLogger("fastemb.bench.long_docs")
LOSSES = {"chunk-only": (1.0, 0.0), "document-only": (0.0, 1.0), "hierarchical": (1.0, 1.0)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", default=str(ROOT / "bench" / "out" / "long_docs" / "data"))
    ap.add_argument("--out", default=str(ROOT / "bench" / "out" / "long_docs" / "runs"))
    ap.add_argument("--steps", type=int, default=30, help="optimizer steps per trained configuration")
    ap.add_argument("--batch", type=int, default=8, help="pages per worker per step")
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--chunk", type=int, default=128, help="tokens per chunk (model.max_length)")
    ap.add_argument("--max-chunks", type=int, default=4, help="training: chunks per page")
    ap.add_argument("--eval-max-chunks", type=int, default=4, help="evaluation: chunks per page (0: all)")
    ap.add_argument("--positive", default="max", choices=["max", "attention"])
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--test-pages", type=int, default=120, help="a seeded sample of the test split's pages, each "
                    "page's query against the sampled pages (0: the whole split)")
    args = ap.parse_args()
    configure_logging()
    data = Path(args.data)
    build = _build_set(data)
    from fastemb.data.eval_sets import load_eval_set
    from fastemb.eval.long_docs import evaluate_long_docs
    from fastemb.model.encoder import Encoder
    from fastemb.ray_env import init_ray
    from fastemb.train.job import run_train

    eval_dir = _test_sample(data, args.test_pages, args.seed)
    test = load_eval_set(str(eval_dir), "test")
    opts = {"chunk_length": args.chunk, "overlap": 16, "max_chunks": args.eval_max_chunks or None, "doc_score": "max"}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    code, t0 = code_fingerprint(), time.time()
    init_ray(num_cpus=2)
    rows, reports = {}, {}
    for name, (wc, wd) in LOSSES.items():
        spec = load_spec(ROOT / "jobs" / "long_docs.yaml", [
            f"name={name}", f"storage_path={out}", f"data.train={data / 'train.parquet'}", f"data.eval={eval_dir}",
            f"model.max_length={args.chunk}", f"long_docs.max_chunks={args.max_chunks}",
            f"long_docs.eval_max_chunks={args.eval_max_chunks or 'null'}", f"long_docs.chunk_weight={wc}",
            f"long_docs.doc_weight={wd}", f"long_docs.positive={args.positive}", f"train.max_steps={args.steps}",
            f"train.micro_batch_size={args.batch}", f"train.lr={args.lr}", f"train.seed={args.seed}",
            "train.eval_every=100000", "train.checkpoint_every=100000"], "train")
        dump, t = spec.model_dump(mode="json"), time.time()
        if reusable(spec.run_dir, dump, code):  # the same spec and code finished before: its report
            report = json.loads((spec.run_dir / "report.json").read_text())
            logger.info(f"{name}: reusing the finished run {spec.run_dir}")
        else:
            shutil.rmtree(spec.run_dir, ignore_errors=True)
            report = run_train(spec)
            record_run(spec.run_dir, dump, code)
        reports[name] = report
        rows[f"trained: {name} loss, max over chunks"] = {**report["tuned"], "seconds": time.time() - t,
                                                          "train_seconds": report["train_seconds"]}
    late = _cached(out / "base_late.json", {"code": code, "opts": opts, "data": build}, lambda: evaluate_long_docs(
        Encoder.load("all-MiniLM-L6-v2"), test, late_chunking=True, **opts))
    peer = _cached(out / "peer.json", {"code": code, "data": build}, lambda: _peer(test))
    first = reports["chunk-only"]  # every run's base figures are the same measurement (the shared metrics cache)
    rows = {"base, max over chunks": {**first["base"], "seconds": float("nan")}, "base, late chunking": late,
            **rows, "peer: sentence-transformers, page truncated at 256 tokens": peer}
    steps = {name: r["plan"]["total_steps"] for name, r in reports.items()}
    assert len(set(steps.values())) == 1, f"the runs differ in steps: {steps}"
    body = report_md(args, build, rows, reports, time.time() - t0)
    print(body)
    write_section("long documents: hierarchical loss on man pages (issue 19)", body)
    return 0


def _cached(path: Path, key: dict, measure) -> dict:
    """``measure()`` with its wall time, or the figures an earlier run with the same ``key`` wrote to ``path``."""
    if path.exists() and json.loads(path.read_text()).get("key") == json.loads(json.dumps(key)):
        logger.info(f"reusing {path}")
        return json.loads(path.read_text())["metrics"]
    logger.info(f"measuring {path.stem}")
    t = time.time()
    metrics = {**measure(), "seconds": time.time() - t}
    path.write_text(json.dumps({"key": key, "metrics": metrics}, indent=1))
    return metrics


def _test_sample(data: Path, pages: int, seed: int) -> Path:
    """The set's folder, or (``pages`` > 0) a folder with its dev split and a seeded sample of its test pages."""
    if not pages:
        return data
    import random

    import pyarrow.parquet as pq

    out = data.parent / f"{data.name}_test{pages}_seed{seed}"
    out.mkdir(exist_ok=True)
    queries, corpus = pq.read_table(data / "test_queries.parquet"), pq.read_table(data / "test_corpus.parquet")
    keep = sorted(random.Random(seed).sample(range(queries.num_rows), min(pages, queries.num_rows)))
    pq.write_table(queries.take(keep), out / "test_queries.parquet")
    pq.write_table(corpus.take(keep), out / "test_corpus.parquet")  # the builder writes both in the same order
    for kind in ("queries", "corpus"):
        shutil.copyfile(data / f"dev_{kind}.parquet", out / f"dev_{kind}.parquet")
    return out


def _build_set(data: Path) -> dict:
    """The set's build report; built (every page of the two packages) when the folder has none."""
    if not (data / "report.json").exists():
        from fastemb.data.build_manpages import build, package_pages
        from fastemb.model.encoder import load_tokenizer

        build(package_pages(), data, load_tokenizer("all-MiniLM-L6-v2"))
    return json.loads((data / "report.json").read_text())


def _peer(test) -> dict:
    """sentence-transformers with the base model: each page as one text (truncated at the model's 256 tokens)."""
    import numpy as np
    from sentence_transformers import SentenceTransformer

    from fastemb.eval.metrics import ranking_metrics
    from fastemb.model.encoder import default_model_path

    model = SentenceTransformer(default_model_path(), device="cpu")
    docs = model.encode(test.corpus, batch_size=32, normalize_embeddings=True)
    queries = model.encode(test.queries, batch_size=128, normalize_embeddings=True)
    top = np.argsort(-(queries @ docs.T), axis=1, kind="stable")[:, :100]
    return ranking_metrics([[test.corpus_ids[j] for j in row] for row in top], test.relevant)


def _lengths_md(build: dict) -> str:
    lines = ["| split | texts | tokens: min | p10 | p25 | median | p75 | p90 | p99 | max | mean | > 128 | > 256 | "
             "> 512 |", "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for split, kinds in build["tokens"].items():
        for kind, s in kinds.items():
            lines.append(f"| {split} {kind} | {s['count']} | {s['min']} | {s['p10']} | {s['p25']} | {s['p50']} | "
                         f"{s['p75']} | {s['p90']} | {s['p99']} | {s['max']} | {s['mean']} | {s['over_128']} | "
                         f"{s['over_256']} | {s['over_512']} |")
    return "\n".join(lines)


def _seconds(s: float) -> str:
    return "in the first training job" if s != s else f"{s:.0f}"


def report_md(args, build: dict, rows: dict, reports: dict, total_s: float) -> str:
    trained = {name: rows[f"trained: {name} loss, max over chunks"]["ndcg@10"] for name in LOSSES}
    base_best = max(rows["base, max over chunks"]["ndcg@10"], rows["base, late chunking"]["ndcg@10"])
    best_name = max(trained, key=trained.get)
    hier_beats = trained["hierarchical"] > max(trained["chunk-only"], trained["document-only"])
    gain = trained[best_name] - base_best
    any_report = next(iter(reports.values()))
    lines = [
        f"Data: `python -m fastemb.data.build_manpages` over the {build['pages']} man page files of Debian's "
        f"manpages and manpages-dev (every section they install: {json.dumps(build['sections'])}); {build['kept']} "
        f"pages kept, skipped by reason {json.dumps(build['skipped'])}. Query = the NAME line's summary, document = "
        f"the rest of the page; split by page name: train {build['rows']['train']}, dev {build['rows']['dev']}, "
        f"test {build['rows']['test']} pages. Length in all-MiniLM-L6-v2 tokens (no special tokens):",
        "", _lengths_md(build), "",
        f"Chunks: {args.chunk} tokens with the special tokens, 16 shared; evaluation on the test split "
        f"({'all of it' if not args.test_pages else f'a seeded sample (seed {args.seed}) of its pages'}: "
        f"{rows['base, max over chunks']['queries']} summaries against {rows['base, max over chunks']['corpus']} "
        f"pages), each page's first {args.eval_max_chunks or 'all'} chunks "
        f"({rows['base, max over chunks']['documents_truncated']} pages are longer and are cut there). "
        f"Training: `fastemb train jobs/long_docs.yaml` (Ray Train, 2 workers, DeepSpeed ZeRO-2, fp32 on CPU), "
        f"{args.steps} steps of {args.batch} pages per worker, each page's first {args.max_chunks} chunks "
        f"(pairs report: {json.dumps(any_report['pairs'])}), lr {args.lr}, seed {args.seed}, chunk-level positive: "
        f"{args.positive}; the three trained runs differ only in the loss weights (chunk, document).",
        "",
        "| configuration | nDCG@10 | MRR@10 | recall@10 | nDCG@10 with mean | nDCG@10 with attention | chunks | seconds |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, m in rows.items():
        mean, att = m.get("ndcg@10_mean"), m.get("ndcg@10_attention")
        lines.append(f"| {name} | {m['ndcg@10']:.4f} | {m['mrr@10']:.4f} | {m['recall@10']:.4f} | "
                     f"{'' if mean is None else f'{mean:.4f}'} | {'' if att is None else f'{att:.4f}'} | "
                     f"{m.get('chunks', '')} | {_seconds(m['seconds'])} |")
    lines += [
        "",
        f"Targets: the hierarchical loss beats both single-level losses at the same budget: "
        f"**{'met' if hier_beats else 'NOT met'}** (hierarchical {trained['hierarchical']:.4f}, chunk-only "
        f"{trained['chunk-only']:.4f}, document-only {trained['document-only']:.4f}; one seed, no spread measured). "
        f"The best trained configuration ({best_name}, {trained[best_name]:.4f}) against the base's best "
        f"({base_best:.4f}): {gain:+.4f}, target +0.05 **{'met' if gain >= 0.05 else 'NOT met'}**. "
        f"Whole run {total_s / 60:.1f} min.",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
