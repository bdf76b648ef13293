"""Hard negatives mined by fastemb vs in-batch negatives only, at the same training budget (issue: mining).

One run, three steps, all through fastemb's own jobs on an embedded local Ray:
1. ``fastemb mine`` with the base all-MiniLM-L6-v2 on a seeded sample of the WordNet train pairs (corpus: the
   pairs' positives; rank window, TopK-PercPos margin), writing the pairs with their negatives;
2. ``fastemb train`` on those pairs with in-batch negatives only (``loss.hard_negatives=0``);
3. ``fastemb train`` on the same pairs, same steps, batch, learning rate and seed, with ``--negatives`` mined
   negatives per query added to the in-batch ones.
Both models are scored on the test split (2,000 queries x 20,000 definitions); figures go to bench/RESULTS.md.

    .venv/bin/python bench/mined_negatives.py [--pairs 4000] [--negatives 3]
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.results import write_section  # noqa: E402
from fastemb.spec import load_spec  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--pairs", type=int, default=6000, help="train pairs sampled for mining")
    ap.add_argument("--negatives", type=int, default=3)
    ap.add_argument("--out", default=str(ROOT / "bench" / "out" / "mined"))
    args = ap.parse_args()
    from fastemb.mine.job import run_mine
    from fastemb.ray_env import init_ray
    from fastemb.train.job import run_train

    out = Path(args.out)
    shutil.rmtree(out, ignore_errors=True)
    init_ray(num_cpus=2)
    t0 = time.time()
    mine = load_spec(ROOT / "jobs" / "mine.yaml", [
        "name=mine", f"storage_path={out}", "model.base=all-MiniLM-L6-v2", f"data.max_pairs={args.pairs}",
        f"mining.num_negatives={args.negatives}", "mining.write_scores=false"], "mine")
    mined = run_mine(mine)
    mine_s = time.time() - t0
    # Both runs train on exactly the same pairs: those for which mining found the full number of negatives.
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    table = pq.read_table(mine.run_dir / "pairs.parquet")
    table = table.filter(pc.greater_equal(pc.list_value_length(table["negatives"]), args.negatives))
    pairs = str(out / "pairs_full.parquet")
    pq.write_table(table, pairs)
    mined["pairs_used"] = table.num_rows
    common = [f"storage_path={out}", f"data.train={pairs}", "train.epochs=1", "train.micro_batch_size=32",
              "train.num_workers=2", "train.lr=1e-4", "train.seed=42", "train.checkpoint_every=1000"]
    runs = {}
    for name, k in (("in-batch", 0), ("mined", args.negatives)):
        spec = load_spec(ROOT / "jobs" / "contrastive.yaml", [f"name={name}", f"loss.hard_negatives={k}", *common],
                         "train")
        t = time.time()
        report = run_train(spec)
        runs[name] = {"report": report, "wall_s": time.time() - t}
    plans = {name: r["report"]["plan"]["total_steps"] for name, r in runs.items()}
    assert len(set(plans.values())) == 1, f"the runs differ in steps: {plans}"
    body = report_md(args, mined, mine_s, runs)
    print(body)
    write_section("mining: mined hard negatives vs in-batch only", body)
    return 0


def report_md(args, mined: dict, mine_s: float, runs: dict) -> str:
    base = runs["in-batch"]["report"]["base"]
    a, b = runs["in-batch"]["report"], runs["mined"]["report"]
    lines = [f"WordNet train pairs: a seeded sample of {args.pairs}; negatives mined by fastemb with the base "
             f"all-MiniLM-L6-v2 in {mine_s:.0f} s: {mined['negatives_written']} negatives written, skipped candidates "
             f"{json.dumps(mined['skipped'])}; {mined['rows_short_of_negatives']} rows short of {args.negatives} negatives "
             f"are left out of both runs, which train on the same {mined['pairs_used']} pairs. "
             f"Both runs: the same {a['plan']['total_steps']} optimizer steps (1 epoch), 2 workers x 32 pairs, lr 1e-4, "
             f"seed 42; the mined run adds {args.negatives} hard negatives per query to the in-batch ones. "
             "Test split: 2,000 queries x 20,000 definitions.", "",
             "| model | test nDCG@10 | MRR@10 | recall@10 | training wall (s) |", "|---|---|---|---|---|",
             f"| base all-MiniLM-L6-v2 | {base['ndcg@10']:.4f} | {base['mrr@10']:.4f} | {base['recall@10']:.4f} | – |"]
    for name, r in runs.items():
        m = r["report"]["tuned"]
        lines.append(f"| trained, {name} negatives | {m['ndcg@10']:.4f} | {m['mrr@10']:.4f} | {m['recall@10']:.4f} "
                     f"| {r['report']['train_seconds']:.0f} |")
    gain = b["tuned"]["ndcg@10"] - a["tuned"]["ndcg@10"]
    lines += ["", f"**Mined minus in-batch only: {gain:+.4f} test nDCG@10** at the same steps and pairs "
              f"({'mined wins' if gain > 0 else 'in-batch only wins'}); the mined run costs more compute per step "
              f"({runs['mined']['report']['train_seconds'] / max(a['train_seconds'], 1e-9):.1f}x training time: "
              f"{args.negatives} extra texts encoded per pair)."]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
