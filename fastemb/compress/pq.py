"""Product quantisation (PQ, OPQ) with faiss: the PQ parameter picker shared with the index builder,
and a codec compressor whose ``transform`` returns the PQ reconstruction (``encode`` gives the bytes)."""
from __future__ import annotations

import faiss
import numpy as np

from fastemb.compress.base import Compressor
from fastemb.logs import verbose


def pq_m_for_bytes(dim: int, bytes_per_vector: int, nbits: int = 8) -> int:
    """Number of PQ sub-quantizers: the largest m dividing ``dim`` whose code fits ``bytes_per_vector``."""
    budget = (bytes_per_vector * 8) // nbits
    fits = [m for m in range(1, dim + 1) if dim % m == 0 and m <= budget]
    if not fits:
        raise ValueError(f"bytes_per_vector={bytes_per_vector} is too small for a {nbits}-bit PQ code")
    return max(fits)


def pq_factory(dim: int, m: int, nbits: int = 8, opq: bool = False) -> str:
    """faiss factory string of a PQ (optionally OPQ-rotated) codec.

    ``np``: no polysemous training. faiss otherwise spends minutes of simulated annealing re-ordering the
    centroids for Hamming-distance filtering, which fastemb never uses (it searches with ADC tables)."""
    code = f"PQ{m}" + (f"x{nbits}" if nbits != 8 else "") + "np"
    return (f"OPQ{m}_{dim}," if opq else "") + code


def train_pq_codec(codec, x: np.ndarray) -> None:
    """``codec.train(x)`` for a :func:`pq_factory` codec, without faiss's "WARNING clustering N points to 256
    centroids" line for each sub-quantizer, which OPQ repeats at each of its iterations (thousands of lines for a
    dev set of a few thousand texts; shown with FASTEMB_LOG_LEVEL=DEBUG). Only that warning's threshold
    (``min_points_per_centroid``) changes: the codec trains exactly as ``codec.train`` would."""
    if verbose():
        codec.train(x)
        return
    index, opq = faiss.downcast_index(codec), None
    if isinstance(index, faiss.IndexPreTransform):
        opq = faiss.downcast_VectorTransform(index.chain.at(0))
        index = faiss.downcast_index(index.index)
    index.pq.cp.min_points_per_centroid = 1
    if opq is not None:  # the quantizer OPQ trains at each iteration, as it builds one when given none
        trainer = faiss.ProductQuantizer(opq.d_out, opq.M, 8)
        trainer.cp.min_points_per_centroid = 1
        opq.pq = trainer
    try:
        codec.train(x)
    finally:
        if opq is not None:
            opq.pq = None


class PQCompressor(Compressor):
    """PQ codec; params: ``bytes_per_vector`` (or ``m``), ``nbits``, ``opq_niter``. ``out_dim`` equals ``in_dim``."""

    method = "pq"
    opq = False

    def __init__(self, in_dim: int, out_dim: int, renormalize: bool = True, **params):
        super().__init__(in_dim, in_dim, renormalize, **params)
        nbits = int(params.get("nbits", 8))
        self.m = int(params.get("m") or pq_m_for_bytes(in_dim, int(params.get("bytes_per_vector", 48)), nbits))
        self.nbits = nbits
        self.codec = faiss.index_factory(in_dim, pq_factory(in_dim, self.m, nbits, self.opq))
        if self.opq and params.get("opq_niter"):
            faiss.downcast_VectorTransform(faiss.downcast_index(self.codec).chain.at(0)).niter = int(params["opq_niter"])

    @property
    def code_bytes(self) -> int:
        return int(self.codec.sa_code_size())

    def _fit(self, x: np.ndarray) -> None:
        train_pq_codec(self.codec, x)

    def encode(self, x: np.ndarray) -> np.ndarray:
        """Codes, uint8 (n, code_bytes)."""
        return self.codec.sa_encode(np.ascontiguousarray(x, dtype=np.float32))

    def _transform(self, x: np.ndarray) -> np.ndarray:
        return self.codec.sa_decode(self.encode(x))

    def _arrays(self) -> dict[str, np.ndarray]:
        return {"codec": faiss.serialize_index(self.codec)}

    def _set_arrays(self, arrays: dict[str, np.ndarray]) -> None:
        self.codec = faiss.deserialize_index(arrays["codec"])


class OPQCompressor(PQCompressor):
    method = "opq"
    opq = True
