"""One Tune trial: a function trainable that builds and fits the training job's ``TorchTrainer``.

Ray Train forwards every ``ray.train.report`` of rank 0 to Tune (``TuneReportCallback``), so ASHA sees
dev nDCG@10 after compression at every dev evaluation. The Train run is named after the trial id, so a
restored search resumes a half-finished trial from its last checkpoint. The trial's exported model gets a model card
with its sampled values and dev figures.
"""
from __future__ import annotations

from fastemb.spec import TrainJob, TuneJob


def trial_spec(tune_spec: TuneJob, params: dict, trial_id: str) -> TrainJob:
    """The training job of one trial: the tune spec's training sections with the sampled values."""
    raw = tune_spec.model_dump()
    for key in ("tune", "space", "job"):
        raw.pop(key)
    raw["name"] = f"{tune_spec.name}-trial-{trial_id}"
    raw["loss"]["temperature"] = params["temperature"]
    raw["train"]["lr"] = params["lr"]
    raw["train"]["micro_batch_size"] = params["micro_batch_size"]
    # every report must carry the objective: checkpoint exactly at the dev evaluations
    raw["train"]["checkpoint_every"] = 10**9
    raw["tracking"] = {"mlflow": False}  # the search's MLflow callback logs each trial (fastemb/tracking/tune.py)
    return TrainJob.model_validate(raw)


def run_trial(config: dict, tune_spec: dict) -> None:
    """Tune function trainable: ``config`` holds the sampled params, ``tune_spec`` the serialised job."""
    import ray.tune
    from ray.tune.integration.ray_train import TuneReportCallback

    from fastemb.data.pairs import load_pairs
    from fastemb.model.card import write_card
    from fastemb.train.card import trial_card
    from fastemb.train.trainer import fit_and_export, make_trainer, plan_steps

    tune_spec = TuneJob.model_validate(tune_spec)
    trial_id = ray.tune.get_context().get_trial_id()
    spec = trial_spec(tune_spec, config, trial_id)
    spec.run_dir.mkdir(parents=True, exist_ok=True)
    pairs, _ = load_pairs(spec.data.train, spec.data.max_pairs, spec.loss.hard_negatives, spec.train.seed)
    plan = plan_steps(spec, len(pairs))
    plan["dev_compression"] = {"pq_bytes": config["pq_bytes"], "opq": tune_spec.tune.opq}
    trainer = make_trainer(spec, pairs, plan, callbacks=[TuneReportCallback()])
    model_dir, history = fit_and_export(trainer, spec)
    write_card(model_dir, trial_card(spec, history, config, trial_id))
