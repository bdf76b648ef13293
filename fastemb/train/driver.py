"""``fastemb train``: evaluate the base model, train with Ray Train + DeepSpeed, export, evaluate again.

Writes to ``{storage_path}/{name}/``: ``model/`` (sentence-transformers format), ``report.json``
(base and tuned test metrics and their delta, data report, timings, spec) and ``training_curve.png``.
Re-running a job with the same name resumes it from its last checkpoint (Ray Train V2).
"""
from __future__ import annotations

import json
import random
import shutil
import time
from pathlib import Path

import pyarrow as pa

from fastemb.data.eval_sets import load_eval_set
from fastemb.errors import FastembError
from fastemb.eval.retrieval import evaluate
from fastemb.model.encoder import Encoder
from fastemb.plots import training_curve
from fastemb.ray_env import init_ray
from fastemb.spec import SpecError, TrainJob
from fastemb.storage import is_uri, pull, push, ray_storage
from fastemb.train.tasks import job_tasks, load_task_pairs


class TrainError(FastembError, RuntimeError):
    """Training failed after Ray's retries; the message says where to look."""


def plan_steps(spec: TrainJob, n_pairs: int | dict[str, int]) -> dict:
    """Micro-steps per epoch (per task too), optimizer steps in total and the dev-evaluation steps.

    ``n_pairs``: the usable pairs, or per task (Ray Dataset name → pairs) for a multi-task job."""
    t = spec.train
    sizes = n_pairs if isinstance(n_pairs, dict) else {"train": n_pairs}
    global_batch = t.micro_batch_size * t.num_workers
    for key, n in sizes.items():
        if global_batch > n:
            of = "" if key == "train" else f" of task {key.removeprefix('train_')!r}"
            raise SpecError(f"invalid job spec:\n  train.micro_batch_size: {t.micro_batch_size} × "
                            f"{t.num_workers} workers = {global_batch} pairs per step exceeds the {n} usable "
                            f"pairs{of}")
    per_task = {key: n // global_batch for key, n in sizes.items()}
    micro_per_epoch = sum(per_task.values())
    total = max(int(t.epochs * micro_per_epoch) // t.grad_accum, 1)
    if t.max_steps:
        total = min(total, t.max_steps)
    every = t.eval_every or max(total // 4, 1)
    eval_steps = sorted(set(range(every, total + 1, every)) | {total}) if every <= total else []
    return {"micro_steps_per_epoch": micro_per_epoch, "total_steps": total, "eval_steps": eval_steps,
            "micro_steps_per_task_epoch": per_task}


def evaluate_model(model: str, spec: TrainJob, split: str = "test") -> dict:
    """Test-split metrics of a model folder or alias, with the job's pooling and max length."""
    m = spec.model
    encoder = Encoder.load(model, pooling=m.pooling, normalize=m.normalize, max_length=m.max_length,
                           synonyms=m.synonyms)
    return evaluate(encoder, load_eval_set(spec.data.eval, split, spec.data.test_queries))


def _base_metrics(spec: TrainJob) -> dict:
    """Base-model test metrics, cached in the run folder so a resumed run does not redo them."""
    cache = spec.run_dir / "base_metrics.json"
    key = {"model": spec.model.model_dump(), "eval": spec.data.eval, "test_queries": spec.data.test_queries}
    if cache.exists():
        cached = json.loads(cache.read_text())
        if cached.get("key") == key:
            return cached["metrics"]
    print(f"[fastemb train] evaluating the base model {spec.model.base} on the test split", flush=True)
    metrics = evaluate_model(spec.model.base, spec)
    cache.write_text(json.dumps({"key": key, "metrics": metrics}, indent=2))
    return metrics


def make_trainer(spec: TrainJob, pairs: list[dict] | dict[str, list[dict]], plan: dict,
                 callbacks: list | None = None):
    """A ``TorchTrainer`` running :func:`train_loop_per_worker` over ``pairs`` (per task: Ray Dataset name → rows,
    each a Ray Dataset sharded per worker; a list is the single task ``train``), with checkpointing, failure retries
    and resumption under ``{storage_path}/{name}``. A task with a negative pool also gets its pairs unsplit."""
    import ray.data
    from ray.train import CheckpointConfig, DataConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from fastemb.logs import ray_train_logging
    from fastemb.train.loop import train_loop_per_worker
    from fastemb.train.negative_pool import pool_dataset_name
    from fastemb.train.tasks import uses_pool

    t = spec.train
    by_task = pairs if isinstance(pairs, dict) else {"train": pairs}
    datasets = {}
    for key, task_rows in by_task.items():
        rows = list(task_rows)
        random.Random(t.seed).shuffle(rows)
        datasets[key] = ray.data.from_arrow(pa.Table.from_pylist(rows))
    split = list(datasets)
    for task in job_tasks(spec):
        if uses_pool(spec, task):
            columns = [{"query": p["query"], "positive": p["positive"], "negatives": list(p["negatives"])}
                       for p in by_task[task.key]]
            datasets[pool_dataset_name(task.key)] = ray.data.from_arrow(pa.Table.from_pylist(
                columns, schema=pa.schema([("query", pa.string()), ("positive", pa.string()),
                                           ("negatives", pa.list_(pa.string()))])))
    storage_path, storage_fs = ray_storage(spec.storage_path)  # checkpoints go straight to an object store
    return TorchTrainer(
        train_loop_per_worker,
        train_loop_config={"spec": spec.model_dump(), **plan},
        scaling_config=ScalingConfig(num_workers=t.num_workers, use_gpu=t.use_gpu,
                                     resources_per_worker={"CPU": t.cpus_per_worker}),
        run_config=RunConfig(name=spec.name, storage_path=storage_path, storage_filesystem=storage_fs,
                             failure_config=FailureConfig(max_failures=t.max_failures),
                             checkpoint_config=CheckpointConfig(num_to_keep=2), callbacks=callbacks,
                             logging_config=ray_train_logging()),
        datasets=datasets,
        dataset_config=DataConfig(datasets_to_split=split),
    )


def fit_and_export(trainer, spec: TrainJob) -> tuple[Path, list[dict]]:
    """Run the trainer; copy the exported model to ``{run_dir}/model``; return it and the history."""
    t = spec.train
    try:
        result = trainer.fit()
    except Exception as err:  # Ray wraps worker errors; say what failed without Ray's internals
        lines = str(err).strip().splitlines()
        raise TrainError(f"training failed after {t.max_failures} retries: {type(err).__name__}: "
                         f"{lines[-1] if lines else ''}\n  checkpoints and logs: {spec.run_dir}") from err
    model_dir = spec.run_dir / "model"
    with result.checkpoint.as_directory() as d:
        if model_dir.exists():
            shutil.rmtree(model_dir)
        shutil.copytree(Path(d) / "model", model_dir)
        history = json.loads((Path(d) / "history.json").read_text())
    return model_dir, history


def run_train(spec: TrainJob) -> dict:
    """Run a training job end to end; returns the report (also written to ``report.json``)."""
    t0 = time.time()
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
        print(f"[fastemb train] pairs{of}: {data_reports[task.name].summary()}", flush=True)
    plan = plan_steps(spec, {key: len(rows) for key, rows in pairs.items()})
    if spec.distill:
        from fastemb.train.distill import check_online_teacher

        check_online_teacher(spec)  # fail before any work when per-token terms cannot use this teacher
    run_dir = spec.run_dir
    run_dir.mkdir(parents=True, exist_ok=True)
    if is_uri(spec.storage_path):
        fetched = pull(spec.storage_path, spec.name, run_dir)
        print(f"[fastemb train] outputs go to {spec.output_location} (staged in {run_dir}; {fetched} earlier "
              f"entries fetched)", flush=True)
    base = _base_metrics(spec)
    print(f"[fastemb train] base test nDCG@10 {base['ndcg@10']:.4f}", flush=True)

    init_ray(spec.ray.address, spec.ray.num_cpus, t.cpus_per_worker)
    teacher_info = None
    if spec.distill:  # teacher scores/embeddings: computed once with Ray Data, stored in the run folder
        from fastemb.train.teacher_outputs import TEACHER_DIR, compute_teacher_outputs

        teacher_info = {}
        for task in tasks:
            if task.distill:
                pairs[task.key], teacher_info[task.name] = compute_teacher_outputs(
                    spec, pairs[task.key], subdir=TEACHER_DIR if not spec.tasks else f"{TEACHER_DIR}/{task.name}")
        if not spec.tasks:
            teacher_info = teacher_info["train"]
    trainer = make_trainer(spec, pairs, plan)
    print(f"[fastemb train] {sum(map(len, pairs.values()))} pairs, {t.num_workers} workers × {t.micro_batch_size} "
          f"(×{t.grad_accum} accumulation), ZeRO-{t.zero_stage}, {t.precision}, {plan['total_steps']} steps",
          flush=True)
    t_train = time.time()
    model_dir, history = fit_and_export(trainer, spec)
    train_s = time.time() - t_train
    print(f"[fastemb train] exported {model_dir}; evaluating it on the test split", flush=True)
    tuned = evaluate_model(str(model_dir), spec)
    delta = {k: tuned[k] - base[k] for k in base if isinstance(base[k], (int, float))}
    report = {
        "name": spec.name, "model_dir": str(model_dir), "output": spec.output_location, "base_model": spec.model.base,
        "base": base, "tuned": tuned, "delta": delta,
        "train_seconds": train_s, "total_seconds": time.time() - t0, "plan": plan,
        "pairs": data_reports["train"].as_dict() if not spec.tasks else {k: r.as_dict() for k, r in data_reports.items()},
        "history": history, "spec": spec.model_dump(),
        "negative_pool_refreshes": [h for h in history if h.get("event") == "negatives_refresh"],
        "resumes": sum(1 for h in history if h.get("event") == "resumed"),
        "domain": next((h for h in history if h.get("event") == "domain"), None),  # new tokens, adapters
        "teacher_outputs": teacher_info,
    }
    if start:
        from fastemb.train.continual import register_and_gate

        report["continual"] = register_and_gate(spec, start, base, tuned, lambda m: evaluate_model(m, spec))
    (run_dir / "report.json").write_text(json.dumps(report, indent=2))
    training_curve(history, run_dir / "training_curve.png", f"fastemb train: {spec.name}")
    if is_uri(spec.storage_path):
        push(run_dir, spec.storage_path, spec.name)
    print(f"[fastemb train] test nDCG@10 {base['ndcg@10']:.4f} → {tuned['ndcg@10']:.4f} "
          f"({delta['ndcg@10']:+.4f}); report: {run_dir / 'report.json'}", flush=True)
    return report
