"""Long documents: the man-page set's builder (real pages of Debian's manpages / manpages-dev, rendered with groff),
the long-document training rows, their bad input, and the document scores of long-document evaluation."""
from __future__ import annotations

import gzip
import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from fastemb.data.chunking import aggregate_doc_scores, chunk_texts, pool_scores

NEEDS_PAGES = "needs Debian's man pages and groff: apt-get install manpages manpages-dev groff-base (.ci/run does)"


@pytest.fixture(scope="module")
def tokenizer(minilm_path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(minilm_path)


def _page(folder: Path, name: str, body: str) -> Path:
    path = folder / f"{name}.gz"
    path.write_bytes(gzip.compress(body.encode()))
    return path


def test_builder_splits_real_pages_by_name_and_counts_bad_pages(tmp_path, tokenizer):
    assert shutil.which("groff") and shutil.which("dpkg"), NEEDS_PAGES
    from fastemb.data.build_manpages import build, package_pages, split_of

    real = [p for p in package_pages() if p.parent.name == "man2" and not p.is_symlink()][:14]
    assert len(real) == 14, NEEDS_PAGES
    bad_dir = tmp_path / "man7"
    bad_dir.mkdir()
    bad = [_page(bad_dir, "noname.7", '.TH NONAME 7\n.SH DESCRIPTION\nA page without a NAME section.\n'),
           _page(bad_dir, "empty.7", '.TH EMPTY 7\n.SH NAME\nempty \\- a page with nothing else\n'),
           _page(bad_dir, "redirect.7", ".so man7/other.7\n"),
           *[_page(bad_dir, f"dup{i}.7", f'.TH DUP{i} 7\n.SH NAME\ndup{i} \\- two pages, one summary\n'
                   f'.SH DESCRIPTION\nPage {i} of two with the same summary: a query with two answers.\n')
             for i in (1, 2)]]
    report = build(real + bad, tmp_path / "set", tokenizer, workers=2)
    assert report["skipped"]["no 'name - summary' line"] == 1
    assert report["skipped"]["empty document"] == 1
    assert report["skipped"]["redirect (.so)"] == 1
    assert report["skipped"]["summary shared with an earlier page"] == 1
    assert report["kept"] + sum(report["skipped"].values()) == len(real) + len(bad)
    out = tmp_path / "set"
    train = pq.read_table(out / "train.parquet").to_pylist()
    tests = pq.read_table(out / "test_queries.parquet").to_pylist()
    corpus = pq.read_table(out / "test_corpus.parquet").to_pylist()
    splits = {"train": [r["id"] for r in train], "test": [r["id"] for r in tests],
              "dev": pq.read_table(out / "dev_queries.parquet")["id"].to_pylist()}
    assert sum(map(len, splits.values())) == report["kept"]
    names = {s: {i.rsplit(".", 1)[0] for i in ids} for s, ids in splits.items()}
    assert not (names["train"] & names["test"] or names["train"] & names["dev"] or names["dev"] & names["test"])
    assert all(split_of(i) == s for s, ids in splits.items() for i in ids)
    assert [r["id"] for r in corpus] == splits["test"] and all(r["relevant_ids"] == [r["id"]] for r in tests)
    for row in train:  # the NAME section is gone from the document, its summary is the query
        assert "NAME\n" not in row["document"] and row["query"] not in row["document"][:200]
        assert "Linux man-pages" not in row["document"].rstrip().splitlines()[-1]   # nor the page's footer
        assert len(row["document"]) > 200 or row["id"].startswith("dup") and 2 <= len(row["query"].split()) <= 20
    stats = report["tokens"]["train"]["documents"]
    assert stats["count"] == len(train) and stats["min"] <= stats["p50"] <= stats["max"]
    assert stats["over_128"] >= stats["over_512"] and stats["over_128"] > 0
    assert json.loads((out / "report.json").read_text()) == report
    assert "man-pages" in (out / "LICENSE-manpages.txt").read_text()


def test_chunk_texts_are_spans_of_the_text_in_token_windows(tokenizer):
    text = "The quick brown fox jumps over the lazy dog. " * 40
    (chunks, short, empty), (n, n_short, n_empty) = chunk_texts(tokenizer, [text, "tiny text", ""], 32, 8,
                                                                max_chunks=5)
    assert len(chunks) == 5 and n > 5 and short == ["tiny text"] and n_short == 1 and empty == [] and n_empty == 0
    assert all(c in text for c in chunks)
    assert all(len(tokenizer(c, add_special_tokens=False)["input_ids"]) <= 30 for c in chunks)


def test_long_doc_rows_count_bad_and_too_long_documents(tmp_path, tokenizer):
    import pyarrow as pa

    from fastemb.data.long_docs import load_long_docs
    from fastemb.data.pairs import DataError

    long_text = "Signals are delivered to the process. " * 200
    rows = [{"query": "send a signal", "document": long_text, "chunks": None},
            {"query": "short one", "document": "A short page.", "chunks": None},
            {"query": "", "document": "no query", "chunks": None},
            {"query": "empty doc", "document": "   ", "chunks": None},
            {"query": "no doc", "document": None, "chunks": None},
            {"query": "given chunks", "document": None, "chunks": ["first part", "", "second part"]},
            {"query": "empty chunks", "document": None, "chunks": ["", " "]}]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "docs.parquet")
    kept, report = load_long_docs(str(tmp_path / "docs.parquet"), tokenizer, 64, 16, max_chunks=4)
    by_query = {r["query"]: r for r in kept}
    assert sorted(by_query) == ["given chunks", "send a signal", "short one"]
    assert len(by_query["send a signal"]["chunks"]) == 4 and by_query["short one"]["chunks"] == ["A short page."]
    assert by_query["given chunks"]["chunks"] == ["first part", "second part"]
    assert report.skipped == {"query empty": 1, "document empty": 1, "document null": 1, "chunks empty": 1}
    assert report.truncated["documents longer than max_chunks"] == 1 and report.truncated["chunks dropped"] > 10
    assert "truncated" in report.as_dict() and report.kept == 3
    pq.write_table(pa.table({"query": ["q"], "text": ["t"]}), tmp_path / "wrong.parquet")
    with pytest.raises(DataError, match="document"):
        load_long_docs(str(tmp_path / "wrong.parquet"), tokenizer, 64, 16, 4)


def test_document_scores_max_mean_attention():
    s = np.array([0.2, 0.9, 0.4])
    assert pool_scores(s, "max") == pytest.approx(0.9) and pool_scores(s, "mean") == pytest.approx(0.5)
    att = pool_scores(s, "attention", 0.05)
    assert 0.5 < att < 0.9 and att == pytest.approx(float((np.exp(s / 0.05) * s).sum() / np.exp(s / 0.05).sum()))
    assert pool_scores(s, "attention", 1e-4) == pytest.approx(0.9) and pool_scores(s, "attention", 1e4) == \
        pytest.approx(0.5, abs=1e-3)
    ids = ["a", "b", "a", "c", "b"]
    ranked = aggregate_doc_scores(ids, np.array([0.9, 0.8, 0.1, 0.7, 0.8]), "attention")
    assert [d for d, _ in ranked] == ["a", "b", "c"] and ranked[1][1] == pytest.approx(0.8)


def test_long_docs_train_on_ray_train_with_the_hierarchical_loss(ray_local, tmp_path, tiny_model):
    """The training job on real man pages: one Ray Train worker (DeepSpeed ZeRO-2; the loss with chunks gathered
    across two processes is tests/test_losses.py's), the hierarchical loss's two terms logged, the evaluations per
    document from chunks, truncation reported."""
    assert shutil.which("groff") and shutil.which("dpkg"), NEEDS_PAGES
    from fastemb.data.build_manpages import build, package_pages
    from fastemb.spec import parse_spec
    from fastemb.train.job import run_train

    pages = [p for p in package_pages() if p.parent.name == "man2" and not p.is_symlink()]
    data = tmp_path / "pages"
    rows = build(pages[:60], data, workers=2, limit=28)["rows"]
    assert rows["train"] >= 12 and rows["test"] >= 4, rows
    spec = parse_spec({"job": "train", "name": "long", "storage_path": str(tmp_path / "runs"),
                       "model": {"base": tiny_model, "max_length": 64},
                       "data": {"format": "long_docs", "train": str(data / "train.parquet"), "eval": str(data)},
                       "long_docs": {"max_chunks": 3, "overlap": 8, "positive": "attention", "doc_score": "max",
                                     "late_chunking": True, "eval_max_chunks": 4},
                       "general": None,
                       "train": {"num_workers": 1, "micro_batch_size": 8, "max_steps": 2, "lr": 1e-4,
                                 "checkpoint_every": 100, "log_every": 1, "eval_every": 2}})
    report = run_train(spec)
    assert report["pairs"]["truncated"]["documents longer than max_chunks"] >= rows["train"] // 2
    steps = [h for h in report["history"] if "loss_chunk" in h]
    assert len(steps) == 2 and all(h["loss_chunk"] > 0 and h["loss_doc"] > 0 for h in steps)   # both terms, each step
    assert any("dev_ndcg@10" in h for h in report["history"])
    for side in ("base", "tuned"):
        m = report[side]
        assert m["corpus"] == rows["test"] and m["chunks"] > m["corpus"] and m["documents_truncated"] > 0
    from safetensors.torch import load_file

    tuned = load_file(Path(report["model_dir"]) / "model.safetensors")
    base = load_file(Path(tiny_model) / "model.safetensors")
    assert any(not np.allclose(tuned[k].numpy(), base[k].numpy()) for k in tuned if k in base)   # it trained


def test_index_entries_per_document_are_the_mean_of_their_chunks(minilm_path):
    """The index's embedding actor (called in-process, no Ray) with chunking.entries document: one entry per page,
    the normalised mean of its chunk vectors; a bad row keeps its place with its reason."""
    import pyarrow as pa

    from fastemb.index.embed import EmbedActor

    long_text = " ".join(f"The call number {i} returns an error code." for i in range(60))
    batch = pa.table({"id": ["a", "b", "c"], "text": [long_text, "A short page.", ""]})
    model = {"base": minilm_path, "max_length": 32}
    chunked = EmbedActor(model, "id", "text", chunking={"overlap": 4, "max_chunks": 5})(batch)
    per_doc = EmbedActor(model, "id", "text", chunking={"overlap": 4, "max_chunks": 5, "entries": "document"})(batch)
    assert chunked["id"].to_pylist().count("a") == 5 and per_doc["id"].to_pylist() == ["c", "a", "b"]
    assert per_doc["skip"].to_pylist()[0] is not None
    vec = {i: np.asarray(v) for i, v in zip(chunked["id"].to_pylist(), chunked["vector"].to_pylist()) if v}
    chunks_a = np.stack([np.asarray(v) for i, v in zip(chunked["id"].to_pylist(), chunked["vector"].to_pylist())
                         if i == "a"])
    mean = chunks_a.mean(0) / np.linalg.norm(chunks_a.mean(0))
    got = {i: np.asarray(v) for i, v in zip(per_doc["id"].to_pylist(), per_doc["vector"].to_pylist()) if v}
    assert np.allclose(got["a"], mean, atol=1e-5) and np.allclose(got["b"], vec["b"], atol=1e-5)


def test_late_windows_pack_chunks_without_straddling():
    from fastemb.eval.long_docs import late_windows

    spans = [(0, 100), (84, 184), (168, 268), (252, 352), (336, 400)]
    packed = late_windows(spans, 300)
    assert [(s, e) for s, e, _ in packed] == [(0, 268), (252, 400)]
    assert [c for _, _, cs in packed for c in cs] == spans and all(e - s <= 300 for s, e, _ in packed)
    assert late_windows([(0, 500)], 300) == [(0, 500, [(0, 500)])]       # a chunk longer than the limit: alone


def test_document_scores_match_per_document_pooling():
    from fastemb.eval.long_docs import document_scores

    rng = np.random.default_rng(0)
    scores, doc_of = rng.normal(size=(3, 7)), np.array([0, 0, 0, 2, 2, 3, 3])   # document 1 has no chunk
    for how in ("max", "mean", "attention"):
        got = document_scores(scores, doc_of, 4, how, 0.1)
        for q in range(3):
            assert got[q, 1] == -np.inf
            for d in (0, 2, 3):
                assert got[q, d] == pytest.approx(pool_scores(scores[q, doc_of == d], how, 0.1))


def test_long_document_evaluation_counts_cut_and_empty_documents(minilm_path):
    from fastemb.data.eval_sets import EvalSet
    from fastemb.eval.long_docs import evaluate_long_docs
    from fastemb.model.encoder import Encoder

    encoder = Encoder.load(minilm_path, max_length=64)
    pages = {"kill.2": "kill - send signal to a process. " + "The kill() system call can be used to send any signal "
             "to any process group or process. " * 30,
             "open.2": "The open() system call opens the file specified by pathname and returns a file descriptor.",
             "blank": "\u200b\u200b"}   # a text with no token at all
    data = EvalSet(["q1", "q2"], ["send a signal to a process", "open and possibly create a file"],
                   [{"kill.2"}, {"open.2"}], list(pages), list(pages.values()), {})
    for late in (False, True):
        m = evaluate_long_docs(encoder, data, chunk_length=32, overlap=4, max_chunks=6, late_chunking=late)
        assert m["documents_empty"] == 1 and m["documents_truncated"] == 1 and m["chunks"] == 6 + 1
        assert m["ndcg@10"] == 1.0 and set(m) >= {"ndcg@10_max", "ndcg@10_mean", "ndcg@10_attention"}
