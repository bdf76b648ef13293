"""Parallel text as training pairs for multilingual distillation, with per-language temperature sampling.

A parallel file (``fastemb/data/build_parallel.py``: columns ``english``, ``translation``, ``language``; parquet,
one file or a folder) becomes pairs ``{query: translation, positive: english}``: the teacher embeds the positive
(the English text) and the student learns to map both sides onto that vector (``distill.embedding_mse.target:
positive``; Reimers & Gurevych 2020).

Sampling (``multilingual.temperature`` T, ``multilingual.weights`` w): with ``n_l`` usable pairs of language l and a
budget of B pairs (``data.max_pairs``, default: all usable pairs), language l gets ``B · q_l`` pairs where
``q_l ∝ w_l · n_l^(1/T)``; T = 1 keeps the data's proportions, a larger T flattens them (Conneau & Lample 2019, XLM).
A language's share larger than its pairs repeats them (``upsampled``); a smaller share is a seeded sample. Rows with
an empty side, or of languages not asked for, are counted in the row report; a language asked for that has no pairs
is an error that names it.
"""
from __future__ import annotations

import random
from collections import defaultdict

from fastemb.data.pairs import DataError, RowReport, read_rows, resolve_pairs_path
from fastemb.data.text import bad_text_reason

COLUMNS = ("english", "translation", "language")


def language_shares(counts: dict[str, int], temperature: float, weights: dict[str, float] | None = None
                    ) -> dict[str, float]:
    """``q_l ∝ w_l · n_l^(1/T)``, normalised to sum to 1."""
    raw = {lang: (weights or {}).get(lang, 1.0) * n ** (1.0 / temperature) for lang, n in counts.items() if n}
    total = sum(raw.values())
    return {lang: v / total for lang, v in raw.items()}


def _parallel_columns(row: dict) -> str | None:
    missing = [c for c in COLUMNS if c not in row]
    return (f"missing column(s) {missing}; parallel text needs columns {list(COLUMNS)} "
            f"(fastemb/data/build_parallel.py writes them); found {sorted(row)}") if missing else None


def load_parallel_pairs(train: str, languages: list[str], max_pairs: int | None = None, temperature: float = 1.0,
                        weights: dict[str, float] | None = None, seed: int = 42) -> tuple[list[dict], RowReport]:
    """Pairs ``{query: translation, positive: english, language}`` sampled per language (module docstring); the row
    report counts skipped rows by reason and, per language, the usable pairs, its share and the pairs drawn."""
    path = resolve_pairs_path(train)
    report = RowReport()
    wanted = set(languages)
    by_lang: dict[str, list[dict]] = defaultdict(list)
    for row in read_rows(path, report, _parallel_columns):
        if row.get("language") not in wanted:
            report.skipped["language not in multilingual.languages"] += 1
            continue
        reason = next((f"{c} {r}" for c in ("english", "translation") if (r := bad_text_reason(row.get(c)))),
                      None)
        if reason:
            report.skipped[reason] += 1
            continue
        by_lang[row["language"]].append({"query": row["translation"], "positive": row["english"],
                                         "language": row["language"]})
    empty = [lang for lang in languages if not by_lang.get(lang)]
    if empty:
        raise DataError(f"{path}: no usable pairs for language(s) {empty} (multilingual.languages); "
                        f"{report.summary()}; languages with pairs: {sorted(by_lang)}")
    counts = {lang: len(by_lang[lang]) for lang in languages}
    shares = language_shares(counts, temperature, weights)
    budget = max_pairs or sum(counts.values())
    rng = random.Random(seed)
    kept: list[dict] = []
    for lang in languages:
        rows, want = by_lang[lang], max(1, round(budget * shares[lang]))
        repeats, rest = divmod(want, len(rows))
        drawn = rows * repeats + rng.sample(rows, rest)
        kept.extend(drawn)
        report.by_language[lang] = {"usable": len(rows), "share": round(shares[lang], 4), "drawn": len(drawn),
                                    "upsampled": want > len(rows)}
    rng.shuffle(kept)
    report.kept = len(kept)
    return kept, report
