"""Clicks as weak supervision: Serve's search and click events → weighted (query, positive, negatives) pairs.

Each logged search (``type: search``: request id, arm, user, the queries and the result ids shown per query) is an
impression of each of its queries; each click (``type: feedback``: request id, query index, clicked id, user) is
matched to its search by request id, never by time, so clocks that disagree between ingress processes change nothing.

- **Positive**: the clicked result. A click at rank ``r`` is weighted by its inverse propensity ``1 / P(seen | r)``
  with ``P = (1/r)^eta``, clipped at ``max_weight`` (Joachims, Swaminathan & Schnabel, "Unbiased Learning-to-Rank
  with Biased Feedback", WSDM 2017): users see fewer results lower down, so a click there says more, and the
  weighted clicks are an unbiased estimate of relevance under that examination model. A pair's weight is the sum of
  its clicks' weights (the driver scales them to mean 1 over the pairs it writes).
- **Negatives**: results shown *above* a click and not clicked in that impression ("skip above", Joachims et al.,
  "Accurately Interpreting Clickthrough Data as Implicit Feedback", SIGIR 2005): the user saw and passed them, a
  relative judgement that position bias does not fake. A result clicked for the same query in any impression is
  never a negative of it.
- **Thresholds**: a query's clicks count only once it has ``min_impressions`` searches; a user's repeated clicks on
  the same result for the same query count once (clicks logged without a user are not de-duplicated).

Every event that cannot be used is counted by reason (:class:`ClickCounts`), never fatal.
"""
from __future__ import annotations

import json
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class ClickCounts:
    """What was read and turned into pairs, and what was dropped, by reason."""
    lines: int = 0
    searches: int = 0
    clicks: int = 0
    clicks_used: int = 0
    pairs: int = 0
    dropped: Counter = field(default_factory=Counter)
    noted: Counter = field(default_factory=Counter)

    def as_dict(self) -> dict:
        return {"lines": self.lines, "searches": self.searches, "clicks": self.clicks,
                "clicks_used": self.clicks_used, "pairs": self.pairs, "dropped": dict(self.dropped),
                "noted": dict(self.noted)}

    def summary(self) -> str:
        dropped = ", ".join(f"{k}: {v}" for k, v in sorted(self.dropped.items()))
        return (f"{self.searches} searches, {self.clicks} clicks, {self.clicks_used} used → {self.pairs} pairs"
                + (f"; dropped {dropped}" if dropped else ""))


def read_event_lines(folder: str | Path, counts: ClickCounts) -> list[dict]:
    """Every event of a feedback folder's ``events-*.jsonl`` files; lines that are not JSON objects (a log cut
    mid-line) are counted under ``dropped``."""
    events = []
    for path in sorted(Path(folder).glob("events-*.jsonl")):
        with open(path, encoding="utf-8", errors="replace") as f:
            for line in f:
                if not line.strip():
                    continue
                counts.lines += 1
                try:
                    event = json.loads(line)
                except json.JSONDecodeError:
                    counts.dropped["line that is not JSON (a truncated log)"] += 1
                    continue
                if not isinstance(event, dict):
                    counts.dropped["line that is not a JSON object"] += 1
                    continue
                events.append(event)
    return events


@dataclass
class Impression:
    """One query of one logged search: its text, the ids shown (best first), the user and the arm."""
    query: str
    shown: list[str]
    user: str | None
    ts: float | None


def propensity_weight(rank: int, eta: float, max_weight: float) -> float:
    """1 / P(seen | rank) with P = (1/rank)^eta, clipped at ``max_weight`` (rank counts from 1)."""
    return min(float(rank) ** eta, max_weight)


def _impressions(events: list[dict], arms: list[str] | None, counts: ClickCounts) -> dict[tuple[str, int], Impression]:
    """(request id, query index) → impression, for the logged searches of the chosen arms."""
    out: dict[tuple[str, int], Impression] = {}
    for e in events:
        if e.get("type") != "search":
            continue
        counts.searches += 1
        rid, queries, ids = e.get("request_id"), e.get("queries"), e.get("ids")
        if arms is not None and e.get("arm") not in arms:
            counts.noted["search of another arm"] += 1
            continue
        if not isinstance(rid, str) or not isinstance(ids, list):
            counts.dropped["search without a request id or result ids"] += 1
            continue
        if not isinstance(queries, list) or len(queries) != len(ids):
            counts.dropped["search logged without its query texts (serve.log_queries: false?)"] += 1
            continue
        if any((rid, i) in out for i in range(len(ids))):
            counts.dropped["duplicated search event"] += 1
            continue
        for i, (q, shown) in enumerate(zip(queries, ids)):
            if isinstance(q, str) and q.strip() and isinstance(shown, list):
                out[(rid, i)] = Impression(q, [str(x) for x in shown], e.get("user"), e.get("ts"))
    return out


def click_pairs(events: list[dict], *, arms: list[str] | None = None, min_impressions: int = 2,
                negatives: str = "skip_above", max_negatives: int = 4, propensity_eta: float = 1.0,
                max_weight: float = 10.0, counts: ClickCounts | None = None) -> tuple[list[dict], ClickCounts]:
    """Weighted pairs ``{query, positive_id, negative_ids, weight, clicks, impressions}`` (ids, not texts: the
    corpus maps them) from search and click events; see the module docstring for the rules."""
    counts = counts or ClickCounts()
    shown = _impressions(events, arms, counts)
    searched = Counter(imp.query for imp in shown.values())
    clicked_by_query: dict[str, set[str]] = defaultdict(set)
    per_impression: dict[tuple[str, int], set[str]] = defaultdict(set)
    clicks: list[tuple[tuple[str, int], str, str | None]] = []
    seen_events: set[tuple] = set()
    for e in events:
        if e.get("type") != "feedback":
            continue
        counts.clicks += 1
        key = (e.get("request_id"), e.get("query_index", 0))
        doc = e.get("clicked_id")
        imp = shown.get(key) if isinstance(key[1], int) else None
        if imp is None:
            counts.dropped["click for an unknown request id or query index"] += 1
            continue
        if doc not in imp.shown:
            counts.dropped["click on an id that was not shown"] += 1
            continue
        user = e.get("user") or imp.user
        if (key, doc, user) in seen_events:
            counts.dropped["duplicated click event"] += 1
            continue
        seen_events.add((key, doc, user))
        if isinstance(e.get("ts"), (int, float)) and isinstance(imp.ts, (int, float)) and e["ts"] < imp.ts:
            counts.noted["click stamped before its search (clock skew; matched by request id)"] += 1
        clicked_by_query[imp.query].add(doc)
        per_impression[key].add(doc)
        clicks.append((key, doc, user))

    pairs: dict[tuple[str, str], dict] = {}
    users_counted: set[tuple[str, str, str]] = set()
    for key, doc, user in clicks:
        imp = shown[key]
        if searched[imp.query] < min_impressions:
            counts.dropped[f"query searched fewer than {min_impressions} times"] += 1
            continue
        if user is not None and (imp.query, doc, user) in users_counted:
            counts.dropped["repeat click by the same user"] += 1
            continue
        if user is not None:
            users_counted.add((imp.query, doc, user))
        rank = imp.shown.index(doc) + 1
        pair = pairs.setdefault((imp.query, doc), {"query": imp.query, "positive_id": doc, "weight": 0.0,
                                                   "clicks": 0, "impressions": searched[imp.query],
                                                   "skipped": {}})
        pair["weight"] += propensity_weight(rank, propensity_eta, max_weight)
        pair["clicks"] += 1
        if negatives == "skip_above":
            for r, other in enumerate(imp.shown[:rank - 1], 1):
                if other not in per_impression[key] and other not in clicked_by_query[imp.query]:
                    count, best = pair["skipped"].get(other, (0, r))
                    pair["skipped"][other] = (count + 1, min(best, r))
        counts.clicks_used += 1
    out = []
    for pair in pairs.values():
        skipped = pair.pop("skipped")
        # the most often skipped first, then the highest shown, then by id (the same file from the same logs)
        order = sorted(skipped.items(), key=lambda kv: (-kv[1][0], kv[1][1], kv[0]))
        pair["negative_ids"] = [d for d, _ in order][:max_negatives]
        out.append(pair)
    counts.pairs = len(out)
    return out, counts
