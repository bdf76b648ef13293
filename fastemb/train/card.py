"""The model card of a trained model (fastemb/model/card.py): what ``fastemb train`` knows, as a ``CardUpdate``.

A training job's card says what was trained and how (the data, the losses with their weights, the workers, ZeRO stage,
precision, steps, time and hardware), the evaluation table (in-domain, and general when the report has it; base and
tuned, at the length they were measured), how to use the folder, its limitations and the reproducible record. A Tune
trial's model gets the same card with its dev figures (:func:`trial_card`).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from fastemb.model.card import CardUpdate, EvalSet, ModelCard, hub_id, key_values, record_section, usage_section
from fastemb.model.encoder import MODEL_ALIASES, _read_st_layout, resolve_model_path
from fastemb.spec import TrainJob
from fastemb.train.tasks import job_tasks

LOSS_NAMES = {"kl": "KLDivergence", "margin_mse": "MarginMSE", "embedding_mse": "EmbeddingMSE",
              "hidden_state": "HiddenStateMSE", "attention": "MiniLMAttention"}
SHIPPED = "wordnet"  # the data set name fastemb ships (fastemb/datasets/wordnet)


def losses(spec: TrainJob) -> dict[str, float]:
    """The loss terms and their weights (InfoNCE, then the distillation terms the spec gives)."""
    from fastemb.train.distill_terms import term_names

    d = spec.distill
    out = {"InfoNCE": d.infonce_weight if d else 1.0}
    for name in term_names() if d else []:
        term = getattr(d, name)
        if term is not None:
            out[LOSS_NAMES.get(name, name)] = term.weight
    return out


def pairs_used(report: dict) -> int | None:
    """The training rows the run used (all tasks together)."""
    pairs = report.get("pairs") or {}
    if "kept" in pairs:
        return pairs["kept"]
    return sum(p.get("kept", 0) for p in pairs.values() if isinstance(p, dict)) or None


def dataset_id(data: str) -> str:
    """A data value as a dataset name: the shipped set's name, else the file or folder's name."""
    return SHIPPED if data == SHIPPED else Path(data).name or data


def _base_card(base: str) -> ModelCard | None:
    """The base model folder's own card, if it has one."""
    try:
        card = Path(resolve_model_path(base)) / "README.md"
    except FileNotFoundError:
        return None
    return ModelCard(card.read_text(encoding="utf-8"), ignore_metadata_errors=True) if card.is_file() else None


def _folder(model_dir: Path) -> dict[str, Any]:
    """What the exported folder says about itself: pooling, normalisation, length, width, adapter code."""
    _, pooling, normalize, max_len = _read_st_layout(model_dir)
    pool_cfg = model_dir / "1_Pooling" / "config.json"
    dim = json.loads(pool_cfg.read_text()).get("word_embedding_dimension") if pool_cfg.exists() else None
    return {"pooling": pooling, "normalize": normalize, "max_seq_length": max_len, "dim": dim,
            "remote_code": (model_dir / "adapters.py").exists()}


def _precision(spec: TrainJob, report: dict) -> str:
    """The precision the workers trained in (the engine entry of the history: ``auto`` resolved), else the spec's."""
    engine = next((h for h in report.get("history", []) if h.get("event") == "engine"), {})
    return engine.get("precision") or spec.train.precision


def _int8_row(check: dict | None) -> str | None:
    """The ``export.int8`` outcome: the file and its dev check, or why there is none."""
    if not check:
        return None
    if not check.get("written"):
        return f"not written: {check.get('reason')}"
    dev = check["dev_ndcg@10"]
    return (f"`onnx/model_qint8_avx512_vnni.onnx` (dev nDCG@10 {dev['int8']:.4f}, fp32 {dev['fp32']:.4f}; "
            f"`backend: onnx-int8`, or sentence-transformers' `backend=\"onnx\"` with that `file_name`)")


def _training_rows(spec: TrainJob, report: dict) -> dict[str, Any]:
    t, plan = spec.train, report["plan"]
    weights = losses(spec)
    tasks = job_tasks(spec)
    data = ", ".join(f"{task.name}: {dataset_id(task.data)} ({task.kind}, weight {task.weight:g})" for task in tasks) \
        if spec.tasks else f"{dataset_id(spec.data.train)} ({tasks[0].kind})"
    used = pairs_used(report)
    hardware = report.get("hardware") or {}
    return {
        "job": f"`fastemb train` job `{spec.name}`",
        "base model": f"`{spec.model.base}`",
        "training data": data,
        "training pairs used": used or None,
        "losses (weight)": ", ".join(f"{name} ({w:g})" for name, w in weights.items()),
        "InfoNCE": f"temperature {spec.loss.temperature:g}, {spec.loss.similarity}, {spec.loss.hard_negatives} hard "
                   f"negative(s) per query, cross-worker negatives {'on' if spec.loss.gather_across_workers else 'off'}"
                   f", false-negative masking {'on' if spec.loss.mask_false_negatives else 'off'}",
        "distillation teacher": f"`{spec.distill.teacher}`" if spec.distill else None,
        "workers": f"{t.num_workers} Ray Train worker(s) × {t.cpus_per_worker} CPU{' + GPU' if t.use_gpu else ''}",
        "DeepSpeed": f"ZeRO stage {t.zero_stage}, {_precision(spec, report)}",
        "batch": f"{t.micro_batch_size} pairs per worker × {t.num_workers} worker(s) × {t.grad_accum} accumulation = "
                 f"{t.micro_batch_size * t.num_workers * t.grad_accum} per optimizer step",
        "optimizer": f"AdamW, lr {t.lr:g}, {t.schedule} schedule, {t.warmup_ratio:.0%} warm-up, weight decay "
                     f"{t.weight_decay:g}, max grad norm {t.max_grad_norm:g}",
        "steps": f"{plan['total_steps']} optimizer steps ({t.epochs:g} epoch(s) planned"
                 f"{f', capped at {t.max_steps}' if t.max_steps else ''})",
        "training time": f"{report['train_seconds']:.0f} s (the whole job: {report['total_seconds']:.0f} s)",
        "hardware": ", ".join(f"{k} {v}" for k, v in hardware.items()) or None,
        "resumed from checkpoints": report.get("resumes") or None,
        "int8 graph": _int8_row(report.get("int8")),
        "max sequence length": f"{spec.model.max_length} tokens in training; "
                               f"{report.get('eval_max_seq_length') or spec.model.max_length} in the test evaluation",
    }


def train_card(spec: TrainJob, report: dict, model_dir: str | Path) -> CardUpdate:
    """The card of a ``fastemb train`` export from its spec and report (report.json's content)."""
    model_dir = Path(model_dir)
    folder = _folder(model_dir)
    base = _base_card(spec.model.base)
    similarity = "cosine" if folder["normalize"] or spec.loss.similarity == "cosine" else "dot"
    length = report.get("eval_max_seq_length") or spec.model.max_length
    evaluations = [EvalSet("in-domain", dataset_id(spec.data.eval), "test", report["tuned"], report["base"], length)]
    general = report.get("general")
    if isinstance(general, dict) and isinstance(general.get("tuned"), dict):
        evaluations.append(EvalSet("general", general.get("dataset", "general"), general.get("split", "test"),
                                   general["tuned"], general.get("base"), general.get("max_seq_length", length)))
    trained_on = {dataset_id(task.data) for task in job_tasks(spec)}
    languages = (["en"] if trained_on == {SHIPPED} or spec.multilingual else []) + \
        ([base.data.language] if base and isinstance(base.data.language, str) else list(base.data.language or [])
         if base else []) + (list(spec.multilingual.languages) if spec.multilingual else [])
    tags = [f"loss:{name}" for name in losses(spec)] + (["distillation"] if spec.distill else []) + \
        (["multi-task"] if spec.tasks else []) + (["adapters"] if spec.model.adapters else []) + \
        ([f"dataset_size:{pairs_used(report)}"] if pairs_used(report) else [])
    fingerprint = (report.get("record") or {}).get("data_fingerprint")
    summary = (f"This is a [sentence-transformers](https://www.SBERT.net) model fine-tuned by "
               f"fastemb from `{spec.model.base}` on {', '.join(sorted(trained_on))}. It maps "
               f"texts to a {folder['dim']}-dimensional dense vector space for semantic search, retrieval and "
               "similarity.\n\n" + key_values("Model details", {
                   "base model": f"`{hub_id(spec.model.base)}`" + (f" (local folder `{spec.model.base}`)"
                                                                   if spec.model.base not in MODEL_ALIASES else ""),
                   "max sequence length": f"{folder['max_seq_length']} tokens",
                   "output dimension": folder["dim"],
                   "similarity": similarity,
                   "pooling": f"{folder['pooling']}{', L2-normalised' if folder['normalize'] else ''}"}))
    limitations = [
        (f"Trained with texts cut to {spec.model.max_length} tokens and evaluated at {length}; longer inputs are "
         f"truncated to the folder's max_seq_length ({folder['max_seq_length']})."),
        (f"Languages: English and, distilled from parallel text, {', '.join(spec.multilingual.languages)}."
         if spec.multilingual else
         "Languages: English (WordNet definitions)." if trained_on == {SHIPPED} else
         "Languages: those of the training data; the evaluation covers only the sets in the table above."),
        (f"The in-domain figures are measured on {dataset_id(spec.data.eval)}; quality elsewhere may differ from the "
         "base model's (the general-domain row, when present, measures that)."),
    ]
    if folder["remote_code"]:
        limitations.append("The adapters need `trust_remote_code=True` in sentence-transformers and transformers.")
    sections = {"summary": summary,
                "training": key_values("Training", _training_rows(spec, report)),
                "usage": usage_section(folder["remote_code"]),
                "limitations": "## Limitations\n\n" + "\n".join(f"- {line}" for line in limitations)}
    if report.get("record"):
        sections["record"] = record_section(report["record"], report.get("spec"))
    return CardUpdate(title=spec.name, base_model=hub_id(spec.model.base), tags=tags,
                      datasets=sorted(trained_on & {SHIPPED}), language=languages,
                      license=base.data.license if base else None, similarity=similarity, evaluations=evaluations,
                      sections=sections,
                      metadata={"data_fingerprint": _fingerprint(fingerprint)} if fingerprint else {})


def _fingerprint(fp: str | dict) -> str:
    return ", ".join(f"{k}:{v}" for k, v in fp.items()) if isinstance(fp, dict) else fp


def trial_card(spec: TrainJob, history: list[dict], params: dict, trial_id: str) -> CardUpdate:
    """The card of a Tune trial's model: its training settings and its dev figures (the search's objective)."""
    dev = next(({k: v for k, v in h.items() if k.startswith("dev_") or k in ("bytes_per_vector", "compression_x")}
                for h in reversed(history) if any(k.startswith("dev_") for k in h)), {})
    tuned = {k.removeprefix("dev_"): v for k, v in dev.items() if k in ("dev_ndcg@10",)}
    rows = {"search": f"Tune trial `{trial_id}` of `{spec.name.rsplit('-trial-', 1)[0]}`",
            **{f"sampled {k}": v for k, v in params.items()},
            "dev nDCG@10 through the PQ code": dev.get("dev_ndcg@10_compressed"),
            "PQ code": f"{dev['bytes_per_vector']} bytes per vector ({dev['compression_x']:.0f}× compression)"
            if "bytes_per_vector" in dev else None}
    evaluations = [EvalSet("dev", dataset_id(spec.data.eval), "dev", tuned, None, spec.model.max_length)] \
        if tuned else []
    return CardUpdate(title=spec.name, base_model=hub_id(spec.model.base), tags=[f"loss:{n}" for n in losses(spec)]
                      + ["ray-tune"], datasets=[SHIPPED] if spec.data.train == SHIPPED else [],
                      evaluations=evaluations, sections={"trial": key_values("Tune trial", rows),
                                                         "usage": usage_section()})

