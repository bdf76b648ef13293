"""The index fault test's corpus and its killer of an encoder actor held mid-unit by embed.py's test hook."""
from __future__ import annotations

import json
import os
import signal
import threading
import time
from pathlib import Path
from typing import Callable

import pyarrow.parquet as pq

from fastemb.index.embed import HOLD_ENV

WORDNET = Path(__file__).resolve().parents[1] / "fastemb" / "datasets" / "wordnet"
N_ROWS = 600
__all__ = ["HOLD_ENV", "N_ROWS", "HeldActorKiller", "write_fault_corpus"]


def write_fault_corpus(root: Path) -> dict:
    """The first ``N_ROWS`` WordNet definitions as two parquet files under ``root``; returns path and ids."""
    defs = pq.read_table(WORDNET / "all_definitions.parquet").slice(0, N_ROWS)
    half = N_ROWS // 2
    pq.write_table(defs.slice(0, half), root / "part-0.parquet")
    pq.write_table(defs.slice(half), root / "part-1.parquet")
    return {"path": str(root), "ids": defs.column("id").to_pylist()}


class HeldActorKiller(threading.Thread):
    """Kills an encoder actor while its unit is provably unfinished, through embed.py's test hook.

    Started before the build, with the build's ``FASTEMB_TEST_HOLD_FILE`` set to ``hold_file``: it creates the file,
    so every actor holds the first batch it has embedded, unreturned, after writing ``<hold_file>.<pid>.held``. It
    then SIGKILLs the first held actor that is a live encoder actor, records whether its unit was still unpublished
    at that moment (no final unit folder, no ``_SUCCESS``: a held batch is one the unit still waits for), and removes
    the hold file so that the build goes on. The test then asks Ray whether that actor was restarted."""

    def __init__(self, hold_file: Path, live_actors: Callable[[], dict[int, str]], timeout_s: float = 300):
        super().__init__(daemon=True)
        self.hold_file, self.timeout_s = Path(hold_file), timeout_s
        self.live_actors = live_actors  # pid -> actor id of the live encoder actors
        self.killed_pid: int | None = None
        self.killed_actor: str | None = None
        self.unit_unfinished_at_kill = False
        self.error: str | None = None
        self.hold_file.write_text("hold")

    def run(self) -> None:
        try:
            self._kill_a_held_actor()
        except Exception as err:  # reported by the test, not lost in the thread
            self.error = repr(err)
        finally:
            self.hold_file.unlink(missing_ok=True)  # release the other actors (and the restarted one)

    def _held(self) -> dict[int, Path | None]:
        held = {}
        for marker in self.hold_file.parent.glob(f"{self.hold_file.name}.*.held"):
            info = json.loads(marker.read_text() or "{}")
            if "pid" in info:
                held[int(info["pid"])] = Path(info["unit"]) if info.get("unit") else None
        return held

    def _kill_a_held_actor(self) -> None:
        deadline = time.time() + self.timeout_s
        while time.time() < deadline:
            held = self._held()
            live = self.live_actors() if held else {}
            for pid, unit_tmp in held.items():
                if pid not in live:
                    continue
                final = unit_tmp.with_name(unit_tmp.name.removesuffix(".tmp")) if unit_tmp else None
                self.unit_unfinished_at_kill = bool(final and unit_tmp.name.endswith(".tmp") and unit_tmp.is_dir()
                                                    and not final.exists()
                                                    and not (unit_tmp / "_SUCCESS").exists())
                os.kill(pid, signal.SIGKILL)
                self.killed_pid, self.killed_actor = pid, live[pid]
                return
            time.sleep(0.2)
        self.error = "no encoder actor was seen holding a batch before the timeout"
