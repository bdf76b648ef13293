"""Run outputs on a local/shared path or in an object store (any pyarrow filesystem URI: ``s3://``, ``gs://``, ...).

A job whose ``storage_path`` is a URI works in a local staging folder (``run_dir``) that mirrors
``{storage_path}/{name}``: :func:`pull` fetches the job's own files before it starts (cached base metrics, teacher
outputs, an earlier report), :func:`push` uploads them when it ends. Ray Train writes its checkpoints straight to the
URI (:func:`ray_storage`), so every node reads and writes them there and a rerun resumes from them.
Query parameters of the URI configure the filesystem, e.g.
``s3://bucket/runs?endpoint_override=minio:9000&scheme=http`` (pyarrow's ``FileSystem.from_uri``).
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pyarrow.fs as pafs

# Ray Train's own entries in a run folder: they stay in the store (Ray reads them there), never staged locally.
RAY_ENTRIES = ("checkpoint_", ".validate_storage_marker", "checkpoint_manager_snapshot", "train_run_state")


def is_uri(path: str) -> bool:
    return "://" in path


def split_uri(uri: str) -> tuple[pafs.FileSystem, str]:
    """(filesystem, path inside it) for a URI, with the URI's query parameters applied."""
    fs, path = pafs.FileSystem.from_uri(uri)
    return fs, path.rstrip("/")


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


def _own_entries(fs: pafs.FileSystem, root: str) -> list[pafs.FileInfo]:
    """The run folder's top-level entries that fastemb wrote (Ray's checkpoints excluded)."""
    try:
        infos = fs.get_file_info(pafs.FileSelector(root, allow_not_found=True))
    except (FileNotFoundError, OSError):
        return []
    return [i for i in infos if not i.base_name.startswith(RAY_ENTRIES)]


def _copy(entries: list[pafs.FileInfo], src_fs: pafs.FileSystem, dst_fs: pafs.FileSystem, dst_root: str) -> int:
    for info in entries:  # a file or a whole folder
        pafs.copy_files(info.path, f"{dst_root}/{info.base_name}", source_filesystem=src_fs,
                        destination_filesystem=dst_fs)
    return len(entries)


def pull(storage_path: str, name: str, local: Path) -> int:
    """Fetch the job's own files from ``{storage_path}/{name}`` into ``local``; returns the entries fetched."""
    local.mkdir(parents=True, exist_ok=True)
    fs, root = remote_run_dir(storage_path, name)
    return _copy(_own_entries(fs, root), fs, pafs.LocalFileSystem(), str(local.resolve()))


def push(local: Path, storage_path: str, name: str) -> int:
    """Upload everything in ``local`` to ``{storage_path}/{name}`` (files replaced, Ray's entries untouched)."""
    fs, root = remote_run_dir(storage_path, name)
    fs.create_dir(root, recursive=True)
    lfs = pafs.LocalFileSystem()
    return _copy(_own_entries(lfs, str(local.resolve())), lfs, fs, root)
