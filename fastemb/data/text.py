"""Small text helpers shared by every stage."""
from __future__ import annotations

import hashlib

import numpy as np


def text_hash(text: str) -> int:
    """Stable signed 64-bit hash of a text (same value in every process, unlike ``hash``)."""
    return int.from_bytes(hashlib.blake2b(text.encode("utf-8", "replace"), digest_size=8).digest(), "little",
                          signed=True)


def text_hashes(texts: list[str]) -> np.ndarray:
    """``text_hash`` of each text as an int64 array."""
    return np.fromiter((text_hash(t) for t in texts), dtype=np.int64, count=len(texts))


def bad_text_reason(value) -> str | None:
    """Why ``value`` is not a usable text (None if it is)."""
    if value is None:
        return "null"
    if not isinstance(value, str):
        return f"not a string ({type(value).__name__})"
    if not value.strip():
        return "empty"
    return None
