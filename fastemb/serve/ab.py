"""A/B: sticky weighted arm assignment, impression/feedback logs (JSONL) and ``fastemb ab report``."""
from __future__ import annotations

import hashlib
import json
import os
import random
import time
from collections import defaultdict
from pathlib import Path

import numpy as np


def assign_arm(user: str | None, candidate_weight: float, salt: str, has_candidate: bool) -> str:
    """'production' or 'candidate'. The same user always gets the same arm for a given weight and salt."""
    if not has_candidate or candidate_weight <= 0:
        return "production"
    if user is None:
        u = random.random()
    else:
        h = hashlib.sha256(f"{salt}\x00{user}".encode()).digest()
        u = int.from_bytes(h[:8], "big") / 2.0 ** 64
    return "candidate" if u < candidate_weight else "production"


class EventLog:
    """Append-only JSONL file per ingress process under ``folder`` (no interleaving between replicas)."""

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.path = self.folder / f"events-{os.getpid()}-{int(time.time())}.jsonl"
        self._f = open(self.path, "a", buffering=1)

    def write(self, event: dict) -> None:
        event.setdefault("ts", time.time())
        self._f.write(json.dumps(event, ensure_ascii=False) + "\n")

    def close(self) -> None:
        self._f.close()


def read_events(folder: str | Path) -> list[dict]:
    events = []
    for p in sorted(Path(folder).glob("events-*.jsonl")):
        for line in p.read_text().splitlines():
            try:
                events.append(json.loads(line))
            except json.JSONDecodeError:
                continue  # a torn last line of a live log
    return events


def report(folder: str | Path) -> dict:
    """Per-arm: requests, users, latency p50/p99, searches, clicks, click-through rate and MRR of clicks."""
    events = read_events(folder)
    arms: dict[str, dict] = defaultdict(lambda: {"requests": 0, "embedding_requests": 0, "searches": 0,
                                                "clicks": 0, "errors": 0, "users": set(), "latency_ms": [],
                                                "rr": []})
    searches: dict[str, dict] = {}
    for e in events:
        if e.get("type") in ("embeddings", "search"):
            a = arms[e["arm"]]
            a["requests"] += 1
            a["embedding_requests" if e["type"] == "embeddings" else "searches"] += 1
            a["latency_ms"].append(e.get("latency_ms", 0.0))
            if e.get("user"):
                a["users"].add(e["user"])
            if e["type"] == "search":
                searches[e["request_id"]] = e
    seen: set[tuple[str, str]] = set()
    unmatched = 0
    for e in events:
        if e.get("type") != "feedback":
            continue
        s = searches.get(e.get("request_id"))
        if s is None:
            unmatched += 1
            continue
        key = (e["request_id"], e.get("query_index", 0), e["clicked_id"])
        if key in seen:
            continue
        seen.add(key)
        a = arms[s["arm"]]
        a["clicks"] += 1
        shown = s.get("ids") or [[]]
        index = e.get("query_index", 0)
        ids = shown[index] if isinstance(index, int) and 0 <= index < len(shown) else []
        a["rr"].append(1.0 / (ids.index(e["clicked_id"]) + 1) if e["clicked_id"] in ids else 0.0)
    out = {}
    for name, a in sorted(arms.items()):
        lat = np.array(a["latency_ms"]) if a["latency_ms"] else np.zeros(1)
        out[name] = {"requests": a["requests"], "embedding_requests": a["embedding_requests"],
                     "searches": a["searches"], "users": len(a["users"]), "clicks": a["clicks"],
                     "ctr": round(a["clicks"] / a["searches"], 4) if a["searches"] else None,
                     "mrr_of_clicks": round(float(np.mean(a["rr"])), 4) if a["rr"] else None,
                     "latency_p50_ms": round(float(np.percentile(lat, 50)), 2),
                     "latency_p99_ms": round(float(np.percentile(lat, 99)), 2)}
    return {"arms": out, "feedback_without_search": unmatched, "events": len(events)}


def format_report(rep: dict) -> str:
    cols = ["requests", "searches", "users", "clicks", "ctr", "mrr_of_clicks", "latency_p50_ms", "latency_p99_ms"]
    lines = ["| arm | " + " | ".join(cols) + " |", "|---" * (len(cols) + 1) + "|"]
    for name, m in rep["arms"].items():
        lines.append(f"| {name} | " + " | ".join("-" if m[c] is None else str(m[c]) for c in cols) + " |")
    lines.append(f"\n{rep['events']} events; {rep['feedback_without_search']} feedback events without a logged search")
    return "\n".join(lines)
