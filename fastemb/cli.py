"""``fastemb`` command line: every job type of ``fastemb.spec.JOB_TYPES`` is a sub-command taking a job spec plus
``key=value`` overrides; it runs ``fastemb.<job>.job.run_<job>(spec)`` and prints that module's ``cli_summary`` of
the result as JSON. Besides them: ``registry``, ``submit`` / ``jobs`` (Ray Jobs API) and ``ab`` (A/B report).
"""
from __future__ import annotations

import argparse
import importlib
import json
import logging
import os
import sys
import traceback
from pathlib import Path

from fastemb.errors import FastembError
from fastemb.logs import configure as configure_logging
from fastemb.spec import JOB_TYPES, VERBS, load_spec, parse_spec

# Job types whose command, given no spec file, runs the spec shipped in jobs/ (overrides still apply).
SHIPPED_SPECS = {"demo": Path(__file__).resolve().parents[1] / "jobs" / "demo.yaml"}


def _spec(args, job: str):
    overrides = list(args.overrides)
    if getattr(args, "address", None):
        overrides.append(f"ray.address={args.address}")
    if args.spec and "=" not in args.spec:
        return load_spec(args.spec, overrides, job)
    return parse_spec({"job": job}, ([args.spec] if args.spec else []) + overrides, job)


def run_job(args) -> int:
    """Validate the spec, run the job's driver, print its summary."""
    job = args.job
    shipped = SHIPPED_SPECS.get(job)
    if shipped is not None and (not args.spec or "=" in args.spec) and shipped.exists():
        args.overrides = [args.spec, *args.overrides] if args.spec else args.overrides
        args.spec = str(shipped)
    spec = _spec(args, job)
    module = importlib.import_module(f"fastemb.{job}.job")
    result = getattr(module, f"run_{job}")(spec)
    summary = module.cli_summary(result)
    if summary is not None:
        print(json.dumps(summary, indent=2, default=str, ensure_ascii=False))
    return 0


def _help(job_type: type) -> str:
    """The first line of a job type's docstring, without its ```fastemb <job>``:`` prefix."""
    first = (job_type.__doc__ or "").strip().splitlines()[0]
    text = first.split(":", 1)[1].strip().rstrip(".") if first.startswith("``fastemb") else first
    return text.replace("``", "")


def add_spec_command(sub, name: str, help_: str) -> argparse.ArgumentParser:
    """A sub-command taking ``SPEC [key=value ...] [--address ADDR]`` (``fastemb <job> [<verb>] ...``)."""
    if name in VERBS:
        sub = sub.add_parser(name, help=help_).add_subparsers(dest="verb", required=True)
    p = sub.add_parser(VERBS.get(name, name), help=help_, description=help_)
    p.add_argument("spec", nargs="?", help="job spec YAML (optional: defaults are used without it)")
    p.add_argument("overrides", nargs="*", help="key=value overrides, e.g. train.lr=3e-5")
    p.add_argument("--address", help="join this Ray cluster instead of starting a local one")
    p.set_defaults(fn=run_job, job=name)
    return p


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
        print(json.dumps({**reg.show(args.version), "card": reg.card(args.version)}, indent=2))
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
    for name, job_type in JOB_TYPES.items():
        add_spec_command(sub, name, _help(job_type))
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
        logging.getLogger(f"fastemb.{args.command}").error(err)  # [fastemb <command>] error: ...
        return 2


if __name__ == "__main__":
    sys.exit(main())
