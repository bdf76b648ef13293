"""One Tune trial: a function trainable that builds and fits the training job's ``TorchTrainer``.

Ray Train forwards every ``ray.train.report`` of rank 0 to Tune (``TuneReportCallback``), so ASHA sees
dev nDCG@10 after compression at every dev evaluation. The Train run is named after the trial id, so a
restored search resumes a half-finished trial from its last checkpoint.

A sampled configuration becomes a training job through ``AXES`` (search axis → the field it sets) and a compression
of the objective through ``trial_compression`` (Matryoshka truncation, then PQ). The trial's exported model gets a model card with its
sampled values and dev figures.
"""
from __future__ import annotations

from fastemb.spec import TrainJob, TuneJob

# search axis → the training-job field it sets; the compression axes (pq_bytes, matryoshka_dim) set the objective.
# A merge-weight axis (issue 15's WiSE-FT merge, once export.merge exists) is one more line here,
# "merge_weight": ("export", "merge", "weight"), plus its choice list in SearchSpace and param_space.
AXES: dict[str, tuple[str, ...]] = {
    "temperature": ("loss", "temperature"),
    "lr": ("train", "lr"),
    "micro_batch_size": ("train", "micro_batch_size"),
    "hard_negatives": ("loss", "hard_negatives"),
}


def nested_dims(dim: int, width: int) -> list[int]:
    """The Matryoshka dimensions a trial truncating to ``dim`` trains with: dim, 2·dim, 4·dim, … below the width, and
    the width (e.g. 64 of 384: [64, 128, 256, 384])."""
    if not 0 < dim <= width:
        raise ValueError(f"space.matryoshka_dim: {dim} must be in 1..{width} (the model's width)")
    dims = []
    while dim < width:
        dims.append(dim)
        dim *= 2
    return [*dims, width]


def trial_spec(tune_spec: TuneJob, params: dict, trial_id: str, width: int) -> TrainJob:
    """The training job of one trial: the tune spec's training sections with the sampled values (``width``: the
    model's, for the Matryoshka dimensions)."""
    raw = tune_spec.model_dump()
    for key in ("tune", "space", "job"):
        raw.pop(key)
    raw["name"] = f"{tune_spec.name}-trial-{trial_id}"
    for axis, path in AXES.items():
        if axis in params:
            *sections, field = path
            target = raw
            for section in sections:  # an optional section left unset (e.g. export.merge) is created
                if target.get(section) is None:
                    target[section] = {}
                target = target[section]
            target[field] = params[axis]
    dim = params.get("matryoshka_dim")
    if dim is not None and not raw["loss"]["matryoshka_dims"]:
        raw["loss"]["matryoshka_dims"] = nested_dims(dim, width)
    # every report must carry the objective: checkpoint exactly at the dev evaluations
    raw["train"]["checkpoint_every"] = 10**9
    raw["tracking"] = {"mlflow": False}  # the search's MLflow callback logs each trial (fastemb/tracking/tune.py)
    return TrainJob.model_validate(raw)


def trial_compression(tune_spec: TuneJob, params: dict) -> dict:
    """How a trial's objective compresses its vectors: Matryoshka truncation (and re-normalisation) to the sampled
    dimension, if any, then a PQ code of the sampled bytes (``fastemb.eval.compressed.compressed_retrieval``)."""
    out = {"pq_bytes": params["pq_bytes"], "opq": tune_spec.tune.opq}
    if params.get("matryoshka_dim") is not None:
        out.update(method="matryoshka", dim=params["matryoshka_dim"])
    return out


def load_search_pairs(spec: TuneJob) -> list[dict]:
    """The training pairs of every trial: rows with as many negatives as the largest choice of
    ``space.hard_negatives`` (or ``loss.hard_negatives``), so that trials differing in negatives see the same rows."""
    from fastemb.data.pairs import load_pairs

    k = max(spec.space.hard_negatives or [spec.loss.hard_negatives])
    return load_pairs(spec.data.train, spec.data.max_pairs, k, spec.train.seed)[0]


def run_trial(config: dict, tune_spec: dict) -> None:
    """Tune function trainable: ``config`` holds the sampled params, ``tune_spec`` the serialised job."""
    import ray.tune
    from ray.tune.integration.ray_train import TuneReportCallback

    from fastemb.model.card import write_card
    from fastemb.model.encoder import model_width
    from fastemb.train.card import trial_card
    from fastemb.train.trainer import fit_and_export, make_trainer, plan_steps

    tune_spec = TuneJob.model_validate(tune_spec)
    trial_id = ray.tune.get_context().get_trial_id()
    spec = trial_spec(tune_spec, config, trial_id, model_width(tune_spec.model.base))
    spec.run_dir.mkdir(parents=True, exist_ok=True)
    pairs = load_search_pairs(tune_spec)  # the same pairs for every trial, whatever its number of negatives
    plan = plan_steps(spec, len(pairs))
    plan["dev_compression"] = trial_compression(tune_spec, config)
    trainer = make_trainer(spec, pairs, plan, callbacks=[TuneReportCallback()])
    model_dir, history = fit_and_export(trainer, spec)
    if spec.export.merge:  # the trial's export is what the winner registers: merged as the spec says
        from fastemb.train.export import merge_export

        merge_export(spec, model_dir)
    write_card(model_dir, trial_card(spec, history, config, trial_id))
