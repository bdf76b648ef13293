"""Image–text retrieval evaluation: text → image and image → text on a split of an image–caption set.

A split's rows are images with captions and a concept (fastemb/data/images.py). **Text → image**: each distinct
first caption is a query; the relevant images are every image of the split whose concept is the caption's (two
stamps of one subject answer the same description). **Image → text**: each image is a query against the split's
distinct first captions; the relevant ones are its concept's. Metrics: recall@1/5/10 and nDCG@10 (binary relevance,
fastemb/eval/metrics.py), and ``random_recall@10``, the recall@10 a random ranking has in expectation (10 / the
number of candidates), which the acceptance compares against.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fastemb.eval.metrics import ranking_metrics
from fastemb.eval.retrieval import exact_search

K = 10


@dataclass(frozen=True)
class ImageTextSplit:
    """One split, ready to score: its decoded images and their concepts, and its distinct captions."""
    images: list  # PIL images
    image_concepts: list[str]
    captions: list[str]
    caption_concepts: list[set[str]]  # a caption shared by several concepts is relevant to each


def split_of_rows(rows: list[dict], max_images: int | None = None) -> ImageTextSplit:
    """Decode a split's rows (``{image, captions, concept}``; fastemb/data/images.py has already dropped bad ones)."""
    from fastemb.data.images import decode_image

    rows = rows[:max_images] if max_images else rows
    captions: dict[str, set[str]] = {}
    for r in rows:
        captions.setdefault(r["captions"][0], set()).add(r["concept"])
    return ImageTextSplit([decode_image(r["image"]) for r in rows], [r["concept"] for r in rows], list(captions),
                          list(captions.values()))


def load_split(eval_dir: str, split: str, image_text) -> ImageTextSplit:
    """Split ``split`` (``{eval_dir}/{split}.parquet``) of an image–caption set, within the job's image limits and
    ``image_text.eval_images``; bad rows are skipped by the loader (its counts: the data report's)."""
    from pathlib import Path

    from fastemb.data.images import load_image_text

    rows, _ = load_image_text(Path(eval_dir).expanduser() / f"{split}.parquet", max_bytes=image_text.max_image_bytes,
                              max_pixels=image_text.max_pixels)
    return split_of_rows(rows, image_text.eval_images)


def retrieval_metrics(query_vectors: np.ndarray, candidate_vectors: np.ndarray, relevant: list[set[int]]
                      ) -> dict[str, float]:
    """recall@1/5/10, nDCG@10 and MRR@10 of exact inner-product search (unit vectors); ``relevant[i]``: the
    candidate positions relevant to query i."""
    k = min(max(K, 100), len(candidate_vectors))
    _, idx = exact_search(query_vectors, candidate_vectors, k)
    ranked = [[str(j) for j in row if j >= 0] for row in idx]
    rel = [{str(j) for j in r} for r in relevant]
    base = ranking_metrics(ranked, rel)
    recall5 = float(np.mean([len(set(r[:5]) & s) / len(s) for r, s in zip(ranked, rel)]))
    return {"recall@1": base["recall@1"], "recall@5": recall5, "recall@10": base["recall@10"],
            "ndcg@10": base["ndcg@10"], "mrr@10": base["mrr@10"]}


def evaluate_image_text(model, split: ImageTextSplit) -> dict:
    """Both directions' metrics of an image–text model (``encode`` and ``encode_images``) on a split."""
    image_vectors = model.encode_images(split.images)
    caption_vectors = model.encode(split.captions)
    by_concept: dict[str, list[int]] = {}
    for i, c in enumerate(split.image_concepts):
        by_concept.setdefault(c, []).append(i)
    to_image = [{i for c in concepts for i in by_concept[c]} for concepts in split.caption_concepts]
    to_text = [{j for j, concepts in enumerate(split.caption_concepts) if c in concepts} for c in split.image_concepts]
    return {"text_to_image": {**retrieval_metrics(caption_vectors, image_vectors, to_image),
                              "random_recall@10": min(K / len(split.images), 1.0)},
            "image_to_text": {**retrieval_metrics(image_vectors, caption_vectors, to_text),
                              "random_recall@10": min(K / len(split.captions), 1.0)},
            "images": len(split.images), "captions": len(split.captions),
            "concepts": len(set(split.image_concepts))}
