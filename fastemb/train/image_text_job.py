"""The image–text branch of ``fastemb train`` (``data.format: image_text``): evaluate the untrained two-tower model,
train it with Ray Train + DeepSpeed (the loop of fastemb/train/loop.py with the symmetric image–text loss), export it
(a sentence-transformers Router folder, fastemb/model/image_text.py) and evaluate it again.

The report's ``base``, ``tuned`` and ``delta`` are text → image and image → text metrics on the test split, whose
concepts no training image shows (``unseen``), flattened as ``t2i_recall@10``, ``i2t_ndcg@10``, ...; ``seen`` holds
the same on ``test_seen`` (held-out images of concepts seen in training) where the set has one; ``general``: the text
tower on the general-domain text set (what training costs the text side). Beside it: ``training_curve.png`` and
``top5_grid.png`` (the tuned model's top 5 images for a few test captions). With ``tasks``, the image task trains
beside text-pair tasks (each micro-batch from one task, fastemb/train/tasks.py), their texts through the text tower
and its projection.
"""
from __future__ import annotations

import hashlib
import json
import logging
import time
from pathlib import Path

from fastemb.data.pairs import pairs_fingerprint
from fastemb.eval.cache import cached_metrics
from fastemb.eval.image_text import ImageTextSplit, evaluate_image_text, load_split
from fastemb.model.image_text import ImageTextModel
from fastemb.plots import image_grid, training_curve
from fastemb.record import hardware, reproducible_record
from fastemb.spec import TrainJob
from fastemb.tracking.run import Tracker
from fastemb.train.export import export_length
from fastemb.train.tasks import job_tasks, load_task_pairs
from fastemb.train.trainer import fit_or_reuse, plan_steps

logger = logging.getLogger(__name__)

SPLITS = {"unseen": "test", "seen": "test_seen"}
GRID_QUERIES = 6


def flat_metrics(metrics: dict) -> dict[str, float]:
    """``{"text_to_image": {"recall@10": ..}, ...}`` → ``{"t2i_recall@10": .., "i2t_...": ..}``."""
    short = {"text_to_image": "t2i", "image_to_text": "i2t"}
    return {f"{short[d]}_{k}": v for d, m in metrics.items() if d in short for k, v in m.items()}


def rows_fingerprint(rows: list[dict]) -> str:
    """Hash of the training rows in order: image bytes, captions and concepts."""
    h = hashlib.sha256()
    for r in rows:
        h.update(hashlib.sha256(r["image"]).digest())
        h.update(json.dumps([r["captions"], r["concept"]]).encode())
    return h.hexdigest()[:16]


def test_splits(spec: TrainJob) -> dict[str, ImageTextSplit]:
    """The test splits the set has: ``unseen`` (test) always, ``seen`` (test_seen) when present."""
    folder = Path(spec.data.eval).expanduser()
    return {name: load_split(spec.data.eval, split, spec.image_text) for name, split in SPLITS.items()
            if name == "unseen" or (folder / f"{split}.parquet").exists()}


def split_scores(model, splits: dict[str, ImageTextSplit]) -> dict[str, dict]:
    return {name: evaluate_image_text(model, split) for name, split in splits.items()}


def general_metrics(spec: TrainJob, model) -> dict | None:
    """The text tower's nDCG@10 (and the rest) on the general-domain text set's test split."""
    if not spec.general:
        return None
    from fastemb.data.eval_sets import load_eval_set
    from fastemb.eval.retrieval import exact_search, metrics_of_hits

    data = load_eval_set(spec.general.eval, "test", spec.general.test_queries)
    _, idx = exact_search(model.encode(data.queries), model.encode(data.corpus), 100)
    return metrics_of_hits(idx, data)


def _base(spec: TrainJob, splits: dict[str, ImageTextSplit]) -> dict:
    """The untrained model's scores (the same seeded initialisation the workers start from), cached in the run
    folder."""
    def measure() -> dict:
        model = ImageTextModel.from_spec(spec)
        model.text.max_length = export_length(spec)
        return {"scores": split_scores(model, splits), "general": general_metrics(spec, model)}

    key = {"model": spec.model.model_dump(), "image_text": spec.image_text.model_dump(), "eval": spec.data.eval,
           "seed": spec.train.seed, "general": spec.general.model_dump() if spec.general else None}
    return cached_metrics(spec.run_dir / "base_metrics.json", key, measure)


def _grid(model, split: ImageTextSplit, path: Path) -> Path:
    """The tuned model's top 5 images for ``GRID_QUERIES`` distinct captions spread over a split."""
    import numpy as np

    picked = sorted(set(np.linspace(0, len(split.captions) - 1, GRID_QUERIES).astype(int).tolist()))
    captions = [split.captions[i] for i in picked]
    scores = model.encode(captions) @ model.encode_images(split.images).T
    top = np.argsort(-scores, axis=1)[:, :5]
    hits = [[split.image_concepts[j] in split.caption_concepts[i] for j in row] for i, row in zip(picked, top)]
    return image_grid(captions, [[split.images[j] for j in row] for row in top], hits, path)


def train_image_text(spec: TrainJob, tracker: Tracker, t0: float) -> dict:
    """Base evaluation, training (or the result of a run that already finished), export and evaluation; the
    report (also ``report.json``)."""
    it, t = spec.image_text, spec.train
    tasks = job_tasks(spec)  # one image task, or (with tasks) the image task and text tasks beside it
    rows, data_reports = {}, {}
    for task in tasks:
        rows[task.key], data_reports[task.name] = load_task_pairs(spec, task)
        logger.info(f"{'images' if task.kind == 'image_text' else 'pairs'}"
                    f"{'' if not spec.tasks else f' (task {task.name}, weight {task.weight:g})'}: "
                    f"{data_reports[task.name].summary()}")
    plan = plan_steps(spec, {key: len(task_rows) for key, task_rows in rows.items()})
    prints = {task.name: (rows_fingerprint if task.kind == "image_text" else pairs_fingerprint)(rows[task.key])
              for task in tasks}
    record = reproducible_record(spec, prints["train"] if list(prints) == ["train"] else prints)
    tracker.log_record(record)
    splits = test_splits(spec)
    base = _base(spec, splits)
    logger.info("base (untrained image tower): " + _describe(base["scores"]))
    model_dir, history, train_s = fit_or_reuse(
        spec, rows, plan, tracker, f"{sum(map(len, rows.values()))} rows, {t.num_workers} workers × "
        f"{t.micro_batch_size}, ZeRO-{t.zero_stage}, {t.precision}, freeze {it.freeze}")
    model = ImageTextModel.load(model_dir)  # exactly as a consumer loads it (its files, its length)
    tuned = {"scores": split_scores(model, splits), "general": general_metrics(spec, model)}
    logger.info("tuned: " + _describe(tuned["scores"]))
    data = data_reports["train"].as_dict() if not spec.tasks else {k: r.as_dict() for k, r in data_reports.items()}
    report = _report(spec, base, tuned, model_dir, history, data, plan, record)
    report.update(train_seconds=train_s, total_seconds=time.time() - t0)
    run_dir = spec.run_dir
    (run_dir / "report.json").write_text(json.dumps(report, indent=2))
    training_curve(history, run_dir / "training_curve.png", f"fastemb train: {spec.name}")
    _grid(model, splits["unseen"], run_dir / "top5_grid.png")
    return report


def _describe(scores: dict) -> str:
    return "; ".join(f"{name}: text→image R@10 {s['text_to_image']['recall@10']:.3f} (random "
                     f"{s['text_to_image']['random_recall@10']:.3f}), image→text R@10 "
                     f"{s['image_to_text']['recall@10']:.3f}" for name, s in scores.items())


def _report(spec: TrainJob, base: dict, tuned: dict, model_dir: Path, history: list[dict], data: dict, plan: dict,
            record: dict) -> dict:
    """The report: unseen-concept test metrics flattened as ``base``/``tuned``/``delta``, the full per-split scores,
    the general-domain text figures, data, plan, history and record."""
    flat_base, flat_tuned = flat_metrics(base["scores"]["unseen"]), flat_metrics(tuned["scores"]["unseen"])
    general = None
    if base["general"] and tuned["general"]:
        general = {"eval": spec.general.eval, "base": base["general"], "tuned": tuned["general"],
                   "delta": {k: tuned["general"][k] - base["general"][k] for k in base["general"]}}
    return {
        "name": spec.name, "model_dir": str(model_dir), "output": spec.output_location, "base_model": spec.model.base,
        "image_text": {"vision": spec.image_text.vision, "freeze": spec.image_text.freeze,
                       "splits": {name: {k: s[k] for k in ("images", "captions", "concepts")}
                                  for name, s in tuned["scores"].items()},
                       "base": base["scores"], "tuned": tuned["scores"]},
        "base": flat_base, "tuned": flat_tuned, "delta": {k: flat_tuned[k] - flat_base[k] for k in flat_base},
        "general": general, "lengths": {"train": spec.model.max_length, "export": export_length(spec)},
        "plan": plan, "pairs": data, "history": history, "spec": spec.model_dump(mode="json"),
        "record": record, "hardware": hardware(), "resumes": sum(1 for h in history if h.get("event") == "resumed"),
        "peak_rss_mib": next((h["peak_rss_mib"] for h in history if h.get("event") == "memory"), None),
        "card": str(model_dir / "README.md"),
    }


def image_text_summary(report: dict) -> dict:
    """What ``fastemb train`` prints for an image–text run."""
    out = {"model_dir": report["model_dir"]}
    for name in report["image_text"]["tuned"]:
        for d, short in (("text_to_image", "t2i"), ("image_to_text", "i2t")):
            out[f"{name} {short} recall@10"] = {who: report["image_text"][who][name][d]["recall@10"]
                                                for who in ("base", "tuned")}
        out[f"{name} random recall@10"] = report["image_text"]["tuned"][name]["text_to_image"]["random_recall@10"]
    if report.get("general"):
        out["general_ndcg@10"] = {k: report["general"][k]["ndcg@10"] for k in ("base", "tuned")}
    return out
