"""Build a multi-view item catalog from Debian's package lists (issue 19, part 2: multi-view items).

Items: one Debian source package each (its binary package named like the source, else the shortest name, as
fastemb/data/build_debian.py picks), with four views written by Debian's maintainers and upstream authors, nobody
here:

============== =============================================================================================
view           text
============== =============================================================================================
``attributes`` ``package: <name>; section: <section>; priority: <priority>``
``title``      the one-line description (the synopsis)
``description`` the long description (paragraph breaks kept, whitespace collapsed); empty for packages without
               one (a real empty view: the loader and the loss count and mask it)
``tags``       the package's debtags, ``facet: value, value; facet: value`` (``::TODO`` tags dropped); about
               half of Debian's packages have none, and the dpkg status file never has them
============== =============================================================================================

Queries (the choice, and its weaknesses): what a user types in a catalog's search box is a few keywords, so each
item's query is **keywords of its synopsis, paraphrased with WordNet synonyms**: the synopsis's words without stop
words and without the package's own name, each replaced by a WordNet synonym where that is safe (the word is a lemma
of exactly one synset of fastemb's shipped WordNet data, fastemb/datasets/wordnet, so no sense is guessed, and the
synset has another single-word lemma: the first that differs), then a seeded sample of 60 % of them (at least 2, all
of a shorter synopsis) in their order. Weaknesses, stated:

- the query is derived from the title view: it shares most of its words with the title, so the title view carries
  most of the signal and a bag-of-words match does well; the report counts queries equal to their title
  (``queries_equal_title``) and those no synonym changed (``queries_without_synonym``);
- WordNet knows little of software's words ("library", "shell" have several senses and are never replaced; "GNU",
  "X11" are not in it), so the replaced words are mostly everyday ones, and a replacement can read oddly
  ("real-time scheme game"); a user would rather type a need ("run shell scripts") than words of a synopsis;
- one query per item, with one relevant item: other items that would also satisfy it count as misses.

**Leak avoided**: fastemb's general-domain evaluation set (``fastemb/datasets/debian-descriptions``: package
synopsis → long description, scored in every train report) is built from the same Debian lists. Every source package
used in it (any split, its corpus holds every query's package) is excluded here, so no text of that set is trained on
by a multi-view job. The two sets remain close in domain (Debian packages described by their maintainers): a model
trained on this catalog is expected to gain on the general set too, which then says less about forgetting.

Selection: binary packages whose synopsis has at least two words, one per source; items whose synopsis another kept
source shares are dropped (the query would have two answers). Sources are shuffled with a fixed seed and split:
test ``--test`` items, dev ``--dev`` items, train the rest (``--max-train`` at most). Every source is in one split
only. Drops are counted by reason in ``report.json``.

Output (a folder):

- ``train.parquet``: the multi-view training format (fastemb/data/multi_view.py): ``id``, ``query``, ``views``
  (a struct of the four views, null where empty), ``package``, ``source``, ``version``, ``section``;
- ``train_concat.parquet``: the same items as one concatenated text field, pairs format (``query``, ``positive``):
  the single-field baseline of bench/multi_view.py (the same text as the loader's ``positive``);
- ``{dev,test}_queries.parquet`` (``id``, ``text``, ``relevant_ids``, ``package``) and ``{dev,test}_corpus.parquet``
  (``id``, ``text``: the views concatenated, one column per view, ``package``, ``source``, ``version``, ``section``):
  an evaluation set (fastemb/data/eval_sets.py) whose corpus also has the views (fastemb/eval/multi_view.py);
- ``report.json`` (counts per split, drops by reason, views present) and ``LICENSE-Debian-catalog.txt``.

Run (as root; the lists go to a folder of their own, the system's apt state is left alone)::

    apt-get update -o Acquire::Languages=en -o Dir::State::Lists=/tmp/apt-en
    python -m fastemb.data.build_catalog --lists /tmp/apt-en [--suite bookworm] --out data/catalog

``--status /var/lib/dpkg/status`` builds from the installed packages instead (their long descriptions are there;
their tags are not).
"""
from __future__ import annotations

import argparse
import json
import random
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import pyarrow as pa
import pyarrow.parquet as pq

from fastemb.data.build_debian import (DEFAULT_OUT as GENERAL_SET, lists_origin, read_index, split_description,
                                      stanzas)
from fastemb.data.multi_view import item_text
from fastemb.data.pairs import WORDNET_DIR

VIEWS = ("attributes", "title", "description", "tags")
NOTICE = "LICENSE-Debian-catalog.txt"
STOP = set("a an and are as at be by for from in into is it its of on or the to with without your you this that "
           "these those than then via per not no all any each other more most some such can will".split())


@dataclass(frozen=True)
class Item:
    package: str
    source: str
    version: str
    section: str
    priority: str
    synopsis: str
    text: str
    tags: str

    def views(self) -> dict[str, str | None]:
        attributes = f"package: {self.package}; section: {self.section or 'unknown'}" + (
            f"; priority: {self.priority}" if self.priority else "")
        return {"attributes": attributes, "title": self.synopsis, "description": self.text or None,
                "tags": self.tags or None}


def tags_text(value: str) -> str:
    """Debtags ``a::b, a::c, d::e`` as ``a: b, c; d: e`` (``::TODO`` tags and ``{...}`` groups expanded)."""
    facets: dict[str, list[str]] = {}
    for tag in re.findall(r"[^,{]+(?:\{[^}]*\})?", value.replace("\n", " ")):
        tag = tag.strip()
        m = re.fullmatch(r"([\w+-]+)::\{([^}]*)\}", tag)
        parts = [(m.group(1), v) for v in m.group(2).split(",")] if m else [tuple(tag.split("::", 1))]
        for part in parts:
            if len(part) != 2 or part[1].strip() in ("", "TODO"):
                continue
            facets.setdefault(part[0].strip(), []).append(part[1].strip().replace("-", " "))
    return "; ".join(f"{f.replace('-', ' ')}: {', '.join(v)}" for f, v in facets.items())


def _item(fields: dict[str, str], description: str) -> Item:
    synopsis, text = split_description(description)
    name = fields["Package"]
    return Item(name, fields.get("Source", name).split()[0], fields.get("Version", ""), fields.get("Section", ""),
                fields.get("Priority", ""), synopsis, text, tags_text(fields.get("Tag", "")))


def read_lists(lists_dir: Path, suite: str, counts: Counter) -> list[Item]:
    """Binary packages of ``{suite}/main`` from ``Packages`` (attributes, synopsis, tags) and ``Translation-en``
    (long descriptions, by ``Description-md5``); a package without a translation keeps an empty description."""
    def one(pattern: str) -> Path | None:
        found = sorted(lists_dir.glob(pattern))
        return found[0] if found else None

    packages = one(f"*_dists_{suite}_main_binary-*_Packages*")
    if packages is None:
        raise FileNotFoundError(f"{lists_dir}: no Packages list of {suite}/main; run apt-get update "
                                f"-o Acquire::Languages=en -o Dir::State::Lists={lists_dir}")
    translations = one(f"*_dists_{suite}_main_i18n_Translation-en*")
    long = {} if translations is None else {
        (f["Package"], f["Description-md5"]): f["Description-en"] for f in stanzas(read_index(translations))
        if "Description-en" in f and "Description-md5" in f}
    out = []
    for f in stanzas(read_index(packages)):
        if "Package" not in f:
            counts["stanza without a Package field"] += 1
            continue
        value = long.get((f["Package"], f.get("Description-md5")))  # none: the synopsis only, an empty view
        out.append(_item(f, f.get("Description", "") if value is None else value))
    return out


def read_status(path: Path, counts: Counter) -> list[Item]:
    """The installed packages of a dpkg status file (``Description`` holds the long description; no tags)."""
    out = []
    for f in stanzas(path.read_text("utf-8", "replace")):
        if "Package" not in f or "installed" not in f.get("Status", "installed").split():
            counts["stanza not an installed package"] += 1
            continue
        out.append(_item(f, f.get("Description", "")))
    return out


def general_sources(general_dir: Path = GENERAL_SET) -> set[str]:
    """Every source package of fastemb's general-domain set (all splits; each corpus holds its queries' packages)."""
    out: set[str] = set()
    for path in sorted(general_dir.glob("*_corpus.parquet")):
        out |= set(pq.read_table(path, columns=["source"])["source"].to_pylist())
    if not out:
        raise FileNotFoundError(f"{general_dir}: no *_corpus.parquet with a source column; the general set's "
                                "sources must be known to exclude them")
    return out


def select(items: Iterable[Item], excluded: set[str], counts: Counter) -> list[Item]:
    """One item per source not in ``excluded`` (the package named like the source, else the shortest name), with a
    synopsis of at least two words that no other kept source shares; drops counted by reason in ``counts``."""
    by_source: dict[str, Item] = {}
    for it in items:
        if it.source in excluded:
            counts["source in the general evaluation set (debian-descriptions)"] += 1
            continue
        if len(it.synopsis.split()) < 2:
            counts["synopsis under two words"] += 1
            continue
        kept = by_source.get(it.source)
        rank = (it.package != it.source, len(it.package), it.package)
        if kept is None:
            by_source[it.source] = it
            continue
        counts["another binary package of a kept source"] += 1
        if rank < (kept.package != kept.source, len(kept.package), kept.package):
            by_source[it.source] = it
    chosen = [by_source[s] for s in sorted(by_source)]
    synopses = Counter(it.synopsis.lower() for it in chosen)
    out = [it for it in chosen if synopses[it.synopsis.lower()] == 1]
    counts["synopsis shared by several sources"] += len(chosen) - len(out)
    return out


def wordnet_synonyms(wordnet_dir: Path = WORDNET_DIR) -> dict[str, str]:
    """word → its replacement: for words that are a lemma of exactly one synset of fastemb's WordNet data, the first
    other single-word lemma of that synset (queries of the train split and of both evaluation splits: every synset)."""
    synsets: list[list[str]] = []
    for path, column in ((wordnet_dir / "train.parquet", "query"), (wordnet_dir / "dev_queries.parquet", "text"),
                         (wordnet_dir / "test_queries.parquet", "text")):
        if path.exists():
            synsets += [[w.strip().lower() for w in q.split(",")] for q in pq.read_table(path)[column].to_pylist()]
    senses = Counter(w for lemmas in synsets for w in set(lemmas))
    out = {}
    for lemmas in synsets:
        single = [w for w in lemmas if w.isalpha()]
        for w in single:
            if senses[w] == 1 and w not in STOP:
                other = next((x for x in single if x != w), None)
                if other:
                    out[w] = other
    return out


def paraphrase(text: str, synonyms: dict[str, str]) -> str:
    """``text`` with each word that ``synonyms`` knows replaced (case of a leading capital kept)."""
    def swap(m: re.Match) -> str:
        word = m.group(0)
        new = synonyms.get(word.lower())
        if new is None:
            return word
        return new.capitalize() if word[0].isupper() and word[1:].islower() else new
    return re.sub(r"[A-Za-z]+", swap, text)


def keyword_query(synopsis: str, package: str, synonyms: dict[str, str], rng: random.Random,
                  share: float = 0.6) -> str:
    """A user-like query from a synopsis: its words less stop words and the package's name, paraphrased
    (``paraphrase``), a ``share`` of them (at least 2) kept in order; the whole paraphrase when that leaves < 2."""
    words = [w for w in re.findall(r"[\w+./#-]+", synopsis)
             if w.lower() not in STOP and w.lower() != package.lower() and re.search(r"\w", w)]
    if len(words) < 2:
        return paraphrase(synopsis, synonyms)
    n = max(2, round(share * len(words)))
    keep = sorted(rng.sample(range(len(words)), min(n, len(words))))
    return paraphrase(" ".join(words[i] for i in keep), synonyms)


def concat_text(views: dict[str, str | None]) -> str:
    """The single-field form of an item: its present views, each on a line (fastemb.data.multi_view.item_text)."""
    return item_text({k: v for k, v in views.items() if v})


def split_items(items: list[Item], n_test: int, n_dev: int, max_train: int | None, seed: int
                ) -> dict[str, list[Item]]:
    order = list(items)
    random.Random(seed).shuffle(order)
    if len(order) < n_test + n_dev + 1:
        raise ValueError(f"{len(order)} usable items; test {n_test} + dev {n_dev} + some train need more")
    train = order[n_test + n_dev:]
    return {"train": sorted(train[:max_train] if max_train else train, key=lambda i: i.source),
            "dev": sorted(order[n_test:n_test + n_dev], key=lambda i: i.source),
            "test": sorted(order[:n_test], key=lambda i: i.source)}


def build(items: list[Item], out: Path, origin: str, n_test: int = 2000, n_dev: int = 500,
          max_train: int | None = None, seed: int = 19, counts: Counter | None = None,
          excluded: set[str] | None = None) -> dict:
    """Select, split and write the catalog; returns (and writes) the report."""
    counts = Counter() if counts is None else counts
    read = len(items)
    chosen = select(items, general_sources() if excluded is None else excluded, counts)
    splits = split_items(chosen, n_test, n_dev, max_train, seed)
    counts["beyond --max-train"] += len(chosen) - sum(map(len, splits.values()))
    synonyms = wordnet_synonyms()
    out.mkdir(parents=True, exist_ok=True)
    report = {"origin": origin, "packages_read": read, "items": {}, "dropped": {}, "views_present": {},
              "queries_equal_title": {}, "queries_without_synonym": {}}
    for split, its in splits.items():
        views = [it.views() for it in its]
        rng = random.Random(f"{seed}-{split}")
        queries = [keyword_query(it.synopsis, it.package, synonyms, rng) for it in its]
        meta = {k: [getattr(it, k) for it in its] for k in ("package", "source", "version", "section")}
        report["items"][split] = len(its)
        report["views_present"][split] = {v: sum(bool(x[v]) for x in views) for v in VIEWS}
        report["queries_equal_title"][split] = sum(q.lower() == it.synopsis.lower() for q, it in zip(queries, its))
        report["queries_without_synonym"][split] = sum(paraphrase(it.synopsis, synonyms) == it.synopsis for it in its)
        if split == "train":
            pq.write_table(pa.table({"id": meta["package"], "query": queries, "views": views, **meta}),
                           out / "train.parquet", compression="zstd")
            pq.write_table(pa.table({"query": queries, "positive": [concat_text(v) for v in views]}),
                           out / "train_concat.parquet", compression="zstd")
            continue
        pq.write_table(pa.table({"id": [f"q-{p}" for p in meta["package"]], "text": queries,
                                 "relevant_ids": [[p] for p in meta["package"]], "package": meta["package"]}),
                       out / f"{split}_queries.parquet")
        pq.write_table(pa.table({"id": meta["package"], "text": [concat_text(v) for v in views],
                                 **{v: [x[v] for x in views] for v in VIEWS}, **meta}),
                       out / f"{split}_corpus.parquet", compression="zstd")
    report["dropped"] = dict(sorted(counts.items()))
    (out / "report.json").write_text(json.dumps(report, indent=1) + "\n")
    sizes = ", ".join(f"{s}: {n} items" for s, n in report["items"].items())
    (out / NOTICE).write_text(NOTICE_TEXT.format(origin=origin, counts=sizes))
    return report


NOTICE_TEXT = """\
Debian package catalog: fastemb's multi-view item set
======================================================

Built by fastemb/data/build_catalog.py from {origin}.
Splits (by source package): {counts}. Source packages of fastemb's general-domain set (debian-descriptions) are
excluded.

Each item is a Debian binary package: its name, section and priority, its one-line description, its long
description and its debtags, as the package's control data ships them (whitespace collapsed). Each query is the
keywords of the one-line description, some replaced by WordNet synonyms (WordNet 3.0, Princeton University; see
fastemb/datasets/wordnet/LICENSE-WordNet.txt).

Copyright and license: the descriptions were written by the maintainers of the Debian packages and the authors of
the software they describe. Each description is part of its package's Debian packaging and is distributed under the
license of that package, as stated in its copyright file: /usr/share/doc/<package>/copyright on a Debian system, or
https://sources.debian.org/src/<source>/<version>/debian/copyright (the package, source and version of every item
are columns of the parquet files). Every package comes from Debian's "main" archive area, all of which is licensed
under terms that meet the Debian Free Software Guidelines (https://www.debian.org/social_contract#guidelines): they
allow these texts to be copied and redistributed, modified or not. The debtags are data of the Debian project
(https://wiki.debian.org/Debtags). Debian is a registered trademark of Software in the Public Interest, Inc.; this set
is not made or endorsed by the Debian project.

The texts are provided as is, without warranty of any kind.
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--lists", type=Path, help="apt lists folder fetched with Acquire::Languages=en")
    src.add_argument("--status", type=Path, help="a dpkg status file (installed packages)")
    ap.add_argument("--suite", default="bookworm")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--test", type=int, default=2000, help="test items")
    ap.add_argument("--dev", type=int, default=500, help="dev items")
    ap.add_argument("--max-train", type=int, default=None, help="at most this many train items")
    ap.add_argument("--seed", type=int, default=19)
    a = ap.parse_args()
    counts: Counter = Counter()
    if a.lists:
        origin, items = lists_origin(a.lists, a.suite), read_lists(a.lists, a.suite, counts)
    else:
        origin, items = f"the installed packages of {a.status}", read_status(a.status, counts)
    report = build(items, a.out, origin, a.test, a.dev, a.max_train, a.seed, counts)
    shown = ("items", "dropped", "queries_equal_title", "queries_without_synonym")
    print(json.dumps({k: report[k] for k in shown}, indent=1))


if __name__ == "__main__":
    main()
