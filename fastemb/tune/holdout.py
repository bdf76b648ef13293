"""The search's verdict on held-out data: the winner against the default configuration on the TEST split, at the
same compression, computed once after the search (trials are compared and the winner chosen on dev only).

"The same compression" is the winner's: its Matryoshka truncation (if any) and its PQ code size. The default model
is scored at that setting and, when the winner truncates, also at the model's full width with a PQ code of at most
the winner's bytes per vector (a model not trained for truncation usually does better untruncated); the default's
figure is the better of the two, so the gain reported is the conservative one. When ASHA stopped the default
configuration's trial (no exported model), the default configuration is trained to the end first, as a plain
training run on the same pairs.
"""
from __future__ import annotations

import logging
from pathlib import Path

from fastemb.spec import TuneJob
from fastemb.tune.trial import load_search_pairs, trial_compression, trial_spec
from fastemb.tune.tuner import default_point

logger = logging.getLogger(__name__)


def _test_vectors(spec: TuneJob, model_dir: str, test):
    """Test corpus and query embeddings of a trial's exported model (the spec's model settings)."""
    from fastemb.model.encoder import Encoder

    encoder = Encoder.from_spec(spec.model, model_dir)
    return encoder.encode(test.corpus), encoder.encode(test.queries)


def _default_model(spec: TuneJob, default: dict | None) -> str:
    """The default configuration's exported model: its trial's, or (stopped early, or not a trial) trained now."""
    if default and Path(default["model_dir"]).is_dir():
        return default["model_dir"]
    from fastemb.model.encoder import model_width
    from fastemb.train.trainer import fit_and_export, make_trainer, plan_steps

    logger.info("the default configuration has no exported model (stopped early or not a trial): training it")
    train = trial_spec(spec, default_point(spec), "default", model_width(spec.model.base))
    pairs = load_search_pairs(spec)
    model_dir, _ = fit_and_export(make_trainer(train, pairs, plan_steps(train, len(pairs))), train)
    return str(model_dir)


def winner_vs_default(spec: TuneJob, winner: dict, default: dict | None) -> dict:
    """Test nDCG@10 (and the other ranking metrics) of the winner and of the default configuration at the winner's
    compression, and the gain; see the module docstring."""
    from fastemb.data.eval_sets import load_eval_set
    from fastemb.eval.compressed import compressed_retrieval

    test = load_eval_set(spec.data.eval, "test", spec.data.test_queries)
    setting = trial_compression(spec, winner)
    winner_vectors = _test_vectors(spec, winner["model_dir"], test)
    won = compressed_retrieval(*winner_vectors, test, **setting)
    settings = {"winner's setting": setting}
    if "method" in setting:  # the default untruncated, in at most as many bytes
        settings["full width"] = {"pq_bytes": int(won["bytes_per_vector"]), "opq": setting["opq"]}
    default_dir = _default_model(spec, default)
    # the default's trial won: its test split is not encoded a second time
    default_vectors = winner_vectors if default_dir == winner["model_dir"] else _test_vectors(spec, default_dir, test)
    scored = {name: compressed_retrieval(*default_vectors, test, **s) for name, s in settings.items()}
    best = max(scored, key=lambda name: scored[name]["ndcg@10"])
    fields = ("ndcg@10", "mrr@10", "recall@10", "bytes_per_vector", "compression_x")
    out = {"split": "test", "queries": len(test.queries), "corpus": len(test.corpus),
           "winner": {"trial_id": winner["trial_id"], "setting": setting, **{k: won[k] for k in fields}},
           "default": {"setting": settings[best], "setting_name": best, **{k: scored[best][k] for k in fields},
                       "by_setting": {name: {k: r[k] for k in fields} for name, r in scored.items()}},
           "gain_ndcg@10": won["ndcg@10"] - scored[best]["ndcg@10"]}
    logger.info(f"test split ({out['queries']} queries × {out['corpus']} texts), winner vs default at "
                f"{won['compression_x']:.0f}× compression: nDCG@10 {won['ndcg@10']:.4f} vs "
                f"{scored[best]['ndcg@10']:.4f} ({out['gain_ndcg@10']:+.4f}; default {best})")
    return out
