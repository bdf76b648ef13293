"""PCA projection to the top ``out_dim`` principal directions (fitted by SVD on a sample)."""
from __future__ import annotations

import numpy as np

from fastemb.compress.base import Compressor


class PCACompressor(Compressor):
    method = "pca"

    def _fit(self, x: np.ndarray) -> None:
        self.mean = x.mean(0).astype(np.float32)
        _, _, vt = np.linalg.svd(x - self.mean, full_matrices=False)
        self.components = np.ascontiguousarray(vt[: self.out_dim].T, dtype=np.float32)  # (in, out)

    def _transform(self, x: np.ndarray) -> np.ndarray:
        return (x - self.mean) @ self.components

    def _arrays(self) -> dict[str, np.ndarray]:
        return {"mean": self.mean, "components": self.components}

    def _set_arrays(self, arrays: dict[str, np.ndarray]) -> None:
        self.mean, self.components = arrays["mean"], arrays["components"]
