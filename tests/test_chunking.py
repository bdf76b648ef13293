"""Long documents: token windows with overlap, and document-level search over real Debian man pages
(query = the NAME line's description, document = the rest of the page)."""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from fastemb.data.chunking import aggregate_doc_scores, chunk_token_ids, token_windows


def test_windows_cover_the_text_with_overlap():
    for n, w, o in [(10, 4, 1), (100, 30, 10), (31, 30, 10), (30, 30, 10), (1, 5, 0)]:
        wins = token_windows(n, w, o)
        assert wins[0][0] == 0 and wins[-1][1] == n
        assert all(e - s <= w for s, e in wins)
        assert all(b[0] == a[1] - o for a, b in zip(wins, wins[1:]))   # consecutive windows share o tokens
    with pytest.raises(ValueError, match="overlap"):
        token_windows(10, 4, 4)


def test_chunk_token_ids_respect_max_length(minilm_path):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(minilm_path)
    text = " ".join(f"word{i}" for i in range(300))
    chunks = chunk_token_ids(tok, [text, "short"], max_length=64, overlap=16)
    assert [c for i, c, _ in chunks if i == 1] == [0]
    long = [ids for i, _, ids in chunks if i == 0]
    assert len(long) > 1 and all(len(ids) <= 64 for ids in long)
    assert all(ids[0] == tok.cls_token_id and ids[-1] == tok.sep_token_id for ids in long)
    body = tok(text, add_special_tokens=False)["input_ids"]
    assert long[0][1:-1] == body[:62] and long[1][1:17] == body[62 - 16:62]


def test_aggregate_max_and_mean():
    ids, scores = ["a", "b", "a", "c", "b"], np.array([0.9, 0.8, 0.1, 0.7, 0.8])
    assert aggregate_doc_scores(ids, scores, "max") == [("a", 0.9), ("b", 0.8), ("c", 0.7)]
    assert [d for d, _ in aggregate_doc_scores(ids, scores, "mean", k=2)] == ["b", "c"]


def test_man_pages_are_chunked_and_searched_as_documents(ray_local, tmp_path):
    assert shutil.which("groff") and Path("/usr/share/man/man2").is_dir(), \
        "this test needs Debian's man pages and groff: apt-get install manpages manpages-dev groff-base (.ci/run does)"
    from fastemb.data.manpages import load_manpages
    from fastemb.index.job import run_index
    from fastemb.index.searcher import Searcher
    from fastemb.spec import parse_spec

    pages = load_manpages("2", limit=16, min_chars=3000)
    pq.write_table(pages.select(["id", "text"]), tmp_path / "pages.parquet")
    spec = parse_spec({"job": "index", "name": "man", "storage_path": str(tmp_path / "runs"),
                       "corpus": {"path": str(tmp_path / "pages.parquet")}, "model": {"max_length": 128},
                       "embed": {"num_actors": 1, "batch_rows": 8, "max_batch_tokens": 4096},
                       "chunking": {"enabled": True, "overlap": 32, "max_chunks": 12},
                       "index": {"type": "flat"}, "ray": {"num_cpus": 2}})
    m = run_index(spec)
    assert m["counts"]["documents_indexed"] == pages.num_rows
    assert m["counts"]["index_entries"] > 3 * pages.num_rows          # pages are longer than 128 tokens
    hits = Searcher(spec.run_dir).search(pages["query"].to_pylist(), k=5)
    assert all(len({h["id"] for h in row}) == len(row) == 5 for row in hits)   # documents, not chunks
    truth = pages["id"].to_pylist()
    top5 = np.mean([t in [h["id"] for h in row] for t, row in zip(truth, hits)])
    assert top5 >= 0.6, f"only {top5:.0%} of NAME descriptions find their page in the top 5"
