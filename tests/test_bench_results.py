"""bench/results.py: a benchmark says who wins only when the difference exceeds the spread over seeds or rounds."""
from __future__ import annotations

from bench.results import ratio_verdict, spread, verdict


def test_a_difference_within_the_spread_has_no_winner():
    assert verdict([0.3958, 0.3941, 0.3970], [0.3947, 0.3960, 0.3932], "distilled", "contrastive").startswith(
        "no winner: the difference +0.001")
    assert verdict([0.40], [0.39], "a", "b").startswith("no verdict")          # one seed: no spread to read it by


def test_a_difference_beyond_the_spread_names_the_winner():
    assert verdict([0.41, 0.412, 0.409], [0.39, 0.391, 0.392], "a", "b").startswith("a wins: the difference +0.0")
    assert verdict([0.39, 0.391, 0.392], [0.41, 0.412, 0.409], "a", "b").startswith("b wins")
    assert verdict([10.0, 10.5], [12.0, 12.2], "a", "b", higher_is_better=False).startswith("a wins")


def test_a_ratio_wins_only_when_its_spread_over_rounds_excludes_one():
    assert ratio_verdict([1.54, 1.89], "fastemb", "ST").startswith("fastemb wins")
    assert ratio_verdict([0.9, 1.3], "fastemb", "ST").startswith("no winner")
    assert ratio_verdict([0.7, 0.75, 0.72], "fastemb", "ST").startswith("ST wins")
    assert ratio_verdict([1.7], "fastemb", "ST").startswith("no verdict")
    assert spread([0.5, 0.7], digits=2, what="rounds") == "0.60 ± 0.14 (2 rounds: 0.50, 0.70)"
