"""The per-worker training loop handed to Ray Train's ``TorchTrainer``.

Each worker first applies the accelerator the spec picks (``fastemb.accelerator``: DeepSpeed's CUDA accelerator with
``train.use_gpu``, its CPU one otherwise), builds the encoder, wraps it in a DeepSpeed engine (Ray has already created
the process group: gloo on CPU, NCCL on GPU), streams its shard of the pairs from Ray Data, and
optimises InfoNCE with negatives gathered from every worker. Every ``checkpoint_every`` steps each
rank saves its DeepSpeed shard and all ranks call ``ray.train.report`` with it; after a failure
Ray restarts the workers and the loop resumes from the last checkpoint. At the end rank 0 puts the
consolidated model (sentence-transformers format, at its inference length: fastemb/train/export.py) into the final
checkpoint; dev evaluations run at the training length (``model.max_length``). Under ZeRO-3, whose parameters are
partitioned across the ranks, every rank evaluates and the export gathers them first. ``model.keep_layers`` /
``model.num_layers`` make the student from a subset of the base's layers; with a ``distill`` section the loss is
``fastemb.train.distill.DistillObjective`` (InfoNCE plus the distillation terms) and only the student is exported.
With ``tasks`` each micro-batch comes from one task drawn by weight (``fastemb.train.tasks``); with
``negatives_pool`` the hard negatives are mined again with the current model every N steps
(``fastemb.train.negative_pool``; the pool's table is part of the checkpoint).

What the loop changes as it runs is one ``TrainState`` (``fastemb.train.state``); its checkpoints and reports to
Ray Train are ``fastemb.train.checkpointing``.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any, Iterator

from fastemb.train.state import LossWindow, TrainState

logger = logging.getLogger(__name__)


def _build_engine(spec, total_steps: int, accelerator=None, device_index: int | None = None):
    """The DeepSpeed engine of this worker on ``accelerator`` (``fastemb.accelerator.Accelerator``; default: the one
    the spec picks, applied here); ``device_index``: the CUDA device Ray Train gave this worker (workers sharing a GPU
    share its index)."""
    from types import SimpleNamespace

    from fastemb.accelerator import apply_accelerator, training_precision

    t = spec.train
    accelerator = accelerator or apply_accelerator(t.use_gpu, t.gpus_per_worker, t.num_workers)
    import deepspeed
    import torch

    from fastemb.logs import hidden_prints
    from fastemb.model.encoder import Encoder
    from fastemb.model.layers import cut_to_student
    from fastemb.train.deepspeed_config import deepspeed_config, preload_cpu_comm_op
    from fastemb.train.param_groups import param_groups
    from fastemb.train.schedule import warmup_decay

    m = spec.model
    if spec.image_text:  # the two-tower model (fastemb/model/image_text.py), the same initialisation on every rank
        from fastemb.model.image_text import ImageTextModel

        model = encoder = ImageTextModel.from_spec(spec)
    else:
        encoder = Encoder.from_spec(m)
        cut_to_student(encoder.transformer, m.keep_layers, m.num_layers)
        model = encoder
    if m.new_tokens or m.adapters:  # domain tokens, adapters with the base frozen (fastemb/model/domain.py)
        from fastemb.model.domain import adapt_encoder

        adapt_encoder(encoder, m)
    if spec.distill:  # the student plus the distillation losses' projections: one optimizer, one checkpoint
        from fastemb.train.distill import build_distill_model

        model = build_distill_model(spec, encoder)
    slower = {"text.": t.lr * spec.image_text.text_lr_scale} if spec.image_text else None
    optimizer = torch.optim.AdamW(param_groups(model, t.weight_decay, slower), lr=t.lr)  # trainable parameters only
    scheduler = warmup_decay(optimizer, total_steps, t.warmup_ratio, t.schedule)
    preload_cpu_comm_op()
    precision = training_precision(t.precision, accelerator.device)
    # DeepSpeed takes its device from LOCAL_RANK unless told; Ray Train's device is the right one for shared GPUs
    args = SimpleNamespace(device_rank=device_index) if device_index is not None else None
    with hidden_prints():  # DeepSpeed prints "... shm_comm_op built successfully" on every rank
        engine, _, _, _ = deepspeed.initialize(args=args, model=model, optimizer=optimizer, lr_scheduler=scheduler,
                                               config=deepspeed_config(t, precision, accelerator))
    return engine


def _partitioned(engine) -> bool:
    """ZeRO-3: each rank holds a slice of every parameter, so every forward pass needs all ranks."""
    return bool(engine.zero_optimization_partition_weights())


def _student(engine):
    """The model being trained and exported (a distillation run wraps it with its loss heads)."""
    return getattr(engine.module, "student", engine.module)


def _dev_eval(engine, spec, compression: dict | None) -> dict:
    """Dev nDCG@10 of the current model, and after compression when the job asks for it."""
    from fastemb.data.eval_sets import load_eval_set
    from fastemb.eval.compressed import compressed_retrieval
    from fastemb.eval.retrieval import exact_search, metrics_of_hits

    from fastemb.train.tasks import long_docs_eval, multi_view_eval

    student = _student(engine)
    if spec.image_text:  # text → image and image → text on the dev split's unseen concepts
        from fastemb.eval.image_text import evaluate_image_text, load_split

        m = evaluate_image_text(student, load_split(spec.data.eval, "dev", spec.image_text))
        return {"dev_ndcg@10": m["text_to_image"]["ndcg@10"], "dev_recall@10": m["text_to_image"]["recall@10"],
                "dev_recall@10_image_to_text": m["image_to_text"]["recall@10"]}
    dev = load_eval_set(spec.data.eval, "dev", spec.data.dev_queries, spec.data.dev_corpus)
    if spec.long_docs:  # documents scored from their chunks (fastemb/eval/long_docs.py)
        from fastemb.eval.long_docs import evaluate_long_docs

        return {"dev_ndcg@10": evaluate_long_docs(student, dev, **long_docs_eval(spec))["ndcg@10"]}
    if spec.multi_view:  # items scored from their views (fastemb/eval/multi_view.py)
        from fastemb.eval.multi_view import evaluate_multi_view

        m = evaluate_multi_view(student, dev, split="dev", **multi_view_eval(spec))
        return {"dev_ndcg@10": m["ndcg@10"], "dev_ndcg@10_fused": m["ndcg@10_fused"],
                "dev_ndcg@10_max": m["ndcg@10_max"]}
    corpus, queries = student.encode(dev.corpus), student.encode(dev.queries)
    _, idx = exact_search(queries, corpus, 100, normalized=student.normalize)
    out = {"dev_ndcg@10": metrics_of_hits(idx, dev)["ndcg@10"]}
    if compression:
        c = compressed_retrieval(corpus, queries, dev, **compression)
        out.update({"dev_ndcg@10_compressed": c["ndcg@10"], "bytes_per_vector": c["bytes_per_vector"],
                    "compression_x": c["compression_x"]})
    return out


@dataclass
class Worker:
    """What one worker holds fixed for the whole run."""
    spec: Any  # the TrainJob
    rank: int
    engine: Any  # the DeepSpeed engine
    tasks: list  # fastemb.train.tasks.Task
    objectives: list  # per task: (batch, ids) → (loss, unweighted terms)
    schedule: Any  # task index of each micro-step (np.ndarray)
    pools: dict  # task key → NegativePool, for the tasks whose negatives the pool refreshes
    streams: list[Iterator[list[dict]]]  # per task: its micro-batches
    progress: Any  # ProgressLine
    total_steps: int
    eval_steps: set[int]
    dev_compression: dict | None
    sink: Any = None  # rank 0's MetricSink: live metrics to the driver's MLflow run (fastemb/tracking/sink.py)

    def refresh_due(self, step: int) -> bool:
        """Whether the negative pools are mined again after ``step`` (every ``refresh_every``, not after the last)."""
        return bool(self.pools) and step % self.spec.negatives_pool.refresh_every == 0 and step < self.total_steps

    def checkpoint_due(self, step: int) -> bool:
        """Whether ``step`` is checkpointed (every ``checkpoint_every`` and at dev evaluations, not the last)."""
        return step < self.total_steps and (step % self.spec.train.checkpoint_every == 0 or step in self.eval_steps)


def train_loop_per_worker(config: dict) -> None:
    """Ray Train entry point; ``config`` holds the job spec and the step plan made by the driver."""
    from fastemb.accelerator import apply_accelerator
    from fastemb.spec import TrainJob

    spec = TrainJob.model_validate(config["spec"])
    t = spec.train
    accelerator = apply_accelerator(t.use_gpu, t.gpus_per_worker, t.num_workers)  # before DeepSpeed is imported
    import ray.train
    import torch

    from fastemb.train.checkpointing import report_final, report_if_finished, save_and_report
    from fastemb.train.export import export_length

    torch.set_num_threads(spec.train.cpus_per_worker)
    torch.manual_seed(spec.train.seed)
    ctx = ray.train.get_context()
    checkpoint = ray.train.get_checkpoint()
    if checkpoint and report_if_finished(checkpoint, ctx.get_world_rank()):
        return  # the run had already finished: nothing to train, its export was reported again

    w, state = _start(spec, config, ctx.get_world_rank(), ctx.get_world_size(), checkpoint, accelerator)
    while state.step < w.total_steps:
        loss = _optimizer_step(w, state)
        _log_progress(w, state, loss.item())
        if w.refresh_due(state.step):
            _refresh_pools(w.engine, w.pools, list(w.pools), state, w.rank)
        if state.step in w.eval_steps:
            _evaluate(w, state)
        if w.checkpoint_due(state.step):
            save_and_report(w.engine, state, w.rank)
    if w.sink is not None:
        w.sink.close(timeout_s=5)  # bounded: a store that hangs costs at most this, once
    _record_peak_memory(state, w.rank)
    report_final(_student(w.engine), state, w.rank, export_length(spec),
                 w.engine if _partitioned(w.engine) else None)


def _start(spec, config: dict, rank: int, world: int, checkpoint, accelerator) -> tuple[Worker, TrainState]:
    """Build the engine, each task's objective and stream and the negative pools; resume from ``checkpoint``."""
    import ray.train

    from fastemb.train.progress import ProgressLine
    from fastemb.train.tasks import (job_tasks, micro_batches_done, task_objective, task_schedule, task_stream,
                                     uses_pool)

    t, total_steps = spec.train, config["total_steps"]
    device_index = None
    if accelerator.on_gpu:
        import ray.train.torch

        device_index = ray.train.torch.get_device().index
    engine = _build_engine(spec, total_steps, accelerator, device_index)
    teacher = None
    if spec.distill:
        from fastemb.train.distill import load_online_teacher

        teacher = load_online_teacher(spec)
    tasks = job_tasks(spec)  # one task (``train``) unless the job has a tasks section
    objectives = [task_objective(spec, task, engine.module, teacher) for task in tasks]
    schedule = task_schedule([task.weight for task in tasks], total_steps * t.grad_accum, t.seed)
    state = _resume(engine, checkpoint, rank) if checkpoint else _fresh_state(engine, rank, accelerator)
    pools = {}
    if any(uses_pool(spec, task) for task in tasks):  # the pool's module imports faiss: only a job that mines does
        from fastemb.train.negative_pool import load_pools

        pools = load_pools(spec, tasks, state.negative_pools)
    _refresh_pools(engine, pools, [key for key, pool in pools.items() if pool.needs_mining], state, rank)
    done = micro_batches_done(schedule, state.micro, len(tasks))
    streams = [task_stream(ray.train.get_dataset_shard(task.key), t, config["micro_steps_per_task_epoch"][task.key],
                           done[i], i, by_length=task.kind != "image_text") for i, task in enumerate(tasks)]
    progress = ProgressLine(total_steps, t.micro_batch_size * t.grad_accum * world, t.log_every, state.step,
                            verbose=rank == 0)
    engine.train()
    sink = None
    if rank == 0 and config.get("tracking"):
        from fastemb.tracking.sink import MetricSink

        sink = MetricSink(config["tracking"]["uri"], config["tracking"]["run_id"])
    return Worker(spec, rank, engine, tasks, objectives, schedule, pools, streams, progress, total_steps,
                  set(config["eval_steps"]), config.get("dev_compression"), sink), state


def _resume(engine, checkpoint, rank: int) -> TrainState:
    """The engine and training state of ``checkpoint``; the history records the resumption."""
    from fastemb.train.checkpointing import restore_state

    state = restore_state(engine, checkpoint)
    state.history.append({"step": state.step, "event": "resumed", "attempt_rank": rank})
    if rank == 0:
        logger.info(f"resumed from checkpoint at step {state.step}")
    return state


def _fresh_state(engine, rank: int, accelerator) -> TrainState:
    """A new run's state; its history starts with the engine's settings (device, backend, precision, ZeRO stage) and
    the model's adaptation (``model.new_tokens`` / ``adapters``)."""
    state = TrainState()
    if rank == 0:
        settings = {"accelerator": accelerator.device, "backend": accelerator.backend,
                    "accelerator_source": accelerator.source, "device": str(engine.device),
                    "precision": _engine_precision(engine), "zero_stage": int(engine.zero_optimization_stage())}
        state.history.append({"step": 0, "event": "engine", **settings})
        logger.info("DeepSpeed on {device} ({backend}, DS_ACCELERATOR {accelerator} from the {accelerator_source}), "
                    "{precision}, ZeRO-{zero_stage}".format(**settings))
    adaptation = getattr(_student(engine), "adaptation", None)
    if adaptation and rank == 0:
        from fastemb.model.domain import describe_adaptation

        state.history.append({"step": 0, "event": "domain", **adaptation})
        logger.info(describe_adaptation(adaptation))
    return state


def _engine_precision(engine) -> str:
    """The precision the engine trains in."""
    return "bf16" if engine.bfloat16_enabled() else "fp16" if engine.fp16_enabled() else "fp32"


def _refresh_pools(engine, pools: dict, keys: list[str], state: TrainState, rank: int) -> None:
    """Mine the negatives of the pools ``keys`` again with the current model; the state keeps every pool's table."""
    for key in keys:
        from fastemb.train.negative_pool import describe_refresh  # a job without pools never imports faiss here

        stats = pools[key].refresh(_student(engine), state.step)
        if rank == 0:
            state.history.append({**stats, "time": time.time()})
            logger.info(describe_refresh(stats))
    engine.train()
    state.negative_pools = {key: pool.state_dict() for key, pool in pools.items()}


def _optimizer_step(w: Worker, state: TrainState):
    """``train.grad_accum`` micro-batches, then one optimizer step; returns the last micro-batch's loss. With the
    cached loss the engine runs unmanaged accumulation (fastemb/train/grad_cache.py): its step is called once here."""
    for _ in range(w.spec.train.grad_accum):
        loss = _micro_step(w, state)
    if w.spec.train.cached:
        w.engine.step()
    state.step += 1
    state.window.steps += 1
    return loss


def _micro_step(w: Worker, state: TrainState):
    """One micro-batch of its scheduled task: forward, backward, engine step (DeepSpeed steps the optimizer at the
    accumulation boundary); with ``train.cache_mini_batch`` the cached loss's chunked forwards and backwards instead
    (``fastemb.train.grad_cache``; the step is ``_optimizer_step``'s). Returns its loss."""
    import torch

    from fastemb.train.batching import batch_hashes

    index = int(w.schedule[state.micro])
    task = w.tasks[index]
    batch = next(w.streams[index])
    if task.key in w.pools:
        batch = w.pools[task.key].apply(batch)
    ids = {} if task.kind == "image_text" else {  # the image–text objective hashes concepts and captions itself
        name: torch.from_numpy(v) for name, v in batch_hashes(batch, task.loss.hard_negatives).items()}
    objective = w.objectives[index]
    if w.spec.train.cached:
        from fastemb.train.grad_cache import cached_backward

        loss, terms = cached_backward(objective.student.embed, objective.columns(batch),
                                      lambda embeddings: objective.loss_terms(embeddings, ids),
                                      w.spec.train.cache_mini_batch, w.engine.backward), {}
    else:
        loss, terms = objective(batch, ids)
        w.engine.backward(loss)
        w.engine.step()
    state.window.add_micro_batch(task.name, loss.item(), terms, w.spec.train.grad_accum)
    state.micro += 1
    return loss


def _log_progress(w: Worker, state: TrainState, loss: float) -> None:
    """The progress line (logged by rank 0); on its steps rank 0's history gets the loss terms since the last one."""
    by_task = state.window.task_means() if w.spec.tasks else {}
    stats = w.progress.update(state.step, loss, by_task)
    if not stats:
        return
    if w.rank == 0:
        entry = {**stats, **state.window.term_means(), **{f"loss_task_{n}": v for n, v in by_task.items()},
                 "lr": w.engine.get_lr()[0], "time": time.time()}
        state.history.append(entry)
        if w.sink is not None:
            w.sink.log(entry, state.step, entry["time"])
    state.window = LossWindow()


def _record_peak_memory(state: TrainState, rank: int) -> None:
    """Every worker's peak resident memory (MiB, its process's ``ru_maxrss``), gathered into rank 0's history: the
    report's ``peak_rss_mib``, one entry per rank."""
    import resource

    import torch.distributed as dist

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    peaks = [peak]
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        peaks = [None] * dist.get_world_size()
        dist.all_gather_object(peaks, peak)
    if rank == 0:
        state.history.append({"step": state.step, "event": "memory", "peak_rss_mib": peaks})


def _evaluate(w: Worker, state: TrainState) -> None:
    """Dev evaluation on rank 0 (the other ranks' dev metrics are empty); under ZeRO-3 every rank runs the same forward
    passes, which gather the partitioned parameters."""
    evaluates = w.rank == 0 or _partitioned(w.engine)
    dev = _dev_eval(w.engine, w.spec, w.dev_compression) if evaluates else {}
    state.dev = dev if w.rank == 0 else {}
    if w.rank == 0:
        state.history.append({"step": state.step, **state.dev})
        logger.info(f"step {state.step}: " + ", ".join(f"{name} {value:.4f}" for name, value in state.dev.items()))
        if w.sink is not None:
            w.sink.log(state.dev, state.step)
    w.engine.train()
