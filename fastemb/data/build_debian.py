"""Build fastemb's general-domain evaluation set from Debian's package descriptions.

Task: *one-line description → long description*. Every Debian package has a synopsis ("GNU Bourne Again SHell")
and a long description (what it is, for whom, what it does); the synopsis is the query and its package's long
description the one relevant text among other packages' long descriptions. The texts were written by Debian's
maintainers and upstream authors about everything software touches (science, games, languages, hardware, fonts,
medicine, ...): nobody here wrote them, and they are not the WordNet task the demo trains on, so a model that
forgets general English shows it here.

Selection (the same lists give the same set): the packages of one suite's ``main`` component whose English long
description has 300–2,000 characters; one package per source package (the one named like the source, else the
shortest name), so no two texts are the same upstream blurb; synopses shared by several sources are dropped (a
query has one answer), and so are long descriptions whose first 200 characters repeat another's. Sources are
shuffled with a fixed seed and split: test 1,000 queries against 2,000 texts, dev 300 against 600; the other texts
of a split are descriptions of sources used nowhere else (queries are cheap to embed, long texts are not: many
queries keep the figures steady, a small corpus keeps an evaluation short).

License: each description is part of its package's Debian packaging and is distributed under that package's license
(every package in Debian main meets the Debian Free Software Guidelines, which allow redistribution); every row keeps
its ``package``, ``source`` and ``version``, so its copyright file can be looked up. The notice written beside the
set is ``LICENSE-Debian-descriptions.txt``.

Run (as root; the lists go to a folder of their own, the system's apt state is left alone)::

    apt-get update -o Acquire::Languages=en -o Dir::State::Lists=/tmp/apt-en
    python -m fastemb.data.build_debian --lists /tmp/apt-en [--suite bookworm] [--out DIR]

``--status /var/lib/dpkg/status`` builds from the installed packages instead (dpkg keeps their long descriptions).
"""
from __future__ import annotations

import argparse
import bz2
import gzip
import lzma
import random
import re
import subprocess
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterable, Iterator

import pyarrow as pa
import pyarrow.parquet as pq

DEFAULT_OUT = Path(__file__).resolve().parent.parent / "datasets" / "debian-descriptions"
NOTICE = "LICENSE-Debian-descriptions.txt"
SIZES = {"test": (1000, 2000), "dev": (300, 600)}  # split → (queries, corpus texts)
APT_HELPER = "/usr/lib/apt/apt-helper"
_OPENERS = {".gz": gzip.decompress, ".xz": lzma.decompress, ".bz2": bz2.decompress}


@dataclass(frozen=True)
class Description:
    """One binary package's description."""
    package: str
    source: str
    version: str
    section: str
    synopsis: str
    text: str


def read_index(path: Path) -> str:
    """An apt index file as text, decompressed (``.lz4`` and ``.zst`` through apt's own ``apt-helper cat-file``)."""
    raw = path.read_bytes()
    if path.suffix in _OPENERS:
        raw = _OPENERS[path.suffix](raw)
    elif path.suffix in (".lz4", ".zst"):
        raw = subprocess.run([APT_HELPER, "cat-file", str(path)], capture_output=True, check=True).stdout
    return raw.decode("utf-8", "replace")


def stanzas(text: str) -> Iterator[dict[str, str]]:
    """The paragraphs of a Debian control-format file as {field: value}; continuation lines stay in the value
    (each after a newline, with its leading space)."""
    for block in re.split(r"\n\s*\n", text):
        fields: dict[str, str] = {}
        key = None
        for line in block.splitlines():
            if line[:1] in (" ", "\t") and key:
                fields[key] += "\n" + line
            elif ":" in line:
                key, _, value = line.partition(":")
                fields[key] = value.strip()
        if fields:
            yield fields


def split_description(value: str) -> tuple[str, str]:
    """(synopsis, long description as plain text) of a ``Description`` value: a line holding only ``.`` separates
    paragraphs; lines indented further (lists, verbatim) keep their own line."""
    first, _, rest = value.partition("\n")
    paragraphs, lines = [], []
    for line in rest.splitlines():
        body = line[1:] if line.startswith(" ") else line
        if body.strip() == ".":
            paragraphs.append(lines)
            lines = []
        elif body.startswith(" ") and lines:
            lines.append("\n" + body.strip())
        else:
            lines.append(body.strip())
    paragraphs.append(lines)
    text = "\n".join(re.sub(r" ?\n", "\n", " ".join(p)).strip() for p in paragraphs if p)
    return first.strip(), re.sub(r"[ \t]+", " ", text).strip()


def _description(fields: dict[str, str], value: str) -> Description:
    synopsis, text = split_description(value)
    name = fields["Package"]
    return Description(name, fields.get("Source", name).split()[0], fields.get("Version", ""),
                       fields.get("Section", ""), synopsis, text)


def read_lists(lists_dir: Path, suite: str) -> list[Description]:
    """The packages of ``{suite}/main`` in an apt lists folder fetched with ``Acquire::Languages=en`` (``Packages``
    gives the package, ``Translation-en`` its long description, joined on ``Description-md5``)."""
    def one(pattern: str) -> Path:
        found = sorted(lists_dir.glob(pattern))
        if not found:
            raise FileNotFoundError(f"{lists_dir}: no {pattern}; run apt-get update -o Acquire::Languages=en "
                                    f"-o Dir::State::Lists={lists_dir}")
        return found[0]

    packages = one(f"*_dists_{suite}_main_binary-*_Packages*")
    translations = one(f"*_dists_{suite}_main_i18n_Translation-en*")
    long = {(f["Package"], f["Description-md5"]): f["Description-en"] for f in stanzas(read_index(translations))
            if "Description-en" in f}
    return [_description(f, long[f["Package"], f["Description-md5"]]) for f in stanzas(read_index(packages))
            if (f.get("Package"), f.get("Description-md5")) in long]


def read_status(path: Path) -> list[Description]:
    """The installed packages of a dpkg status file (their ``Description`` holds the long description)."""
    return [_description(f, f["Description"]) for f in stanzas(path.read_text("utf-8", "replace"))
            if "Description" in f and "installed" in f.get("Status", "installed").split()]


def select(descriptions: Iterable[Description], min_chars: int = 300, max_chars: int = 2000) -> list[Description]:
    """One description per source package, with a long description of ``min_chars``–``max_chars`` characters and a
    synopsis and opening that no other kept source shares (the module docstring's rules); sorted by source."""
    by_source: dict[str, Description] = {}
    for d in descriptions:
        if not min_chars <= len(d.text) <= max_chars or len(d.synopsis.split()) < 2:
            continue
        kept = by_source.get(d.source)
        rank = (d.package != d.source, len(d.package), d.package)
        if kept is None or rank < (kept.package != kept.source, len(kept.package), kept.package):
            by_source[d.source] = d
    chosen = [by_source[s] for s in sorted(by_source)]
    synopses, openings = _counts(d.synopsis.lower() for d in chosen), _counts(d.text[:200] for d in chosen)
    return [d for d in chosen if synopses[d.synopsis.lower()] == 1 and openings[d.text[:200]] == 1]


def _counts(values: Iterable[str]) -> dict[str, int]:
    out: dict[str, int] = {}
    for v in values:
        out[v] = out.get(v, 0) + 1
    return out


def split_sets(chosen: list[Description], sizes: dict[str, tuple[int, int]] = SIZES,
               seed: int = 15) -> dict[str, tuple[list[Description], list[Description]]]:
    """Per split: (the descriptions whose synopses are its queries, its corpus: those plus others). Every source is
    used in one split only."""
    order = list(chosen)
    random.Random(seed).shuffle(order)
    needed = sum(n for _, n in sizes.values())
    if len(order) < needed:
        raise ValueError(f"{len(order)} usable descriptions; the splits {sizes} need {needed}")
    out, start = {}, 0
    for split, (n_queries, n_corpus) in sizes.items():
        corpus = order[start:start + n_corpus]
        out[split] = (corpus[:n_queries], sorted(corpus, key=lambda d: d.package))
        start += n_corpus
    return out


def write_set(sets: dict[str, tuple[list[Description], list[Description]]], out: Path, origin: str) -> None:
    """``{split}_queries.parquet`` (id, text, relevant_ids, package) and ``{split}_corpus.parquet`` (id, text,
    package, source, version, section), plus the license notice."""
    out.mkdir(parents=True, exist_ok=True)
    for split, (queries, corpus) in sets.items():
        pq.write_table(pa.table({"id": [f"q-{d.package}" for d in queries], "text": [d.synopsis for d in queries],
                                 "relevant_ids": [[d.package] for d in queries],
                                 "package": [d.package for d in queries]}), out / f"{split}_queries.parquet")
        rows = [asdict(d) for d in corpus]
        pq.write_table(pa.table({"id": [r["package"] for r in rows], "text": [r["text"] for r in rows],
                                 **{k: [r[k] for r in rows] for k in ("package", "source", "version", "section")}}),
                       out / f"{split}_corpus.parquet", compression="zstd")
    counts = ", ".join(f"{s}: {len(q)} queries against {len(c)} texts" for s, (q, c) in sets.items())
    (out / NOTICE).write_text(NOTICE_TEXT.format(origin=origin, counts=counts))


NOTICE_TEXT = """\
Debian package descriptions: fastemb's general-domain evaluation set
=====================================================================

Built by fastemb/data/build_debian.py from {origin}.
Splits: {counts}.

Each query is a Debian binary package's one-line description (its synopsis) and each text a package's long
description, exactly as the package's control file ships them (paragraph breaks kept, whitespace collapsed).

Copyright and license: the descriptions were written by the maintainers of the Debian packages and the authors of
the software they describe. Each description is part of its package's Debian packaging and is distributed under the
license of that package, as stated in its copyright file: /usr/share/doc/<package>/copyright on a Debian system, or
https://sources.debian.org/src/<source>/<version>/debian/copyright (the package, source and version of every text
are the columns of the same names in the *_corpus.parquet files; queries name their package in the same way).
Every package comes from Debian's "main" archive area, all of which is licensed under terms that meet the Debian
Free Software Guidelines (https://www.debian.org/social_contract#guidelines): they allow these texts to be copied
and redistributed, modified or not. Debian is a registered trademark of Software in the Public Interest, Inc.; this
set is not made or endorsed by the Debian project.

The descriptions are provided as is, without warranty of any kind.
"""


def lists_origin(lists_dir: Path, suite: str) -> str:
    """Where an apt lists folder's texts come from, with the date of its suite's InRelease when it has one."""
    release = next(iter(sorted(lists_dir.glob(f"*_dists_{suite}_InRelease"))), None)
    date = re.search(r"^Date: (.+)$", release.read_text("utf-8", "replace"), re.M) if release else None
    return f"Debian {suite} main (Packages and Translation-en{f' of {date.group(1)}' if date else ''})"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--lists", type=Path, help="apt lists folder fetched with Acquire::Languages=en")
    src.add_argument("--status", type=Path, help="a dpkg status file (installed packages)")
    ap.add_argument("--suite", default="bookworm")
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    ap.add_argument("--seed", type=int, default=15)
    a = ap.parse_args()
    if a.lists:
        origin, chosen = lists_origin(a.lists, a.suite), select(read_lists(a.lists, a.suite))
    else:
        origin, chosen = f"the installed packages of {a.status}", select(read_status(a.status))
    write_set(split_sets(chosen, seed=a.seed), a.out, origin)
    print(f"{len(chosen)} usable descriptions; set written to {a.out}")


if __name__ == "__main__":
    main()
