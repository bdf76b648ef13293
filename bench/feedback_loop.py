"""Clicks as weak supervision, the whole loop (issue 19.3): serve → simulated users click → ``fastemb feedback
export`` → continual training from production → registry gate → A/B → ``fastemb ab report``; and a poisoned log
(random clicks) through the same export and gate.

The users are simulated and send real HTTP to the service. Each searches WordNet queries (the dev split while
production alone serves; the test split, unseen by training, in the A/B) and looks down the list with the
examination probability ``(1/rank)^eta`` (position bias); a looked-at result is clicked with ``p_relevant`` when the
WordNet labels say it is relevant, with ``p_noise`` when not, and the user stops at the first click (cascade). The
gate scores candidate and production on the WordNet test split; the A/B splits users 50/50 and reports CTR and MRR
of clicks per arm. Writes its figures to bench/RESULTS.md.

    .venv/bin/python bench/feedback_loop.py                      # 1,000 dev searches, 600 A/B searches
    .venv/bin/python bench/feedback_loop.py --quick --no-write   # a small check that the script runs
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import random
import shutil
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("DS_ACCELERATOR", "cpu")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import httpx  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402

from bench.results import write_section  # noqa: E402
from fastemb.data.eval_sets import WORDNET_DIR  # noqa: E402
from fastemb.eval.retrieval import evaluate_model  # noqa: E402
from fastemb.feedback.job import run_feedback  # noqa: E402
from fastemb.logs import configure  # noqa: E402
from fastemb.model.encoder import default_model_path  # noqa: E402
from fastemb.ray_env import free_port  # noqa: E402
from fastemb.registry import Registry  # noqa: E402
from fastemb.serve.ab import report as ab_report  # noqa: E402
from fastemb.spec import parse_spec  # noqa: E402
from fastemb.train.job import run_train  # noqa: E402

logger = logging.getLogger("bench.feedback_loop")
OUT = Path(__file__).resolve().parent / "out" / "feedback_loop"


def queries(split: str) -> list[tuple[str, set[str]]]:
    rows = pq.read_table(WORDNET_DIR / f"{split}_queries.parquet").to_pylist()
    return [(r["text"], set(map(str, r["relevant_ids"]))) for r in rows]


class User:
    """A simulated user: position-biased examination, noisy relevance judgements, stops at the first click."""

    def __init__(self, name: str, rng: random.Random, eta: float, p_relevant: float, p_noise: float,
                 poisoned: bool = False):
        self.name, self.rng, self.eta, self.p_relevant, self.p_noise, self.poisoned = \
            name, rng, eta, p_relevant, p_noise, poisoned

    def click(self, hits: list[dict], relevant: set[str]) -> str | None:
        if self.poisoned:  # a poisoned log: a click on any shown result, whatever it is
            return self.rng.choice(hits)["id"] if hits else None
        for rank, hit in enumerate(hits, 1):
            if self.rng.random() > (1.0 / rank) ** self.eta:
                continue
            if self.rng.random() < (self.p_relevant if hit["id"] in relevant else self.p_noise):
                return hit["id"]
        return None


def traffic(url: str, key: str, workload: list[tuple[str, set[str]]], users: list[User], k: int,
            threads: int = 8) -> int:
    """Each (query, labels) of ``workload`` searched by a user (round-robin), clicks posted; returns the clicks."""
    headers = {"Authorization": f"Bearer {key}"}

    def one(i: int) -> int:
        user = users[i % len(users)]
        text, relevant = workload[i]
        r = httpx.post(url + "/v1/search", json={"query": text, "k": k, "user": user.name}, headers=headers,
                       timeout=120)
        r.raise_for_status()
        body = r.json()
        clicked = user.click(body["data"][0]["hits"], relevant)
        if clicked is None:
            return 0
        f = httpx.post(url + "/v1/feedback", json={"request_id": body["request_id"], "clicked_id": clicked,
                                                   "user": user.name}, headers=headers, timeout=60)
        f.raise_for_status()
        return 1

    with ThreadPoolExecutor(threads) as pool:
        return sum(pool.map(one, range(len(workload))))


def serve(arms: dict, feedback_dir: Path, key_env: str) -> str:
    from fastemb.serve.job import start

    port = free_port()
    spec = parse_spec({"job": "serve", "name": "loop", "blocking": False, "port": port, **arms,
                       "feedback_dir": str(feedback_dir), "api_key_env": key_env, "ray": {"num_cpus": 2},
                       "autoscaling": {"min_replicas": 1, "max_replicas": 1}})
    start(spec)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        try:
            if httpx.get(url + "/healthz", timeout=10).status_code == 200:
                return url
        except httpx.HTTPError:
            pass
        time.sleep(1)
    raise RuntimeError("the service did not come up")


def stop_serve() -> None:
    from ray import serve

    serve.shutdown()


def continual(name: str, pairs: Path, registry: Path, a) -> dict:
    spec = parse_spec({
        "name": name, "storage_path": str(OUT / "runs"), "model": {"max_length": 64},
        "data": {"train": str(pairs), "max_pairs": None, "eval": "wordnet"}, "general": None,
        "train": {"num_workers": 2, "cpus_per_worker": 1, "micro_batch_size": a.batch, "lr": a.lr,
                  "epochs": a.epochs, "checkpoint_every": 100000, "eval_every": 100000},
        "loss": {"hard_negatives": 0},
        "continual": {"registry": str(registry), "promote": "auto", "min_gain": 0.0}})
    return run_train(spec)


def round_of_clicks(tag: str, production: str, dev: list, users: list[User], a, key_env: str) -> Path:
    """Production alone serves the dev corpus; the users search; the logs are exported as pairs."""
    logs = OUT / f"{tag}-logs"
    url = serve({"production": {"model": production, "corpus": str(WORDNET_DIR / "dev_corpus.parquet")}}, logs,
                key_env)
    try:
        clicks = traffic(url, os.environ[key_env], dev, users, a.k)
    finally:
        stop_serve()
    out = OUT / f"{tag}-pairs.parquet"
    exported = run_feedback(parse_spec({"job": "feedback", "feedback_dir": str(logs), "corpus": "wordnet:dev",
                                        "output": str(out), "min_impressions": a.min_impressions}))
    logger.info(f"{tag}: {len(dev)} searches, {clicks} clicks, {exported['pairs']} pairs")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--searches", type=int, default=1000, help="dev searches of the click round")
    ap.add_argument("--ab-searches", type=int, default=600, help="test searches of the A/B")
    ap.add_argument("--users", type=int, default=50)
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--eta", type=float, default=1.0, help="users' position bias")
    ap.add_argument("--p-relevant", type=float, default=0.9)
    ap.add_argument("--p-noise", type=float, default=0.05)
    ap.add_argument("--min-impressions", type=int, default=2)
    ap.add_argument("--lr", type=float, default=3e-5)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--quick", action="store_true", help="120 searches and 100 A/B searches: checks the script")
    ap.add_argument("--no-write", action="store_true", help="do not write bench/RESULTS.md")
    a = ap.parse_args()
    configure()
    if a.quick:
        a.searches, a.ab_searches, a.users = 120, 100, 10
    shutil.rmtree(OUT, ignore_errors=True)
    OUT.mkdir(parents=True)
    key_env = "FASTEMB_BENCH_LOOP_KEY"
    os.environ[key_env] = "loop-key"
    rng = random.Random(a.seed)
    dev, test = queries("dev"), queries("test")
    # each dev query searched by two users (min_impressions 2), in a shuffled order
    workload = [q for q in dev[: max(1, a.searches // 2)] for _ in range(2)]
    rng.shuffle(workload)
    users = [User(f"user-{i}", random.Random(a.seed * 1000 + i), a.eta, a.p_relevant, a.p_noise)
             for i in range(a.users)]

    registry_dir = OUT / "registry"
    registry = Registry(str(registry_dir))
    base = default_model_path()
    eval_spec = parse_spec({"job": "train", "data": {"eval": "wordnet"}})
    registry.register(base, evaluate_model(eval_spec.model, eval_spec.data, path=base), {"base": True})
    registry.promote("v0001")
    started = time.perf_counter()

    pairs = round_of_clicks("clicks", base, workload, users, a, key_env)
    report = continual("from-clicks", pairs, registry_dir, a)
    gate = report["continual"]
    candidate_dir = OUT / "runs" / "from-clicks" / "model"

    ab_logs = OUT / "ab-logs"
    url = serve({"production": {"model": base, "corpus": str(WORDNET_DIR / "test_corpus.parquet")},
                 "candidate": {"model": str(candidate_dir), "corpus": str(WORDNET_DIR / "test_corpus.parquet")},
                 "ab": {"candidate_weight": 0.5}}, ab_logs, key_env)
    ab_users = [User(f"ab-user-{i}", random.Random(a.seed * 7919 + i), a.eta, a.p_relevant, a.p_noise)
                for i in range(a.users)]
    try:
        traffic(url, os.environ[key_env], test[: a.ab_searches], ab_users, a.k)
    finally:
        stop_serve()
    arms = ab_report(ab_logs)["arms"]

    poison_users = [User(u.name, random.Random(a.seed * 31 + i), a.eta, a.p_relevant, a.p_noise, poisoned=True)
                    for i, u in enumerate(users)]
    production_now = registry.model_path(registry.state()["production"])
    poisoned_pairs = round_of_clicks("poisoned", production_now, workload, poison_users, a, key_env)
    poisoned = continual("from-poisoned", poisoned_pairs, registry_dir, a)["continual"]
    seconds = time.perf_counter() - started

    result = {"pairs": pq.read_metadata(pairs).num_rows, "gate": gate, "arms": arms, "poisoned": poisoned,
              "seconds": round(seconds, 1)}
    (OUT / "result.json").write_text(json.dumps(result, indent=2, default=str))
    logger.info(json.dumps(result, default=str))
    if a.no_write:
        return
    p, c = arms.get("production", {}), arms.get("candidate", {})
    body = f"""Simulated users ({a.users}, position bias eta {a.eta}, click on relevant {a.p_relevant}, on irrelevant
{a.p_noise}, cascade) send real HTTP. Click round: production (all-MiniLM-L6-v2) serves the WordNet dev corpus,
{len(workload)} searches of {len(workload) // 2} dev queries (each by two users); `fastemb feedback export`
(min_impressions {a.min_impressions}, skip-above negatives, inverse-propensity weights) gives {result['pairs']} pairs.
Continual training from production ({a.epochs} epoch, batch {a.batch}, lr {a.lr}, 2 workers), gated on the WordNet
test split. A/B: {min(a.ab_searches, len(test))} test-split searches (queries no training saw), users split 50/50.

| step | figure |
|---|---|
| gate: production test nDCG@10 | {gate.get('production_score', float('nan')):.4f} |
| gate: candidate (from clicks) test nDCG@10 | {gate.get('candidate_score', float('nan')):.4f} |
| gate outcome | {gate.get('outcome')} |
| A/B production: searches, CTR, MRR of clicks | {p.get('searches')}, {p.get('ctr')}, {p.get('mrr_of_clicks')} |
| A/B candidate: searches, CTR, MRR of clicks | {c.get('searches')}, {c.get('ctr')}, {c.get('mrr_of_clicks')} |
| poisoned log (random clicks): candidate vs production test nDCG@10 | {poisoned.get('candidate_score', float('nan')):.4f} vs {poisoned.get('production_score', float('nan')):.4f} |
| poisoned log: gate outcome | {poisoned.get('outcome')} |
| wall time of the loop | {seconds:.0f} s |
"""
    write_section("Clicks as weak supervision: the feedback loop (issue 19.3)", body)


if __name__ == "__main__":
    main()
