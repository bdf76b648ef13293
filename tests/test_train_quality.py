"""Training improves retrieval: a tiny seeded run of the training job's trainer (2 Ray Train workers, negatives
gathered across them, ZeRO-2) on all-MiniLM-L6-v2 cut to one layer (``model.num_layers: 1``, the ``tiny_model`` cut)
raises dev nDCG@10 over that untrained cut, both measured at the exported model's length, by at least the margin that
bench/train_quality.py sized over seeds (bench/RESULTS.md). It fails if the loss sign, the gather or the export is
broken: a model that learns the wrong thing, or an export of the untrained start, gains less."""
from __future__ import annotations

from bench.train_quality import MARGIN, TEST_RUN, dev_scores, quality_spec, train_and_export


def test_a_tiny_seeded_run_raises_dev_ndcg_over_the_base(ray_local, tmp_path):
    model_dir = train_and_export(quality_spec(str(tmp_path), 0, **TEST_RUN))
    base, trained = dev_scores(model_dir, TEST_RUN["layers"])
    assert trained - base >= MARGIN, f"dev nDCG@10 {base:.4f} -> {trained:.4f}: a gain below {MARGIN}"
