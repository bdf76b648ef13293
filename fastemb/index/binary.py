"""``index.type: binary``: one sign bit per dimension (d/8 bytes per vector, 32× less than float32), searched by
Hamming distance, optionally re-scored from vectors on disk (``index.refine: disk``, fastemb/index/refine.py).

The index is faiss's ``IndexLSH`` without rotation or thresholds (factory key ``LSH``): bit j of a vector is
``x_j > 0``. It is a float ``faiss.Index`` (an ``IndexFlatCodes``), so it trains (nothing to learn), adds, merges and
saves like the other types. Sign bits only approximate the angle between unit vectors, so the build refuses vectors
that are not normalised (:func:`check_unit_norm`), and re-scoring ranks by inner product.
"""
from __future__ import annotations

import faiss
import numpy as np

from fastemb.errors import FastembError

FACTORY = "LSH"  # IndexLSH(d, nbits=d, rotate_data=False, train_thresholds=False); faiss builds it with METRIC_L2
NORM_TOLERANCE = 1e-3


class NotUnitNormError(FastembError, ValueError):
    """A binary index over vectors that are not normalised: the message names the field and the fix."""


def is_binary(index) -> bool:
    """The index (or what it wraps) is a sign-bit ``IndexLSH``."""
    return isinstance(faiss.downcast_index(index), faiss.IndexLSH)


def check_unit_norm(x: np.ndarray, tol: float = NORM_TOLERANCE) -> None:
    """Raise :class:`NotUnitNormError` (naming ``index.type``) unless every row of ``x`` (the training sample, in
    the index's space) has norm 1 ± ``tol``."""
    norms = np.linalg.norm(np.asarray(x, dtype=np.float32), axis=1)
    off = np.abs(norms - 1.0) > tol
    if off.any():
        raise NotUnitNormError(
            f"index.type=binary needs unit-norm vectors, but {int(off.sum())} of {len(x)} sampled vectors have norms "
            f"from {norms.min():.4g} to {norms.max():.4g}: use a normalising model (model.normalize=true) or another "
            "index.type")


def hamming_similarity(distances: np.ndarray, nbits: int) -> np.ndarray:
    """Hamming distances → similarity in [-1, 1] (1 − 2h/nbits; larger is better, like the other types' scores)."""
    return (1.0 - 2.0 * np.asarray(distances, dtype=np.float32) / nbits).astype(np.float32)
