"""Translation retrieval per language (fastemb/eval/translation.py) against a plain loop, and the tokenizer report."""
from __future__ import annotations

import logging
import math

import numpy as np
import pytest

from fastemb.data.build_parallel import BuildReport, read_catalog
from fastemb.eval.translation import (error_cut, evaluate_languages, held_out_pairs, language_table, markdown_table,
                                      tokenizer_stats, translation_retrieval)
from fastemb.plots import language_bars


def _loop_reference(q: np.ndarray, d: np.ndarray) -> dict[str, float]:
    acc, ndcg = 0.0, 0.0
    for i in range(len(q)):
        cos = [float(q[i] @ d[j] / np.linalg.norm(q[i]) / np.linalg.norm(d[j])) for j in range(len(d))]
        rank = 1 + sum(1 for j in range(len(d)) if j != i and cos[j] >= cos[i])
        acc += rank == 1
        ndcg += 1 / math.log2(1 + rank) if rank <= 10 else 0.0
    return {"accuracy@1": acc / len(q), "ndcg@10": ndcg / len(q)}


def test_translation_retrieval_matches_a_loop():
    rng = np.random.default_rng(0)
    en = rng.normal(size=(40, 8)).astype(np.float32)
    xx = (en + rng.normal(scale=1.2, size=en.shape)).astype(np.float32)
    vectors = {f"en{i}": en[i] for i in range(40)} | {f"xx{i}": xx[i] for i in range(40)}
    pairs = [(f"en{i}", f"xx{i}") for i in range(40)]
    got = translation_retrieval(lambda texts: np.stack([vectors[t] for t in texts]), pairs)
    for direction, (q, d) in {"xx→en": (xx, en), "en→xx": (en, xx)}.items():
        ref = _loop_reference(q, d)
        assert got[direction] == pytest.approx(ref)
    assert 0 < got["xx→en"]["accuracy@1"] < 1  # the noise makes some wrong: not a trivial case


def test_test_pairs_deduplicated_and_short_languages_reported(caplog):
    rows = [{"english": e, "translation": t, "language": lang} for e, t, lang in [
        ("Open", "Öffnen", "de"), ("Open", "Aufmachen", "de"), ("Close", "Schliessen", "de"),
        ("Quit", "Beenden", "de"), ("Exit", "Beenden", "de"), ("Open", "Ouvrir", "fr")]]
    pairs, info = held_out_pairs(rows, ["de", "fr", "nl"])
    assert pairs["de"] == [("Open", "Öffnen"), ("Close", "Schliessen"), ("Quit", "Beenden")]
    assert info["de"] == {"rows": 5, "duplicates": 2, "pairs": 3} and pairs["nl"] == []
    with caplog.at_level(logging.WARNING):
        res = evaluate_languages(lambda t: np.eye(8, dtype=np.float32)[[hash(x) % 8 for x in t]], pairs, min_pairs=2)
    assert res["nl"] == {"skipped": "no test pairs", "pairs": 0}
    assert res["fr"]["skipped"].startswith("too few test pairs") and "nl: no test pairs" in caplog.text
    assert error_cut(0.4, 0.7) == pytest.approx(0.5) and error_cut(1.0, 1.0) is None


def test_tokenizer_stats_flag_a_script_the_vocabulary_lacks(minilm_path, caplog, tmp_path):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(minilm_path)
    texts = {}
    for lang in ("de", "am"):  # iso-codes' country names in German and in Amharic (Ge'ez script)
        catalog = read_catalog(f"/usr/share/locale/{lang}/LC_MESSAGES/iso_3166-1.mo", BuildReport())
        texts[lang] = [v for k, v in catalog.items() if k][:60]
    with caplog.at_level(logging.WARNING):
        stats = tokenizer_stats(tok, texts)
    assert stats["de"]["unk_share"] < 0.05 and not stats["de"]["mostly_unknown"]
    assert stats["am"]["unk_share"] > 0.9 and stats["am"]["mostly_unknown"] and "am: " in caplog.text
    assert 0.1 < stats["de"]["tokens_per_char"] < 0.6
    base = {"de": {"pairs": 3, "xx→en": {"accuracy@1": 0.4, "ndcg@10": 0.5}, "en→xx": {"accuracy@1": 0.3,
                                                                                     "ndcg@10": 0.4}},
            "am": {"skipped": "no test pairs", "pairs": 0}}
    tuned = {"de": {"pairs": 3, "xx→en": {"accuracy@1": 0.7, "ndcg@10": 0.8}, "en→xx": {"accuracy@1": 0.6,
                                                                                     "ndcg@10": 0.7}}}
    rows = language_table(base, tuned, stats)
    table = markdown_table(rows)
    assert "| de | 3 |" in table and "50%" in table and rows[0]["skipped"] == "no test pairs"
    assert language_bars(rows, tmp_path / "languages.png").stat().st_size > 1000
