"""Build parallel text (English ↔ other languages) from the translations installed on a Debian machine.

Sources (``--sources``):

* ``gettext``: the message catalogs ``<locale dir>/<lang>/LC_MESSAGES/<domain>.mo`` of every installed package: each
  entry maps an English UI string (msgid) to its translation (msgstr), written by the package's translators;
* ``iso-codes``: the catalogs of Debian's ``iso-codes`` package in the same folders (``iso_3166*``: country names,
  ``iso_639*``: language names, ``iso_4217``: currencies, ``iso_15924``: scripts).

Each row is ``(english, translation, language, source, group, domain)``: ``language`` is the locale folder's name
(``de``, ``pt_BR``, ``sr@latin``), ``source`` the data source, ``domain`` the catalog and ``group`` the string family
the split keeps together: the catalog's domain without its version suffix (``pg_dump-15`` → ``pg_dump``), one group
per ISO standard for iso-codes (``iso_3166`` and ``iso_3166-1`` hold the same names).

Filters (every dropped entry is counted by reason in ``report.json``; nothing is dropped silently):
a catalog that cannot be read (``unreadable catalog``: bad magic number, truncated, ...), or whose strings do not
decode with the charset its header names (``undecodable catalog``) or names an unknown charset (``unknown charset``);
plural entries (``plural form``); context-prefixed msgids (``msgctxt``, the ``\\x04`` separator); an empty side
(``empty translation``); a translation identical to the English (``identical``); English without letters
(``no letters``); printf / Python / shell placeholders and format strings on either side (``format string``);
markup (``markup``); longer than ``--max-chars`` (``too long``); the same (language, English, translation) twice in a
group (``duplicate``). Keyboard accelerators (``_File``, ``&Open``) are removed before the checks.

Split: groups are shuffled with a seed and assigned to ``test`` until it holds ``--test-fraction`` of the rows; the
rest is ``train``, so one string family never lies on both sides. The same English string also occurs in unrelated
catalogs ("Cancel"), so a test row whose English (case- and punctuation-folded) is in train is dropped too (``english
in train``). Output: ``train.parquet``, ``test.parquet``, ``report.json`` (counts by reason, per language and split)
and the license notice ``LICENSE-parallel.txt``.

Run::

    python -m fastemb.data.build_parallel --out runs/parallel [--languages de,fr,es] [--sources gettext,iso-codes]
"""
from __future__ import annotations

import argparse
import gettext
import json
import logging
import random
import re
import struct
from collections import Counter, defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterable, Iterator

import pyarrow as pa
import pyarrow.parquet as pq

logger = logging.getLogger(__name__)

LOCALE_DIR = Path("/usr/share/locale")
SOURCES = ("gettext", "iso-codes")
NOTICE = "LICENSE-parallel.txt"
COLUMNS = ("english", "translation", "language", "source", "group", "domain")
# printf (%s, %-10.3lf, %1$s, %'d), Python (%(name)s, {0}, {name:>3}), shell/Qt ($HOME, ${x}, %1), @VAR@
FORMAT = re.compile(r"%(?:\d+\$)?[-+ #0']*(?:\d+|\*)?(?:\.(?:\d+|\*))?(?:hh|h|ll|l|L|q|j|z|t|I64|I32)?"
                    r"[diouxXeEfFgGaAcspnm%]|%\(\w+\)[a-zA-Z]|%<\w+>|\{[\w.\[\]]*(?:![rsa])?(?::[^{}]*)?\}|"
                    r"\$\{?[A-Za-z_]\w*\}?|%\d\b|@[A-Z_]+@")
MARKUP = re.compile(r"</?[a-zA-Z][\w:-]*(?:\s[^<>]*)?/?>|&[a-z]+;")
ACCEL = re.compile(r"(?<![\w_])_(?=\w)|&(?=[^\W_])|\s*\(_\w\)")
LETTER = re.compile(r"[^\W\d_]")


@dataclass
class BuildReport:
    """What was read and why entries were dropped."""
    catalogs: int = 0
    catalogs_failed: Counter = field(default_factory=Counter)  # reason → catalogs
    failed_files: list[str] = field(default_factory=list)       # "<path>: <reason>" (first 50)
    entries: int = 0
    dropped: Counter = field(default_factory=Counter)           # reason → entries
    kept: int = 0

    def fail(self, path: Path, reason: str, detail: str) -> None:
        self.catalogs_failed[reason] += 1
        if len(self.failed_files) < 50:
            self.failed_files.append(f"{path}: {reason} ({detail})")

    def as_dict(self) -> dict:
        d = asdict(self)
        d["catalogs_failed"], d["dropped"] = dict(self.catalogs_failed), dict(self.dropped)
        return d


def catalog_group(domain: str) -> tuple[str, str]:
    """(source, group) of a catalog domain: iso-codes by standard, others without their version suffix."""
    m = re.match(r"iso_(\d+)", domain)
    if m:
        return "iso-codes", f"iso_{m.group(1)}"
    return "gettext", re.sub(r"(?:[-_.]?\d+)+$", "", domain) or domain


def read_catalog(path: Path, report: BuildReport) -> dict | None:
    """The catalog's raw entries (msgid key → msgstr) with GNU gettext's own reader, or None (counted) when it
    cannot be read or decoded."""
    try:
        with open(path, "rb") as f:
            return dict(gettext.GNUTranslations(f)._catalog)
    except LookupError as err:  # the header names a charset Python does not know
        report.fail(path, "unknown charset", str(err))
    except UnicodeDecodeError as err:
        report.fail(path, "undecodable catalog", f"{err.encoding}: {err.reason}")
    except (OSError, struct.error, ValueError, IndexError, SyntaxError) as err:  # bad magic, truncated, bad header
        report.fail(path, "unreadable catalog", f"{type(err).__name__}: {err}")
    return None


def strip_accelerators(text: str) -> str:
    """``_File`` / ``&Open`` / ``Datei (_F)`` → ``File`` / ``Open`` / ``Datei``."""
    return ACCEL.sub("", text)


def drop_reason(english: str, translation: str, max_chars: int) -> str | None:
    """Why a (cleaned) pair is not usable, or None."""
    if not english.strip() or not translation.strip():
        return "empty translation"
    if FORMAT.search(english) or FORMAT.search(translation):
        return "format string"
    if MARKUP.search(english) or MARKUP.search(translation):
        return "markup"
    if not LETTER.search(english):
        return "no letters"
    if english.strip().casefold() == translation.strip().casefold():
        return "identical"
    if len(english) > max_chars or len(translation) > max_chars:
        return "too long"
    return None


def catalog_pairs(catalog: dict, report: BuildReport, max_chars: int) -> Iterator[tuple[str, str]]:
    """The usable (english, translation) pairs of one catalog; the others counted by reason."""
    for key, value in catalog.items():
        if key == "" or (isinstance(key, tuple) and key[1] > 0):  # the header; a plural's other forms
            continue
        report.entries += 1
        if isinstance(key, tuple):
            report.dropped["plural form"] += 1
            continue
        if "\x04" in key:
            report.dropped["msgctxt"] += 1
            continue
        english = " ".join(strip_accelerators(key).split())
        translation = " ".join(strip_accelerators(value).split())
        reason = drop_reason(english, translation, max_chars)
        if reason:
            report.dropped[reason] += 1
            continue
        yield english, translation


def find_catalogs(locale_dir: Path, languages: Iterable[str] | None, sources: Iterable[str]) -> list[tuple[str, Path]]:
    """(language, .mo path) of the wanted languages and sources, sorted."""
    wanted = set(languages) if languages else None
    sources = set(sources)
    out = []
    for mo in sorted(locale_dir.glob("*/LC_MESSAGES/*.mo")):
        language = mo.parent.parent.name
        if language in ("C", "en") or language.startswith("en_") or (wanted and language not in wanted):
            continue
        if catalog_group(mo.stem)[0] in sources:
            out.append((language, mo))
    return out


def read_pairs(locale_dir: Path = LOCALE_DIR, languages: Iterable[str] | None = None,
               sources: Iterable[str] = SOURCES, max_chars: int = 200) -> tuple[list[dict], BuildReport]:
    """Every usable pair of the catalogs found (deduplicated per group and language) and the build report."""
    report, rows, seen = BuildReport(), [], set()
    for language, mo in find_catalogs(locale_dir, languages, sources):
        report.catalogs += 1
        catalog = read_catalog(mo, report)
        if catalog is None:
            continue
        source, group = catalog_group(mo.stem)
        for english, translation in catalog_pairs(catalog, report, max_chars):
            key = (group, language, english, translation)
            if key in seen:
                report.dropped["duplicate"] += 1
                continue
            seen.add(key)
            rows.append({"english": english, "translation": translation, "language": language, "source": source,
                         "group": group, "domain": mo.stem})
    report.kept = len(rows)
    return rows, report


def fold(text: str) -> str:
    """Case- and punctuation-folded text: the key under which the same English string is recognised."""
    return " ".join(re.sub(r"[^\w\s]", " ", text.casefold()).split())


def split_by_group(rows: list[dict], test_fraction: float, seed: int, report: BuildReport,
                   max_group_share: float = 0.25) -> dict[str, list[dict]]:
    """``{"train": …, "test": …}``: whole groups to test (shuffled by ``seed``) until it holds ``test_fraction`` of
    the rows; a group larger than ``max_group_share`` of that target stays in train (one family must not make up
    most of the test set); test rows whose folded English occurs in train are dropped (``english in train``)."""
    sizes = Counter(r["group"] for r in rows)
    groups = sorted(sizes)
    random.Random(seed).shuffle(groups)
    target = test_fraction * len(rows)
    test_groups, n = set(), 0
    for g in groups:
        if n >= target:
            break
        if sizes[g] > max_group_share * target:
            continue
        test_groups.add(g)
        n += sizes[g]
    train = [r for r in rows if r["group"] not in test_groups]
    train_english = {fold(r["english"]) for r in train}
    test = []
    for r in rows:
        if r["group"] in test_groups:
            if fold(r["english"]) in train_english:
                report.dropped["english in train"] += 1
            else:
                test.append(r)
    return {"train": train, "test": test}


def language_counts(splits: dict[str, list[dict]]) -> dict[str, dict[str, int]]:
    """Rows per language and split."""
    out: dict[str, dict[str, int]] = defaultdict(lambda: {s: 0 for s in splits})
    for split, rows in splits.items():
        for r in rows:
            out[r["language"]][split] += 1
    return dict(sorted(out.items()))


def write_parallel(splits: dict[str, list[dict]], report: BuildReport, out: Path, origin: str) -> dict:
    """The split parquet files, ``report.json`` and the license notice; returns the report written."""
    out.mkdir(parents=True, exist_ok=True)
    schema = pa.schema([(c, pa.string()) for c in COLUMNS])
    for split, rows in splits.items():
        pq.write_table(pa.Table.from_pylist(rows, schema=schema), out / f"{split}.parquet", compression="zstd")
    summary = {"origin": origin, **report.as_dict(), "rows": {s: len(r) for s, r in splits.items()},
               "groups": {s: sorted({r["group"] for r in rows}) for s, rows in splits.items()},
               "languages": language_counts(splits)}
    (out / "report.json").write_text(json.dumps(summary, indent=2, ensure_ascii=False))
    (out / NOTICE).write_text(NOTICE_TEXT.format(origin=origin, rows=summary["rows"]))
    return summary


def build(out: Path, locale_dir: Path = LOCALE_DIR, languages: Iterable[str] | None = None,
          sources: Iterable[str] = SOURCES, test_fraction: float = 0.2, max_chars: int = 200, seed: int = 18) -> dict:
    """Read, filter, split and write the parallel set; returns its report."""
    rows, report = read_pairs(locale_dir, languages, sources, max_chars)
    if not rows:
        raise ValueError(f"{locale_dir}: no usable pairs for languages {languages or 'all'} and sources "
                         f"{list(sources)} ({report.catalogs} catalogs, {dict(report.catalogs_failed)} failed, "
                         f"dropped {dict(report.dropped)})")
    splits = split_by_group(rows, test_fraction, seed, report)
    return write_parallel(splits, report, out, f"the {', '.join(sources)} catalogs under {locale_dir}")


NOTICE_TEXT = """\
Parallel text from Debian's installed translations (fastemb multilingual distillation)
=======================================================================================

Built by fastemb/data/build_parallel.py from {origin}.
Rows: {rows}.

Each row pairs an English string with its translation, read from a GNU gettext message catalog (.mo) installed by a
Debian package: the user-interface strings of that package (source "gettext") or the translated country, language,
currency and script names of the iso-codes package (source "iso-codes"). The "domain" column names the catalog,
which is the package's (or its upstream project's) text domain.

Copyright and license: the English strings were written by the authors of each program and the translations by its
translation teams (the GNU Translation Project, Debian's and the upstream projects' translators). Each catalog is
distributed under the license of the package that installs it, as stated in its copyright file:
/usr/share/doc/<package>/copyright on a Debian system (`dpkg -S <catalog path>` names the package). iso-codes is
LGPL-2.1-or-later. Every package comes from Debian's "main" archive area, whose licenses meet the Debian Free
Software Guidelines (https://www.debian.org/social_contract#guidelines) and allow these texts to be copied and
redistributed, modified or not. This set is not made or endorsed by the Debian project or the translation teams.

The texts are provided as is, without warranty of any kind.
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--locale-dir", type=Path, default=LOCALE_DIR)
    ap.add_argument("--languages", default="", help="comma-separated locale folder names (default: all)")
    ap.add_argument("--sources", default=",".join(SOURCES))
    ap.add_argument("--test-fraction", type=float, default=0.2)
    ap.add_argument("--max-chars", type=int, default=200)
    ap.add_argument("--seed", type=int, default=18)
    a = ap.parse_args()
    sources = [s for s in a.sources.split(",") if s]
    unknown = sorted(set(sources) - set(SOURCES))
    if unknown:
        ap.error(f"--sources: unknown {unknown}; known: {list(SOURCES)}")
    summary = build(a.out, a.locale_dir, [x for x in a.languages.split(",") if x] or None, sources,
                    a.test_fraction, a.max_chars, a.seed)
    print(json.dumps({k: summary[k] for k in ("catalogs", "catalogs_failed", "entries", "dropped", "rows")}))


if __name__ == "__main__":
    main()
