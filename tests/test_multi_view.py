"""Multi-view items (issue 19, part 2): the catalog builder over real Debian package data (the installed packages of
dpkg's status file), the multi-view rows and their bad input, item scoring from views, the spec's rules, and a
training job with the multi-view loss on Ray Train."""
from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

STATUS = Path("/var/lib/dpkg/status")
VIEWS = ["attributes", "title", "description", "tags"]


@pytest.fixture(scope="module")
def catalog(tmp_path_factory) -> tuple[Path, dict]:
    """A small catalog from the installed packages, plus made-up items that must be dropped."""
    from fastemb.data.build_catalog import Item, build, general_sources, read_status

    counts: Counter = Counter()
    items = read_status(STATUS, counts)
    assert len(items) >= 150, f"{STATUS}: {len(items)} installed packages with a description"
    general = sorted(general_sources())
    extra = [Item("leaky", general[0], "1", "utils", "optional", "a package of the general set", "long text", ""),
             Item("oneword", "oneword", "1", "utils", "optional", "word", "text", ""),
             Item("dup-a", "dup-a", "1", "misc", "optional", "two sources, one synopsis", "", ""),
             Item("dup-b", "dup-b", "1", "misc", "optional", "two sources, one synopsis", "", "")]
    out = tmp_path_factory.mktemp("catalog")
    report = build(items + extra, out, "test", n_test=24, n_dev=12, max_train=60, counts=counts)
    return out, report


def test_builder_splits_by_source_excludes_the_general_set_and_counts_drops(catalog):
    from fastemb.data.build_catalog import general_sources

    out, report = catalog
    dropped = report["dropped"]
    assert dropped["source in the general evaluation set (debian-descriptions)"] >= 1
    assert dropped["synopsis under two words"] >= 1 and dropped["synopsis shared by several sources"] >= 2
    assert report["items"] == {"train": 60, "dev": 12, "test": 24} and dropped["beyond --max-train"] > 0
    train = pq.read_table(out / "train.parquet").to_pylist()
    sources = {"train": {r["source"] for r in train}}
    for split in ("dev", "test"):
        corpus = pq.read_table(out / f"{split}_corpus.parquet").to_pylist()
        queries = pq.read_table(out / f"{split}_queries.parquet").to_pylist()
        assert [q["relevant_ids"] for q in queries] == [[c["id"]] for c in corpus]
        assert all(c["title"] and c["attributes"].startswith(f"package: {c['package']};") for c in corpus)
        assert all(c["title"] in c["text"] and (not c["description"] or c["description"] in c["text"]) for c in corpus)
        sources[split] = {c["source"] for c in corpus}
    for a, b in (("train", "dev"), ("train", "test"), ("dev", "test")):
        assert not sources[a] & sources[b], (a, b)
    assert not set().union(*sources.values()) & general_sources()          # the leak: none of the general set's
    assert {"leaky", "oneword", "dup-a", "dup-b"}.isdisjoint(r["id"] for r in train)
    assert all(r["query"].lower() != r["views"]["title"].lower() for r in train[:40] if len(r["views"]["title"]) > 30)
    concat = pq.read_table(out / "train_concat.parquet").to_pylist()
    assert [c["query"] for c in concat] == [r["query"] for r in train]
    assert json.loads((out / "report.json").read_text()) == report
    assert "excluded" in (out / "LICENSE-Debian-catalog.txt").read_text()


def test_query_paraphrase_and_tags():
    import random

    from fastemb.data.build_catalog import keyword_query, paraphrase, tags_text, wordnet_synonyms

    syn = wordnet_synonyms()
    assert len(syn) > 1000 and "shell" not in syn             # ambiguous words are never replaced
    assert paraphrase("Strategy game", {"strategy": "scheme"}) == "Scheme game"
    q = keyword_query("bash: the GNU Bourne Again SHell for the users", "bash", {}, random.Random(0))
    assert "bash" not in q.split() and "the" not in q.split() and 2 <= len(q.split()) <= 5
    assert tags_text("admin::TODO, devel::interpreter, interface::{shell,text-mode}") == \
        "devel: interpreter; interface: shell, text mode"


def test_multi_view_rows_count_bad_input(tmp_path):
    from fastemb.data.multi_view import load_multi_view
    from fastemb.data.pairs import DataError

    rows = [{"query": "q1", "views": {"title": "T1", "description": "D1", "colour": "red"}},
            {"query": "q2", "views": {"title": "T2", "description": "", "tags": None}},     # a single view left
            {"query": "q3", "views": {"title": "  ", "description": None}},                # no usable view
            {"query": "", "views": {"title": "T4"}},
            {"query": "q5", "views": "not an object"}]
    path = tmp_path / "items.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n{broken\n")
    kept, report = load_multi_view(str(path), ["title", "description", "tags"])
    assert [r["query"] for r in kept] == ["q1", "q2"]
    assert kept[0]["views"] == ["T1", "D1", ""] and kept[0]["positive"] == "T1\nD1"
    assert report.skipped == {"no usable view": 1, "query empty": 1, "views not an object": 1, "invalid JSON": 1}
    assert report.views == {"unknown view colour": 1, "single view": 1, "empty view tags": 3,
                            "empty view description": 2, "empty view title": 1}
    assert report.as_dict()["views"]["single view"] == 1 and "views:" in report.summary()
    pq.write_table(pa.table({"query": ["q"], "positive": ["p"]}), tmp_path / "pairs.parquet")
    with pytest.raises(DataError, match="views"):
        load_multi_view(str(tmp_path / "pairs.parquet"), ["title"])


def test_item_scores_fused_and_max_match_a_loop():
    from fastemb.eval.multi_view import item_scores

    rng = np.random.default_rng(0)
    unit = lambda x: x / np.linalg.norm(x, axis=-1, keepdims=True)  # noqa: E731
    q, v = unit(rng.normal(size=(3, 6))), unit(rng.normal(size=(4, 3, 6)))
    present = np.array([[1, 1, 1], [1, 0, 1], [0, 0, 0], [0, 1, 0]], dtype=bool)
    w = [1.0, 2.0, 0.5]
    fused, best = item_scores(q, v, present, "fused", w), item_scores(q, v, present, "max")
    for i in range(3):
        for j in range(4):
            vs = [(w[a], v[j, a]) for a in range(3) if present[j, a]]
            if not vs:
                assert fused[i, j] == -np.inf and best[i, j] == -np.inf
                continue
            f = unit(sum(wa * x for wa, x in vs))
            assert fused[i, j] == pytest.approx(q[i] @ f) and best[i, j] == pytest.approx(max(q[i] @ x for _, x in vs))


def test_multi_view_evaluation_counts_missing_views(tmp_path, minilm_path):
    from fastemb.data.eval_sets import load_eval_set
    from fastemb.eval.multi_view import evaluate_multi_view
    from fastemb.model.encoder import Encoder

    corpus = [{"id": "bash", "text": "GNU Bourne Again SHell", "title": "GNU Bourne Again SHell",
               "description": "Bash is an sh-compatible command language interpreter."},
              {"id": "gzip", "text": "GNU compression utilities", "title": "GNU compression utilities",
               "description": None},
              {"id": "blank", "text": "blank item", "title": "", "description": None}]
    pq.write_table(pa.Table.from_pylist(corpus), tmp_path / "test_corpus.parquet")
    pq.write_table(pa.table({"id": ["q1", "q2"], "text": ["command shell interpreter", "compress files"],
                             "relevant_ids": [["bash"], ["gzip"]]}), tmp_path / "test_queries.parquet")
    data = load_eval_set(str(tmp_path), "test")
    m = evaluate_multi_view(Encoder.load(minilm_path, max_length=64), data, str(tmp_path), "test",
                            ["title", "description", "tags"], [1.0, 1.0, 1.0], "max")
    assert m["views_missing_in_corpus"] == 1 and m["items_without_view"] == 1
    assert m["views_present_title"] == 2 and m["views_present_description"] == 1 and m["views_present_tags"] == 0
    assert m["ndcg@10"] == m["ndcg@10_max"] == 1.0 and {"ndcg@10_fused", "ndcg@10_view_description"} <= set(m)
    assert "ndcg@10_view_tags" not in m


def test_spec_rules_name_the_field():
    from fastemb.spec import SpecError, parse_spec

    base = {"job": "train", "data": {"format": "multi_view", "train": "x", "eval": "y"}, "general": None}
    assert parse_spec({**base, "multi_view": {"weights": {"title": 2}}}).multi_view.view_weights == [1, 2, 1, 1]
    for extra, words in (({"multi_view": {"weights": {"colour": 1.0}}}, "unknown view name(s) ['colour']"),
                         ({"multi_view": {"weights": {"title": -1.0}}}, "title must be >= 0"),
                         ({"multi_view": {"views": ["title", "title"]}}, "given twice"),
                         ({"multi_view": {"query_weight": 0, "view_weight": 0}}, "both 0"),
                         ({}, "add a multi_view section"),
                         ({"multi_view": {}, "loss": {"hard_negatives": 2}}, "loss.hard_negatives: not with")):
        with pytest.raises(SpecError, match=words.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")):
            parse_spec({**base, **extra})
    with pytest.raises(SpecError, match="set data.format: multi_view"):
        parse_spec({"job": "train", "multi_view": {}})
    from fastemb.spec import load_spec

    job = load_spec(Path(__file__).resolve().parents[1] / "jobs" / "multi_view.yaml", [], "train")  # the recipe
    assert job.data.format == "multi_view" and job.multi_view.view_weights == [0.5, 1.0, 1.0, 0.5]


def test_multi_view_trains_on_ray_train(ray_local, tmp_path, tiny_model, catalog):
    """The training job on the catalog: one Ray Train worker (DeepSpeed ZeRO-2; the loss's cross-worker gathering is
    the loss module's, tested like InfoNCE's), every view's query term logged, items scored from their views."""
    from fastemb.spec import parse_spec
    from fastemb.train.job import run_train

    data, _ = catalog
    spec = parse_spec({"job": "train", "name": "mv", "storage_path": str(tmp_path / "runs"),
                       "model": {"base": tiny_model, "max_length": 48},
                       "data": {"format": "multi_view", "train": str(data / "train.parquet"), "eval": str(data),
                                "max_pairs": 16},
                       "multi_view": {"weights": {"description": 2.0}, "item_score": "fused"}, "general": None,
                       "train": {"num_workers": 1, "micro_batch_size": 8, "max_steps": 6, "lr": 3e-4, "epochs": 3,
                                 "warmup_ratio": 0, "checkpoint_every": 100, "log_every": 1, "eval_every": 6}})
    report = run_train(spec)
    steps = [h for h in report["history"] if "loss_query" in h]
    assert len(steps) == 6 and all(h["loss_view"] > 0 for h in steps)
    assert all(f"loss_query_{v}" in steps[0] for v in ("attributes", "title"))
    assert steps[-1]["loss"] < steps[0]["loss"], [h["loss"] for h in steps]     # 16 items seen 3 times: it learns
    assert report["pairs"]["kept"] == 16 and "views" in report["pairs"]
    for side in ("base", "tuned"):
        m = report[side]
        assert m["corpus"] == 24 and m["ndcg@10"] == m["ndcg@10_fused"]
        for v in VIEWS:    # a figure per view that some item has (installed packages have no debtags)
            assert (f"ndcg@10_view_{v}" in m) == (m[f"views_present_{v}"] > 0)
    assert any("dev_ndcg@10_max" in h for h in report["history"])
