"""``fastemb demo``: the whole pipeline on an embedded local Ray with the shipped WordNet dataset.

1. base eval + contrastive training (Ray Train + DeepSpeed) + merge with the base + tuned eval, in-domain and on
   the general set, at the exported length   (``fastemb train``)
2. a small hyperparameter search (Ray Tune, ASHA, compressed objective)   (``fastemb tune``)
3. registry: both models scored on the dev set; the trained model becomes production, the Tune winner
   is promoted over it only if it scores at least as well (the registry's gate)
4. index the test corpus with the production model (Ray Data + sharded faiss build) and evaluate it
5. serve production + its index on Ray Serve, send the example queries over HTTP
6. a summary table (``summary.md``, ``summary.json``)
"""
from __future__ import annotations

import json
import logging
import time
import urllib.request
from pathlib import Path

from fastemb.errors import FastembError
from fastemb.eval.retrieval import evaluate_model
from fastemb.ray_env import init_ray
from fastemb.registry import Registry, RegistryError
from fastemb.record import keep_spec
from fastemb.spec import SPEC_FILE, DemoJob, RunJob, Section, TrackingSpec
from fastemb.spec.base import is_uri
from fastemb.spec.paths import path_values, set_dotted
from fastemb.tracking.run import track_job
from fastemb.tracking.target import ui_command
from fastemb.train.export import at_export_length

logger = logging.getLogger(__name__)


def _under(spec: Section, run_dir: Path, name: str) -> Section:
    """A stage's spec whose outputs all land under ``run_dir/name``: a run job writes to ``run_dir/name`` (its
    ``storage_path`` and ``name``), and every other output path field it sets outside ``run_dir`` (the schema's
    ``output_path`` fields, e.g. ``serve.feedback_dir``) moves to ``run_dir/name/<field>``."""
    values = spec.model_dump()
    if isinstance(spec, RunJob):
        values |= {"storage_path": str(run_dir), "name": name}
    for field, kind, value in path_values(type(spec), values):
        if kind == "output" and field != "storage_path" and not is_uri(value) \
                and not Path(value).resolve().is_relative_to(run_dir.resolve()):
            values = set_dotted(values, field, str(run_dir / name / field))
    return type(spec).model_validate(values)


def _post(url: str, body: dict, timeout: float = 60) -> dict:
    req = urllib.request.Request(url, json.dumps(body).encode(), {"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        return json.loads(resp.read())


def _wait_ready(url: str, timeout: float = 300) -> None:
    deadline = time.time() + timeout
    while True:
        try:
            with urllib.request.urlopen(url + "/healthz", timeout=10) as resp:
                if resp.status == 200:
                    return
        except OSError:
            pass
        if time.time() > deadline:
            raise TimeoutError(f"the service at {url} did not become ready in {timeout:.0f}s")
        time.sleep(1)


def wait_for_cpus(needed: float, timeout: float = 180) -> None:
    """Wait until the cluster has ``needed`` free CPUs (Ray frees a finished search's workers asynchronously);
    raise a clear error instead of letting the next stage hang if they stay held."""
    import ray

    deadline = time.time() + timeout
    while ray.available_resources().get("CPU", 0) < needed:
        if time.time() > deadline:
            from ray.util import placement_group_table

            held = [p["name"] or p["placement_group_id"] for p in placement_group_table().values()
                    if p["state"] == "CREATED"]
            raise FastembError(
                f"{needed:g} CPU(s) needed but only {ray.available_resources().get('CPU', 0):g} free after "
                f"{timeout:.0f}s; placement groups still holding resources: {held}. Ray Train's placement-group "
                "cleaner fails when several local Ray instances run on one machine: stop the others and rerun")
        time.sleep(1)


def stage_registry(spec: DemoJob, run_dir: Path, trained: str, winner: dict | None, merge: dict | None = None
                   ) -> dict:
    """Register the trained model (with how it was merged) and the Tune winner (dev metrics) and let the gate pick
    production."""
    registry = Registry(str(run_dir / "registry"))
    metric = spec.promote_metric

    at_export = at_export_length(spec.train)  # both models as they will run

    def dev(model: str) -> dict:
        metrics = evaluate_model(at_export, spec.train.data, "dev", path=model)
        return {f"dev_{k}": v for k, v in metrics.items() if isinstance(v, (int, float))}

    out = {"registry": str(run_dir / "registry")}
    v1 = registry.register(trained, dev(trained), {"stage": "train", "job": spec.train.name, "merge": merge})
    registry.promote(v1, metric, force=True)
    out["trained"] = {"version": v1, metric: registry.show(v1)["metrics"][metric]}
    if winner:
        v2 = registry.register(winner["model_dir"], dev(winner["model_dir"]),
                               {"stage": "tune", "trial": winner["trial_id"],
                                **{k: winner[k] for k in ("temperature", "lr", "micro_batch_size", "pq_bytes")}})
        out["tune_winner"] = {"version": v2, metric: registry.show(v2)["metrics"][metric]}
        try:
            registry.promote(v2, metric)
            out["decision"] = f"promoted the Tune winner {v2}"
        except RegistryError as err:
            out["decision"] = str(err).split(" (use force")[0]
    out["production"] = registry.state()["production"]
    out["production_model"] = registry.model_path(out["production"])
    logger.info(f"registry: {out['decision'] if winner else 'no Tune winner'}; production is {out['production']}")
    return out


def stage_serve(spec: DemoJob, run_dir: Path, model: str, index_dir: str) -> dict:
    """Start the service on the production model and its index, query it, shut it down."""
    from ray import serve

    from fastemb.serve.job import start

    serve_spec = _under(spec.serve, run_dir, "serve")
    arm = serve_spec.production.model_copy(update={"model": model, "index_dir": index_dir, "corpus": None,
                                                   "corpus_limit": None})
    sspec = serve_spec.model_copy(update={"production": arm, "candidate": None, "blocking": False})
    t0 = time.time()
    start(sspec)
    url = f"http://{sspec.host}:{sspec.port}{sspec.route_prefix.rstrip('/')}"
    _wait_ready(url)
    ready_s = time.time() - t0
    found = _post(url + "/v1/search", {"query": spec.queries, "k": 3})
    answers = [{"query": row["query"], "hits": [f"{h['id']} ({h['score']:.3f}): {h.get('text', '')}"
                                                 for h in row["hits"]]} for row in found["data"]]
    emb = _post(url + "/v1/embeddings", {"input": spec.queries[:1], "model": sspec.model_name})
    serve.shutdown()
    for a in answers:
        logger.info(f"{a['query']!r} →\n    " + "\n    ".join(a["hits"]))
    return {"url": url, "ready_s": ready_s, "answers": answers, "embedding_dim": len(emb["data"][0]["embedding"]),
            "usage": emb["usage"]}


def summary_table(s: dict) -> str:
    """The final table: one row per stage."""
    base, tuned = s["train"]["base"], s["train"]["tuned"]
    length = s["train"]["lengths"]["export"]
    rows = [("base model", f"test nDCG@10 (exact, {length} tokens)", f"{base['ndcg@10']:.4f}", ""),
            ("contrastive training", f"test nDCG@10 (exact, {length} tokens)", f"{tuned['ndcg@10']:.4f} "
             f"({tuned['ndcg@10'] - base['ndcg@10']:+.4f})", f"{s['seconds']['train']:.0f}")]
    merge, general = s["train"].get("merge"), s["train"].get("general")
    if merge:
        kept = merge.get("dev_gain_kept")
        rows.append(("merge with the base", "weight of the trained model (WiSE-FT)", f"{merge['weight']:g}"
                     + (f"; keeps {kept:.0%} of the in-domain dev gain" if kept is not None else ""), ""))
    if general:
        g = general
        rows.append(("general set", f"{g['eval']}: test nDCG@10, base → trained",
                     f"{g['base']['ndcg@10']:.4f} → {g['tuned']['ndcg@10']:.4f} ({g['delta']['ndcg@10']:+.4f})", ""))
    t = s["tune"]
    w = t.get("winner")
    subset = t.get("dev_corpus")
    rows.append(("Tune search", f"{len(t['trials'])} trials; winner dev nDCG@10 via PQ"
                 + (f" (dev subset: {subset} texts)" if subset else ""),
                 f"{w['dev_ndcg@10_compressed']:.4f} ({w['compression_x']:.0f}×)" if w else "no winner",
                 f"{s['seconds']['tune']:.0f}"))
    r = s["registry"]
    rows.append(("registry", "production (dev nDCG@10, full dev set, exact)", f"{r['production']}: "
                 + ", ".join(f"{k} {v['version']} {v['dev_ndcg@10']:.4f}" for k, v in r.items()
                             if isinstance(v, dict)), f"{s['seconds']['registry']:.0f}"))
    for res in s["index"]["evaluation"]["results"]:
        rows.append(("index", f"{res['name']}: test nDCG@10 / recall@10 vs exact",
                     f"{res['ndcg@10']:.4f} / {res['recall@10']:.3f} at {res['code_bytes']} B/vector",
                     f"{s['seconds']['index']:.0f}" if res is s["index"]["evaluation"]["results"][0] else ""))
    if s.get("serve"):
        q = s["serve"]["answers"][0]
        rows.append(("serve", f"top hit for {q['query']!r}", q["hits"][0] if q["hits"] else "–",
                     f"{s['seconds']['serve']:.0f}"))
    rows.append(("total", "", "", f"{s['seconds']['total']:.0f}"))
    lines = ["| stage | what | result | seconds |", "|---|---|---|---|"]
    return "\n".join(lines + [f"| {a} | {b} | {c} | {d} |" for a, b, c, d in rows])


def run_demo(spec: DemoJob) -> dict:
    """Run every stage; returns the summary (also written to ``summary.json`` / ``summary.md``). With
    ``tracking.mlflow`` the demo is an MLflow run and every stage's run (train, the Tune search with its trials,
    index) its child, in one experiment and one store (the demo's)."""
    t0 = time.time()
    run_dir = spec.run_dir
    run_dir.mkdir(parents=True, exist_ok=True)
    keep_spec(spec)
    init_ray(spec.ray.address, spec.ray.num_cpus, spec.train.train.cpus_per_worker)
    tracker = track_job(spec)
    with tracker.running(), tracker.as_parent():
        summary = _stages(spec, run_dir, t0)
        tracker.log_metrics(demo_metrics(summary))
        tracker.log_artifacts([run_dir / "summary.md", run_dir / "summary.json", run_dir / SPEC_FILE])
    if tracker.enabled:
        logger.info(f"MLflow: the demo's runs are in experiment {tracker.target.experiment!r}; browse them with "
                    f"{ui_command(tracker.target)}")
    return summary


def stage_tracking(spec: DemoJob) -> TrackingSpec | None:
    """What every stage tracks to when the demo tracks: the demo's store and experiment (None: the stages' own)."""
    t = spec.tracking
    if not t.enabled:
        return None
    return TrackingSpec(mlflow=str(spec.run_dir) if t.mlflow is True else t.mlflow,
                        experiment=t.experiment or spec.name)


def _stage(stage: Section, run_dir: Path, name: str, tracking: TrackingSpec | None) -> Section:
    """A stage's spec placed under the demo's run folder, tracking where the demo tracks."""
    placed = _under(stage, run_dir, name)
    return placed.model_copy(update={"tracking": tracking}) if tracking and isinstance(placed, RunJob) else placed


def _stages(spec: DemoJob, run_dir: Path, t0: float) -> dict:
    from fastemb.index.job import run_index
    from fastemb.train.job import run_train
    from fastemb.tune.job import run_tune

    seconds: dict[str, float] = {}
    summary: dict = {"seconds": seconds}
    stages = 4 + (spec.serve is not None)  # train, tune, registry, index (, serve)
    tracking = stage_tracking(spec)

    def timed(name, fn, *args):
        t = time.time()
        logger.info(f"stage {len(seconds) + 1}/{stages}: {name}")
        out = fn(*args)
        seconds[name] = time.time() - t
        return out

    train_spec = _stage(spec.train, run_dir, "train", tracking)
    report = timed("train", run_train, train_spec)
    summary["train"] = {k: report[k] for k in ("base", "tuned", "delta", "general", "merge", "lengths", "model_dir",
                                               "train_seconds")}
    tune_spec = _stage(spec.tune, run_dir, "tune", tracking).model_copy(
        update={"tune": spec.tune.tune.model_copy(update={"registry": None})})
    tuned = timed("tune", run_tune, tune_spec)
    summary["tune"] = {"trials": tuned["trials"], "winner": tuned["winner"], "default": tuned["default"],
                       "dev_corpus": tune_spec.data.dev_corpus}
    registry = timed("registry", stage_registry, spec, run_dir, report["model_dir"], tuned["winner"],
                     report["merge"])
    summary["registry"] = registry
    index_spec = _stage(spec.index, run_dir, "index", tracking)
    index_spec = index_spec.model_copy(update={"model": index_spec.model.model_copy(
        update={"base": registry["production_model"]})})
    wait_for_cpus(index_spec.embed.num_actors * index_spec.embed.threads_per_actor)
    manifest = timed("index", run_index, index_spec)
    summary["index"] = {"dir": str(index_spec.run_dir), "counts": manifest["counts"],
                        "evaluation": manifest.get("evaluation", {"results": []})}
    if spec.serve is not None:
        summary["serve"] = timed("serve", stage_serve, spec, run_dir, registry["production_model"],
                                 str(index_spec.run_dir))
    seconds["total"] = time.time() - t0
    table = summary_table(summary)
    (run_dir / "summary.md").write_text(f"# fastemb demo\n\n{table}\n")
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
    logger.info(f"done in {seconds['total'] / 60:.1f} min; summary ({run_dir / 'summary.md'}):\n{table}")
    return summary


def demo_metrics(summary: dict) -> dict[str, float]:
    """The summary's figures as the demo run's metrics."""
    w = summary["tune"].get("winner") or {}
    out = {"base_test_ndcg@10": summary["train"]["base"]["ndcg@10"],
           "tuned_test_ndcg@10": summary["train"]["tuned"]["ndcg@10"],
           "tune_winner_dev_ndcg@10_compressed": w.get("dev_ndcg@10_compressed"),
           **{f"seconds_{k}": v for k, v in summary["seconds"].items()}}
    for r in summary["index"]["evaluation"]["results"]:
        out[f"index {r['name']}/ndcg@10"] = r["ndcg@10"]
    return out


def cli_summary(summary: dict) -> dict:
    """What ``fastemb demo`` prints: where the summary table is, and the minutes it took."""
    return {"summary": str(Path(summary["train"]["model_dir"]).parents[1] / "summary.md"),
            "minutes": round(summary["seconds"]["total"] / 60, 1)}
