"""Check the real all-mpnet-base-v2 teacher where its split-zip PyPI parts are installed (the ``distill`` extra): it
unpacks once into the cache, and loads through its alias with the model's settings and sensible vectors.

CI does not install the 404 MB parts; tests/test_teachers.py tests the same loader on parts it makes from the shipped
all-MiniLM-L6-v2. Run this on a machine with the extra (``pip install -e '.[distill]'``); it exits non-zero, naming
what failed, when the parts are missing or the model is wrong.

    .venv/bin/python bench/teacher_mpnet.py
"""
from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main() -> int:
    import numpy as np

    from fastemb.model.encoder import Encoder
    from fastemb.model.teachers import teacher_path

    path = Path(teacher_path("all-mpnet-base-v2"))  # raises TeacherNotInstalled, saying how to install the parts
    assert (path / "model.safetensors").stat().st_size > 400_000_000 and (path / "2_Normalize").is_dir(), path
    assert teacher_path("all-mpnet-base-v2") == str(path), "unpacked a second time"
    enc = Encoder.load("all-mpnet-base-v2")
    assert (enc.dim, enc.pooling, enc.normalize, enc.max_length) == (768, "mean", True, 384), \
        (enc.dim, enc.pooling, enc.normalize, enc.max_length)
    v = enc.encode(["a large feline", "big cat", "a domestic dog"])
    assert np.allclose(np.linalg.norm(v, axis=1), 1, atol=1e-5)
    assert v[0] @ v[1] > v[0] @ v[2], "a large feline is nearer a domestic dog than a big cat"
    print(f"all-mpnet-base-v2: unpacked in {path}, loads, dim 768, normalised, ranks sensibly")
    return 0


if __name__ == "__main__":
    sys.exit(main())
