"""The multilingual section of a training report: what the student's tokenizer does to each language, and
translation retrieval per language on held-out string families, base against distilled
(``fastemb/eval/translation.py``). Writes ``<run>/languages.md`` (the table) and ``<run>/languages.png``."""
from __future__ import annotations

import logging
from collections import defaultdict
from pathlib import Path

from fastemb.eval.cache import cached_metrics
from fastemb.eval.translation import (evaluate_languages, held_out_pairs, language_table, markdown_table,
                                      read_parallel, tokenizer_stats)
from fastemb.model.encoder import Encoder
from fastemb.plots import language_bars
from fastemb.record import files_fingerprint
from fastemb.spec import StudentModelSpec, TrainJob

logger = logging.getLogger(__name__)
TOKENIZER_SAMPLE = 2000  # translations per language the tokenizer statistics read


def training_texts(pairs: list[dict], languages: list[str]) -> dict[str, list[str]]:
    """Up to ``TOKENIZER_SAMPLE`` distinct translations per language from the training pairs."""
    out: dict[str, dict[str, None]] = defaultdict(dict)
    for p in pairs:
        texts = out[p.get("language", "?")]
        if len(texts) < TOKENIZER_SAMPLE:
            texts[p["query"]] = None
    return {lang: list(out.get(lang, {})) for lang in languages}


def student_tokenizer_stats(spec: TrainJob, pairs: list[dict]) -> dict[str, dict]:
    """Tokens per character and [UNK] share of the student's tokenizer per language (before training: a language
    that is mostly unknown tokens is warned about then)."""
    from transformers import AutoTokenizer

    from fastemb.model.encoder import _read_st_layout, resolve_model_path

    path = Path(resolve_model_path(spec.model.base))
    tok = AutoTokenizer.from_pretrained(path / _read_st_layout(path)[0], local_files_only=True)
    return tokenizer_stats(tok, training_texts(pairs, spec.multilingual.languages), spec.multilingual.unk_warn)


def multilingual_report(spec: TrainJob, model: StudentModelSpec, model_dir: Path, tokens: dict[str, dict]) -> dict:
    """Base and distilled translation retrieval per language on ``multilingual.test`` (when given), the language
    table (Markdown and PNG in the run folder) and the tokenizer statistics."""
    m = spec.multilingual
    out: dict = {"languages": m.languages, "temperature": m.temperature, "tokenizer": tokens}
    if not m.test:
        return out
    pairs, info = held_out_pairs(read_parallel(m.test, m.languages), m.languages, m.test_pairs, spec.train.seed)
    key = {"model": model.model_dump(), "test": files_fingerprint([Path(m.test)]), "languages": m.languages,
           "test_pairs": m.test_pairs, "min_test_pairs": m.min_test_pairs, "seed": spec.train.seed}

    def score(path: str | None) -> dict:
        return evaluate_languages(Encoder.from_spec(model, path).encode, pairs, m.min_test_pairs)

    logger.info(f"translation retrieval on {sum(map(len, pairs.values()))} held-out pairs of {len(pairs)} languages")
    base = cached_metrics(spec.run_dir / "base_translation.json", key, lambda: score(None))
    tuned = score(str(model_dir))
    rows = language_table(base, tuned, tokens)
    table = markdown_table(rows)
    (spec.run_dir / "languages.md").write_text(table + "\n")
    png = language_bars(rows, spec.run_dir / "languages.png", f"translation retrieval: {spec.name}")
    logger.info("translation retrieval per language:\n" + table)
    return {**out, "test": info, "base": base, "tuned": tuned, "table": rows, "png": str(png)}
