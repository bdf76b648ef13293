"""Long-document test data from Debian's ``manpages`` / ``manpages-dev`` (installed under /usr/share/man).

Each page becomes ``id`` (e.g. ``open.2``), ``query`` (the NAME line's description, e.g. "open and possibly
create a file") and ``text`` (the rendered page without its NAME section). Pages are rendered with groff,
read at run time from the installed packages; nothing is downloaded or shipped.

License: the Linux man-pages are distributed under several free licenses (mostly "verbatim" and GPL
variants); see ``/usr/share/doc/manpages/copyright`` and ``/usr/share/doc/manpages-dev/copyright``.

Run ``python -m fastemb.data.manpages --section 2 --limit 50 --out pages.parquet`` to write a parquet.
"""
from __future__ import annotations

import argparse
import gzip
import re
import subprocess
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

MAN_ROOT = Path("/usr/share/man")


def render(page: Path) -> str:
    """A man page file (.gz or plain) as plain text."""
    raw = gzip.decompress(page.read_bytes()) if page.suffix == ".gz" else page.read_bytes()
    out = subprocess.run(["groff", "-t", "-man", "-Tutf8", "-P-cbou"], input=raw, capture_output=True,
                         env={"MANWIDTH": "100", "PATH": "/usr/bin:/bin"}, timeout=60)
    return out.stdout.decode("utf-8", "replace")


def split_name(text: str) -> tuple[str, str] | None:
    """(NAME description, rest of the page), or None when the page has no 'name - description' line."""
    m = re.search(r"^NAME\n(.+?)\n\n?(?=^[A-Z][A-Z ]+\n)", text, flags=re.M | re.S)
    if not m:
        return None
    name_line = " ".join(m.group(1).split())
    if " - " not in name_line:
        return None
    desc = name_line.split(" - ", 1)[1].strip()
    body = (text[: m.start()] + text[m.end():]).strip()
    body = re.sub(r"^\S+\(\w+\) .*\S+\(\w+\)\s*$", "", body, flags=re.M)  # running header/footer
    body = re.sub(r"\n\n+\S[^\n]*\(\w+\)\s*$", "", body)  # the last footer ("Linux man-pages 6.03 ... ls(1)")
    body = re.sub(r"[ \t]+", " ", body)
    return (desc, body) if desc and body else None


def load_manpages(section: str = "2", limit: int | None = 50, min_chars: int = 2000) -> pa.Table:
    """Pages of one section that have a description and at least ``min_chars`` characters of body."""
    rows = {"id": [], "query": [], "text": []}
    seen_desc: set[str] = set()
    for page in sorted((MAN_ROOT / f"man{section}").glob("*")):
        if page.is_symlink() or page.stat().st_size < 600:  # .so redirects and links
            continue
        parts = split_name(render(page))
        if not parts or len(parts[1]) < min_chars or parts[0] in seen_desc:
            continue
        seen_desc.add(parts[0])
        rows["id"].append(page.name.removesuffix(".gz"))
        rows["query"].append(parts[0])
        rows["text"].append(parts[1])
        if limit and len(rows["id"]) >= limit:
            break
    return pa.table(rows)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--section", default="2")
    ap.add_argument("--limit", type=int, default=50)
    ap.add_argument("--out", required=True)
    a = ap.parse_args()
    pq.write_table(load_manpages(a.section, a.limit), a.out)


if __name__ == "__main__":
    main()
