"""The forward pass a ``backend`` option picks: torch (``TorchForward``), or ONNX Runtime on the fp32 graph
(fastemb/model/onnx_backend.py) or its int8 graph (fastemb/model/quantize.py), as ``OnnxEncoder``; all take
``(input_ids, attention_mask)`` as numpy arrays and return float32 vectors."""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from fastemb.model.onnx_backend import OnnxEncoder, OnnxExportError, TorchForward, onnx_path, resolve_backend
from fastemb.model.quantize import int8_path

if TYPE_CHECKING:
    from fastemb.model.encoder import Encoder


def load_forward(encoder: "Encoder", model_dir: str | Path, backend: str = "auto", threads: int = 1,
                 device: str = "cpu", field: str = "backend", precision: str = "fp32") -> OnnxEncoder | TorchForward:
    """The forward pass of ``encoder`` (loaded from ``model_dir``, already on ``device``) on the engine ``backend``
    picks for ``device``; torch runs in ``precision`` (fp32, or fp16 / bf16 on a GPU); onnx-int8 runs the model's
    int8 graph (fastemb/model/quantize.py)."""
    engine = resolve_backend(backend, device, field)
    if engine == "torch":
        return TorchForward(encoder, precision)
    if engine == "onnx-int8":
        path = int8_path(model_dir, encoder, field)
    else:
        path = onnx_path(model_dir, encoder, field=field)
    try:
        return OnnxEncoder(path, threads, name=engine)
    except Exception as err:  # noqa: BLE001 - e.g. a cached file left unreadable
        raise OnnxExportError(f"model {model_dir}: ONNX Runtime could not load {path} ({err}); "
                              f"use {field}: torch for this model") from err


class ImageTextForward:
    """The text side of an image–text model (fastemb/model/image_text.py) behind the same call: the text encoder's
    torch forward pass (in ``precision``), then the text projection into the shared space (fp32), unit vectors."""
    name = "torch"

    def __init__(self, model, precision: str = "fp32"):
        self.model, self.precision = model, precision
        self.text = TorchForward(model.text, precision)

    def __call__(self, input_ids, attention_mask):
        return self.model.project_text(self.text(input_ids, attention_mask))
