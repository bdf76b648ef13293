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
from fastemb.data.pairs import load_pairs
from fastemb.errors import FastembError
from fastemb.eval.retrieval import evaluate
from fastemb.model.encoder import Encoder
from fastemb.plots import training_curve
from fastemb.ray_env import init_ray
from fastemb.spec import SpecError, TrainJob


class TrainError(FastembError, RuntimeError):
    """Training failed after Ray's retries; the message says where to look."""


def plan_steps(spec: TrainJob, n_pairs: int) -> dict:
    """Micro-steps per epoch, optimizer steps in total and the dev-evaluation steps."""
    t = spec.train
    global_batch = t.micro_batch_size * t.num_workers
    if global_batch > n_pairs:
        raise SpecError(f"invalid job spec:\n  train.micro_batch_size: {t.micro_batch_size} × "
                        f"{t.num_workers} workers = {global_batch} pairs per step exceeds the {n_pairs} usable pairs")
    micro_per_epoch = n_pairs // global_batch
    total = max(int(t.epochs * micro_per_epoch) // t.grad_accum, 1)
    if t.max_steps:
        total = min(total, t.max_steps)
    every = t.eval_every or max(total // 4, 1)
    eval_steps = sorted(set(range(every, total + 1, every)) | {total}) if every <= total else []
    return {"micro_steps_per_epoch": micro_per_epoch, "total_steps": total, "eval_steps": eval_steps}


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


def make_trainer(spec: TrainJob, pairs: list[dict], plan: dict, callbacks: list | None = None):
    """A ``TorchTrainer`` running :func:`train_loop_per_worker` over ``pairs`` (a Ray Dataset, sharded
    per worker), with checkpointing, failure retries and resumption under ``{storage_path}/{name}``."""
    import ray.data
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from fastemb.train.loop import train_loop_per_worker

    t = spec.train
    rows = list(pairs)
    random.Random(t.seed).shuffle(rows)
    return TorchTrainer(
        train_loop_per_worker,
        train_loop_config={"spec": spec.model_dump(), **plan},
        scaling_config=ScalingConfig(num_workers=t.num_workers, use_gpu=t.use_gpu,
                                     resources_per_worker={"CPU": t.cpus_per_worker}),
        run_config=RunConfig(name=spec.name, storage_path=spec.storage_path,
                             failure_config=FailureConfig(max_failures=t.max_failures),
                             checkpoint_config=CheckpointConfig(num_to_keep=2), callbacks=callbacks),
        datasets={"train": ray.data.from_arrow(pa.Table.from_pylist(rows))},
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
    pairs, data_report = load_pairs(spec.data.train, spec.data.max_pairs, spec.loss.hard_negatives, t.seed)
    print(f"[fastemb train] pairs: {data_report.summary()}", flush=True)
    plan = plan_steps(spec, len(pairs))
    if spec.distill:
        from fastemb.train.distill import check_online_teacher

        check_online_teacher(spec)  # fail before any work when per-token terms cannot use this teacher
    run_dir = spec.run_dir
    run_dir.mkdir(parents=True, exist_ok=True)
    base = _base_metrics(spec)
    print(f"[fastemb train] base test nDCG@10 {base['ndcg@10']:.4f}", flush=True)

    init_ray(spec.ray.address, spec.ray.num_cpus, t.cpus_per_worker)
    teacher_info = None
    if spec.distill:  # teacher scores/embeddings: computed once with Ray Data, stored in the run folder
        from fastemb.train.teacher_outputs import compute_teacher_outputs

        pairs, teacher_info = compute_teacher_outputs(spec, pairs)
    trainer = make_trainer(spec, pairs, plan)
    print(f"[fastemb train] {len(pairs)} pairs, {t.num_workers} workers × {t.micro_batch_size} "
          f"(×{t.grad_accum} accumulation), ZeRO-{t.zero_stage}, {t.precision}, {plan['total_steps']} steps",
          flush=True)
    t_train = time.time()
    model_dir, history = fit_and_export(trainer, spec)
    train_s = time.time() - t_train
    print(f"[fastemb train] exported {model_dir}; evaluating it on the test split", flush=True)
    tuned = evaluate_model(str(model_dir), spec)
    delta = {k: tuned[k] - base[k] for k in base if isinstance(base[k], (int, float))}
    report = {
        "name": spec.name, "model_dir": str(model_dir), "base_model": spec.model.base,
        "base": base, "tuned": tuned, "delta": delta,
        "train_seconds": train_s, "total_seconds": time.time() - t0, "plan": plan,
        "pairs": data_report.as_dict(), "history": history, "spec": spec.model_dump(),
        "resumes": sum(1 for h in history if h.get("event") == "resumed"),
        "teacher_outputs": teacher_info,
    }
    if start:
        from fastemb.train.continual import register_and_gate

        report["continual"] = register_and_gate(spec, start, base, tuned, lambda m: evaluate_model(m, spec))
    (run_dir / "report.json").write_text(json.dumps(report, indent=2))
    training_curve(history, run_dir / "training_curve.png", f"fastemb train: {spec.name}")
    print(f"[fastemb train] test nDCG@10 {base['ndcg@10']:.4f} → {tuned['ndcg@10']:.4f} "
          f"({delta['ndcg@10']:+.4f}); report: {run_dir / 'report.json'}", flush=True)
    return report
