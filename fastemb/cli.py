"""``fastemb`` command line: every sub-command takes a job spec plus ``key=value`` overrides."""
from __future__ import annotations

import argparse
import json
import os
import sys
import traceback

from fastemb.errors import FastembError
from fastemb.logs import configure as configure_logging
from fastemb.spec import SpecError, load_spec, parse_spec


def _spec(args, job: str):
    overrides = list(args.overrides)
    if getattr(args, "address", None):
        overrides.append(f"ray.address={args.address}")
    if args.spec and "=" not in args.spec:
        return load_spec(args.spec, overrides, job)
    return parse_spec({"job": job}, ([args.spec] if args.spec else []) + overrides, job)


def cmd_train(args) -> int:
    from fastemb.train.driver import run_train

    report = run_train(_spec(args, "train"))
    out = {"base_ndcg@10": report["base"]["ndcg@10"], "tuned_ndcg@10": report["tuned"]["ndcg@10"],
           "delta": report["delta"]["ndcg@10"], "model_dir": report["model_dir"]}
    if "continual" in report:
        out["continual"] = {k: report["continual"][k] for k in ("candidate", "outcome", "production_after")}
    print(json.dumps(out, indent=2))
    return 0


def cmd_eval(args) -> int:
    from fastemb.data.eval_sets import load_eval_set
    from fastemb.eval.retrieval import evaluate
    from fastemb.model.encoder import Encoder

    spec = _spec(args, "eval")
    m = spec.model
    encoder = Encoder.load(m.base, pooling=m.pooling, normalize=m.normalize, max_length=m.max_length,
                           synonyms=m.synonyms)
    metrics = evaluate(encoder, load_eval_set(spec.data.eval, spec.split, spec.data.test_queries),
                       show_progress=True)
    text = json.dumps(metrics, indent=2)
    if spec.output:
        with open(spec.output, "w") as f:
            f.write(text)
    print(text)
    return 0


def cmd_index(args) -> int:
    from fastemb.index.job import run_index

    manifest = run_index(_spec(args, "index"))
    print(json.dumps({"index_dir": manifest["location"],
                      "counts": manifest["counts"], "build_s": manifest["build_s"],
                      "memory": manifest["memory"]}, indent=2))
    return 0


def cmd_search(args) -> int:
    from fastemb.index.search import Searcher

    spec = _spec(args, "search")
    hits = Searcher(spec.index_dir, nprobe=spec.nprobe, ef_search=spec.ef_search).search(spec.queries, spec.k)
    text = json.dumps([{"query": q, "hits": h} for q, h in zip(spec.queries, hits)], indent=2, ensure_ascii=False)
    if spec.output:
        with open(spec.output, "w") as f:
            f.write(text)
    print(text)
    return 0


def cmd_serve(args) -> int:
    from fastemb.serve.run import run_serve

    run_serve(_spec(args, "serve"))
    return 0


def cmd_ab_report(args) -> int:
    from fastemb.serve.ab import format_report, report

    rep = report(args.feedback_dir)
    print(json.dumps(rep, indent=2) if args.json else format_report(rep))
    return 0


def add_ab_commands(sub) -> None:
    """``fastemb ab report [FEEDBACK_DIR]``: per-arm metrics of the serve A/B logs."""
    ab = sub.add_parser("ab", help="A/B test of served model versions").add_subparsers(dest="ab_command",
                                                                                       required=True)
    p = ab.add_parser("report", help="per-arm requests, latency, clicks, CTR, MRR of clicks")
    p.add_argument("feedback_dir", nargs="?", default="runs/serve/ab", help="serve feedback_dir")
    p.add_argument("--json", action="store_true")
    p.set_defaults(fn=cmd_ab_report)


# Sub-commands that run a job spec: (name, handler, help). Other stages register theirs here.
def cmd_tune(args) -> int:
    from fastemb.tune.search import run_tune

    summary = run_tune(_spec(args, "tune"))
    print(json.dumps({"winner": summary["winner"], "trials": len(summary["trials"])}, indent=2, default=str))
    return 0


def cmd_demo(args) -> int:
    from pathlib import Path

    from fastemb.demo.run import run_demo

    shipped = Path(__file__).resolve().parents[1] / "jobs" / "demo.yaml"
    if (not args.spec or "=" in args.spec) and shipped.exists():  # `fastemb demo [k=v ...]`: the shipped spec
        args.overrides = [args.spec, *args.overrides] if args.spec else args.overrides
        args.spec = str(shipped)
    summary = run_demo(_spec(args, "demo"))
    print(json.dumps({"summary": str(Path(summary["train"]["model_dir"]).parents[1] / "summary.md"),
                      "minutes": round(summary["seconds"]["total"] / 60, 1)}, indent=2))
    return 0


def cmd_mine(args) -> int:
    from fastemb.mine.job import run_mine

    report = run_mine(_spec(args, "mine"))
    print(json.dumps({k: report[k] for k in ("pairs_file", "pairs", "negatives_written", "skipped",
                                             "rows_short_of_negatives", "timing_s")}, indent=2))
    return 0


SPEC_COMMANDS = [
    ("demo", cmd_demo, "the whole pipeline on an embedded local Ray: train → tune → registry → index → serve"),
    ("train", cmd_train, "contrastive training (Ray Train + DeepSpeed)"),
    ("tune", cmd_tune, "Ray Tune search: temperature, batch size, LR, compression"),
    ("eval", cmd_eval, "retrieval metrics of a model"),
    ("index", cmd_index, "embed a corpus (Ray Data) and build a compressed faiss index"),
    ("search", cmd_search, "top-k documents of query texts in a built index"),
    ("serve", cmd_serve, "online embedding + search service on Ray Serve (A/B arms)"),
    ("mine", cmd_mine, "mine hard negatives for pairs (Ray Data + faiss)"),
]


def add_spec_command(sub, name: str, fn, help_: str) -> argparse.ArgumentParser:
    """A sub-command taking ``SPEC [key=value ...] [--address ADDR]``."""
    p = sub.add_parser(name, help=help_)
    p.add_argument("spec", nargs="?", help="job spec YAML (optional: defaults are used without it)")
    p.add_argument("overrides", nargs="*", help="key=value overrides, e.g. train.lr=3e-5")
    p.add_argument("--address", help="join this Ray cluster instead of starting a local one")
    p.set_defaults(fn=fn)
    return p


def cmd_registry(args) -> int:
    from fastemb.registry import Registry

    reg = Registry(args.root)
    if args.action == "list":
        production = reg.state()["production"]
        for v in reg.versions():
            meta = reg.show(v)
            mark = "  production" if v == production else ""
            print(f"{v}  parent={meta['parent']}  metrics={json.dumps(meta['metrics'])}{mark}")
    elif args.action == "show":
        print(json.dumps(reg.show(args.version), indent=2))
    elif args.action == "promote":
        print(json.dumps(reg.promote(args.version, args.metric, args.force)))
    else:
        print(json.dumps(reg.rollback()))
    return 0


def add_registry_command(sub) -> None:
    p = sub.add_parser("registry", help="model versions: list, show, promote (gated), rollback")
    p.add_argument("action", choices=["list", "show", "promote", "rollback"])
    p.add_argument("version", nargs="?")
    p.add_argument("--root", default="registry", help="registry folder or URI (default: ./registry)")
    p.add_argument("--metric", default="ndcg@10", help="promotion gate metric")
    p.add_argument("--force", action="store_true", help="promote even if worse than production")
    p.set_defaults(fn=cmd_registry)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fastemb", description="Tune, evaluate and ship text-embedding models on Ray.")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, fn, help_ in SPEC_COMMANDS:
        add_spec_command(sub, name, fn, help_)
    add_registry_command(sub)
    from fastemb.submit import add_submit_commands  # `submit` and `jobs`: Ray Jobs API

    add_submit_commands(sub)
    add_ab_commands(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    configure_logging()
    args = build_parser().parse_args(argv)
    try:
        return args.fn(args)
    except (FastembError, FileNotFoundError) as err:
        if os.environ.get("FASTEMB_DEBUG"):
            traceback.print_exc()
        print(f"fastemb {args.command}: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
