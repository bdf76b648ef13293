"""Static embeddings for the edge (issue 20 item 2): a Model2Vec static model distilled from all-MiniLM-L6-v2 (as
shipped) against fastemb's fp32 ONNX forward pass of that model, in one run; figures go to bench/RESULTS.md.

Speed: each round embeds the first ``--n`` WordNet definitions with both sides, the order alternating between
rounds, tokenisation included, model load not, one thread each (``TOKENIZERS_PARALLELISM=false``; ONNX Runtime on
``--threads`` intra-op threads, the static side's ``embedding_bag`` on as many torch threads). fp32: ``load_forward(..., "onnx")`` with
``embed_sequences`` (length-bucketed batches of ≤ 1,024 padded tokens, 256 tokens per text). Static: fastemb's
``StaticEncoder.encode`` (tokenise without special tokens, mean of the token rows, L2 norm). Quality: test nDCG@10 of
both on the WordNet test split (2,000 queries × 20,000 definitions) and on the general set ``debian-descriptions``
(1,000 × 2,000), through the same ``evaluate_forward`` path. Target (issue 20): ≥ 50× faster, ≥ 80 % of nDCG@10
kept.

    .venv/bin/python bench/static.py [--n 20000] [--rounds 3] [--threads 1] [--dim 256]
    .venv/bin/python bench/static.py --quick       # 2,000 rows, 1 round, 200 test queries: checks the script runs
    .venv/bin/python bench/static.py --static DIR  # reuse a static folder made by `fastemb static` (no distillation)
"""
from __future__ import annotations

import argparse
import logging
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ["TOKENIZERS_PARALLELISM"] = "false"  # one tokeniser thread on both sides

from bench.results import ratio_verdict, spread, write_section  # noqa: E402
from fastemb.data.eval_sets import load_eval_set  # noqa: E402
from fastemb.data.pairs import WORDNET_DIR  # noqa: E402
from fastemb.eval.retrieval import evaluate_forward  # noqa: E402
from fastemb.logs import configure as configure_logging  # noqa: E402
from fastemb.model.batching import CPU_BATCH_TOKENS, embed_sequences  # noqa: E402
from fastemb.model.encoder import Encoder, default_model_path  # noqa: E402
from fastemb.model.forward import load_forward  # noqa: E402
from fastemb.model.static import StaticEncoder, distil_static  # noqa: E402
from fastemb.static.job import folder_bytes  # noqa: E402

log = logging.getLogger("fastemb.bench")
MODEL = "all-MiniLM-L6-v2"
SETS = ("wordnet", "debian-descriptions")


def fp32_round(encoder: Encoder, forward, texts: list[str]) -> float:
    """Seconds for fastemb's fp32 ONNX path on ``texts``: tokenise, length-bucketed batches, the graph."""
    tok = encoder.tokenizer
    t = time.perf_counter()
    seqs = tok(texts, truncation=True, max_length=encoder.max_length)["input_ids"]
    embed_sequences(forward, seqs, tok.pad_token_id or 0, encoder.dim)
    return time.perf_counter() - t


def static_round(static: StaticEncoder, texts: list[str]) -> float:
    """Seconds for the static model on ``texts``: tokenise, mean of the token rows, L2 norm."""
    t = time.perf_counter()
    static.encode(texts)
    return time.perf_counter() - t


def quality(encoder: Encoder, forward, static: StaticEncoder, sets: tuple[str, ...], max_queries: int | None
            ) -> dict[str, dict[str, float]]:
    """Test nDCG@10 of the fp32 model and the static model on each set (the same evaluation path)."""
    out: dict[str, dict[str, float]] = {}
    for name in sets:
        data = load_eval_set(name, "test", max_queries)
        out[name] = {"fp32": evaluate_forward(encoder, forward, data)["ndcg@10"],
                     "static": evaluate_forward(static, static, data)["ndcg@10"],
                     "queries": len(data.queries), "corpus": len(data.corpus)}
        log.info(f"{name}: test nDCG@10 fp32 {out[name]['fp32']:.4f}, static {out[name]['static']:.4f}")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=20_000, help="WordNet definitions embedded per side and round")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1, help="ONNX Runtime intra-op threads (and torch's, distilling)")
    ap.add_argument("--dim", type=int, default=256, help="the static model's PCA dimensions")
    ap.add_argument("--static", help="a static folder to measure instead of distilling one")
    ap.add_argument("--no-general", action="store_true", help="skip the debian-descriptions set")
    ap.add_argument("--quick", action="store_true", help="2,000 rows, 1 round, 200 test queries: checks the script")
    args = ap.parse_args()
    if args.quick:
        args.n, args.rounds = 2000, 1
    configure_logging()
    import torch

    torch.set_num_threads(args.threads)
    work = Path(tempfile.mkdtemp(prefix="fastemb-bench-static-"))
    distil_s = None
    if args.static:
        static_dir = Path(args.static)
    else:
        t = time.perf_counter()
        static_dir = distil_static(MODEL, work / "static", dim=args.dim)
        distil_s = time.perf_counter() - t
    static = StaticEncoder.load(static_dir)
    encoder = Encoder.load(MODEL).eval()
    forward = load_forward(encoder, default_model_path(), "onnx", args.threads)
    texts = pq.read_table(WORDNET_DIR / "all_definitions.parquet", columns=["text"]).column("text").to_pylist()
    texts = texts[: args.n]
    fp32_round(encoder, forward, texts[:64])  # warm-up of both sides
    static_round(static, texts[:64])

    seconds: dict[str, list[float]] = {"fp32 ONNX": [], "static": []}
    for r in range(args.rounds):
        for side in (list(seconds) if r % 2 == 0 else list(seconds)[::-1]):
            s = fp32_round(encoder, forward, texts) if side == "fp32 ONNX" else static_round(static, texts)
            seconds[side].append(s)
            log.info(f"round {r + 1}/{args.rounds}: {side} {len(texts) / s:,.0f} texts/s")
    sets = SETS[:1] if args.no_general else SETS
    q = quality(encoder, forward, static, sets, 200 if args.quick else None)
    sizes = {"fp32 ONNX": folder_bytes(default_model_path()), "static": folder_bytes(static_dir)}
    write_section("static: Model2Vec static embeddings vs the fp32 model (issue 20)",
                  report(args, len(texts), seconds, q, sizes, static.dim, encoder.dim, distil_s))
    shutil.rmtree(work, ignore_errors=True)


def report(args, n: int, seconds: dict, q: dict, sizes: dict, static_dim: int, dim: int, distil_s: float | None
           ) -> str:
    """The RESULTS.md section: the table (bytes/vector, size, nDCG@10, speed), the ratio and its verdict, the
    share of nDCG@10 kept, and the targets."""
    rate = {s: [n / x for x in v] for s, v in seconds.items()}
    ratios = [a / b for a, b in zip(rate["static"], rate["fp32 ONNX"])]
    kept = {name: v["static"] / v["fp32"] for name, v in q.items()}
    sets = list(q)
    head = " | ".join(f"test nDCG@10 {s}" for s in sets)
    rows = []
    for side, width in (("fp32 ONNX", dim), ("static", static_dim)):
        key = "fp32" if side == "fp32 ONNX" else "static"
        r = rate[side]
        rows.append(f"| {side} | {4 * width:,} | {sizes[side] / 2**20:.1f} | "
                    + " | ".join(f"{q[s][key]:.4f}" for s in sets)
                    + f" | {statistics.median(r):,.0f} ({min(r):,.0f}–{max(r):,.0f}) |")
    speed_met = min(ratios) >= 50
    quality_met = kept["wordnet"] >= 0.8
    made = (f"distilled by `distil_static` (Model2Vec `distill_from_model`, PCA {static_dim}, SIF 1e-4) in "
            f"{distil_s:.0f} s" if distil_s is not None else f"the folder given with `--static` ({static_dim} dims)")
    return f"""
all-MiniLM-L6-v2 as shipped (256 tokens, fp32 ONNX graph run by fastemb's `load_forward(..., "onnx")` with
`embed_sequences`, batches of ≤ {CPU_BATCH_TOKENS} padded tokens) against the static model {made}. Speed: the first
{n:,} WordNet definitions, {args.rounds} round(s), order alternating, tokenisation included, model load not;
ONNX Runtime on {args.threads} intra-op thread(s), the static side's torch `embedding_bag` on as many, tokenisers
single-threaded (`TOKENIZERS_PARALLELISM=false`). Quality: test split{'s' if len(sets) > 1 else ''} of
{', '.join(f'{s} ({q[s]["queries"]:,} queries × {q[s]["corpus"]:,} texts)' for s in sets)}, exact cosine search,
both sides through `evaluate_forward`.

| model | bytes/vector (float32) | model on disk (MiB) | {head} | texts/s (median, min–max) |
|---|---|---|{'---|' * len(sets)}---|
{chr(10).join(rows)}

- **static / fp32 ONNX encode speed: {statistics.median(ratios):.0f}×** ({spread(ratios, 1, 'rounds')};
  {ratio_verdict(ratios, 'static', 'fp32')}).
- **nDCG@10 kept:** {', '.join(f'{s} {k:.1%}' for s, k in kept.items())}.
- Target (≥ 50× faster, ≥ 80 % of WordNet test nDCG@10 kept): speed {'met' if speed_met else 'NOT met'}
  (slowest round {min(ratios):.0f}×), quality {'met' if quality_met else 'NOT met'} ({kept['wordnet']:.1%}).
"""


if __name__ == "__main__":
    main()
