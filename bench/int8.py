"""int8 corpus embedding on CPU (issue 20): fastemb's int8 graph against its fp32 ONNX graph and against
sentence-transformers' own ONNX int8 backend, in one run; figures go to bench/RESULTS.md.

The model is all-MiniLM-L6-v2 saved as a fastemb export would be (256 tokens). fastemb's int8 file is made the way a
user gets it, by ``export.int8`` (fastemb/train/export.py: quantize, score fp32 and int8 on the WordNet dev set, keep
the file within the tolerance), once with int8 weights (the default) and once with ``weights: uint8``. sentence-transformers' int8 is its own best CPU path:
``export_dynamic_quantized_onnx_model(model, "avx512_vnni", ...)`` on its optimum ONNX export, loaded with
``backend="onnx"`` and that ``file_name``, in a venv that has optimum-onnx (``--st-onnx-python``; optimum-onnx needs
transformers < 4.58, so it cannot share fastemb's venv)::

    python3 -m venv /tmp/fe-venv-st-onnx
    /tmp/fe-venv-st-onnx/bin/pip install torch==2.13.0
    /tmp/fe-venv-st-onnx/bin/pip install 'transformers<4.58' sentence-transformers optimum-onnx onnxruntime==1.32.0

Each round embeds the first ``--n`` WordNet definitions with every side on the same ``--threads`` ONNX Runtime
threads and the same batches (length-sorted, ≤ 1,024 padded tokens: fastemb's bucketing, the peer at its best),
tokenisation included, model load not; the order of the sides rotates between rounds. Also written: test nDCG@10 of
fp32 and int8 (WordNet test split, the export length), the vectors' agreement, and whether sentence-transformers
loads fastemb's int8 file (its vectors against fastemb's own run of that file).

    .venv/bin/python bench/int8.py [--n 117659] [--threads 2] [--rounds 2]
    .venv/bin/python bench/int8.py --quick      # 2,000 rows, 1 round: checks the script runs
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from bench.index_build import ST_ENCODE  # noqa: E402
from bench.results import ratio_verdict, spread, write_section  # noqa: E402
from fastemb.data.pairs import WORDNET_DIR  # noqa: E402
from fastemb.logs import configure as configure_logging  # noqa: E402
from fastemb.model.batching import CPU_BATCH_TOKENS, bucket_batches, embed_sequences  # noqa: E402
from fastemb.model.encoder import Encoder  # noqa: E402

log = logging.getLogger("fastemb.bench")
ST_INT8 = "onnx/model_qint8_avx512_vnni.onnx"  # the file sentence-transformers' export writes (and fastemb's)
ST_EXPORT = """
import sys
from sentence_transformers import SentenceTransformer, export_dynamic_quantized_onnx_model
model = SentenceTransformer(sys.argv[1], backend="onnx")
export_dynamic_quantized_onnx_model(model, "avx512_vnni", sys.argv[1])
"""


def fastemb_export(work: Path, weights: str) -> tuple[Path, dict]:
    """MiniLM as an exported folder (the base's own 256 tokens) with the int8 file ``export.int8`` writes after its
    dev check, with ``weights`` int8 or uint8; the folder and the check."""
    from fastemb.spec import parse_spec
    from fastemb.train.export import int8_export

    folder = work / f"fastemb-{weights}" / "model"
    Encoder.load("all-MiniLM-L6-v2").save(folder)
    check = int8_export(parse_spec({"job": "train", "storage_path": str(work),
                                    "export": {"int8": {"weights": weights}}}), folder)
    if not check.get("written"):
        raise SystemExit(f"export.int8 refused the {weights} model: {check.get('reason')}")
    return folder, check


def st_export(work: Path, source: Path, st_python: str) -> Path:
    """A copy of the model folder (without fastemb's ONNX files) where sentence-transformers makes its own int8."""
    theirs = work / "st" / "model"
    shutil.copytree(source, theirs, ignore=shutil.ignore_patterns("onnx"))
    subprocess.run([st_python, "-c", ST_EXPORT, str(theirs)], check=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    return theirs


def fastemb_round(model_dir: Path, backend: str, texts: list[str], threads: int) -> tuple[float, np.ndarray]:
    """fastemb's encoder path on one engine: tokenise, length-bucketed batches, the graph (load not timed)."""
    from fastemb.model.forward import load_forward

    encoder = Encoder.load(str(model_dir)).eval()
    forward = load_forward(encoder, model_dir, backend, threads)
    tok = encoder.tokenizer
    embed_sequences(forward, tok(texts[:64], truncation=True, max_length=encoder.max_length)["input_ids"],
                    tok.pad_token_id or 0, encoder.dim)  # warm-up, as the peer's
    t = time.perf_counter()
    seqs = tok(texts, truncation=True, max_length=encoder.max_length)["input_ids"]
    vectors = embed_sequences(forward, seqs, tok.pad_token_id or 0, encoder.dim)
    return time.perf_counter() - t, vectors


def st_round(python: str, model_dir: Path, texts_file: Path, batches_file: Path, threads: int, out: Path
             ) -> tuple[float, np.ndarray]:
    """sentence-transformers' ONNX backend on the folder's int8 file, in a fresh process (bench/st_encode.py)."""
    subprocess.run([python, str(ST_ENCODE), "--model", str(model_dir), "--texts", str(texts_file), "--backend", "onnx",
                    "--file-name", ST_INT8, "--threads", str(threads), "--max-length", "256",
                    "--batches", str(batches_file), "--out", str(out)],
                   check=True, env={**os.environ, "HF_HUB_OFFLINE": "1"}, stdout=subprocess.DEVNULL)
    return json.loads(Path(f"{out}.json").read_text())["seconds"], np.load(out)


def test_quality(model_dir: Path, threads: int) -> dict[str, float]:
    """Test nDCG@10 (WordNet test split) of the fp32 and the int8 graph, at the export length."""
    from fastemb.data.eval_sets import load_eval_set
    from fastemb.eval.retrieval import evaluate_forward
    from fastemb.model.forward import load_forward

    encoder = Encoder.load(str(model_dir)).eval()
    data = load_eval_set("wordnet", "test")
    return {b: evaluate_forward(encoder, load_forward(encoder, model_dir, b, threads), data)["ndcg@10"]
            for b in ("onnx", "onnx-int8")}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=117_659, help="WordNet definitions embedded per side and round")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--st-onnx-python", default=os.environ.get("ST_ONNX_PYTHON", "/tmp/fe-venv-st-onnx/bin/python"))
    ap.add_argument("--quick", action="store_true", help="2,000 rows, 1 round: checks the script runs")
    args = ap.parse_args()
    if args.quick:
        args.n, args.rounds = 2000, 1
    configure_logging()
    work = Path(tempfile.mkdtemp(prefix="fastemb-bench-int8-"))
    os.environ.setdefault("FASTEMB_CACHE", str(work / "cache"))
    st_python = args.st_onnx_python if Path(args.st_onnx_python).exists() else None
    if not st_python:
        log.warning(f"{args.st_onnx_python} not found: no sentence-transformers rows (see this script's docstring)")
    (ours, check), (ours_u8, check_u8) = fastemb_export(work, "int8"), fastemb_export(work, "uint8")
    theirs = st_export(work, ours, st_python) if st_python else None
    texts = pq.read_table(WORDNET_DIR / "all_definitions.parquet", columns=["text"]).column("text").to_pylist()
    texts = texts[: args.n]
    tok = Encoder.load(str(ours)).tokenizer
    lengths = [len(ids) for ids in tok(texts, truncation=True, max_length=256)["input_ids"]]
    (work / "texts.json").write_text(json.dumps(texts))
    (work / "batches.json").write_text(json.dumps([b.tolist() for b in bucket_batches(lengths, CPU_BATCH_TOKENS)]))

    sides = ["fastemb int8", "fastemb fp32", "fastemb int8 (uint8 weights)", *(["st int8"] if st_python else [])]
    seconds: dict[str, list[float]] = {s: [] for s in sides}
    vectors: dict[str, np.ndarray] = {}
    for r in range(args.rounds):
        for side in sides[r % len(sides):] + sides[: r % len(sides)]:
            if side == "st int8":
                s, v = st_round(st_python, theirs, work / "texts.json", work / "batches.json", args.threads,
                                work / "st.npy")
            else:
                folder = ours_u8 if "uint8" in side else ours
                s, v = fastemb_round(folder, "onnx-int8" if "int8" in side else "onnx", texts, args.threads)
            seconds[side].append(s)
            vectors[side] = v
            log.info(f"round {r + 1}/{args.rounds}: {side} {len(texts) / s:.0f} texts/s")
    loads_ours = None
    if st_python:  # sentence-transformers on fastemb's int8 file: the same vectors as fastemb's run of it
        _, v = st_round(st_python, ours, work / "texts.json", work / "batches.json", args.threads, work / "st-ours.npy")
        loads_ours = float(np.abs(v - vectors["fastemb int8"]).max())
    quality = {**test_quality(ours, args.threads), "uint8": test_quality(ours_u8, args.threads)["onnx-int8"]}
    write_section("int8 corpus embedding on CPU (issue 20)",
                  report(args, len(texts), seconds, vectors, quality, {"int8": check, "uint8": check_u8}, loads_ours))
    shutil.rmtree(work, ignore_errors=True)


def report(args, n: int, seconds: dict, vectors: dict, quality: dict, check: dict, loads_ours: float | None) -> str:
    """The RESULTS.md section: throughput per side, the ratios with their verdicts, quality and agreement."""
    rate = {s: [n / x for x in v] for s, v in seconds.items()}
    rows = "\n".join(f"| {s} | {statistics.median(r):.0f} | {min(r):.0f}–{max(r):.0f} |" for s, r in rate.items())
    over_fp32 = [a / b for a, b in zip(rate["fastemb int8"], rate["fastemb fp32"])]
    lines = [f"- **fastemb int8 / fastemb fp32 ONNX: {statistics.median(over_fp32):.2f}×** "
             f"({spread(over_fp32, 2, 'rounds')}; target ≥ 2×: {'met' if min(over_fp32) >= 2 else 'NOT met'}; "
             f"{ratio_verdict(over_fp32, 'int8', 'fp32')})"]
    if "st int8" in rate:
        over_st = [a / b for a, b in zip(rate["fastemb int8"], rate["st int8"])]
        lines.append(f"- **fastemb int8 / sentence-transformers ONNX int8: {statistics.median(over_st):.2f}×** "
                     f"({spread(over_st, 2, 'rounds')}; target ≥ 1.3×: "
                     f"{'met' if min(over_st) >= 1.3 else 'NOT met'}; {ratio_verdict(over_st, 'fastemb', 'ST')})")
    loss = {k: (quality["onnx"] - quality[k]) / quality["onnx"] for k in ("onnx-int8", "uint8")}
    over_u8 = [a / b for a, b in zip(rate["fastemb int8 (uint8 weights)"], rate["fastemb fp32"])]
    lines.append(f"- fastemb int8 with uint8 weights / fastemb fp32 ONNX: {statistics.median(over_u8):.2f}× "
                 f"({spread(over_u8, 2, 'rounds')})")
    cos = {s: float((v * vectors["fastemb fp32"]).sum(1).mean()) for s, v in vectors.items() if s != "fastemb fp32"}
    dev = {k: c["dev_ndcg@10"] for k, c in check.items()}
    return f"""
all-MiniLM-L6-v2 as exported (256 tokens), the first {n:,} WordNet definitions, {args.threads} ONNX Runtime
thread(s) per side, {args.rounds} round(s) with the order rotating; every side on the same length-sorted batches of
≤ {CPU_BATCH_TOKENS} padded tokens, tokenisation included, model load not. fastemb int8: the file `export.int8`
wrote after its dev check (dev nDCG@10 {dev['int8']['int8']:.4f} int8 vs {dev['int8']['fp32']:.4f} fp32,
{check['int8']['relative_loss']:+.2%} lost, tolerance {check['int8']['tolerance']:.0%}): MatMul weights int8 per
channel (symmetric), activations uint8 per batch (ONNX Runtime dynamic quantization); with `export.int8.weights: uint8` the weights are asymmetric uint8 (dev
nDCG@10 {dev['uint8']['int8']:.4f}). sentence-transformers int8: its own `export_dynamic_quantized_onnx_model(model,
"avx512_vnni")` on its optimum export, run by its `backend="onnx"`.

| side | texts/s (median) | min–max |
|---|---|---|
{rows}

{chr(10).join(lines)}
- Test nDCG@10 (WordNet test split, 256 tokens): fp32 {quality['onnx']:.4f}, int8 {quality['onnx-int8']:.4f}
  ({loss['onnx-int8']:+.2%} lost; target within 1 %: {'met' if loss['onnx-int8'] <= 0.01 else 'NOT met'}); with
  uint8 weights {quality['uint8']:.4f} ({loss['uint8']:+.2%} lost; {'met' if loss['uint8'] <= 0.01 else 'NOT met'}).
- Mean cosine to fastemb fp32's vectors: {', '.join(f'{s} {c:.4f}' for s, c in cos.items())}.
- sentence-transformers loading fastemb's int8 file (`backend="onnx"`, `model_kwargs={{"file_name": "{ST_INT8}"}}`):
  {'not run (no venv)' if loads_ours is None else f'loads; largest difference to fastemb running the same file {loads_ours:.1e}'}.
"""


if __name__ == "__main__":
    main()
