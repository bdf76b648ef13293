"""The sentence-transformers peer of ``bench/index_build.py embed``: one timed ``SentenceTransformer.encode`` of a
JSON file's texts (a list of strings) in a fresh process (model load not timed), run by any Python that has
sentence-transformers:
the project's venv for ``--backend torch``, a venv with its ONNX extra for ``--backend onnx`` (see
bench/index_build.py). Only sentence-transformers and numpy are imported, so it runs outside fastemb's venv.

``--batches FILE`` (JSON lists of row indices, e.g. cut by fastemb's token-budget bucketing) encodes each list as one
batch, in that order; without it ``encode`` batches ``--batch-size`` rows itself (it sorts by length first).
Writes ``--out``: an ``.npy`` of the vectors in row order, and ``<out>.json`` with the seconds and peak RSS.
``--device cuda``: the torch model in fp16 (``.half()``) on the GPU, warmed up on 2,048 texts first.

    python bench/st_encode.py --model DIR --texts in.json --backend onnx --threads 2 --batches b.json --out v.npy
"""
from __future__ import annotations

import argparse
import json
import resource
import time

import numpy as np


def load_model(path: str, backend: str, threads: int, max_length: int, device: str = "cpu",
               file_name: str | None = None):
    import torch
    from sentence_transformers import SentenceTransformer

    torch.set_num_threads(threads)
    kwargs = {}
    if backend == "onnx":
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
        kwargs = {"model_kwargs": {"session_options": options, "provider": "CPUExecutionProvider"}}
        if file_name:  # e.g. onnx/model_qint8_avx512_vnni.onnx: an int8 graph in the model folder
            kwargs["model_kwargs"]["file_name"] = file_name
    model = SentenceTransformer(path, device=device, backend=backend, **kwargs)
    if device == "cuda":
        model.half()
    model.max_seq_length = max_length
    return model


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--texts", required=True, help="JSON file: a list of texts")
    ap.add_argument("--backend", choices=["torch", "onnx"], default="torch")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--max-length", type=int, default=64)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cpu", help="cuda: torch fp16 on the GPU")
    ap.add_argument("--batches", help="JSON file: a list of row-index lists, one batch each")
    ap.add_argument("--file-name", help="--backend onnx: the ONNX file in the model folder (its model_kwargs)")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()

    texts = json.loads(open(args.texts).read())
    model = load_model(args.model, args.backend, args.threads, args.max_length, args.device, args.file_name)
    if args.device == "cuda":  # CUDA kernels and the allocator warmed up, as fastemb's actors are when they embed
        model.encode(texts[:2048], batch_size=args.batch_size)
    else:
        model.encode(texts[:64], batch_size=32)  # warm-up (first-call allocations), not timed
    batches = json.loads(open(args.batches).read()) if args.batches else None
    t = time.perf_counter()
    if batches is None:
        emb = model.encode(texts, batch_size=args.batch_size, convert_to_numpy=True, normalize_embeddings=True)
    else:
        emb = np.zeros((len(texts), model.get_sentence_embedding_dimension()), dtype=np.float32)
        for rows in batches:
            emb[rows] = model.encode([texts[i] for i in rows], batch_size=len(rows), convert_to_numpy=True,
                                     normalize_embeddings=True)
    seconds = time.perf_counter() - t
    np.save(args.out, emb.astype(np.float32))
    with open(args.out + ".json", "w") as f:
        json.dump({"seconds": seconds, "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}, f)


if __name__ == "__main__":
    main()
