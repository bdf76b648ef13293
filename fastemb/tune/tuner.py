"""The Ray Tune side of ``fastemb tune``: the search space, the spec's own configuration as a trial, ASHA's grace
period, how many trials run side by side, and the ``Tuner`` (Optuna or random search, ASHA), restored when an earlier
search left one.

The objective (``METRIC``) is dev nDCG@10 measured through the compressed code (Matryoshka truncation, then OPQ/PQ).
"""
from __future__ import annotations

import logging
from pathlib import Path

from fastemb.spec import SpecError, TuneJob

METRIC = "dev_ndcg@10_compressed"

logger = logging.getLogger(__name__)


def param_space(spec: TuneJob) -> dict:
    """Ray Tune distributions for the spec's search space (an axis left null is not searched)."""
    from ray import tune

    s = spec.space
    space = {"temperature": tune.loguniform(*s.temperature), "lr": tune.loguniform(*s.lr),
             "micro_batch_size": tune.choice(s.micro_batch_size)}
    for axis in ("hard_negatives", "matryoshka_dim"):
        if getattr(s, axis) is not None:
            space[axis] = tune.choice(getattr(s, axis))
    space["pq_bytes"] = tune.choice(s.pq_bytes)
    return space


def default_point(spec: TuneJob) -> dict:
    """The spec's own configuration as a trial (PQ code: the largest choice in the space; no truncation)."""
    point = {"temperature": spec.loss.temperature, "lr": spec.train.lr,
             "micro_batch_size": spec.train.micro_batch_size}
    if spec.space.hard_negatives is not None:
        point["hard_negatives"] = spec.loss.hard_negatives
    if spec.space.matryoshka_dim is not None:
        point["matryoshka_dim"] = None
    point["pq_bytes"] = max(spec.space.pq_bytes)
    return point


def check_search(spec: TuneJob) -> None:
    """What the spec alone cannot check: the Matryoshka dimensions against the model's width."""
    from fastemb.model.encoder import model_width
    from fastemb.train.tasks import check_matryoshka_width

    check_matryoshka_width(spec)
    dims = [d for d in spec.space.matryoshka_dim or [] if d is not None]
    if dims and max(dims) > (width := model_width(spec.model.base)):
        raise SpecError(f"invalid job spec:\n  space.matryoshka_dim: {max(dims)} is larger than the model's width "
                        f"{width} ({spec.model.base}); use dimensions up to {width}, or null for the width")


def first_report_after_warmup(spec: TuneJob, n_pairs: int) -> dict:
    """For each batch size in the space: the trial's steps, its learning-rate warm-up (as fastemb/train/schedule.py
    counts it) and the first dev evaluation (report) at or after the end of the warm-up, 1-based."""
    from fastemb.train.trainer import plan_steps

    out = {}
    for batch in spec.space.micro_batch_size:
        trial = spec.model_copy(update={"train": spec.train.model_copy(update={"micro_batch_size": batch})})
        plan = plan_steps(trial, n_pairs)
        warmup = int(plan["total_steps"] * spec.train.warmup_ratio)
        reports = plan["eval_steps"]
        first = next((i + 1 for i, step in enumerate(reports) if step >= warmup), len(reports))
        out[batch] = {"total_steps": plan["total_steps"], "warmup_steps": warmup, "eval_steps": reports,
                      "first_report": first}
    return out


def asha_grace(spec: TuneJob, n_pairs: int) -> tuple[int, int]:
    """ASHA's grace period and ``max_t``, in dev evaluations (reports): no trial is judged before its learning-rate
    warm-up has ended, whatever batch size it samples (a smaller batch has more steps, so a longer warm-up in steps
    against ``train.eval_every``). An explicit ``tune.grace_period`` below that is refused (``SpecError``)."""
    plans = first_report_after_warmup(spec, n_pairs)
    grace = max(p["first_report"] for p in plans.values())
    max_t = max(len(p["eval_steps"]) for p in plans.values())
    given = spec.tune.grace_period
    if given is not None and given < grace:
        batch, p = max(plans.items(), key=lambda item: item[1]["first_report"])
        raise SpecError(f"invalid job spec:\n  tune.grace_period: {given} would judge trials before their "
                        f"learning-rate warm-up ends (batch {batch}: warm-up {p['warmup_steps']} of "
                        f"{p['total_steps']} steps, train.warmup_ratio {spec.train.warmup_ratio:g}; dev evaluation "
                        f"{given} at step {p['eval_steps'][given - 1]}); use at least {grace}, or leave it unset")
    return max(given or grace, 1), max(max_t, 1)


def concurrent_trials(spec: TuneJob, cluster_cpus: float, cluster_gpus: float = 0.0) -> int:
    """Trials that fit side by side without starving each other's training workers (CPUs, and GPUs with
    ``train.use_gpu``)."""
    t = spec.train
    fit = max(int(cluster_cpus // (t.num_workers * t.cpus_per_worker)), 1)
    if t.use_gpu:
        fit = min(fit, max(int(cluster_gpus // (t.num_workers * t.gpus_per_worker)), 1))
    return min(fit, spec.tune.max_concurrent_trials or fit, spec.tune.num_samples)


def build_tuner(spec: TuneJob, n_pairs: int, callbacks: list | None = None):
    """A new ``Tuner``, or the restored one when ``{storage_path}/{name}`` holds an earlier search (which keeps the
    callbacks it was built with). ``n_pairs``: the pairs each trial trains on (ASHA's grace period is derived from the
    trials' step plans); ``callbacks``: more Tune callbacks (the MLflow trial runs)."""
    import ray
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler
    from ray.tune.search import BasicVariantGenerator
    from ray.tune.search.optuna import OptunaSearch

    from fastemb.logs import quiet_loggers, ray_tune_verbosity
    from fastemb.tune.progress import TrialLines
    from fastemb.tune.trial import run_trial

    quiet_loggers()  # Optuna, just imported, set its own logger to INFO
    # the trial driver only builds the TorchTrainer; its workers reserve the CPUs
    trainable = tune.with_resources(tune.with_parameters(run_trial, tune_spec=spec.model_dump()),
                                    {"CPU": 0, "memory": 256 * 1024**2})
    exp_path = str(Path(spec.storage_path) / spec.name)
    if tune.Tuner.can_restore(exp_path):
        logger.info(f"resuming the search in {exp_path}")
        return tune.Tuner.restore(exp_path, trainable=trainable, resume_errored=True)
    t = spec.tune
    scheduler = None
    if t.scheduler == "asha":
        grace, max_t = asha_grace(spec, n_pairs)
        logger.info(f"ASHA: grace period {grace} of up to {max_t} dev evaluations (after the learning-rate warm-up), "
                    f"reduction factor {t.reduction_factor}")
        scheduler = ASHAScheduler(time_attr="training_iteration", max_t=max_t, grace_period=grace,
                                  reduction_factor=t.reduction_factor)
    first = [default_point(spec)] if t.include_default else None
    concurrency = concurrent_trials(spec, ray.cluster_resources()["CPU"], ray.cluster_resources().get("GPU", 0))
    # Tune applies max_concurrent_trials to Searchers only; the random generator takes it itself
    search_alg = OptunaSearch(seed=spec.train.seed, points_to_evaluate=first) if t.search == "optuna" else \
        BasicVariantGenerator(random_state=spec.train.seed, points_to_evaluate=first, max_concurrent=concurrency)
    space = param_space(spec)
    return tune.Tuner(
        trainable,
        param_space=space,
        tune_config=tune.TuneConfig(metric=METRIC, mode="max", num_samples=t.num_samples, search_alg=search_alg,
                                    scheduler=scheduler,
                                    max_concurrent_trials=concurrency),
        run_config=tune.RunConfig(name=spec.name, storage_path=spec.storage_path,
                                  failure_config=tune.FailureConfig(max_failures=t.max_failures),
                                  callbacks=[TrialLines(METRIC, list(space)), *(callbacks or [])],
                                  verbose=ray_tune_verbosity()),
    )
