"""Parallel text from gettext catalogs (fastemb/data/build_parallel.py): filters counted by reason, bad catalogs
counted not crashed, the split keeps string families apart."""
from __future__ import annotations

import json
import struct
from pathlib import Path

import pyarrow.parquet as pq

from fastemb.data.build_parallel import (BuildReport, build, catalog_group, drop_reason, read_catalog, read_pairs,
                                         split_by_group, strip_accelerators)

REAL_DE = Path("/usr/share/locale/de/LC_MESSAGES/iso_3166-1.mo")  # iso-codes (.ci/run installs it)


def write_mo(path: Path, entries: list[tuple[bytes, bytes]], charset: str = "UTF-8") -> Path:
    """A GNU .mo file (little endian, revision 0) holding ``entries`` plus the header naming ``charset``."""
    header = f"Content-Type: text/plain; charset={charset}\nPlural-Forms: nplurals=2; plural=(n != 1);\n".encode()
    entries = sorted([(b"", header), *entries])
    n = len(entries)
    ids_at, strs_at = 28, 28 + 8 * n
    data_at = strs_at + 8 * n
    ids, strs, blob = b"", b"", b""
    for msgid, _ in entries:
        ids += struct.pack("<II", len(msgid), data_at + len(blob))
        blob += msgid + b"\0"
    for _, msgstr in entries:
        strs += struct.pack("<II", len(msgstr), data_at + len(blob))
        blob += msgstr + b"\0"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(struct.pack("<7I", 0x950412DE, 0, n, ids_at, strs_at, 0, 0) + ids + strs + blob)
    return path


def _locale(tmp_path: Path) -> Path:
    root = tmp_path / "locale"
    write_mo(root / "de/LC_MESSAGES/frobnicate-2.mo", [
        (b"Open file", "Datei öffnen".encode()),
        (b"_Save", b"_Speichern"),                                    # accelerators removed
        (b"Cannot open %s", "Kann %s nicht öffnen".encode()),          # format string
        (b"Copy {name}", b"Kopiere {name}"),                           # format string (Python)
        (b"OK", b"OK"),                                                # identical
        (b"<b>Bold</b> text", b"<b>Fetter</b> Text"),                   # markup
        (b"menu\x04Quit", b"Beenden"),                                 # msgctxt
        (b"one file\x00%d files", b"eine Datei\x00%d Dateien"),        # plural form
        (b"...", b"..."),                                              # no letters (identical is checked later)
    ])
    write_mo(root / "de/LC_MESSAGES/frobnicate-3.mo", [(b"Open file", "Datei öffnen".encode()),
                                                         (b"Close window", b"Fenster schliessen")])
    write_mo(root / "fr/LC_MESSAGES/gizmo.mo", [(b"Open file", b"Ouvrir le fichier"),
                                                 (b"Quit the gizmo", b"Quitter le gadget")])
    write_mo(root / "fr/LC_MESSAGES/latin.mo", [(b"Quit", b"Arr\xeat")])                     # utf-8 header, latin-1
    write_mo(root / "it/LC_MESSAGES/odd.mo", [(b"Quit", b"Esci")], charset="x-no-such-charset")
    (root / "it/LC_MESSAGES/broken.mo").write_bytes(b"not a catalog at all")
    write_mo(root / "en_GB/LC_MESSAGES/gizmo.mo", [(b"Color", b"Colour")])                  # English: not read
    return root


def test_filters_and_bad_catalogs_are_counted_by_reason(tmp_path):
    rows, report = read_pairs(_locale(tmp_path))
    got = {(r["language"], r["english"], r["translation"], r["group"]) for r in rows}
    assert got == {("de", "Open file", "Datei öffnen", "frobnicate"), ("de", "Save", "Speichern", "frobnicate"),
                   ("de", "Close window", "Fenster schliessen", "frobnicate"),
                   ("fr", "Open file", "Ouvrir le fichier", "gizmo"),
                   ("fr", "Quit the gizmo", "Quitter le gadget", "gizmo")}
    assert report.catalogs == 6 and report.kept == 5
    assert dict(report.catalogs_failed) == {"undecodable catalog": 1, "unknown charset": 1, "unreadable catalog": 1}
    assert any("broken.mo: unreadable catalog" in f for f in report.failed_files)
    assert dict(report.dropped) == {"format string": 2, "identical": 1, "markup": 1, "msgctxt": 1, "plural form": 1,
                                    "no letters": 1, "duplicate": 1}  # "Open file" twice in group frobnicate
    assert report.entries == sum(report.dropped.values()) - report.dropped["duplicate"] + report.kept + 1


def test_split_keeps_groups_apart_and_drops_english_seen_in_train():
    rows = [{"english": f"text {g} {i}", "translation": f"texte {g} {i}", "language": "fr", "group": g}
            for g in "abcdefghijklmnopqrst" for i in range(5)]
    rows += [{"english": "Text  A 0!", "translation": "x", "language": "de", "group": "z"},  # "text a 0" folded
             {"english": "other", "translation": "andere", "language": "de", "group": "z"}]
    leaks = 0
    for seed in range(8):
        report = BuildReport()
        splits = split_by_group(rows, 0.3, seed, report)
        train_groups, test_groups = ({r["group"] for r in splits[s]} for s in ("train", "test"))
        assert not train_groups & test_groups and train_groups and test_groups
        leaked = bool({"a", "z"} & train_groups and {"a", "z"} & test_groups)  # the folded English on both sides
        leaks += leaked
        assert report.dropped["english in train"] == int(leaked)
        assert len(splits["train"]) + len(splits["test"]) == len(rows) - int(leaked)
        assert 25 <= len(splits["test"]) <= 40
    assert 0 < leaks < 8  # both cases were seen


def test_build_writes_splits_report_and_notice(tmp_path):
    out = tmp_path / "out"
    summary = build(out, _locale(tmp_path), test_fraction=0.3, seed=1)
    tables = {s: pq.read_table(out / f"{s}.parquet") for s in ("train", "test")}
    assert tables["train"].column_names == ["english", "translation", "language", "source", "group", "domain"]
    assert sum(t.num_rows for t in tables.values()) + summary["dropped"].get("english in train", 0) == 5
    written = json.loads((out / "report.json").read_text())
    assert written["catalogs_failed"] == summary["catalogs_failed"] and "LICENSE" in (out / "LICENSE-parallel.txt").name
    assert "license" in (out / "LICENSE-parallel.txt").read_text().lower()


def test_helpers():
    assert strip_accelerators("_File") == "File" and strip_accelerators("&Open") == "Open"
    assert strip_accelerators("snake_case") == "snake_case" and strip_accelerators("Datei (_D)") == "Datei"
    assert catalog_group("pg_dump-15") == ("gettext", "pg_dump")
    assert catalog_group("iso_3166-1") == catalog_group("iso_3166") == ("iso-codes", "iso_3166")
    assert drop_reason("Remove %1$s", "Entferne %1$s", 200) == "format string"
    assert drop_reason("Home: $HOME", "Heim: $HOME", 200) == "format string"
    assert drop_reason("x" * 300, "y" * 300, 200) == "too long"
    assert drop_reason("Progress: 50%", "Fortschritt: 50 %", 200) is None  # a trailing percent sign is no format


def test_real_iso_codes_catalog():
    catalog = read_catalog(REAL_DE, BuildReport())
    assert catalog["Germany"] == "Deutschland" and catalog["France"] == "Frankreich"
