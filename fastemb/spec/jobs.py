"""The table of job types, and reading a spec: ``key=value`` overrides, validation, errors that name the field.

A spec is YAML (or a dict) validated by pydantic; unknown keys are refused, and every error names the bad field,
what it got and what is allowed. ``key=value`` overrides (dotted paths, list items by index, values parsed as YAML)
are applied before validation.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from fastemb.spec.base import SPEC_FILE, Section, SpecError
from fastemb.spec.demo import DemoJob
from fastemb.spec.eval import EvalJob
from fastemb.spec.feedback import FeedbackJob
from fastemb.spec.index import IndexJob
from fastemb.spec.merge import MergeJob
from fastemb.spec.mine import MineJob
from fastemb.spec.paths import set_dotted
from fastemb.spec.search import SearchJob
from fastemb.spec.serve import ServeJob
from fastemb.spec.static import StaticJob
from fastemb.spec.train import TrainJob
from fastemb.spec.tune import TuneJob

# job name -> schema (the CLI's spec sub-commands, in this order)
JOB_TYPES: dict[str, type[Section]] = {"train": TrainJob, "eval": EvalJob, "index": IndexJob, "search": SearchJob,
                                       "tune": TuneJob, "serve": ServeJob, "mine": MineJob, "demo": DemoJob,
                                       "merge": MergeJob, "static": StaticJob,
                                       "feedback": FeedbackJob}
# Job types whose command is two words: ``fastemb feedback export SPEC``.
VERBS = {"feedback": "export"}


def command_words(job: str) -> list[str]:
    """The CLI words that run a job type (``fastemb submit`` builds its entrypoint from them)."""
    return [job, VERBS[job]] if job in VERBS else [job]


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``a.b.c=value`` overrides (value parsed as YAML; a numeric part indexes an existing list, e.g.
    ``tasks.0.data=...``) to a copy of a nested dict."""
    out = dict(raw)
    for item in overrides:
        if "=" not in item:
            raise SpecError(f"override {item!r}: expected key=value, e.g. train.lr=3e-5")
        key, value = item.split("=", 1)
        out = set_dotted(out, key.strip(), yaml.safe_load(value))
    return out


def _format_errors(err: ValidationError, model: type[BaseModel]) -> str:
    lines = []
    for e in err.errors():
        field = ".".join(str(p) for p in e["loc"]) or "(spec)"
        msg = e["msg"]
        if e["type"] == "extra_forbidden":
            parent: Any = model
            for p in e["loc"][:-1]:
                parent = parent.model_fields[p].annotation if p in getattr(parent, "model_fields", {}) else None
            allowed = sorted(parent.model_fields) if parent is not None and hasattr(parent, "model_fields") else []
            msg = f"unknown key; allowed keys here: {', '.join(allowed)}"
        elif "input" in e and not isinstance(e["input"], dict):
            msg = f"{msg} (got {e['input']!r})"
        lines.append(f"  {field}: {msg}")
    return "invalid job spec:\n" + "\n".join(lines)


def parse_spec(raw: dict[str, Any], overrides: list[str] | None = None, job: str | None = None):
    """Validate a dict as a job spec (its ``job`` key or ``job`` picks the schema)."""
    raw = apply_overrides(raw or {}, overrides or [])
    kind = raw.get("job", job or "train")
    if kind not in JOB_TYPES:
        raise SpecError(f"invalid job spec:\n  job: unknown job {kind!r}; allowed: {', '.join(JOB_TYPES)}")
    model = JOB_TYPES[kind]
    try:
        return model.model_validate(raw)
    except ValidationError as err:
        raise SpecError(_format_errors(err, model)) from None


def load_spec(path: str | os.PathLike, overrides: list[str] | None = None, job: str | None = None):
    """Read a YAML job spec from ``path`` (a run folder: the copy of its spec it keeps, ``<run>/job.yaml``), apply
    overrides and validate it."""
    p = Path(path)
    if p.is_dir():
        if not (p / SPEC_FILE).is_file():
            raise SpecError(f"{str(p)!r} is a folder without a job spec: a run folder keeps the spec it ran as "
                            f"{SPEC_FILE} (every run job writes it when it starts), and this one has none; give a "
                            "job spec YAML file (a run's report.json also holds its spec under 'spec')")
        p = p / SPEC_FILE
    if not p.is_file():
        raise SpecError(f"job spec {str(p)!r} not found")
    try:
        raw = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as err:
        raise SpecError(f"job spec {p}: not valid YAML: {err}") from None
    if not isinstance(raw, dict):
        raise SpecError(f"job spec {p}: expected a mapping at the top level")
    return parse_spec(raw, overrides, job)
