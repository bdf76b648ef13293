"""ONNX Runtime inference for CPU embedding: the encoder's forward pass (transformer + pooling + normalisation)
exported once per model and run by onnxruntime (measured 1.8-2.1x torch's speed per thread for MiniLM, vectors
within 1e-5 of torch). Tokenisation stays in Python with the encoder's own tokenizer (synonym dictionaries and new
tokens included); only ``(input_ids, attention_mask) -> embeddings`` runs in ONNX.

``onnx_path`` exports to ``$FASTEMB_CACHE/onnx/<fingerprint>/model.onnx`` (default cache ``~/.cache/fastemb``); the
fingerprint covers the model folder's weight and config files (names, sizes, mtimes), pooling, normalisation, the
opset and torch's version. The export (TorchScript exporter, needs the ``onnx`` package only) runs under a file lock,
is checked against torch on a padded batch of another shape, then renamed into place: concurrent actors on a node
export once. The ``KEEP_EXPORTS`` most recently used exports are kept (each is the size of the weights); older ones
are deleted after a new export, and exported again if used again. ``resolve_backend`` reads a ``backend: torch |
onnx | onnx-int8 | auto`` option (auto: onnx on CPU, torch on GPU; onnx-int8: the int8 graph of
fastemb/model/quantize.py), and fastemb/model/forward.py loads the engine it names; all take and return numpy arrays.
The graph's outputs are the transformer's ``last_hidden_state`` and the pooled ``emb`` (fastemb runs the latter;
sentence-transformers' ONNX backend reads the former).
"""
from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import warnings
from contextlib import suppress
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from fastemb.errors import FastembError
from fastemb.model.batching import pad_batch
from fastemb.model.teachers import cache_root
from fastemb.spec.sections import ONNX_BACKENDS

if TYPE_CHECKING:
    from fastemb.model.encoder import Encoder

OPSET = 17
GRAPH_VERSION = 2  # outputs (last_hidden_state, emb): sentence-transformers' ONNX backend reads the first
OUTPUTS = ["last_hidden_state", "emb"]
CHECK_ATOL = 1e-4  # an export whose vectors differ more from torch's on the check batch is refused
KEEP_EXPORTS = 8  # most recently used exports kept in the cache
_FINGERPRINT_SUFFIXES = {".safetensors", ".bin", ".pt", ".pth", ".json", ".py"}  # weights, configs, adapter code
_EXPORT_TEXTS = ["a short text", "a somewhat longer text used to trace the encoder for export"]
_CHECK_TEXTS = ["one", "a check batch of another shape than the traced one", "with padding in each row but one"]


class OnnxExportError(FastembError, RuntimeError):
    """A model could not be exported to, or run by, ONNX Runtime; the message says to use ``backend: torch``."""


def resolve_backend(backend: str, device: str = "cpu", field: str = "backend") -> str:
    """``torch``, ``onnx`` or ``onnx-int8`` for a ``backend`` option on ``device`` (auto: onnx on CPU, torch on
    GPU)."""
    if backend == "auto":
        return "onnx" if device == "cpu" else "torch"
    if backend not in ("torch", *ONNX_BACKENDS):
        raise ValueError(f"{field}: {backend!r} is not one of torch, {', '.join(ONNX_BACKENDS)}, auto")
    if backend in ONNX_BACKENDS and device != "cpu":
        raise ValueError(f"{field}: {backend} runs on CPU only (onnxruntime's CPU build), not on {device}; "
                         "use torch or auto")
    return backend


def fingerprint(model_dir: str | Path, pooling: str, normalize: bool) -> str:
    """Hash of what the exported graph depends on: weight/config files (relative name, size, mtime; not the folder's
    own ONNX files under ``onnx/``), settings."""
    import torch

    root = Path(model_dir).resolve()
    files = []
    for p in sorted(root.rglob("*")):
        rel = p.relative_to(root)
        if (p.is_file() and p.suffix in _FINGERPRINT_SUFFIXES and rel.parts[0] != "onnx"  # int8 files: model/quantize.py
                and not any(x.startswith(".") for x in rel.parts)):
            st = p.stat()
            files.append((rel.as_posix(), st.st_size, st.st_mtime_ns))
    key = {"files": files, "pooling": pooling, "normalize": bool(normalize), "torch": torch.__version__,
           "opset": OPSET, "graph": GRAPH_VERSION}
    return hashlib.sha256(json.dumps(key).encode()).hexdigest()[:16]


def _batch(encoder: "Encoder", texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
    tok = encoder.tokenizer
    return pad_batch(tok(texts, truncation=True, max_length=encoder.max_length)["input_ids"], tok.pad_token_id or 0)


def _export_graph(encoder: "Encoder"):
    """The encoder as the exported graph sees it: ``(input_ids, attention_mask) -> (last_hidden_state, emb)``.

    ``last_hidden_state`` (the transformer's token vectors) is what sentence-transformers' ONNX backend (optimum's
    ``ORTModelForFeatureExtraction``) reads, so the int8 file in a model folder loads there too; fastemb runs ``emb``
    (pooled and normalised inside the graph)."""
    import torch

    class TokensAndVector(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.encoder = encoder

        def forward(self, input_ids, attention_mask):
            tokens = self.encoder.transformer(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
            return tokens, self.encoder.pool(tokens, attention_mask)

    return TokensAndVector().eval()  # export restores the mode it found: train mode would reach the encoder


def export_onnx(encoder: "Encoder", dest: Path, name: str, field: str = "backend") -> None:
    """Export ``encoder`` to ``dest`` (written beside it, checked against torch, then renamed into place)."""
    import torch

    tmp = dest.with_name(f".{dest.name}.{os.getpid()}.tmp")
    was_training = encoder.training
    encoder.eval()
    try:
        args = tuple(torch.from_numpy(a) for a in _batch(encoder, _EXPORT_TEXTS))
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")  # tracer and legacy-exporter notices
            torch.onnx.export(_export_graph(encoder), args, str(tmp), input_names=["input_ids", "attention_mask"],
                              output_names=OUTPUTS, opset_version=OPSET, dynamo=False,
                              dynamic_axes={"input_ids": {0: "b", 1: "s"}, "attention_mask": {0: "b", 1: "s"},
                                            "last_hidden_state": {0: "b", 1: "s"}, "emb": {0: "b"}})
        check = _batch(encoder, _CHECK_TEXTS)
        want = TorchForward(encoder)(*check)
        got = OnnxEncoder(tmp)(*check)
        diff = float(np.abs(want - got).max())
        if not diff <= CHECK_ATOL:
            raise ValueError(f"ONNX vectors differ from torch's by {diff:.2g} (> {CHECK_ATOL}) on a check batch")
        os.replace(tmp, dest)
    except Exception as err:  # noqa: BLE001 - any exporter/runtime failure: one clear error
        raise OnnxExportError(f"model {name}: ONNX export failed ({type(err).__name__}: {err}); "
                              f"use {field}: torch for this model") from err
    finally:
        encoder.train(was_training)
        tmp.unlink(missing_ok=True)


def onnx_path(model_dir: str | Path, encoder: "Encoder | None" = None, *, pooling: str | None = None,
              normalize: bool | None = None, field: str = "backend") -> Path:
    """The ONNX file of the model in ``model_dir`` (alias or folder), exported on first use and cached.

    ``encoder``: that model already loaded (its pooling/normalisation apply; exported as is). Without it the
    folder's own settings apply unless ``pooling``/``normalize`` are given, and the model is loaded only to export.
    ``field``: the option named in an export error.
    """
    from fastemb.model.encoder import Encoder, _read_st_layout, resolve_model_path

    folder = Path(resolve_model_path(str(model_dir)))
    if encoder is not None:
        pooling, normalize = encoder.pooling, encoder.normalize
    else:
        _, st_pooling, st_normalize, _ = _read_st_layout(folder)
        pooling, normalize = pooling or st_pooling, st_normalize if normalize is None else normalize
    dest = cache_root() / "onnx" / fingerprint(folder, pooling, normalize) / "model.onnx"
    if dest.exists():
        with suppress(OSError):
            os.utime(dest)  # last use, for pruning
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    with open(dest.parent / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one export even with many actors on a node
        if not dest.exists():
            dest.parent.mkdir(parents=True, exist_ok=True)  # pruned while this caller waited
            export_onnx(encoder or Encoder.load(str(folder), pooling=pooling, normalize=normalize), dest,
                        str(folder), field)
            _prune(dest.parent.parent, dest)
    return dest


def _prune(root: Path, keep: Path) -> None:
    """Delete all but the ``KEEP_EXPORTS`` most recently used exports under ``root`` (never ``keep``)."""
    used = []
    for p in root.glob("*/model.onnx"):
        with suppress(FileNotFoundError):  # pruned by another process meanwhile
            used.append((p.stat().st_mtime, str(p)))
    for _, p in sorted(used, reverse=True)[KEEP_EXPORTS:]:
        if Path(p) != keep:
            shutil.rmtree(Path(p).parent, ignore_errors=True)


class OnnxEncoder:
    """An exported encoder run by ONNX Runtime on CPU: ``(input_ids, attention_mask)`` -> float32 (B, D)."""
    def __init__(self, path: str | Path, threads: int = 1, name: str = "onnx"):
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.log_severity_level = 3  # errors only
        self.path, self.threads, self.name = Path(path), threads, name  # name: the backend (onnx, onnx-int8)
        self.session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])

    def __call__(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
        feed = {"input_ids": np.asarray(input_ids, dtype=np.int64),
                "attention_mask": np.asarray(attention_mask, dtype=np.int64)}
        return self.session.run(["emb"], feed)[0].astype(np.float32, copy=False)


class TorchForward:
    """The torch ``Encoder`` behind ``OnnxEncoder``'s call: numpy in, float32 numpy out (on the encoder's device).

    ``precision`` fp16 / bf16 casts the encoder's weights to that dtype once (a GPU forward pass at half the memory
    traffic, as ``SentenceTransformer.half()``); the vectors come back as float32."""
    name = "torch"

    def __init__(self, encoder: "Encoder", precision: str = "fp32"):
        self.encoder, self.precision = encoder, precision
        if precision != "fp32":
            import torch

            from fastemb.accelerator import INFERENCE_DTYPES

            encoder.to(getattr(torch, INFERENCE_DTYPES[precision]))

    def __call__(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
        import torch

        device = next(self.encoder.parameters()).device
        with torch.inference_mode():
            out = self.encoder(torch.as_tensor(input_ids, dtype=torch.long, device=device),
                               torch.as_tensor(attention_mask, dtype=torch.long, device=device))
        return out.float().cpu().numpy()
