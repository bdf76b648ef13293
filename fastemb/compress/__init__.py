"""Embedding compression fitted on a sample and applied identically at index and query time.

Methods: ``pca``, ``autoencoder`` (torch), ``matryoshka`` (truncate + re-normalise), and the faiss codecs
``pq`` / ``opq`` (vectors are replaced by their PQ reconstruction). Every compressor is saved to a folder
(``compressor.json`` + arrays) and loaded back with :func:`load_compressor`.
"""
from fastemb.compress.base import Compressor, load_compressor, make_compressor

__all__ = ["Compressor", "load_compressor", "make_compressor"]

# register the methods
from fastemb.compress import autoencoder, matryoshka, pca, pq  # noqa: E402,F401
