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


def int8_export(spec: TrainJob, model_dir: str | Path) -> dict:
    """``export.int8``: quantize the exported model, score fp32 and int8 ONNX on the in-domain dev set (at the
    export length), and keep ``onnx/model_qint8_avx512_vnni.onnx`` only when the relative nDCG@10 loss is within
    ``export.int8.tolerance``. A refused or failed quantization leaves the fp32 model as it was; returns the check."""
    from fastemb.data.eval_sets import load_eval_set
    from fastemb.eval.retrieval import evaluate_forward
    from fastemb.model.onnx_backend import OnnxEncoder, OnnxExportError, onnx_path
    from fastemb.model.quantize import INT8_FILE, RECORD_FILE, quantize_file, write_folder_int8

    options, d, model_dir = spec.export.int8, spec.data, Path(model_dir)
    tolerance = options.tolerance
    candidate = model_dir / ".int8-candidate.onnx"
    for stale in (INT8_FILE, RECORD_FILE, candidate.name):  # from an earlier export of other weights
        (model_dir / stale).unlink(missing_ok=True)
    encoder = Encoder.from_spec(at_export_length(spec), str(model_dir)).eval()
    try:
        fp32 = onnx_path(model_dir, encoder, field="export.int8")
        quantize_file(fp32, candidate, str(model_dir), "export.int8", options.weights)
    except OnnxExportError as err:
        logger.warning(f"export.int8: no int8 model ({err})")
        return {"written": False, "reason": str(err)}
    dev = load_eval_set(d.eval, "dev", d.dev_queries, d.dev_corpus)
    scores = {name: evaluate_forward(encoder, OnnxEncoder(path), dev)["ndcg@10"]
              for name, path in (("fp32", fp32), ("int8", candidate))}
    loss = (scores["fp32"] - scores["int8"]) / max(scores["fp32"], 1e-12)
    check = {"dev_ndcg@10": scores, "relative_loss": loss, "tolerance": tolerance, "written": loss <= tolerance,
             "weights": options.weights, "dev_queries": len(dev.queries)}
    if not check["written"]:
        candidate.unlink(missing_ok=True)
        check["reason"] = f"dev nDCG@10 {scores['int8']:.4f} int8 vs {scores['fp32']:.4f} fp32: {loss:.2%} lost > " \
                          f"export.int8.tolerance {tolerance:.2%}"
        logger.warning(f"export.int8 refused: {check['reason']}; the fp32 model is unchanged")
        return check
    check["file"] = str(write_folder_int8(model_dir, candidate, encoder, check))
    logger.info(f"int8 model: {check['file']} (dev nDCG@10 {scores['int8']:.4f} vs fp32 {scores['fp32']:.4f}, "
                f"{loss:+.2%} lost)")
    return check
