"""Choose the 3-layer student's distillation recipe on the **dev** split (bench/distill.py part B reports test once,
with the recipe chosen here).

Each candidate recipe distills a 3-layer student (layers 0, 3, 5) from the tuned 6-layer model on the same seeded
WordNet train pairs for the same number of steps, through bench/distill.py's own training step; each student is
scored on the WordNet **dev** split (never test), and the best dev nDCG@10 is the choice. Writes ``--out-json``
(every candidate's dev figures and the chosen recipe), which ``bench/distill.py --part b --pilot FILE`` takes.

Candidates (``CANDIDATES``): the embedding MSE alone at lr 2e-4 and at 5e-4, and the MSE with KL over in-batch
candidates and InfoNCE (weight 1 each) at 5e-4.

    .venv/bin/python bench/distill_pilot.py --six runs/<6-layer>/report.json [--pairs 19200]
    .venv/bin/python bench/distill_pilot.py --six ... --quick     # 256 pairs, dev capped at 200 queries: a smoke run
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.distill import common_train, sample_pairs, small_recipe, train  # noqa: E402
from fastemb.logs import configure as configure_logging  # noqa: E402

log = logging.getLogger("fastemb.bench")
CANDIDATES = [
    {"label": "embedding MSE, lr 2e-4",
     "recipe": {"small_lr": 2e-4, "mse_weight": 500.0, "hidden_weight": 0.0, "kl": False, "infonce_weight": 0.0}},
    {"label": "embedding MSE, lr 5e-4",
     "recipe": {"small_lr": 5e-4, "mse_weight": 500.0, "hidden_weight": 0.0, "kl": False, "infonce_weight": 0.0}},
    {"label": "embedding MSE + KL + InfoNCE, lr 5e-4",
     "recipe": {"small_lr": 5e-4, "mse_weight": 500.0, "hidden_weight": 0.0, "kl": True, "infonce_weight": 1.0}},
]


def dev_scores(model_dir: str, max_queries: int | None) -> dict:
    """Retrieval metrics of a model folder on the WordNet dev split (at its exported max length)."""
    from fastemb.data.eval_sets import load_eval_set
    from fastemb.eval.retrieval import evaluate
    from fastemb.model.encoder import Encoder

    dev = load_eval_set("wordnet", "dev", max_queries)
    return evaluate(Encoder.load(model_dir), dev)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--six", required=True, help="report.json of the tuned 6-layer model")
    ap.add_argument("--pairs", type=int, default=19200, help="WordNet train pairs per candidate (300 steps of 64)")
    ap.add_argument("--dev-queries", type=int, default=None, help="cap the dev queries (default: all)")
    ap.add_argument("--quick", action="store_true", help="256 pairs, 200 dev queries: a smoke run")
    ap.add_argument("--resume", action="store_true", help="reuse candidates trained from the same spec and code")
    ap.add_argument("--out", default=str(ROOT / "bench" / "out" / "distill_pilot"))
    ap.add_argument("--out-json", default=str(ROOT / "bench" / "out" / "distill_pilot.json"))
    args = ap.parse_args()
    if args.quick:
        args.pairs, args.dev_queries = 256, 200
    configure_logging()
    from fastemb.ray_env import init_ray

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    init_ray(num_cpus=2)
    six = json.loads(Path(args.six).read_text())
    pairs = sample_pairs(out, args.pairs)
    results = []
    for i, cand in enumerate(CANDIDATES):
        terms, words = small_recipe(argparse.Namespace(**cand["recipe"]))
        report = train(f"candidate-{i}", "distill.yaml", [
            f"model.base={six['model_dir']}", "model.num_layers=3", "loss.hard_negatives=0",
            f"distill.teacher={six['model_dir']}", *terms, f"train.lr={cand['recipe']['small_lr']}",
            *common_train(out, pairs)], out, args.resume)
        dev = dev_scores(report["model_dir"], args.dev_queries)
        results.append({**cand, "words": words, "steps": report["plan"]["total_steps"], "dev_ndcg@10": dev["ndcg@10"],
                        "dev": dev})
        log.info(f"{cand['label']}: dev nDCG@10 {dev['ndcg@10']:.4f}")
    chosen = max(results, key=lambda r: r["dev_ndcg@10"])
    summary = {"split": "dev", "six": six["model_dir"], "pairs": args.pairs, "steps": results[0]["steps"],
               "dev_queries": args.dev_queries, "candidates": results, "chosen": chosen}
    Path(args.out_json).write_text(json.dumps(summary, indent=1, default=str))
    for r in results:
        print(f"{r['dev_ndcg@10']:.4f}  {r['label']}{'  <- chosen' if r is chosen else ''}")
    print(f"wrote {args.out_json}: pass it to bench/distill.py --part b --pilot")
    return 0


if __name__ == "__main__":
    sys.exit(main())
