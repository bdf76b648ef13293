"""The compressor interface, its registry, and save/load."""
from __future__ import annotations

import json
from pathlib import Path
from typing import ClassVar

import numpy as np

_REGISTRY: dict[str, type["Compressor"]] = {}


def l2_normalize(x: np.ndarray) -> np.ndarray:
    """Row-wise L2 normalisation (float32)."""
    x = np.asarray(x, dtype=np.float32)
    return x / np.clip(np.linalg.norm(x, axis=1, keepdims=True), 1e-12, None)


class Compressor:
    """Maps (n, in_dim) float32 embeddings to (n, out_dim); ``fit`` once on a sample, then ``transform``.

    ``renormalize`` re-applies L2 normalisation after the transform (cosine models), so inner-product search
    stays cosine search in the compressed space."""

    method: ClassVar[str] = ""

    def __init__(self, in_dim: int, out_dim: int, renormalize: bool = True, **params):
        if not 0 < out_dim <= in_dim:
            raise ValueError(f"compress.dim must be in 1..{in_dim} (the model's dimension), got {out_dim}")
        self.in_dim, self.out_dim, self.renormalize, self.params = in_dim, out_dim, renormalize, params
        self.fitted = False

    def __init_subclass__(cls, **kw):
        super().__init_subclass__(**kw)
        if cls.method:
            _REGISTRY[cls.method] = cls

    # subclasses implement these three
    def _fit(self, x: np.ndarray) -> None:
        raise NotImplementedError

    def _transform(self, x: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def _arrays(self) -> dict[str, np.ndarray]:
        return {}

    def _set_arrays(self, arrays: dict[str, np.ndarray]) -> None:
        pass

    @property
    def code_bytes(self) -> int:
        """Bytes stored per vector when kept as float32 (codecs override)."""
        return 4 * self.out_dim

    def fit(self, sample: np.ndarray) -> "Compressor":
        sample = np.ascontiguousarray(sample, dtype=np.float32)
        if sample.ndim != 2 or sample.shape[1] != self.in_dim:
            raise ValueError(f"compressor fit: expected (n, {self.in_dim}) vectors, got {sample.shape}")
        self._fit(sample)
        self.fitted = True
        return self

    def transform(self, x: np.ndarray) -> np.ndarray:
        if not self.fitted:
            raise RuntimeError(f"{self.method} compressor is not fitted")
        out = np.ascontiguousarray(self._transform(np.ascontiguousarray(x, dtype=np.float32)), dtype=np.float32)
        return l2_normalize(out) if self.renormalize else out

    def save(self, path: str | Path) -> Path:
        out = Path(path)
        out.mkdir(parents=True, exist_ok=True)
        meta = {"method": self.method, "in_dim": self.in_dim, "out_dim": self.out_dim,
                "renormalize": self.renormalize, "params": self.params, "code_bytes": self.code_bytes}
        np.savez(out / "compressor.npz", **self._arrays())
        (out / "compressor.json").write_text(json.dumps(meta, indent=2))
        return out


def make_compressor(method: str, in_dim: int, out_dim: int | None = None, renormalize: bool = True,
                    **params) -> Compressor:
    """A new (unfitted) compressor of ``method``."""
    if method not in _REGISTRY:
        raise ValueError(f"compress.method: unknown {method!r}; allowed: {', '.join(sorted(_REGISTRY))}")
    return _REGISTRY[method](in_dim, out_dim or in_dim, renormalize, **params)


def load_compressor(path: str | Path) -> Compressor:
    """Load a compressor saved with :meth:`Compressor.save`."""
    path = Path(path)
    meta = json.loads((path / "compressor.json").read_text())
    comp = make_compressor(meta["method"], meta["in_dim"], meta["out_dim"], meta["renormalize"], **meta["params"])
    with np.load(path / "compressor.npz") as z:
        comp._set_arrays({k: z[k] for k in z.files})
    comp.fitted = True
    return comp
