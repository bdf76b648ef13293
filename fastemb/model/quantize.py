"""int8 inference on CPU (``backend: onnx-int8``): the encoder's ONNX graph with its MatMul weights in int8 (or
uint8: ``export.int8.weights``) and its activations quantized per batch (ONNX Runtime's dynamic quantization; its int8 kernels use AVX-512 VNNI where
the CPU has it).

Two places hold an int8 graph:

- ``<model folder>/onnx/model_qint8_avx512_vnni.onnx`` (``INT8_FILE``), written by a training job with
  ``export.int8`` once its dev nDCG@10 is within the tolerance of fp32's (fastemb/train/export.py), under the name
  sentence-transformers' ONNX backend looks for: ``SentenceTransformer(path, backend="onnx",
  model_kwargs={"file_name": "onnx/model_qint8_avx512_vnni.onnx"})`` loads it (the graph's first output is the
  transformer's ``last_hidden_state``). ``onnx/quantization.json`` beside it records the check and the fingerprint
  of the weights it was made from: a folder whose weights changed since is quantized again in the cache instead.
- the export cache, beside the fp32 export (``<cache>/onnx/<fingerprint>/model_qint8.onnx``), quantized on first use
  for a model folder without a current one: any model runs on ``backend: onnx-int8``, unchecked.
"""
from __future__ import annotations

import fcntl
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING

from fastemb.model.onnx_backend import OnnxExportError, fingerprint, onnx_path

if TYPE_CHECKING:
    from fastemb.model.encoder import Encoder

INT8_FILE = "onnx/model_qint8_avx512_vnni.onnx"
RECORD_FILE = "onnx/quantization.json"
CACHE_NAME = "model_qint8.onnx"
QUANTIZED_OPS = ["MatMul"]  # the transformer's projections and feed-forward layers (~all of the time)


def quantize_file(src: Path, dest: Path, name: str, field: str = "backend", weights: str = "int8") -> None:
    """Quantize the ONNX graph ``src`` into ``dest`` (``weights``: int8 or uint8 per output channel; uint8
    activations per batch; written beside it, then renamed into place)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    tmp = dest.with_name(f".{dest.name}.{os.getpid()}.tmp")
    try:
        weight_type = {"int8": QuantType.QInt8, "uint8": QuantType.QUInt8}[weights]
        quantize_dynamic(src, tmp, weight_type=weight_type, per_channel=True, op_types_to_quantize=QUANTIZED_OPS)
        os.replace(tmp, dest)
    except Exception as err:  # noqa: BLE001 - any quantizer failure: one clear error
        raise OnnxExportError(f"model {name}: int8 quantization of {src} failed ({type(err).__name__}: {err}); "
                              f"use {field}: onnx (fp32) for this model") from err
    finally:
        tmp.unlink(missing_ok=True)


def folder_int8(folder: Path, pooling: str, normalize: bool) -> Path | None:
    """The model folder's own int8 file, when it was made from the folder's current weights and settings."""
    own, record = folder / INT8_FILE, folder / RECORD_FILE
    if not (own.exists() and record.exists()):
        return None
    try:
        made_from = json.loads(record.read_text()).get("fingerprint")
    except (OSError, ValueError):
        return None
    return own if made_from == fingerprint(folder, pooling, normalize) else None


def int8_path(model_dir: str | Path, encoder: "Encoder", field: str = "backend") -> Path:
    """The int8 graph of ``encoder`` (loaded from ``model_dir``): the folder's own checked file, else the cache's,
    quantized from the fp32 export on first use (one process quantizes; the others wait for it)."""
    from fastemb.model.encoder import resolve_model_path

    folder = Path(resolve_model_path(str(model_dir)))
    own = folder_int8(folder, encoder.pooling, encoder.normalize)
    if own is not None:
        return own
    fp32 = onnx_path(folder, encoder, field=field)
    dest = fp32.with_name(CACHE_NAME)
    if not dest.exists():
        with open(fp32.parent / ".lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            if not dest.exists():
                quantize_file(fp32, dest, str(folder), field)
    return dest


def write_folder_int8(folder: Path, candidate: Path, encoder: "Encoder", check: dict) -> Path:
    """Move a checked int8 graph into the model folder (``INT8_FILE``) with its record (``RECORD_FILE``)."""
    dest = folder / INT8_FILE
    dest.parent.mkdir(parents=True, exist_ok=True)
    os.replace(candidate, dest)
    record = {"fingerprint": fingerprint(folder, encoder.pooling, encoder.normalize), "file": INT8_FILE,
              "method": f"onnxruntime dynamic quantization: {check.get('weights', 'int8')} weights per channel "
                        "(MatMul), uint8 activations", "check": check}
    (folder / RECORD_FILE).write_text(json.dumps(record, indent=2))
    return dest
