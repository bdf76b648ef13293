"""The per-worker training loop handed to Ray Train's ``TorchTrainer``.

Each worker builds the encoder, wraps it in a DeepSpeed engine (Ray has already created the
process group: gloo on CPU, NCCL on GPU), streams its shard of the pairs from Ray Data, and
optimises InfoNCE with negatives gathered from every worker. Every ``checkpoint_every`` steps each
rank saves its DeepSpeed shard and all ranks call ``ray.train.report`` with it; after a failure
Ray restarts the workers and the loop resumes from the last checkpoint. At the end rank 0 puts the
consolidated model (sentence-transformers format) into the final checkpoint. ``model.keep_layers`` /
``model.num_layers`` make the student from a subset of the base's layers; with a ``distill`` section the loss is
``fastemb.train.distill.DistillObjective`` (InfoNCE plus the distillation terms) and only the student is exported.
With ``tasks`` each micro-batch comes from one task drawn by weight (``fastemb.train.tasks``); with
``negatives_pool`` the hard negatives are mined again with the current model every N steps
(``fastemb.train.negative_pool``; the pool's table is part of the checkpoint).
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from pathlib import Path

CHECKPOINT_TAG = "fastemb"


def _build_engine(spec, total_steps: int):
    import deepspeed
    import torch

    from fastemb.logs import hidden_prints
    from fastemb.model.encoder import Encoder
    from fastemb.model.layers import keep_layers, student_layers
    from fastemb.train.deepspeed_config import deepspeed_config, preload_cpu_comm_op
    from fastemb.train.param_groups import param_groups
    from fastemb.train.schedule import warmup_decay

    m, t = spec.model, spec.train
    encoder = Encoder.load(m.base, pooling=m.pooling, normalize=m.normalize, max_length=m.max_length,
                           synonyms=m.synonyms)
    layers = student_layers(encoder.transformer, m.keep_layers, m.num_layers)
    if layers is not None:
        keep_layers(encoder.transformer, layers)
    if m.new_tokens or m.adapters:  # domain tokens, adapters with the base frozen (fastemb/model/domain.py)
        from fastemb.model.domain import adapt_encoder

        adapt_encoder(encoder, m)
    model = encoder
    if spec.distill:  # the student plus the distillation losses' projections: one optimizer, one checkpoint
        from fastemb.train.distill import build_distill_model

        model = build_distill_model(spec, encoder)
    optimizer = torch.optim.AdamW(param_groups(model, t.weight_decay), lr=t.lr)  # trainable parameters only
    scheduler = warmup_decay(optimizer, total_steps, t.warmup_ratio, t.schedule)
    preload_cpu_comm_op()
    with hidden_prints():  # DeepSpeed prints "... shm_comm_op built successfully" on every rank
        engine, _, _, _ = deepspeed.initialize(model=model, optimizer=optimizer, lr_scheduler=scheduler,
                                               config=deepspeed_config(t))
    return engine


def _student(engine):
    """The model being trained and exported (a distillation run wraps it with its loss heads)."""
    return getattr(engine.module, "student", engine.module)


def _dev_eval(engine, spec, compression: dict | None) -> dict:
    """Dev nDCG@10 of the current model, and after compression when the job asks for it."""
    from fastemb.data.eval_sets import load_eval_set
    from fastemb.eval.compressed import compressed_retrieval
    from fastemb.eval.retrieval import exact_search, metrics_of_hits

    dev = load_eval_set(spec.data.eval, "dev", spec.data.dev_queries, spec.data.dev_corpus)
    student = _student(engine)
    corpus, queries = student.encode(dev.corpus), student.encode(dev.queries)
    _, idx = exact_search(queries, corpus, 100, normalized=student.normalize)
    out = {"dev_ndcg@10": metrics_of_hits(idx, dev)["ndcg@10"]}
    if compression:
        c = compressed_retrieval(corpus, queries, dev, **compression)
        out.update({"dev_ndcg@10_compressed": c["ndcg@10"], "bytes_per_vector": c["bytes_per_vector"],
                    "compression_x": c["compression_x"]})
    return out


def train_loop_per_worker(config: dict) -> None:
    """Ray Train entry point; ``config`` holds the job spec and the step plan made by the driver."""
    os.environ.setdefault("DS_ACCELERATOR", "cpu")
    import ray.train
    import torch

    from fastemb.spec import TrainJob
    from fastemb.train.batching import batch_hashes
    from fastemb.train.negative_pool import describe_refresh, load_pools
    from fastemb.train.progress import ProgressLine
    from fastemb.train.tasks import job_tasks, micro_batches_done, task_objective, task_schedule, task_stream

    spec = TrainJob.model_validate(config["spec"])
    t = spec.train
    torch.set_num_threads(t.cpus_per_worker)
    torch.manual_seed(t.seed)
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    total_steps = config["total_steps"]
    eval_steps = set(config["eval_steps"])

    checkpoint = ray.train.get_checkpoint()
    if checkpoint and _report_if_finished(checkpoint, rank):
        return  # the run had already finished: nothing to train, its export was reported again

    engine = _build_engine(spec, total_steps)
    teacher = None
    if spec.distill:
        from fastemb.train.distill import load_online_teacher

        teacher = load_online_teacher(spec)
    tasks = job_tasks(spec)  # one task (``train``) unless the job has a tasks section
    objectives = [task_objective(spec, task, engine.module, teacher) for task in tasks]
    schedule = task_schedule([task.weight for task in tasks], total_steps * t.grad_accum, t.seed)
    term_sums: dict[str, float] = {}  # loss terms summed over the steps since the last progress line
    term_steps = 0
    task_losses: dict[str, list[float]] = {}  # per task: losses of its micro-batches since the last progress line

    step, micro, history, dev, pool_state = 0, 0, [], {}, None
    if checkpoint:
        with checkpoint.as_directory() as d:
            _, state = engine.load_checkpoint(d, tag=CHECKPOINT_TAG)
        step, micro, history = state["step"], state["micro"], state["history"]
        pool_state = state.get("negative_pools")
        history.append({"step": step, "event": "resumed", "attempt_rank": rank})
        if rank == 0:
            print(f"[fastemb train] resumed from checkpoint at step {step}", flush=True)
    adaptation = getattr(_student(engine), "adaptation", None)  # model.new_tokens / model.adapters report
    if adaptation and not checkpoint and rank == 0:
        from fastemb.model.domain import describe_adaptation

        history.append({"step": 0, "event": "domain", **adaptation})
        print(f"[fastemb train] {describe_adaptation(adaptation)}", flush=True)

    pools = load_pools(spec, tasks, pool_state)  # task key → NegativePool, for tasks whose negatives it refreshes

    def refresh(pool_list) -> None:
        for pool in pool_list:
            stats = pool.refresh(_student(engine), step)
            if rank == 0:
                history.append({**stats, "time": time.time()})
                print(f"[fastemb train] {describe_refresh(stats)}", flush=True)
        engine.train()

    refresh([pool for pool in pools.values() if pool.needs_mining])  # pairs without negatives: mine before step 1
    done = micro_batches_done(schedule, micro, len(tasks))
    streams = [task_stream(ray.train.get_dataset_shard(task.key), t, config["micro_steps_per_task_epoch"][task.key],
                           done[i], i) for i, task in enumerate(tasks)]
    progress = ProgressLine(total_steps, t.micro_batch_size * t.grad_accum * world, t.log_every, step,
                            verbose=rank == 0)
    engine.train()
    while step < total_steps:
        index = int(schedule[micro])
        task = tasks[index]
        batch = next(streams[index])
        if task.key in pools:
            batch = pools[task.key].apply(batch)
        ids = {name: torch.from_numpy(v) for name, v in batch_hashes(batch, task.loss.hard_negatives).items()}
        loss, terms = objectives[index](batch, ids)
        for name, value in terms.items():
            term_sums[name] = term_sums.get(name, 0.0) + value / t.grad_accum
        task_losses.setdefault(task.name, []).append(loss.item())
        engine.backward(loss)
        engine.step()
        micro += 1
        if micro % t.grad_accum:
            continue
        step += 1
        term_steps += 1
        by_task = {name: sum(v) / len(v) for name, v in task_losses.items()} if spec.tasks else {}
        stats = progress.update(step, loss.item(), by_task)
        if stats and rank == 0:
            terms = {f"loss_{name}": v / term_steps for name, v in term_sums.items()}
            history.append({**stats, **terms, **{f"loss_task_{n}": v for n, v in by_task.items()},
                            "lr": engine.get_lr()[0], "time": time.time()})
        if stats:
            term_sums, term_steps, task_losses = {}, 0, {}
        if pools and step % spec.negatives_pool.refresh_every == 0 and step < total_steps:
            refresh(pools.values())
        if step in eval_steps:
            dev = _dev_eval(engine, spec, config.get("dev_compression")) if rank == 0 else {}
            if rank == 0:
                history.append({"step": step, **dev})
                print(f"[fastemb train] step {step}: " + ", ".join(f"{name} {value:.4f}" for name, value in dev.items()),
                      flush=True)
            engine.train()
        if step < total_steps and (step % t.checkpoint_every == 0 or step in eval_steps):
            state = {"step": step, "micro": micro, "history": history,
                     "negative_pools": {key: pool.state_dict() for key, pool in pools.items()}}
            _save_and_report(engine, state, rank, dev)
    _final_report(engine, history, step, rank, dev)


def _report_if_finished(checkpoint, rank: int) -> bool:
    """A final checkpoint (exported model, no DeepSpeed state) means the run is complete: every rank
    reports it again, so re-running a finished job returns its result instead of failing to resume."""
    import ray.train

    with checkpoint.as_directory() as d:
        if not (Path(d) / "history.json").exists():
            return False
        with tempfile.TemporaryDirectory(prefix="fastemb-final-") as copy:
            final = None
            if rank == 0:
                shutil.copytree(d, copy, dirs_exist_ok=True)
                final = ray.train.Checkpoint.from_directory(copy)
            history = json.loads((Path(d) / "history.json").read_text())
            last = max((h["step"] for h in history if "step" in h), default=0)
            ray.train.report({"step": last, "finished": True}, checkpoint=final)
    return True


def _save_and_report(engine, state: dict, rank: int, dev: dict) -> None:
    """Every rank writes its DeepSpeed shard; all ranks report (Ray merges the shards). The metrics
    carry the latest dev evaluation (rank 0's are the ones Ray Train and Tune keep)."""
    import ray.train

    with tempfile.TemporaryDirectory(prefix=f"fastemb-ckpt-r{rank}-") as d:
        engine.save_checkpoint(d, tag=CHECKPOINT_TAG, client_state=state)
        ray.train.report({"step": state["step"], **dev}, checkpoint=ray.train.Checkpoint.from_directory(d))


def _final_report(engine, history: list, step: int, rank: int, dev: dict) -> None:
    """Rank 0 exports the model and the history into the final checkpoint; all ranks report."""
    import ray.train

    with tempfile.TemporaryDirectory(prefix="fastemb-final-") as d:
        checkpoint = None
        if rank == 0:
            _student(engine).save(Path(d) / "model")
            (Path(d) / "history.json").write_text(json.dumps(history))
            checkpoint = ray.train.Checkpoint.from_directory(d)
        ray.train.report({"step": step, "finished": True, **dev}, checkpoint=checkpoint)
