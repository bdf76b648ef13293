"""What a training job exports: the model at its inference length and, with ``export.merge``, merged with the base.

``model.max_length`` is the training length (a speed knob; dev evaluations during training use it too). The
exported model keeps the base's own inference length (its ``sentence_bert_config.json``, 256 for all-MiniLM-L6-v2)
unless ``export.max_seq_length`` says otherwise, so every consumer (sentence-transformers, fastemb serve, the index
job) reads texts as far as the base did; the report's test metrics are measured at that length.

``export.merge`` interpolates the tuned weights with the base's (WiSE-FT; fastemb/merge/): the trained model moves
to ``{run}/model_unmerged`` and ``{run}/model`` becomes the merge, with the weight given or chosen on the in-domain
and general dev sets (fastemb/merge/select.py).
"""
from __future__ import annotations

import logging
import shutil
from pathlib import Path

from fastemb.eval.cache import cached_metrics, weights_fingerprint
from fastemb.model.encoder import Encoder, inference_length
from fastemb.spec import StudentModelSpec, TrainJob

logger = logging.getLogger(__name__)

UNMERGED_DIR = "model_unmerged"
BASE_DEV_FILE = "base_dev_metrics.json"  # the base's dev scores the merge weight is chosen against (a rerun reuses)
MERGE_CHOICE_FILE = "merge_choice.json"  # the grid's dev scores and the chosen weight, for these trained weights


def export_length(spec: TrainJob) -> int:
    """Tokens per text of the exported model: ``export.max_seq_length``, else the base's own."""
    return spec.export.max_seq_length or inference_length(spec.model.base)


def at_export_length(spec: TrainJob) -> StudentModelSpec:
    """The job's model section at the exported length: how every consumer will run the model."""
    return spec.model.model_copy(update={"max_length": export_length(spec)})


def merge_export(spec: TrainJob, model_dir: Path) -> dict:
    """Replace the exported model by its merge with the base (``export.merge``); returns how it was merged."""
    from fastemb.data.eval_sets import load_eval_set
    from fastemb.merge.select import dev_scores, select_weight
    from fastemb.merge.weights import check_mergeable, merged_encoder

    merge, model = spec.export.merge, at_export_length(spec)
    unmerged = model_dir.parent / UNMERGED_DIR
    if unmerged.exists():
        shutil.rmtree(unmerged)
    model_dir.rename(unmerged)
    tuned, base = Encoder.from_spec(model, str(unmerged)), Encoder.from_spec(model)
    check_mergeable([tuned, base], ["the trained model", "model.base"])
    if merge.weight is not None:
        facts = {"weight": merge.weight, "chosen_by": "export.merge.weight"}
    else:
        g, d = spec.general, spec.data
        dev_sets = {"in_domain": load_eval_set(d.eval, "dev", d.dev_queries, d.dev_corpus),
                    "general": load_eval_set(g.eval, "dev", g.dev_queries, g.dev_corpus)}
        key = {"model": model.model_dump(), "in_domain": [d.eval, d.dev_queries, d.dev_corpus],
               "general": [g.eval, g.dev_queries, g.dev_corpus]}
        base_dev = cached_metrics(spec.run_dir / BASE_DEV_FILE, key, lambda: dev_scores(base, dev_sets))
        # the same trained weights (a finished run exported again) give the same choice: not measured twice
        choice_key = {**key, "trained": weights_fingerprint(unmerged), "grid": merge.grid, "tolerance": g.tolerance}
        facts = cached_metrics(spec.run_dir / MERGE_CHOICE_FILE, choice_key,
                               lambda: select_weight(tuned, base, merge.grid, dev_sets, g.tolerance, base_dev))
    w = facts["weight"]
    merged_encoder([tuned, base], [w, 1 - w]).save(model_dir)
    logger.info(f"exported model: {w:g} × the trained weights + {1 - w:g} × the base's ({model_dir}; unmerged: "
                f"{unmerged})")
    return {"method": "linear interpolation of the weights (WiSE-FT)", "max_seq_length": model.max_length,
            "models": [{"path": str(unmerged), "role": "tuned", "weight": w},
                       {"path": spec.model.base, "role": "base", "weight": 1 - w}], **facts}
