"""Build a long-document retrieval set from Debian's man pages: *NAME summary → the rest of the page*.

Each page is rendered with groff (fastemb/data/manpages.py). The query is the NAME line's summary ("list directory
contents"), the document is the page without its NAME section (SYNOPSIS, DESCRIPTION, OPTIONS, ... : hundreds to
tens of thousands of tokens, most longer than a small encoder's window). The pages were written by the Linux
man-pages project and the authors of the documented programs: nobody here wrote them.

Pages: by default every page of the Debian packages ``manpages`` and ``manpages-dev`` in every section they install
(1, 2, 3, 4, 5, 6, 7, 8: about 1,000 pages; these two packages are installed by CI too, so the same packages give the
same set on any machine); ``--all-installed`` takes every page under /usr/share/man instead (depends on the machine).

Bad input is counted by reason, never a crash: a redirect (``.so``) or link, a page groff cannot render, a page with
no ``name - summary`` line, an empty document, a summary shared with an earlier page (a query must have one answer),
a document identical to an earlier one.

Split by page: a page's name without its section (``printf`` of printf.1 and printf.3) is hashed into train, dev or
test, so no page, nor a same-named page of another section, is in two splits.

Writes to ``--out``:

- ``train.parquet``: the long-document training format (fastemb/data/long_docs.py): ``id``, ``query``, ``document``;
- ``{dev,test}_queries.parquet`` (``id``, ``text``, ``relevant_ids``) and ``{dev,test}_corpus.parquet`` (``id``,
  ``text``): the evaluation-set format (fastemb/data/eval_sets.py), a split's queries against its pages;
- ``report.json``: pages read, kept and skipped by reason, rows per split, and the length distribution of the
  documents and queries in tokens of ``--tokenizer`` (percentiles; how many exceed 128, 256 and 512 tokens);
- ``LICENSE-manpages.txt``: the notice.

License: the Linux man-pages are distributed under several free licenses (mostly "verbatim" and GPL variants), see
``/usr/share/doc/manpages/copyright`` and ``/usr/share/doc/manpages-dev/copyright``; every row keeps its page id.

Run::

    python -m fastemb.data.build_manpages --out DIR [--all-installed] [--limit N]
"""
from __future__ import annotations

import argparse
import hashlib
import json
import logging
import re
import subprocess
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from fastemb.data.manpages import MAN_ROOT, render, split_name

logger = logging.getLogger(__name__)
PACKAGES = ("manpages", "manpages-dev")
SPLITS = (("train", 0.6), ("dev", 0.15), ("test", 0.25))  # fraction of page names per split
NOTICE = "LICENSE-manpages.txt"
LENGTH_MARKS = (128, 256, 512)


def package_pages(packages: tuple[str, ...] = PACKAGES) -> list[Path]:
    """The man page files the Debian ``packages`` install (every section), sorted."""
    out = subprocess.run(["dpkg", "-L", *packages], capture_output=True, text=True, check=False).stdout
    return sorted({Path(line) for line in out.splitlines()
                   if line.startswith(f"{MAN_ROOT}/man") and Path(line).parent.name[3:].isdigit()})


def installed_pages() -> list[Path]:
    """Every man page file under /usr/share/man/man<N>/, sorted."""
    return sorted(p for d in MAN_ROOT.glob("man[0-9]*") for p in d.iterdir())


def page_id(path: Path) -> str:
    """``ls.1`` of ``/usr/share/man/man1/ls.1.gz``."""
    return path.name.removesuffix(".gz")


def split_of(pid: str) -> str:
    """The split of a page: its name without the section, hashed (same-named pages of two sections stay together)."""
    name = pid.rsplit(".", 1)[0]
    x = int(hashlib.sha1(name.encode()).hexdigest()[:8], 16) / 16 ** 8
    edge = 0.0
    for split, fraction in SPLITS:
        edge += fraction
        if x < edge:
            return split
    return SPLITS[-1][0]


def _read(path: Path) -> tuple[Path, str | None, str]:
    """(path, rendered text or None, why not)."""
    if path.is_symlink() or not path.is_file():
        return path, None, "link"
    try:
        head = path.read_bytes()[:2000]
        if path.suffix == ".gz":
            import gzip
            import zlib

            try:
                head = gzip.decompress(path.read_bytes())[:2000]
            except (OSError, EOFError, zlib.error):
                return path, None, "unreadable file"
        if head.lstrip().startswith(b".so "):
            return path, None, "redirect (.so)"
        text = render(path)
    except (OSError, subprocess.SubprocessError) as err:
        logger.debug(f"{path}: {err}")
        return path, None, "groff failed"
    return path, text, "" if text.strip() else "groff output empty"


def _rendered(pages: list[Path], workers: int, batch: int = 32):
    """``_read`` of each page in order, ``workers`` groff processes at a time, a batch at a time (a limited build
    stops early)."""
    with ThreadPoolExecutor(workers) as pool:
        for start in range(0, len(pages), batch):
            yield from pool.map(_read, pages[start:start + batch])


def build(pages: list[Path], out: Path, tokenizer=None, workers: int = 2, limit: int | None = None) -> dict:
    """Render ``pages``, keep the usable ones, split by page and write the set to ``out``; returns the report."""
    out.mkdir(parents=True, exist_ok=True)
    skipped: Counter = Counter()
    rows: dict[str, list[dict]] = {split: [] for split, _ in SPLITS}
    seen_query: set[str] = set()
    seen_doc: set[str] = set()
    kept = 0
    for path, text, why in _rendered(pages, workers):
        if limit and kept >= limit:
            break
        if text is None or why:
            skipped[why] += 1
            continue
        parts = split_name(text)
        if parts is None:  # a summary line with nothing after the NAME section is an empty document
            empty = re.search(r"^NAME\n.+ - .+", text, flags=re.M) is not None
            skipped["empty document" if empty else "no 'name - summary' line"] += 1
            continue
        query, document = parts
        digest = hashlib.sha1(document.encode()).hexdigest()
        if query.lower() in seen_query:
            skipped["summary shared with an earlier page"] += 1
        elif digest in seen_doc:
            skipped["document identical to an earlier page's"] += 1
        else:
            seen_query.add(query.lower())
            seen_doc.add(digest)
            pid = page_id(path)
            rows[split_of(pid)].append({"id": pid, "query": query, "document": document,
                                        "section": path.parent.name[3:]})
            kept += 1
    pq.write_table(pa.Table.from_pylist(rows["train"], schema=_schema()), out / "train.parquet")
    for split in ("dev", "test"):
        pq.write_table(pa.table({"id": [r["id"] for r in rows[split]], "text": [r["query"] for r in rows[split]],
                                 "relevant_ids": [[r["id"]] for r in rows[split]]}), out / f"{split}_queries.parquet")
        pq.write_table(pa.table({"id": [r["id"] for r in rows[split]], "text": [r["document"] for r in rows[split]]}),
                       out / f"{split}_corpus.parquet")
    (out / NOTICE).write_text(__doc__.split("License: ", 1)[1].split("\n\n", 1)[0] + "\n")
    report = {"pages": len(pages), "kept": kept, "skipped": dict(skipped),
              "rows": {split: len(r) for split, r in rows.items()},
              "sections": dict(sorted(Counter(r["section"] for rs in rows.values() for r in rs).items()))}
    if tokenizer is not None:
        report["tokens"] = {split: {"documents": length_stats(tokenizer, [r["document"] for r in rs]),
                                    "queries": length_stats(tokenizer, [r["query"] for r in rs])}
                            for split, rs in rows.items() if rs}
    (out / "report.json").write_text(json.dumps(report, indent=1))
    return report


def _schema() -> pa.Schema:
    return pa.schema([("id", pa.string()), ("query", pa.string()), ("document", pa.string()), ("section", pa.string())])


def length_stats(tokenizer, texts: list[str]) -> dict:
    """Token counts (without special tokens) of ``texts``: percentiles, mean, and how many exceed 128/256/512."""
    n = np.asarray([len(ids) for ids in tokenizer(texts, add_special_tokens=False, truncation=False,
                                                  verbose=False)["input_ids"]])
    pct = {f"p{p}": int(np.percentile(n, p)) for p in (10, 25, 50, 75, 90, 99)}
    return {"count": len(n), "min": int(n.min()), **pct, "max": int(n.max()), "mean": round(float(n.mean()), 1),
            **{f"over_{m}": int((n > m).sum()) for m in LENGTH_MARKS}}


def main() -> None:
    from transformers import AutoTokenizer

    from fastemb.logs import configure
    from fastemb.model.encoder import resolve_model_path

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--all-installed", action="store_true", help="every page under /usr/share/man, not only the "
                    f"pages of {' and '.join(PACKAGES)}")
    ap.add_argument("--limit", type=int, default=None, help="stop after this many usable pages")
    ap.add_argument("--tokenizer", default="all-MiniLM-L6-v2", help="model alias or folder for the token counts")
    ap.add_argument("--workers", type=int, default=2, help="groff processes at a time")
    a = ap.parse_args()
    configure()
    pages = installed_pages() if a.all_installed else package_pages()
    tok = AutoTokenizer.from_pretrained(resolve_model_path(a.tokenizer), local_files_only=True)
    report = build(pages, Path(a.out), tok, a.workers, a.limit)
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
