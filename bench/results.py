"""Write one benchmark's section of ``bench/RESULTS.md`` (sections are replaced, others kept), and say who wins only
when the difference exceeds the spread over seeds or rounds (``verdict``, ``ratio_verdict``)."""
from __future__ import annotations

import datetime
import os
import platform
import re
import shlex
import statistics
import sys
from pathlib import Path
from typing import Sequence

# FASTEMB_BENCH_RESULTS sends a trial run's figures elsewhere (e.g. a --quick check), keeping RESULTS.md for real runs
RESULTS = Path(os.environ.get("FASTEMB_BENCH_RESULTS", Path(__file__).resolve().parent / "RESULTS.md"))
HEADER = ("# Benchmark results\n\nEvery figure below is written by the `bench/` script named in its section, "
          "with the command that produced it. Peers run side by side in the same process/run; compare ratios, "
          "not absolute times (the machine is shared and noisy).\n")


def machine() -> str:
    return f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}"


def write_section(name: str, body: str, command: str | None = None) -> Path:
    """Replace (or append) the section ``name`` of RESULTS.md with ``body``."""
    command = command or " ".join(shlex.quote(a) for a in [sys.executable.split("/")[-1], *sys.argv])
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    section = (f"<!-- section:{name} -->\n## {name}\n\nCommand: `{command}`  \nRun: {stamp} on {machine()}\n\n"
               f"{body.strip()}\n<!-- end:{name} -->\n")
    text = RESULTS.read_text() if RESULTS.exists() else HEADER
    pattern = re.compile(rf"<!-- section:{re.escape(name)} -->.*?<!-- end:{re.escape(name)} -->\n", re.S)
    text = pattern.sub(lambda _: section, text) if pattern.search(text) else text.rstrip("\n") + "\n\n" + section
    RESULTS.write_text(text)
    return RESULTS


# ------------------------------------------------------------------------------- spread and verdicts
def cell(value: float | None, digits: int = 4) -> str:
    """A table cell: the figure, or "–" where nothing was measured."""
    return "–" if value is None else f"{value:.{digits}f}"


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for a single value)."""
    values = [float(v) for v in values]
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def spread(values: Sequence[float], digits: int = 4, what: str = "seeds") -> str:
    """``mean ± std (n what: v1, v2, ...)``: the figure and the spread it is read against."""
    m, s = mean_std(values)
    each = ", ".join(f"{v:.{digits}f}" for v in values)
    return f"{m:.{digits}f} ± {s:.{digits}f} ({len(values)} {what}: {each})"


def verdict(ours: Sequence[float], theirs: Sequence[float], our_name: str, their_name: str,
            higher_is_better: bool = True) -> str:
    """Who wins, said only when the difference of the means exceeds the spread: the two mean ± std intervals do not
    overlap, each side measured at least twice (seeds or rounds). Otherwise the words say there is no winner."""
    (m1, s1), (m2, s2) = mean_std(ours), mean_std(theirs)
    diff = m1 - m2
    if min(len(ours), len(theirs)) < 2:
        return f"no verdict: {min(len(ours), len(theirs))} measurement on one side, no spread to read it against"
    if abs(diff) <= s1 + s2:
        return (f"no winner: the difference {diff:+.4g} is within the spread (± {s1:.2g} and ± {s2:.2g}, "
                f"{len(ours)} and {len(theirs)} measurements)")
    better = (diff > 0) == higher_is_better
    return (f"{our_name if better else their_name} wins: the difference {diff:+.4g} exceeds the spread "
            f"(± {s1:.2g} and ± {s2:.2g}, {len(ours)} and {len(theirs)} measurements)")


def ratio_verdict(ratios: Sequence[float], our_name: str, their_name: str) -> str:
    """The same rule for per-round ratios ours / theirs (above 1 = ours better): a side wins only when the ratios'
    mean ± std interval excludes 1, with at least 2 rounds."""
    m, s = mean_std(ratios)
    if len(ratios) < 2:
        return "no verdict: one round, no spread to read it against"
    if abs(m - 1) <= s:
        return f"no winner: the ratio {m:.2f}× ± {s:.2f} over {len(ratios)} rounds includes 1"
    return (f"{our_name if m > 1 else their_name} wins: the ratio {m:.2f}× ± {s:.2f} over {len(ratios)} rounds "
            "excludes 1")


# ------------------------------------------------------------------------------- reusing earlier runs
def code_fingerprint(root: Path | None = None) -> str:
    """A hash of fastemb's code (every ``fastemb/**/*.py`` and ``jobs/*.yaml``, paths and bytes): a benchmark reuses
    an earlier run only when it was made by the same code."""
    import hashlib

    root = root or Path(__file__).resolve().parents[1]
    h = hashlib.sha256()
    for f in sorted([*root.glob("fastemb/**/*.py"), *root.glob("jobs/*.yaml")]):
        h.update(str(f.relative_to(root)).encode() + b"\0" + f.read_bytes() + b"\0")
    return h.hexdigest()[:16]


def reusable(run_dir: Path, spec: dict, code: str) -> bool:
    """True when ``run_dir`` holds a finished run (``report.json``) whose recorded spec and code fingerprint
    (``bench_run.json``, written by :func:`record_run`) equal ``spec`` and ``code``."""
    meta, report = Path(run_dir) / "bench_run.json", Path(run_dir) / "report.json"
    if not (meta.exists() and report.exists()):
        return False
    import json

    recorded = json.loads(meta.read_text())
    return recorded.get("code") == code and recorded.get("spec") == json.loads(json.dumps(spec, default=str))


def record_run(run_dir: Path, spec: dict, code: str) -> None:
    """Record the spec and code fingerprint a finished run was made with (read by :func:`reusable`)."""
    import json

    Path(run_dir, "bench_run.json").write_text(json.dumps({"spec": spec, "code": code}, default=str, indent=1))
