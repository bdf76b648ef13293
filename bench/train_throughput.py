"""Training throughput and quality: fastemb (Ray Train + DeepSpeed, 1 worker) vs sentence-transformers'
trainer with MultipleNegativesRankingLoss, on the same WordNet pairs, model, batch size, max length,
learning rate, schedule and thread count, in one run.

Writes pairs/s of both, their ratio, model-FLOPs utilisation (MFU) of each against this machine's
measured fp32 GEMM peak, and test nDCG@10 of both after the same number of pairs to bench/RESULTS.md.

``--gpu`` runs both on this machine's GPU in bf16 (fastemb: ``train.use_gpu: true``, whose ``precision: auto`` picks
bf16; sentence-transformers: ``bf16=True``), MFU against the measured bf16 GEMM peak of the GPU (bench/gpu.sh).

    .venv/bin/python bench/train_throughput.py --pairs 8000
    .venv/bin/python bench/train_throughput.py --gpu --pairs 32000 --batch 128
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

from bench.results import write_section  # noqa: E402
from fastemb.data.pairs import load_pairs  # noqa: E402
from fastemb.eval.retrieval import evaluate_model  # noqa: E402
from fastemb.model.encoder import Encoder, default_model_path  # noqa: E402
from fastemb.spec import parse_spec  # noqa: E402
from fastemb.train.job import run_train  # noqa: E402


def gemm_peak_gflops(threads: int, n: int = 2048, reps: int = 5, gpu: bool = False) -> float:
    """Measured GEMM throughput (best of ``reps``): fp32 with ``threads`` CPU threads, or bf16 on the GPU."""
    torch.set_num_threads(threads)
    if gpu:
        n = max(n, 8192)
        a, b = (torch.randn(n, n, device="cuda", dtype=torch.bfloat16) for _ in range(2))
    else:
        a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    best = 0.0
    for _ in range(reps):
        if gpu:
            torch.cuda.synchronize()
        t = time.perf_counter()
        a @ b
        if gpu:
            torch.cuda.synchronize()
        best = max(best, 2 * n**3 / (time.perf_counter() - t) / 1e9)
    return best


def train_flops_per_pair(pairs: list[dict], max_length: int) -> float:
    """6 × non-embedding parameters × real tokens (query + positive), averaged per pair."""
    enc = Encoder.load("all-MiniLM-L6-v2")
    params = sum(p.numel() for n, p in enc.transformer.named_parameters() if "embeddings" not in n)
    texts = [p["query"] for p in pairs] + [p["positive"] for p in pairs]
    tokens = sum(min(len(ids), max_length) for ids in enc.tokenizer(texts)["input_ids"])
    return 6 * params * tokens / len(pairs)


def run_sentence_transformers(pairs, args, out_dir: str) -> tuple[float, str]:
    """Train with SentenceTransformerTrainer + MNRL; returns (pairs/s of the training loop, model path)."""
    from datasets import Dataset
    from sentence_transformers import SentenceTransformer, SentenceTransformerTrainer, losses
    from sentence_transformers import SentenceTransformerTrainingArguments

    torch.set_num_threads(args.threads)
    model = SentenceTransformer(default_model_path(), device="cuda" if args.gpu else "cpu")
    model.max_seq_length = args.max_length
    data = Dataset.from_dict({"anchor": [p["query"] for p in pairs], "positive": [p["positive"] for p in pairs]})
    targs = SentenceTransformerTrainingArguments(
        output_dir=out_dir, per_device_train_batch_size=args.batch, learning_rate=args.lr, num_train_epochs=1,
        warmup_ratio=0.1, lr_scheduler_type="linear", save_strategy="no", report_to="none", logging_steps=50,
        use_cpu=not args.gpu, bf16=args.gpu, seed=42, dataloader_drop_last=True)
    trainer = SentenceTransformerTrainer(model=model, args=targs, train_dataset=data,
                                         loss=losses.MultipleNegativesRankingLoss(model, scale=1 / args.temperature))
    out = trainer.train()
    path = os.path.join(out_dir, "st-model")
    model.save(path)
    return out.metrics["train_samples_per_second"], path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pairs", type=int, default=8000)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--max-length", type=int, default=64)
    ap.add_argument("--lr", type=float, default=5e-5)
    ap.add_argument("--temperature", type=float, default=0.05)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--gpu", action="store_true", help="both on this machine's GPU in bf16 (see the docstring)")
    ap.add_argument("--test-queries", type=int, default=None, help="limit the test queries (default: all 2,000)")
    args = ap.parse_args()
    if args.gpu and not torch.cuda.is_available():
        ap.error("--gpu: torch sees no CUDA GPU here")

    pairs, _ = load_pairs("wordnet", args.pairs, seed=42)
    flops_pair = train_flops_per_pair(pairs, args.max_length)
    peak = gemm_peak_gflops(args.threads, gpu=args.gpu)
    work = tempfile.mkdtemp(prefix="fastemb-bench-")

    spec = parse_spec({"name": "bench-throughput", "storage_path": work,
                       "model": {"max_length": args.max_length},
                       "data": {"max_pairs": args.pairs, "test_queries": args.test_queries},
                       "loss": {"temperature": args.temperature},
                       "train": {"num_workers": 1, "cpus_per_worker": args.threads, "zero_stage": 2,
                                 "use_gpu": args.gpu, "precision": "auto",
                                 "micro_batch_size": args.batch, "lr": args.lr, "warmup_ratio": 0.1,
                                 "eval_every": 10**6, "log_every": 10, "checkpoint_every": 10**6}})
    report = run_train(spec)
    engine = next((h for h in report["history"] if h.get("event") == "engine"), {})
    fe_rate = [h["pairs_per_s"] for h in report["history"] if "pairs_per_s" in h][-1]
    fe_ndcg, base_ndcg = report["tuned"]["ndcg@10"], report["base"]["ndcg@10"]

    st_rate, st_path = run_sentence_transformers(pairs, args, work)
    st_ndcg = evaluate_model(spec.model, spec.data, path=st_path)["ndcg@10"]

    mfu = lambda rate: rate * flops_pair / (peak * 1e9)  # noqa: E731
    where = (f"GPU {torch.cuda.get_device_name()}, bf16 on both sides (fastemb: DeepSpeed on "
             f"{engine.get('accelerator')} / {engine.get('backend')}, {engine.get('precision')}; sentence-transformers: "
             f"`bf16=True`), {args.threads} CPU threads" if args.gpu else f"{args.threads} threads, fp32")
    body = f"""
Same {args.pairs} WordNet pairs, all-MiniLM-L6-v2, batch {args.batch}, max length {args.max_length}, lr {args.lr},
linear schedule with 10% warmup, temperature {args.temperature} (scale {1 / args.temperature:g}), {where},
1 epoch. fastemb: Ray Train, 1 worker, DeepSpeed ZeRO-2, dynamic padding + length grouping.
Throughput is the training loop's (fastemb: its progress line; sentence-transformers: the trainer's
`train_samples_per_second`). MFU = pairs/s × {flops_pair / 1e9:.3f} GFLOP/pair (6 × non-embedding params ×
real tokens) / measured {"bf16" if args.gpu else "fp32"} GEMM peak {peak:.1f} GFLOP/s.

| | pairs/s | MFU | test nDCG@10 |
|---|---|---|---|
| base model (no training) | – | – | {base_ndcg:.4f} |
| sentence-transformers trainer (MNRL) | {st_rate:.2f} | {mfu(st_rate):.1%} | {st_ndcg:.4f} |
| fastemb (Ray Train + DeepSpeed, 1 worker) | {fe_rate:.2f} | {mfu(fe_rate):.1%} | {fe_ndcg:.4f} |

**Throughput ratio fastemb / sentence-transformers: {fe_rate / st_rate:.2f}×**; nDCG@10 difference
{fe_ndcg - st_ndcg:+.4f}.
"""
    write_section("Training throughput on GPU (issue 23)" if args.gpu else "Training throughput (issue: foundation)",
                  body)
    print(json.dumps({"fastemb_pairs_per_s": fe_rate, "st_pairs_per_s": st_rate, "ratio": fe_rate / st_rate,
                      "fastemb_ndcg": fe_ndcg, "st_ndcg": st_ndcg, "peak_gflops": peak}, indent=2))


if __name__ == "__main__":
    main()
