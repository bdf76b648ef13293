"""Matryoshka training (issue 15): how much of its full-dimension test nDCG@10 a Matryoshka-trained model keeps when
its vectors are truncated to 256, 128 and 64 dimensions (and re-normalised), against sentence-transformers' trainer
with ``MatryoshkaLoss`` around ``MultipleNegativesRankingLoss`` at the same data and budget, in one run.

fastemb: Ray Train, 2 workers × 1 CPU, DeepSpeed ZeRO-2 fp32, ``loss.matryoshka_dims`` (fastemb/losses/matryoshka.py:
InfoNCE on each nested prefix, weight 1 each, negatives gathered across workers, false negatives masked). Peer:
``SentenceTransformerTrainer`` on 2 DDP processes (gloo) × 1 thread, ``MatryoshkaLoss(MultipleNegativesRankingLoss,
gather_across_devices=True)``, weight 1 each, no-duplicates sampler. Both: all-MiniLM-L6-v2, max length 64,
temperature 0.05 (scale 20), AdamW, weight decay 0.01, linear schedule with 10 % warm-up, clipping 1.0, the same
pairs, batch, epochs and learning rate. References: the base, and fastemb trained without the Matryoshka loss
(``--no-plain`` drops it), truncated alike. Targets: at 128 and 64 dimensions the Matryoshka-trained model keeps
≥ 97 % and ≥ 93 % of its full-dimension test nDCG@10 (the base truncated to 128 keeps 84.7 %, bench/RESULTS.md).

    python bench/matryoshka.py              # full: 24,000 pairs, 1 epoch, batch 32 per worker (~2 h)
    python bench/matryoshka.py --quick      # a trial of the script: 1,024 pairs, a small test split (~5 min)
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("DS_ACCELERATOR", "cpu")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from bench.eval_subset import eval_subset  # noqa: E402
from bench.results import write_section  # noqa: E402
from bench.st_peer import train_st  # noqa: E402
from fastemb.spec import load_spec  # noqa: E402

SECTION = "matryoshka: quality kept at 256, 128 and 64 dimensions"
TARGETS = {128: 0.97, 64: 0.93}


def fastemb_run(args, name: str, dims: list[int] | None) -> dict:
    """One fastemb training run (Matryoshka loss at ``dims``, or plain InfoNCE); returns its report."""
    from fastemb.train.job import run_train

    overrides = [f"name={name}", f"storage_path={args.out}", f"data.max_pairs={args.pairs}", f"data.eval={args.eval}",
                 f"train.micro_batch_size={args.batch}", "train.num_workers=2", "train.cpus_per_worker=1",
                 f"train.epochs={args.epochs}", f"train.lr={args.lr}", "train.eval_every=1000000",
                 "train.checkpoint_every=1000000"]
    if dims:
        overrides.append(f"loss.matryoshka_dims={json.dumps(dims)}")
    spec = load_spec(ROOT / "jobs" / "contrastive.yaml", overrides)
    shutil.rmtree(spec.run_dir, ignore_errors=True)
    return run_train(spec)


def truncation_curve(spec, model_dir: str | None, test, dims: list[int]) -> dict[int, float]:
    """Test nDCG@10 of a model's vectors truncated to each of ``dims`` and re-normalised (the full width untouched);
    the corpus and queries are encoded once."""
    from fastemb.eval.compressed import compressed_retrieval
    from fastemb.model.encoder import Encoder

    encoder = Encoder.from_spec(spec.model, model_dir)
    corpus, queries = encoder.encode(test.corpus), encoder.encode(test.queries)
    width = corpus.shape[1]
    return {d: compressed_retrieval(corpus, queries, test, **({} if d == width else {"method": "matryoshka", "dim": d})
                                    )["ndcg@10"] for d in dims}


def measure(args) -> dict[str, dict]:
    """Train fastemb (Matryoshka, and plain unless --no-plain) and the peer; score every model's truncation curve."""
    from fastemb.data.eval_sets import load_eval_set
    from fastemb.data.pairs import load_pairs

    spec = load_spec(ROOT / "jobs" / "contrastive.yaml", [f"data.eval={args.eval}"])
    test = load_eval_set(spec.data.eval, "test", spec.data.test_queries)
    models = {"base all-MiniLM-L6-v2": {"model_dir": None}}
    models["fastemb, Matryoshka loss"] = fastemb_run(args, "fastemb-matryoshka", args.dims)
    pairs, _ = load_pairs("wordnet", args.pairs, 0, 42)
    models["sentence-transformers, MatryoshkaLoss"] = train_st(
        pairs, Path(args.out) / "st-matryoshka", batch=args.batch, lr=args.lr, epochs=args.epochs, temperature=0.05,
        max_length=64, workers=2, threads=1, matryoshka_dims=args.dims)
    if args.plain:
        models["fastemb, plain InfoNCE"] = fastemb_run(args, "fastemb-plain", None)
    out = {}
    for name, run in models.items():
        out[name] = {"curve": truncation_curve(spec, run["model_dir"], test, sorted(args.dims, reverse=True)),
                     "train_s": run.get("train_seconds", run.get("train_s"))}
        print(name, json.dumps(out[name]), flush=True)
    out["_split"] = {"queries": len(test.queries), "corpus": len(test.corpus)}
    return out


def report(args, runs: dict) -> str:
    """The RESULTS.md section: nDCG@10 and the share kept at each dimension, per model, then the targets."""
    split = runs.pop("_split")
    dims = sorted(args.dims, reverse=True)
    lines = ["| model | train s | " + " | ".join(f"test nDCG@10 at {d} (kept)" for d in dims) + " |",
             "|---|---|" + "---|" * len(dims)]
    for name, r in runs.items():
        full = r["curve"][dims[0]]
        cells = [f"{r['curve'][d]:.4f} ({100 * r['curve'][d] / full:.1f} %)" for d in dims]
        secs = "–" if r["train_s"] is None else f"{r['train_s']:.0f}"
        lines.append(f"| {name} | {secs} | " + " | ".join(cells) + " |")
    verdict = []
    for name, r in runs.items():
        if "Matryoshka" not in name:
            continue
        full = r["curve"][dims[0]]
        parts = [f"{d}: {100 * r['curve'][d] / full:.1f} % (target ≥ {100 * t:.0f} %: "
                 f"{'met' if r['curve'][d] >= t * full else 'not met'})" for d, t in TARGETS.items() if d in r["curve"]]
        verdict.append(f"- {name}: " + "; ".join(parts))
    head = (f"WordNet pairs: {args.pairs}, {args.epochs:g} epoch(s), batch {args.batch} per worker/process × 2, "
            f"lr {args.lr:g}; Matryoshka dimensions {sorted(args.dims)}, weight 1 each. Test split `{args.eval}` "
            f"({split['queries']} queries × {split['corpus']} texts); vectors truncated to the first d coordinates "
            "and re-normalised (fastemb.compress.matryoshka), exact search. fastemb: Ray Train, 2 workers × 1 CPU, "
            "DeepSpeed ZeRO-2 fp32, InfoNCE per prefix gathered across workers, false negatives masked. "
            "sentence-transformers: SentenceTransformerTrainer, 2 DDP processes (gloo) × 1 thread, "
            "MatryoshkaLoss(MultipleNegativesRankingLoss, gather_across_devices), no-duplicates sampler. Both: max "
            "length 64, temperature 0.05, AdamW, weight decay 0.01, linear schedule with 10 % warm-up, clipping "
            "1.0.\n\n")
    return head + "\n".join(lines) + "\n\n" + "\n".join(verdict)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pairs", type=int, default=24000)
    ap.add_argument("--epochs", type=float, default=1.0)
    ap.add_argument("--batch", type=int, default=32, help="pairs per worker (and per sentence-transformers process)")
    ap.add_argument("--dims", default="64,128,256,384", help="Matryoshka dimensions, increasing, the last the width")
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--eval", default="wordnet", help="evaluation folder (default: the shipped WordNet splits)")
    ap.add_argument("--no-plain", dest="plain", action="store_false", help="skip fastemb without the Matryoshka loss")
    ap.add_argument("--quick", action="store_true", help="a trial of the script: small data and test split")
    ap.add_argument("--out", default=str(ROOT / "bench" / "out" / "matryoshka"))
    args = ap.parse_args()
    args.dims = [int(d) for d in args.dims.split(",")]
    if args.quick:
        args.pairs = 1024
        args.eval = eval_subset(Path(args.out) / "eval", 100, 1000)
    Path(args.out).mkdir(parents=True, exist_ok=True)
    from fastemb.ray_env import init_ray

    init_ray(num_cpus=2)
    path = write_section(SECTION, report(args, measure(args)))
    print(f"written to {path}")


if __name__ == "__main__":
    main()
