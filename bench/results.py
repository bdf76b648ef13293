"""Write one benchmark's section of ``bench/RESULTS.md`` (sections are replaced, others kept)."""
from __future__ import annotations

import datetime
import os
import platform
import re
import shlex
import sys
from pathlib import Path

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
