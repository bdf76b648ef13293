"""The Ray Train side of a training job: the step plan, the ``TorchTrainer`` running the per-worker loop
(fastemb/train/loop.py) with checkpoints, retries and resumption, and the export of its result. Used by
``fastemb train`` (fastemb/train/job.py) and by each Tune trial (fastemb/tune/trial.py)."""
from __future__ import annotations

import json
import logging
import random
import shutil
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.fs as pafs

from fastemb.errors import FastembError
from fastemb.spec import SpecError, TrainJob
from fastemb.spec.paths import absolute_inputs
from fastemb.storage import is_uri, ray_storage, remote_run_dir
from fastemb.train.checkpointing import HISTORY_FILE
from fastemb.train.tasks import job_tasks, uses_pool


logger = logging.getLogger(__name__)


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


def worker_resources(spec: TrainJob) -> dict[str, float]:
    """What each Ray Train worker asks Ray for: ``train.cpus_per_worker`` CPUs, and ``train.gpus_per_worker`` GPUs
    with ``train.use_gpu``."""
    t = spec.train
    return {"CPU": t.cpus_per_worker, **({"GPU": t.gpus_per_worker} if t.use_gpu else {})}


def scaling_and_backend(spec: TrainJob):
    """Ray Train's ``ScalingConfig`` and ``TorchConfig`` for the job: its workers' resources, and the process-group
    backend of the accelerator the spec picks (``fastemb.accelerator``; the driver warns here when an explicit
    ``DS_ACCELERATOR`` overrides it)."""
    from ray.train import ScalingConfig
    from ray.train.torch import TorchConfig

    from fastemb.accelerator import resolve_accelerator

    t = spec.train
    accelerator = resolve_accelerator(t.use_gpu, t.gpus_per_worker, t.num_workers)
    return (ScalingConfig(num_workers=t.num_workers, use_gpu=t.use_gpu, resources_per_worker=worker_resources(spec)),
            TorchConfig(backend=accelerator.backend))


def make_trainer(spec: TrainJob, pairs: list[dict] | dict[str, list[dict]], plan: dict,
                 callbacks: list | None = None, tracking: dict | None = None):
    """A ``TorchTrainer`` running :func:`train_loop_per_worker` over ``pairs`` (per task: Ray Dataset name → rows,
    each a Ray Dataset sharded per worker; a list is the single task ``train``), with checkpointing, failure retries
    and resumption under ``{storage_path}/{name}``. A task with a negative pool also gets its pairs unsplit.
    ``tracking``: the MLflow run rank 0 adds its live metrics to (``Tracker.worker_config()``; None: none)."""
    import ray.data
    from ray.train import CheckpointConfig, DataConfig, FailureConfig, RunConfig
    from ray.train.torch import TorchTrainer

    from fastemb.logs import ray_train_logging
    from fastemb.train.loop import train_loop_per_worker
    from fastemb.train.negative_pool import pool_dataset_name

    t = spec.train
    by_task = pairs if isinstance(pairs, dict) else {"train": pairs}
    datasets = {}
    kinds = {task.key: task.kind for task in job_tasks(spec)}
    for key, task_rows in by_task.items():
        rows = list(task_rows)
        random.Random(t.seed).shuffle(rows)
        if kinds.get(key) == "image_text":  # decoded and augmented as it streams (fastemb/data/image_stream.py)
            from fastemb.data.image_stream import image_dataset

            datasets[key] = image_dataset(rows, spec)
        else:
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
    scaling, backend = scaling_and_backend(spec)
    return TorchTrainer(
        train_loop_per_worker,
        # the workers run in Ray Train's own working directory: relative inputs (an evaluation folder) made absolute
        train_loop_config={"spec": absolute_inputs(spec).model_dump(), **plan, "tracking": tracking},
        scaling_config=scaling, torch_config=backend,
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
    with result.checkpoint.as_directory() as d:
        return export_checkpoint(pafs.LocalFileSystem(), str(Path(d).resolve()), spec)


def finished_checkpoint(spec: TrainJob) -> tuple[pafs.FileSystem, str] | None:
    """The final checkpoint of an earlier run of this job (the exported model and the history, which only the last
    report of a finished run holds), in the run folder or its object store; None when the run has not finished.

    Ray Train would resume such a run and report that checkpoint again (fastemb/train/checkpointing.py); finding it
    here returns the result without starting a worker group."""
    fs, root = remote_run_dir(spec.storage_path, spec.name) if is_uri(spec.storage_path) else \
        (pafs.LocalFileSystem(), str(spec.run_dir.resolve()))
    try:
        entries = fs.get_file_info(pafs.FileSelector(root, allow_not_found=True))
    except OSError:
        return None
    checkpoints = sorted((i.path for i in entries if i.type == pafs.FileType.Directory
                          and i.base_name.startswith("checkpoint_")), reverse=True)
    for path in checkpoints:
        if fs.get_file_info(f"{path}/{HISTORY_FILE}").type == pafs.FileType.File:
            return fs, path
    return None


def export_checkpoint(fs: pafs.FileSystem, checkpoint: str, spec: TrainJob) -> tuple[Path, list[dict]]:
    """Copy a final checkpoint's model to ``{run_dir}/model``; return it and the checkpoint's history."""
    model_dir = spec.run_dir / "model"
    if model_dir.exists():
        shutil.rmtree(model_dir)
    pafs.copy_files(f"{checkpoint}/model", str(model_dir.resolve()), source_filesystem=fs,
                    destination_filesystem=pafs.LocalFileSystem())
    with fs.open_input_stream(f"{checkpoint}/{HISTORY_FILE}") as f:
        history = json.loads(f.read())
    return model_dir, history


def fit_or_reuse(spec: TrainJob, rows: dict[str, list[dict]], plan: dict, tracker, describe: str
                 ) -> tuple[Path, list[dict], float]:
    """Train on ``rows`` (per task) and export, or take the result of an earlier run of this job that finished
    (without starting a worker group); returns the exported model's folder, the history and the seconds it took.
    ``tracker``: the job's MLflow run (fastemb/tracking/run.py); ``describe``: what the start line says of the run."""
    from fastemb.ray_env import init_ray

    finished, t0 = finished_checkpoint(spec), time.time()
    if finished:
        logger.info(f"the run already finished; its exported model is in {finished[1]}")
        model_dir, history = export_checkpoint(*finished, spec)
        if not tracker.resumed:  # tracking started after the training ran: its history, after the fact
            tracker.log_history(history)
    else:
        init_ray(spec.ray.address, spec.ray.num_cpus, spec.train.cpus_per_worker)
        trainer = make_trainer(spec, rows, plan, tracking=tracker.worker_config())
        logger.info(f"{describe}, {plan['total_steps']} steps")
        model_dir, history = fit_and_export(trainer, spec)
    return model_dir, history, time.time() - t0
