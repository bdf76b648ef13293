"""``fastemb train``: evaluate the base model, train with Ray Train + DeepSpeed, export, evaluate again.

Writes to ``{storage_path}/{name}/``: ``job.yaml`` (the resolved spec: ``fastemb train <run>/job.yaml`` runs it
again), ``model/`` (sentence-transformers format, with its model card ``README.md``), ``report.json`` and
``training_curve.png``; with ``tracking.mlflow``, an MLflow run too (fastemb/tracking/). The report holds the
in-domain test metrics of the base and the tuned model and their delta (``base``, ``tuned``, ``delta``) and the same
on the general-domain set (``general``), all measured at the exported model's length (``lengths``: the training
length, a speed knob, also runs the dev evaluations during training); with ``export.merge`` how the exported model was
merged with the base (``merge``); the data report, timings, the spec and the reproducible record. Re-running a job
with the same name resumes it from its last checkpoint (Ray Train V2).
"""
from __future__ import annotations

import json
import logging
import time
from pathlib import Path

from fastemb.data.eval_sets import check_eval_set
from fastemb.data.pairs import pairs_fingerprint
from fastemb.eval.cache import cached_metrics
from fastemb.eval.general import general_section
from fastemb.eval.retrieval import evaluate_model
from fastemb.model.card import write_card
from fastemb.model.encoder import inference_length
from fastemb.plots import training_curve
from fastemb.ray_env import init_ray
from fastemb.record import hardware, keep_spec, reproducible_record
from fastemb.spec import SPEC_FILE, EvalSetSpec, StudentModelSpec, TrainJob
from fastemb.storage import is_uri, pull, push
from fastemb.tracking.run import Tracker, track_job
from fastemb.train.card import train_card
from fastemb.train.export import at_export_length, int8_export, merge_export
from fastemb.train.tasks import (check_matryoshka_width, job_tasks, load_task_pairs, long_docs_eval,
                                 multi_view_eval)
from fastemb.train.trainer import fit_or_reuse, plan_steps

logger = logging.getLogger(__name__)


def _check_eval_sets(spec: TrainJob) -> None:
    """Fail before any work when an evaluation set lacks a file or a column (the error names its field)."""
    check_eval_set(spec.data.eval, ("dev", "test"), "data.eval")
    if spec.general:
        merge = spec.export.merge
        check_eval_set(spec.general.eval, ("dev", "test") if merge and merge.weight is None else ("test",),
                       "general.eval")


def _base_metrics(spec: TrainJob, model: StudentModelSpec, data: EvalSetSpec, cache_name: str,
                  long_docs: dict | None = None, multi_view: dict | None = None) -> dict:
    """Base-model test metrics on ``data`` (with ``model``'s settings; ``long_docs``: per document, from chunks;
    ``multi_view``: per item, from its views), cached in the run folder so a resumed run does not redo them."""
    def measure() -> dict:
        logger.info(f"evaluating the base model {model.base} on the test split of {data.eval} "
                    f"({model.max_length} tokens per text)")
        return evaluate_model(model, data, long_docs=long_docs, multi_view=multi_view)

    key = {"model": model.model_dump(), "eval": data.eval, "test_queries": data.test_queries}
    if long_docs:
        key["long_docs"] = long_docs
    if multi_view:
        key["multi_view"] = multi_view
    return cached_metrics(spec.run_dir / cache_name, key, measure)


def _evaluate_base(spec: TrainJob) -> tuple[StudentModelSpec, dict, dict | None]:
    """The model section at the export length, and the base's in-domain and general test metrics with it."""
    _check_eval_sets(spec)
    model = at_export_length(spec)  # how every consumer runs the exported model: its test metrics use it too
    base = _base_metrics(spec, model, spec.data, "base_metrics.json", long_docs_eval(spec), multi_view_eval(spec))
    general = _base_metrics(spec, model, spec.general, "base_general_metrics.json") if spec.general else None
    logger.info(f"base test nDCG@10 {base['ndcg@10']:.4f}" + (f"; general {general['ndcg@10']:.4f}" if general else ""))
    return model, base, general


def _evaluate_export(spec: TrainJob, model: StudentModelSpec, model_dir, base: dict, general_base: dict | None
                     ) -> dict:
    """Merge the exported model with the base when ``export.merge`` asks, add its checked int8 graph when
    ``export.int8`` asks, then score it at the export length: the report's ``base``, ``tuned``, ``delta``,
    ``general``, ``merge``, ``int8`` and ``lengths``."""
    merge = merge_export(spec, model_dir) if spec.export.merge else None
    int8 = int8_export(spec, model_dir) if spec.export.int8 else None
    logger.info(f"exported {model_dir}; evaluating it on the test split")
    # evaluate_model's metrics cache (fastemb/eval/cache.py): a finished run exported again is not measured again
    tuned = evaluate_model(model, spec.data, path=str(model_dir), long_docs=long_docs_eval(spec),
                           multi_view=multi_view_eval(spec))
    general = None
    if spec.general:
        general = general_section(spec.general.eval, general_base,
                                  evaluate_model(model, spec.general, path=str(model_dir)), spec.general.tolerance)
    delta = {k: tuned[k] - base[k] for k in base if isinstance(base[k], (int, float))}
    return {"base": base, "tuned": tuned, "delta": delta, "general": general, "merge": merge, "int8": int8,
            "lengths": {"train": spec.model.max_length, "export": model.max_length,
                        "base": inference_length(spec.model.base),
                        "note": "dev evaluations during training run at the training length; the base, tuned and "
                                "general test metrics at the export length"}}


def _teacher_outputs(spec: TrainJob, tasks: list, pairs: dict) -> dict | None:
    """Teacher scores/embeddings of the distilled tasks' pairs: computed once with Ray Data, stored in the run folder,
    added to ``pairs`` (in place); returns what was computed (None without a distill section)."""
    if not spec.distill:
        return None
    from fastemb.train.teacher_outputs import TEACHER_DIR, compute_teacher_outputs

    init_ray(spec.ray.address, spec.ray.num_cpus, spec.train.cpus_per_worker)  # embedding them needs Ray Data
    info = {}
    for task in tasks:
        if task.distill:
            pairs[task.key], info[task.name] = compute_teacher_outputs(
                spec, pairs[task.key], subdir=TEACHER_DIR if not spec.tasks else f"{TEACHER_DIR}/{task.name}")
    return info if spec.tasks else info["train"]


def run_train(spec: TrainJob) -> dict:
    """Run a training job end to end; returns the report (also written to ``report.json``).

    The run folder keeps the resolved spec (``job.yaml``); with ``tracking.mlflow`` the job is an MLflow run
    (parameters: the flattened spec; rank 0's live metrics; the test figures; report, plot and model card as
    artifacts); the exported model gets its card (``model/README.md``)."""
    t0 = time.time()
    run_dir = spec.run_dir
    run_dir.mkdir(parents=True, exist_ok=True)
    if is_uri(spec.storage_path):
        fetched = pull(spec.storage_path, spec.name, run_dir)
        logger.info(f"outputs go to {spec.output_location} (staged in {run_dir}; {fetched} earlier entries fetched)")
    keep_spec(spec)
    tracker = track_job(spec)
    with tracker.running():
        report = _train(spec, tracker, t0)
        _publish(spec, report, tracker)
    if is_uri(spec.storage_path):
        push(run_dir, spec.storage_path, spec.name)
    return report


def _train(spec: TrainJob, tracker: Tracker, t0: float) -> dict:
    """Base evaluation, training (or the result of a run that already finished), export and evaluation; the report."""
    if spec.image_text:  # images with captions: the two-tower model's own evaluation (fastemb/train/image_text_job.py)
        from fastemb.train.image_text_job import train_image_text

        return train_image_text(spec, tracker, t0)
    start = None
    if spec.continual:
        from fastemb.train.continual import start_from_registry

        spec, start = start_from_registry(spec)
    t = spec.train
    tasks = job_tasks(spec)
    pairs, data_reports = {}, {}
    for task in tasks:
        pairs[task.key], data_reports[task.name] = load_task_pairs(spec, task)
        of = "" if not spec.tasks else f" (task {task.name}, weight {task.weight:g})"
        logger.info(f"pairs{of}: {data_reports[task.name].summary()}")
    tokens = None
    if spec.multilingual:  # before any work: a language the student's tokenizer mostly cannot read is warned about
        from fastemb.train.multilingual import student_tokenizer_stats

        tokens = student_tokenizer_stats(spec, pairs["train"])
    plan = plan_steps(spec, {key: len(rows) for key, rows in pairs.items()})
    check_matryoshka_width(spec)
    if spec.distill:
        from fastemb.train.distill import check_online_teacher

        check_online_teacher(spec)  # fail before any work when per-token terms cannot use this teacher
    record = reproducible_record(spec, data_fingerprint(tasks, pairs))
    tracker.log_record(record)
    model, base, general_base = _evaluate_base(spec)
    teacher_info = _teacher_outputs(spec, tasks, pairs)  # stored in the run folder: reused by a rerun
    model_dir, history, train_s = fit_or_reuse(
        spec, pairs, plan, tracker, f"{sum(map(len, pairs.values()))} pairs, {t.num_workers} workers × "
        f"{t.micro_batch_size} (×{t.grad_accum} accumulation), ZeRO-{t.zero_stage}, {t.precision}")
    scores = _evaluate_export(spec, model, model_dir, base, general_base)
    if spec.multilingual:
        from fastemb.train.multilingual import multilingual_report

        scores["multilingual"] = multilingual_report(spec, model, model_dir, tokens)
    report = {
        "name": spec.name, "model_dir": str(model_dir), "output": spec.output_location, "base_model": spec.model.base,
        **scores, "eval_max_seq_length": model.max_length,
        "train_seconds": train_s, "total_seconds": time.time() - t0, "plan": plan,
        "pairs": data_reports["train"].as_dict() if not spec.tasks else {k: r.as_dict() for k, r in data_reports.items()},
        "history": history, "spec": spec.model_dump(mode="json"), "record": record, "hardware": hardware(),
        "negative_pool_refreshes": [h for h in history if h.get("event") == "negatives_refresh"],
        "resumes": sum(1 for h in history if h.get("event") == "resumed"),
        "peak_rss_mib": next((h["peak_rss_mib"] for h in history if h.get("event") == "memory"), None),  # per worker
        "domain": next((h for h in history if h.get("event") == "domain"), None),  # new tokens, adapters
        "teacher_outputs": teacher_info, "mlflow": tracker.info(),
    }
    report["card"] = str(write_card(model_dir, train_card(spec, report, model_dir)))
    if start:
        from fastemb.train.continual import register_and_gate

        report["continual"] = register_and_gate(spec, start, scores, lambda m: evaluate_model(
            model, spec.data, path=m, long_docs=long_docs_eval(spec), multi_view=multi_view_eval(spec)))
    run_dir = spec.run_dir
    (run_dir / "report.json").write_text(json.dumps(report, indent=2))
    training_curve(history, run_dir / "training_curve.png", f"fastemb train: {spec.name}")
    general = scores["general"]
    logger.info(f"test nDCG@10 {base['ndcg@10']:.4f} → {scores['tuned']['ndcg@10']:.4f} "
                f"({scores['delta']['ndcg@10']:+.4f})"
                + (f"; general {general['base']['ndcg@10']:.4f} → {general['tuned']['ndcg@10']:.4f} "
                   f"({general['delta']['ndcg@10']:+.4f})" if general else "")
                + f"; report: {run_dir / 'report.json'}")
    return report


def data_fingerprint(tasks: list, pairs: dict) -> str | dict[str, str]:
    """A fingerprint of the rows each task trains on (its texts in order): one string, or one per task."""
    prints = {task.name: pairs_fingerprint(pairs[task.key]) for task in tasks}
    return prints["train"] if list(prints) == ["train"] else prints


def _publish(spec: TrainJob, report: dict, tracker: Tracker) -> None:
    """The run's results in MLflow: test figures (base and tuned), timings, and report, plot, card and spec files."""
    step = report["plan"]["total_steps"]
    tracker.log_metrics({f"test_{k}": v for k, v in report["tuned"].items()}, step)
    tracker.log_metrics({f"base_test_{k}": v for k, v in report["base"].items()}, 0)
    tracker.log_metrics({"train_seconds": report["train_seconds"], "total_seconds": report["total_seconds"]}, step)
    run_dir = spec.run_dir
    tracker.log_artifacts([run_dir / "report.json", run_dir / "training_curve.png", run_dir / SPEC_FILE])
    tracker.log_artifacts([Path(report["card"])], "model")


def cli_summary(report: dict) -> dict:
    """What ``fastemb train`` prints: base and tuned test nDCG@10 in-domain and general, the model folder, its
    length (and the merge weight, the registry outcome); an image–text run's figures per direction and split."""
    if report.get("image_text"):
        from fastemb.train.image_text_job import image_text_summary

        return image_text_summary(report)
    out = {"base_ndcg@10": report["base"]["ndcg@10"], "tuned_ndcg@10": report["tuned"]["ndcg@10"],
           "delta": report["delta"]["ndcg@10"], "model_dir": report["model_dir"],
           "max_seq_length": report["lengths"]["export"]}
    if report.get("general"):
        out["general_ndcg@10"] = {k: report["general"][k]["ndcg@10"] for k in ("base", "tuned")}
    if report.get("merge"):
        out["merge_weight"] = report["merge"]["weight"]
    ml = report.get("multilingual") or {}
    if ml.get("tuned"):
        out["xx→en accuracy@1"] = {lang: {who: ml[who][lang]["xx→en"]["accuracy@1"] for who in ("base", "tuned")}
                                   for lang in ml["tuned"] if "xx→en" in ml["tuned"][lang]}
    if "continual" in report:
        out["continual"] = {k: report["continual"][k] for k in ("candidate", "outcome", "production_after")}
    return out
