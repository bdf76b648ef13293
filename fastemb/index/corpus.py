"""Corpus input: list the parquet files (local path or pyarrow/fsspec URI), check each one, find duplicate
ids, validate texts, and group files into *units* (the granularity at which embedding shards are reused)."""
from __future__ import annotations

import hashlib
import json
from collections import Counter
from dataclasses import dataclass, field

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from fastemb.data.pairs import WORDNET_DIR, DataError
from fastemb.data.text import bad_text_reason

SKIP_UNREADABLE = "unreadable file"
SKIP_DUPLICATE = "duplicate id"
SKIP_NULL_ID = "null id"
SKIP_NON_UTF8 = "non-UTF-8 text"


def resolve_corpus(path: str) -> tuple[pafs.FileSystem, list[str]]:
    """``wordnet`` → the shipped definitions; else a file, folder (recursive ``*.parquet``) or URI."""
    if path == "wordnet":
        path = str(WORDNET_DIR / "all_definitions.parquet")
    elif path.startswith("wordnet:"):
        path = str(WORDNET_DIR / f"{path.split(':', 1)[1]}_corpus.parquet")
    fs, root = pafs.FileSystem.from_uri(path) if "://" in path else (pafs.LocalFileSystem(), path)
    info = fs.get_file_info(root)
    if info.type == pafs.FileType.NotFound:
        raise DataError(f"corpus {path}: no such file or folder")
    if info.type == pafs.FileType.File:
        return fs, [root]
    files = sorted(f.path for f in fs.get_file_info(pafs.FileSelector(root, recursive=True))
                   if f.type == pafs.FileType.File and f.path.endswith(".parquet"))
    if not files:
        raise DataError(f"corpus {path}: folder holds no .parquet files")
    return fs, files


@dataclass
class CorpusScan:
    """What the pre-pass found: readable files with their row counts, unreadable files, duplicate ids."""
    fs: pafs.FileSystem
    files: list[str]
    rows: list[int]
    fingerprints: list[str]
    unreadable: dict[str, str] = field(default_factory=dict)
    duplicate_ids: set[str] = field(default_factory=set)
    id_occurrences: int = 0

    @property
    def total_rows(self) -> int:
        return sum(self.rows)


def scan_corpus(path: str, id_column: str = "id", text_column: str = "text", on_bad_file: str = "skip",
                limit_files: int | None = None) -> CorpusScan:
    """Read every file's footer and id column (never the texts) in the driver, one file at a time."""
    fs, files = resolve_corpus(path)
    scan = CorpusScan(fs, [], [], [])
    seen: set[str] = set()
    for f in files[:limit_files]:
        try:
            with fs.open_input_file(f) as fh:
                pf = pq.ParquetFile(fh)
                names = pf.schema_arrow.names
                missing = [c for c in (id_column, text_column) if c not in names]
                if missing:
                    raise DataError(f"{f}: missing column(s) {missing}; found {names}")
                ids = pf.read(columns=[id_column]).column(id_column)
        except DataError:
            raise
        except (OSError, pa.ArrowException) as err:
            if on_bad_file == "fail":
                raise DataError(f"corpus file {f} is unreadable: {err}") from None
            scan.unreadable[f] = str(err).splitlines()[0][:200]
            continue
        ids = pc.cast(ids, pa.string())
        for value in ids.drop_null().to_pylist():
            if value in seen:
                scan.duplicate_ids.add(value)
            seen.add(value)
        st = fs.get_file_info(f)
        scan.files.append(f)
        scan.rows.append(len(ids))
        scan.fingerprints.append(f"{f}:{st.size}:{st.mtime_ns}")
    if not scan.files:
        raise DataError(f"corpus {path}: no readable parquet file ({len(scan.unreadable)} unreadable)")
    return scan


def plan_units(scan: CorpusScan, rows_per_unit: int, salt: str) -> list[dict]:
    """Group consecutive files into units of about ``rows_per_unit`` rows; each unit gets a content key."""
    units, cur, n = [], [], 0
    for i, rows in enumerate(scan.rows):
        cur.append(i)
        n += rows
        if n >= rows_per_unit:
            units.append(cur)
            cur, n = [], 0
    if cur:
        units.append(cur)
    out = []
    for u, idx in enumerate(units):
        key = hashlib.sha1(json.dumps([salt] + [scan.fingerprints[i] for i in idx]).encode()).hexdigest()[:16]
        out.append({"unit": u, "key": key, "files": [scan.files[i] for i in idx],
                    "rows": sum(scan.rows[i] for i in idx)})
    return out


def clean_texts(ids: pa.Array, texts: pa.Array) -> tuple[list[str | None], list[str | None], list[str | None]]:
    """(ids, texts, skip reasons) for one batch: null ids, null/empty/non-UTF-8 texts get a reason."""
    id_list = pc.cast(ids, pa.string()).to_pylist()
    if pa.types.is_string(texts.type) or pa.types.is_large_string(texts.type):
        texts = texts.view(pa.binary() if pa.types.is_string(texts.type) else pa.large_binary())
    raw = texts.to_pylist()
    out_texts, reasons = [], []
    for i, value in zip(id_list, raw):
        reason, text = None, None
        if isinstance(value, (bytes, bytearray)):
            try:
                text = value.decode("utf-8")
            except UnicodeDecodeError:
                reason = SKIP_NON_UTF8
        else:
            text = value
        reason = reason or (SKIP_NULL_ID if i is None else bad_text_reason(text))
        out_texts.append(None if reason else text)
        reasons.append(reason)
    return id_list, out_texts, reasons


def count_reasons(reasons: list[str | None]) -> Counter:
    return Counter(r for r in reasons if r)
