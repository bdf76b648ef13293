"""The Ray Tune side of ``fastemb tune``: the search space, the spec's own configuration as a trial, how many trials
run side by side, and the ``Tuner`` (Optuna or random search, ASHA), restored when an earlier search left one.

The objective (``METRIC``) is dev nDCG@10 measured through the compressed (OPQ/PQ) code.
"""
from __future__ import annotations

import logging
from pathlib import Path

from fastemb.spec import TuneJob

METRIC = "dev_ndcg@10_compressed"

logger = logging.getLogger(__name__)


def param_space(spec: TuneJob) -> dict:
    """Ray Tune distributions for the spec's search space."""
    from ray import tune

    s = spec.space
    return {"temperature": tune.loguniform(*s.temperature), "lr": tune.loguniform(*s.lr),
            "micro_batch_size": tune.choice(s.micro_batch_size), "pq_bytes": tune.choice(s.pq_bytes)}


def default_point(spec: TuneJob) -> dict:
    """The spec's own configuration as a trial (PQ code: the largest choice in the space)."""
    return {"temperature": spec.loss.temperature, "lr": spec.train.lr,
            "micro_batch_size": spec.train.micro_batch_size, "pq_bytes": max(spec.space.pq_bytes)}


def concurrent_trials(spec: TuneJob, cluster_cpus: float) -> int:
    """Trials that fit side by side without starving each other's training workers."""
    per_trial = spec.train.num_workers * spec.train.cpus_per_worker
    fit = max(int(cluster_cpus // per_trial), 1)
    return min(fit, spec.tune.max_concurrent_trials or fit, spec.tune.num_samples)


def build_tuner(spec: TuneJob, callbacks: list | None = None):
    """A new ``Tuner``, or the restored one when ``{storage_path}/{name}`` holds an earlier search (which keeps the
    callbacks it was built with). ``callbacks``: more Tune callbacks (the MLflow trial runs)."""
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
    scheduler = ASHAScheduler(time_attr="training_iteration", max_t=64, grace_period=t.grace_period,
                              reduction_factor=t.reduction_factor) \
        if t.scheduler == "asha" else None
    first = [default_point(spec)] if t.include_default else None
    concurrency = concurrent_trials(spec, ray.cluster_resources()["CPU"])
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
