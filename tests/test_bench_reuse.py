"""bench/results.py: a benchmark reuses an earlier run only when its spec and code fingerprint match."""
from __future__ import annotations

import json

from bench.results import code_fingerprint, record_run, reusable


def test_a_run_is_reused_only_with_the_same_spec_and_code(tmp_path):
    spec, code = {"train": {"seed": 1, "lr": 1e-4}}, code_fingerprint()
    run = tmp_path / "run"
    run.mkdir()
    assert not reusable(run, spec, code)                          # nothing there
    (run / "report.json").write_text(json.dumps({"tuned": {}}))
    assert not reusable(run, spec, code)                          # a report without its record: not trusted
    record_run(run, spec, code)
    assert reusable(run, spec, code)
    assert not reusable(run, {"train": {"seed": 2, "lr": 1e-4}}, code)   # another spec
    assert not reusable(run, spec, "0" * 16)                             # other code


def test_the_code_fingerprint_follows_the_code(tmp_path):
    (tmp_path / "fastemb").mkdir()
    (tmp_path / "fastemb" / "a.py").write_text("x = 1\n")
    before = code_fingerprint(tmp_path)
    assert code_fingerprint(tmp_path) == before
    (tmp_path / "fastemb" / "a.py").write_text("x = 2\n")
    assert code_fingerprint(tmp_path) != before
