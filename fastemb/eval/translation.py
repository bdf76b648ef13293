"""Cross-lingual evaluation on parallel text: translation retrieval per language, and what the tokenizer does to it.

Translation retrieval (the task of Reimers & Gurevych 2020, "Making Monolingual Sentence Embeddings Multilingual
using Knowledge Distillation", and of the Tatoeba benchmark): among all test pairs of one language, each
translation is a query whose one relevant text is its English side (``xx→en``), and each English text a query whose
one relevant text is its translation (``en→xx``). Reported per language: accuracy@1 and nDCG@10 (one relevant text:
``1 / log2(1 + rank)`` when it ranks in the top 10, else 0), cosine similarity, exact search.

The test pairs of a language are deduplicated first: an English text or a translation that occurs twice would make
two answers equally right; the duplicates are counted (``duplicates``). A language with fewer than ``min_pairs``
usable test pairs is reported as such (``no test pairs`` / ``too few test pairs``) and not scored.

Tokenizer statistics (``tokenizer_stats``): tokens per character and the share of unknown tokens (``[UNK]``) of the
model's tokenizer on a language's texts; a language whose texts are mostly unknown tokens (share above
``UNK_WARN``) cannot be learnt by that student and is flagged (``mostly_unknown``) and logged as a warning.
"""
from __future__ import annotations

import logging
import random
from collections import defaultdict
from pathlib import Path
from typing import Callable, Iterable

import numpy as np
import pyarrow.parquet as pq

logger = logging.getLogger(__name__)

UNK_WARN = 0.5  # share of unknown tokens above which a language is "mostly unknown" to the tokenizer
PARALLEL_COLUMNS = ("english", "translation", "language")


def read_parallel(path: str | Path, languages: Iterable[str] | None = None) -> list[dict]:
    """Rows (english, translation, language, …) of a parallel parquet file (``fastemb/data/build_parallel.py``),
    restricted to ``languages`` when given."""
    table = pq.read_table(path)
    missing = [c for c in PARALLEL_COLUMNS if c not in table.column_names]
    if missing:
        raise ValueError(f"{path}: missing column(s) {missing}; parallel text needs {list(PARALLEL_COLUMNS)} "
                         f"(found {table.column_names})")
    wanted = set(languages) if languages else None
    return [r for r in table.to_pylist() if wanted is None or r["language"] in wanted]


def held_out_pairs(rows: list[dict], languages: Iterable[str] | None = None, max_per_language: int | None = None,
               seed: int = 0) -> tuple[dict[str, list[tuple[str, str]]], dict[str, dict]]:
    """Per language the deduplicated (english, translation) test pairs (a seeded sample of at most
    ``max_per_language``), and per language what was dropped."""
    by_lang: dict[str, list[tuple[str, str]]] = defaultdict(list)
    for r in rows:
        by_lang[r["language"]].append((r["english"], r["translation"]))
    out, info = {}, {}
    for lang in sorted(set(languages or by_lang)):
        seen_en, seen_xx, kept, dup = set(), set(), [], 0
        for en, xx in by_lang.get(lang, []):
            if en in seen_en or xx in seen_xx:
                dup += 1
                continue
            seen_en.add(en)
            seen_xx.add(xx)
            kept.append((en, xx))
        if max_per_language and len(kept) > max_per_language:
            kept = random.Random(seed).sample(kept, max_per_language)
        out[lang] = kept
        info[lang] = {"rows": len(by_lang.get(lang, [])), "duplicates": dup, "pairs": len(kept)}
    return out, info


def _rank_of_diagonal(queries: np.ndarray, docs: np.ndarray) -> np.ndarray:
    """1-based rank of document i for query i (cosine; ties counted against the query)."""
    q = queries / np.maximum(np.linalg.norm(queries, axis=1, keepdims=True), 1e-12)
    d = docs / np.maximum(np.linalg.norm(docs, axis=1, keepdims=True), 1e-12)
    scores = q @ d.T
    own = np.diag(scores)
    return 1 + (scores > own[:, None]).sum(1) + ((scores == own[:, None]).sum(1) - 1)


def retrieval_metrics(ranks: np.ndarray) -> dict[str, float]:
    """Accuracy@1 and nDCG@10 of one-relevant-text queries from the relevant text's ranks."""
    ndcg = np.where(ranks <= 10, 1.0 / np.log2(1 + ranks), 0.0)
    return {"accuracy@1": float((ranks == 1).mean()), "ndcg@10": float(ndcg.mean())}


def translation_retrieval(encode: Callable[[list[str]], np.ndarray], pairs: list[tuple[str, str]]) -> dict:
    """``xx→en`` and ``en→xx`` accuracy@1 and nDCG@10 among ``pairs`` (one language's)."""
    en = encode([e for e, _ in pairs])
    xx = encode([x for _, x in pairs])
    return {"pairs": len(pairs), "xx→en": retrieval_metrics(_rank_of_diagonal(xx, en)),
            "en→xx": retrieval_metrics(_rank_of_diagonal(en, xx))}


def evaluate_languages(encode: Callable[[list[str]], np.ndarray], pairs: dict[str, list[tuple[str, str]]],
                       min_pairs: int = 10) -> dict[str, dict]:
    """``translation_retrieval`` per language; a language short of ``min_pairs`` gets ``{"skipped": reason}``."""
    out = {}
    for lang, lang_pairs in pairs.items():
        if len(lang_pairs) < min_pairs:
            reason = "no test pairs" if not lang_pairs else f"too few test pairs ({len(lang_pairs)} < {min_pairs})"
            logger.warning(f"translation retrieval: {lang}: {reason}; not scored")
            out[lang] = {"skipped": reason, "pairs": len(lang_pairs)}
            continue
        out[lang] = translation_retrieval(encode, lang_pairs)
    return out


def tokenizer_stats(tokenizer, texts_by_language: dict[str, list[str]], unk_warn: float = UNK_WARN
                    ) -> dict[str, dict]:
    """Per language: tokens per character, share of unknown tokens and whether it is mostly unknown (warned)."""
    unk = tokenizer.unk_token_id
    out = {}
    for lang, texts in texts_by_language.items():
        ids = tokenizer(list(texts), add_special_tokens=False)["input_ids"] if texts else []
        tokens = sum(len(x) for x in ids)
        chars = sum(len(t) for t in texts)
        unknown = sum(sum(1 for i in x if i == unk) for x in ids) if unk is not None else 0
        share = unknown / tokens if tokens else 0.0
        out[lang] = {"texts": len(texts), "tokens_per_char": tokens / chars if chars else 0.0,
                     "unk_share": share, "mostly_unknown": share > unk_warn}
        if share > unk_warn:
            logger.warning(f"tokenizer: {lang}: {share:.0%} of the tokens are unknown ({tokenizer.unk_token}); the "
                           "student cannot tell its texts apart; use a student whose vocabulary covers its script")
    return out


def language_table(base: dict[str, dict], tuned: dict[str, dict] | None, tokens: dict[str, dict]) -> list[dict]:
    """One row per language: pairs, tokenizer statistics, base (and tuned) xx→en / en→xx accuracy@1 and nDCG@10."""
    rows = []
    for lang in sorted(base):
        stats = tokens.get(lang, {})
        row = {"language": lang, "pairs": base[lang].get("pairs", 0),
               **{k: stats.get(k) for k in ("tokens_per_char", "unk_share")}}
        for who, res in (("base", base), ("tuned", tuned or {})):
            r = res.get(lang, {})
            if "skipped" in r:
                row["skipped"] = r["skipped"]
            for direction in ("xx→en", "en→xx"):
                for metric in ("accuracy@1", "ndcg@10"):
                    if direction in r:
                        row[f"{who} {direction} {metric}"] = r[direction][metric]
        rows.append(row)
    return rows


def markdown_table(rows: list[dict]) -> str:
    """The language table as Markdown (xx→en accuracy@1 and nDCG@10, en→xx accuracy@1, tokenizer statistics)."""
    tuned = any("tuned xx→en accuracy@1" in r for r in rows)
    head = ["language", "test pairs", "tokens/char", "[UNK] share", "base xx→en acc@1"]
    head += ["distilled xx→en acc@1", "error cut", "base xx→en nDCG@10", "distilled xx→en nDCG@10",
             "base en→xx acc@1", "distilled en→xx acc@1"] if tuned else ["base xx→en nDCG@10", "base en→xx acc@1"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]

    def f(v) -> str:
        return "–" if v is None else f"{v:.3f}"

    for r in rows:
        b1 = r.get("base xx→en accuracy@1")
        cells = [r["language"], str(r["pairs"]), f(r.get("tokens_per_char")), f(r.get("unk_share")), f(b1)]
        if tuned:
            t1 = r.get("tuned xx→en accuracy@1")
            cut = None if b1 is None or t1 is None else error_cut(b1, t1)
            cells += [f(t1), "–" if cut is None else f"{cut:.0%}", f(r.get("base xx→en ndcg@10")),
                      f(r.get("tuned xx→en ndcg@10")), f(r.get("base en→xx accuracy@1")),
                      f(r.get("tuned en→xx accuracy@1"))]
        else:
            cells += [f(r.get("base xx→en ndcg@10")), f(r.get("base en→xx accuracy@1"))]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def error_cut(base_acc: float, tuned_acc: float) -> float | None:
    """The share of the base's errors (1 − accuracy@1) the tuned model removes."""
    return None if base_acc >= 1 else (tuned_acc - base_acc) / (1 - base_acc)
