"""Shared by the index fault tests: an encoder-actor killer for a running ``fastemb index`` build."""
from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path
from typing import Callable

import pyarrow.parquet as pq

WORDNET = Path(__file__).resolve().parents[1] / "fastemb" / "datasets" / "wordnet"
N_ROWS = 600


def write_fault_corpus(root: Path) -> dict:
    """The first ``N_ROWS`` WordNet definitions as two parquet files under ``root``; returns path and ids."""
    defs = pq.read_table(WORDNET / "all_definitions.parquet").slice(0, N_ROWS)
    half = N_ROWS // 2
    pq.write_table(defs.slice(0, half), root / "part-0.parquet")
    pq.write_table(defs.slice(half), root / "part-1.parquet")
    return {"path": str(root), "ids": defs.column("id").to_pylist()}


def _encoder_actor_pids() -> dict[int, str]:
    """pid → actor id of the live Ray Data map workers (the encoder actor pool)."""
    import ray
    from ray.util.state import list_actors

    actors = list_actors(address=ray.get_runtime_context().gcs_address, filters=[("state", "=", "ALIVE")],
                         limit=1000, raise_on_missing_output=False)
    return {a.pid: a.actor_id for a in actors if "MapWorker" in a.class_name and a.pid}


class ActorKiller(threading.Thread):
    """Waits until an encoder actor has embedded at least one batch (its peak-memory file exists in the unit's
    temporary folder), then SIGKILLs that actor's worker process once, while the unit is still unfinished."""

    def __init__(self, emb_dir: Path, timeout_s: float = 300,
                 live_pids: Callable[[], dict[int, str]] | None = None):
        super().__init__(daemon=True)
        self.emb_dir, self.timeout_s = emb_dir, timeout_s
        self.live_pids = live_pids or _encoder_actor_pids  # pid -> actor id of the live encoder actors
        self.killed_pid: int | None = None
        self.unit_unfinished_at_kill = False
        self.error: str | None = None

    def run(self) -> None:
        try:
            self._watch_and_kill()
        except Exception as err:  # reported by the test, not lost in the thread
            self.error = repr(err)

    def _watch_and_kill(self) -> None:
        deadline = time.time() + self.timeout_s
        while time.time() < deadline:
            busy = {int(p.stem): p.parents[1] for p in self.emb_dir.glob("unit-*.tmp/_rss/*.rss")}
            live = self.live_pids() if busy else {}
            for pid, unit_tmp in busy.items():
                if pid in live:
                    os.kill(pid, signal.SIGKILL)
                    self.killed_pid = pid
                    self.unit_unfinished_at_kill = not (unit_tmp / "_SUCCESS").exists()
                    return
            time.sleep(0.2)
        self.error = "no encoder actor was seen working before the timeout"
