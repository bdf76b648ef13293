"""Matryoshka truncation: keep the first ``out_dim`` coordinates, then re-normalise (nothing to fit)."""
from __future__ import annotations

import numpy as np

from fastemb.compress.base import Compressor


class MatryoshkaCompressor(Compressor):
    method = "matryoshka"

    def _fit(self, x: np.ndarray) -> None:
        pass

    def _transform(self, x: np.ndarray) -> np.ndarray:
        return x[:, : self.out_dim]
