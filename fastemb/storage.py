"""Run outputs on a local/shared path or in an object store (a pyarrow filesystem URI; ``s3://`` is the one tested).

A job whose ``storage_path`` is a URI works in a local staging folder (``run_dir``) that mirrors
``{storage_path}/{name}``: :func:`pull` fetches the job's own files before it starts (cached base metrics, teacher
outputs, an earlier report), :func:`push` uploads them when it ends. Ray Train writes its checkpoints straight to the
URI (:func:`ray_storage`), so every node reads and writes them there and a rerun resumes from them.
Folders that finish one by one (an index job's embedding units) are published with :func:`push_folder` as they
finish and fetched back with :func:`pull_folders`. Readers of a finished run elsewhere (search, serve) use
:func:`local_copy`: a cached local copy of a URI folder, fetched again only when its manifest changed.
Query parameters of the URI configure the filesystem, e.g.
``s3://bucket/runs?endpoint_override=minio:9000&scheme=http`` (pyarrow's ``FileSystem.from_uri``).
"""
from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Any

import pyarrow.fs as pafs

# Ray Train's own entries in a run folder: they stay in the store (Ray reads them there), never staged locally.
RAY_ENTRIES = ("checkpoint_", ".validate_storage_marker", "checkpoint_manager_snapshot", "train_run_state")


def is_uri(path: str) -> bool:
    return "://" in path


def split_uri(uri: str) -> tuple[pafs.FileSystem, str]:
    """(filesystem, path inside it) for a URI, with the URI's query parameters applied."""
    fs, path = pafs.FileSystem.from_uri(uri)
    return fs, path.rstrip("/")


def write_json(path: str | Path, value: Any) -> Path:
    """Write ``value`` as indented JSON to a local ``path`` (a job's ``report``/``output`` file), creating its
    folder."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(value, indent=2))
    return path


def staging_root() -> Path:
    return Path(os.environ.get("FASTEMB_STAGING", Path.home() / ".cache" / "fastemb" / "staging")).expanduser()


def staging_dir(storage_path: str, name: str) -> Path:
    """The local folder that stands for ``{storage_path}/{name}`` while a job runs (stable across reruns)."""
    key = hashlib.sha1(storage_path.encode()).hexdigest()[:12]
    return staging_root() / key / name


def ray_storage(storage_path: str) -> tuple[str, pafs.FileSystem | None]:
    """``RunConfig(storage_path=..., storage_filesystem=...)`` arguments for a path or a URI."""
    if not is_uri(storage_path):
        return storage_path, None
    fs, path = split_uri(storage_path)
    return path, fs


def remote_run_dir(storage_path: str, name: str) -> tuple[pafs.FileSystem, str]:
    fs, base = split_uri(storage_path)
    return fs, f"{base}/{name}"


def run_uri(storage_path: str, name: str) -> str:
    """``{storage_path}/{name}`` as a URI that keeps the query (filesystem options): usable to read the run."""
    base, q, query = storage_path.partition("?")
    return f"{base.rstrip('/')}/{name}{q}{query}"


def _own_entries(fs: pafs.FileSystem, root: str, exclude: tuple[str, ...] = ()) -> list[pafs.FileInfo]:
    """The folder's top-level entries that fastemb wrote (Ray's checkpoints and ``exclude`` left out)."""
    try:
        infos = fs.get_file_info(pafs.FileSelector(root, allow_not_found=True))
    except (FileNotFoundError, OSError):
        return []
    return [i for i in infos if not i.base_name.startswith(RAY_ENTRIES) and i.base_name not in exclude]


def _copy(entries: list[pafs.FileInfo], src_fs: pafs.FileSystem, dst_fs: pafs.FileSystem, dst_root: str) -> int:
    for info in entries:  # a file or a whole folder
        pafs.copy_files(info.path, f"{dst_root}/{info.base_name}", source_filesystem=src_fs,
                        destination_filesystem=dst_fs)
    return len(entries)


def pull(storage_path: str, name: str, local: Path, exclude: tuple[str, ...] = ()) -> int:
    """Fetch the job's own files from ``{storage_path}/{name}`` into ``local`` (top-level entries in ``exclude``
    left out); returns the entries fetched."""
    local.mkdir(parents=True, exist_ok=True)
    fs, root = remote_run_dir(storage_path, name)
    return _copy(_own_entries(fs, root, exclude), fs, pafs.LocalFileSystem(), str(local.resolve()))


def push(local: Path, storage_path: str, name: str, exclude: tuple[str, ...] = (), last: str | None = None) -> int:
    """Upload everything in ``local`` (but ``exclude``) to ``{storage_path}/{name}`` (files replaced, Ray's entries
    untouched); the entry ``last`` (a manifest that readers check) goes after all the others."""
    fs, root = remote_run_dir(storage_path, name)
    fs.create_dir(root, recursive=True)
    lfs = pafs.LocalFileSystem()
    entries = sorted(_own_entries(lfs, str(local.resolve()), exclude), key=lambda i: i.base_name == last)
    return _copy(entries, lfs, fs, root)


def _has_file(fs: pafs.FileSystem, path: str) -> bool:
    return fs.get_file_info(path).type == pafs.FileType.File


def _copy_marker_last(src: str, src_fs: pafs.FileSystem, dst: str, dst_fs: pafs.FileSystem, marker: str) -> None:
    """Copy the folder ``src`` to ``dst`` file by file, ``marker`` last: a copy holding the marker is complete."""
    files = [i for i in src_fs.get_file_info(pafs.FileSelector(src, recursive=True)) if i.type == pafs.FileType.File]
    for info in sorted(files, key=lambda i: i.path == f"{src}/{marker}"):
        rel = info.path[len(src) + 1:]
        if isinstance(dst_fs, pafs.LocalFileSystem):
            Path(dst, rel).parent.mkdir(parents=True, exist_ok=True)
        pafs.copy_files(info.path, f"{dst}/{rel}", source_filesystem=src_fs, destination_filesystem=dst_fs)


def push_folder(local: Path, storage_path: str, name: str, rel: str, marker: str = "_SUCCESS") -> bool:
    """Publish the finished folder ``local`` at ``{storage_path}/{name}/{rel}`` unless the store already holds its
    ``marker``; a partial earlier upload is cleared first. Returns whether it uploaded."""
    fs, root = remote_run_dir(storage_path, name)
    dst = f"{root}/{rel}"
    if _has_file(fs, f"{dst}/{marker}"):
        return False
    fs.delete_dir_contents(dst, missing_dir_ok=True)
    _copy_marker_last(str(local.resolve()), pafs.LocalFileSystem(), dst, fs, marker)
    return True


def pull_folders(storage_path: str, name: str, rel: str, local: Path, marker: str = "_SUCCESS") -> int:
    """Fetch the finished sub-folders (holding ``marker``) of ``{storage_path}/{name}/{rel}`` that ``local`` lacks
    (or holds unfinished); returns how many were fetched."""
    fs, root = remote_run_dir(storage_path, name)
    fetched = 0
    for info in _own_entries(fs, f"{root}/{rel}"):
        target = local / info.base_name
        if (info.type == pafs.FileType.Directory and not (target / marker).exists()
                and _has_file(fs, f"{info.path}/{marker}")):
            shutil.rmtree(target, ignore_errors=True)
            _copy_marker_last(info.path, fs, str(target.resolve()), pafs.LocalFileSystem(), marker)
            fetched += 1
    return fetched


def local_copy(uri: str, entries: tuple[str, ...] | None = None, marker: str = "manifest.json") -> Path:
    """A local copy of the folder at ``uri`` (its top-level ``entries``, default all), cached under
    :func:`staging_root` by URI (and entries) and fetched again only when the store's ``marker`` differs from the
    cached one."""
    fs, root = split_uri(uri)
    if not _has_file(fs, f"{root}/{marker}"):
        raise FileNotFoundError(f"{uri}: no {marker} there")
    with fs.open_input_stream(f"{root}/{marker}") as f:
        remote_marker = f.read()
    key = hashlib.sha1(repr((uri, entries)).encode()).hexdigest()[:12]
    local = (staging_root() / "copies" / key).resolve()
    local.parent.mkdir(parents=True, exist_ok=True)
    with open(f"{local}.lock", "w") as lock:  # processes of one node (serve replicas) fetch it once
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (local / marker).is_file() and (local / marker).read_bytes() == remote_marker:
            return local
        tmp = local.with_name(f"{local.name}.tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        wanted = [i for i in _own_entries(fs, root) if entries is None or i.base_name in entries]
        _copy(wanted, fs, pafs.LocalFileSystem(), str(tmp))
        (tmp / marker).write_bytes(remote_marker)  # the marker read above, so the copy never claims a newer one
        shutil.rmtree(local, ignore_errors=True)
        os.replace(tmp, local)
    return local
