"""The general-domain evaluation set: the shipped Debian descriptions (format, sizes, license notice), its builder on
this machine's real package descriptions, and a user's set that lacks a column (an error naming the field, before
any work)."""
from __future__ import annotations

from pathlib import Path

import pyarrow.parquet as pq
import pytest

from fastemb.data.build_debian import NOTICE, read_status, select, split_description, split_sets, write_set
from fastemb.data.eval_sets import DEBIAN_DIR, check_eval_set, load_eval_set
from fastemb.data.pairs import DataError
from fastemb.spec import parse_spec

STATUS = Path("/var/lib/dpkg/status")


def test_the_shipped_general_set_loads_with_its_notice():
    for split, (n_queries, n_corpus) in {"test": (1000, 2000), "dev": (300, 600)}.items():
        ev = load_eval_set("debian-descriptions", split)
        assert (len(ev.queries), len(ev.corpus)) == (n_queries, n_corpus)
        assert all(len(r) == 1 for r in ev.relevant) and sum(ev.report["corpus"]["skipped"].values()) == 0
    test, dev = (set(pq.read_table(DEBIAN_DIR / f"{s}_corpus.parquet").column("source").to_pylist())
                 for s in ("test", "dev"))
    assert not test & dev  # no source package in both splits
    notice = " ".join((DEBIAN_DIR / NOTICE).read_text().split())
    assert "Debian Free Software Guidelines" in notice and "debian/copyright" in notice
    assert parse_spec({}).general.eval == "debian-descriptions"


def test_descriptions_keep_paragraphs_and_verbatim_lines():
    synopsis, text = split_description("GNU Bourne Again SHell\n Bash is an sh-compatible\n command language."
                                       "\n .\n It supports:\n  * job control\n  * aliases")
    assert synopsis == "GNU Bourne Again SHell"
    assert text == "Bash is an sh-compatible command language.\nIt supports:\n* job control\n* aliases"


@pytest.mark.skipif(not STATUS.exists(), reason="not a Debian machine (no /var/lib/dpkg/status)")
def test_the_builder_makes_a_set_from_installed_packages(tmp_path):
    chosen = select(read_status(STATUS))
    assert len(chosen) >= 60 and len({d.source for d in chosen}) == len(chosen)
    assert len({d.synopsis.lower() for d in chosen}) == len(chosen)
    write_set(split_sets(chosen, {"test": (20, 40), "dev": (10, 20)}), tmp_path, f"the installed packages of {STATUS}")
    ev = load_eval_set(str(tmp_path), "test")
    assert (len(ev.queries), len(ev.corpus)) == (20, 40)
    by_id = dict(zip(ev.corpus_ids, ev.corpus))
    described = {d.package: d for d in chosen}
    for query, relevant in zip(ev.queries, ev.relevant):
        (package,) = relevant
        assert described[package].synopsis == query and described[package].text == by_id[package]
    assert (tmp_path / NOTICE).exists()


def test_a_general_set_missing_a_column_names_the_field_before_any_work(tmp_path, tiny_eval):
    from fastemb.train.job import run_train

    bad = tmp_path / "general"
    bad.mkdir()
    for split in ("dev", "test"):
        pq.write_table(pq.read_table(Path(tiny_eval) / f"{split}_corpus.parquet"), bad / f"{split}_corpus.parquet")
        pq.write_table(pq.read_table(Path(tiny_eval) / f"{split}_queries.parquet").drop(["relevant_ids"]),
                       bad / f"{split}_queries.parquet")
    with pytest.raises(DataError, match=r"^general\.eval: .*test_queries\.parquet: missing column\(s\) "
                                        r"\['relevant_ids'\]"):
        check_eval_set(str(bad), ("test",), "general.eval")
    spec = parse_spec({"name": "bad-general", "storage_path": str(tmp_path / "runs"), "model": {"max_length": 32},
                       "data": {"max_pairs": 64, "eval": tiny_eval}, "general": {"eval": str(bad)}})
    with pytest.raises(DataError, match=r"^general\.eval: .*missing column"):
        run_train(spec)
    assert not (spec.run_dir / "base_metrics.json").exists()  # failed before the first evaluation
