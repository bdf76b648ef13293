"""Build an image–caption set from Debian packages (issue 17: image–text alignment): real images nobody here drew.

Sources (``--sources``, all by default):

- ``tuxpaint``: Tux Paint's stamps (``tuxpaint-stamps-default``, /usr/share/tuxpaint/stamps: about 800 PNG and 250
  SVG clip-art images, photos and drawings). Caption: the English description, the first line of the ``.txt``
  beside the image ("A frog."); translations: its ``xx.utf8=`` lines (about 75 languages). A ``*_mirror`` image
  without a ``.txt`` takes its original's. SVGs are drawn only where ``cairosvg`` can be imported (``pip install
  cairosvg``, with Debian's ``libcairo2``; not a dependency of fastemb), in its safe mode (``svg_render_failed``
  where it refuses); otherwise they are dropped as ``svg_no_renderer`` (165 of about 250). An SVG with a PNG of the
  same name is dropped (``svg_with_png``); an image without a description is dropped (``no_description``).
- ``emoji``: every emoji that Unicode CLDR names (``unicode-cldr-core``: ``annotations`` and ``annotationsDerived``,
  skin tones and sequences included), drawn with Pillow from Noto Color Emoji (``fonts-noto-color-emoji``, a bitmap
  font: size 109, ``embedded_color``, sequences shaped with libraqm). Captions: the CLDR name ("red apple"), then its
  keywords joined ("apple, fruit, red") when they add words; translations: the CLDR names in every other locale
  (about 140). Names the font has no glyph for (``no_glyph``: CLDR also names symbols like "_") or draws as several
  glyphs (``no_single_glyph``) are dropped.
- ``flags``: famfamfam's country flags (``famfamfam-flag-png``, 16x11 pixels: tiny, kept at that size) with the
  country names of ``iso-codes`` (ISO 3166-1). Captions: "flag of <name>" for its common, short and official names;
  translations: the country's name (not "flag of ...") from iso-codes' catalogs. Flags that are not ISO 3166-1
  countries (England, Catalonia, ...) are dropped (``no_country_name``).

Images are RGB PNG (transparency composited on white), longest side at most ``--max-side`` pixels (aspect kept,
never enlarged), decoded with fastemb.data.images' limits.

**Concepts and the split.** Near-duplicates must stay on one side of the split, so images are grouped into concepts
and concepts are split (shuffled with ``--seed``, ~80/10/10 train/dev/test, per source of the concept):

- stamps: one concept for stamps in one folder whose names are equal once digits, ``_mirror`` and the variant words
  photo, cartoon, drawing, outline(d), filled are removed (``frog.png`` and ``frog-1.png``; ``6_saturn``), joined
  with every stamp that has the same English description, case and punctuation aside (the letter k, filled and
  outlined, in two folders);
- emoji: one concept for the emoji whose CLDR names agree before the ':' ("woman running: medium skin tone" →
  "woman running") less a leading man/woman/person/men/women/people ("running"), joined with those that are equal
  once skin tones (U+1F3FB–U+1F3FF), VS16, ZWJ and the gender signs are removed (mermaid, merman and merperson). Flag
  and keycap names keep their part after ':';
- flags: one concept per country, ``flag:<alpha-2>``, shared with the country's flag emoji.

``test_seen`` holds one image (seeded) of each train concept that has at least two images (``--seen-cap`` at
most); those images are not in train: it measures seen concepts with held-out images, while dev and test hold
unseen concepts only.

Weaknesses, stated: the stamps are few (about 800 usable) and varied in style (photos, cartoons, letters); emoji
are many but drawn in one style, and about half are skin-tone or gender variants of another (one concept each, so
held out together); many emoji names are abstract ("face with tears of joy") and some captions are long sentences
(stamps); flags are 16x11 pixels. Concepts are coarse where the rule merges (all euro coins of one folder are one
concept: their names are only digits) and fine where it misses (a white and a black chess bishop are two).

Writes to ``--out``: ``{train,dev,test,test_seen}.parquet`` (``id``, ``image`` PNG bytes, ``captions``
list<str>, ``translations`` JSON ``{locale: caption}``, ``concept``, ``source``, ``license``), ``stats.json``
(images and concepts per split and source, drops by reason, seen and unseen concepts) and ``LICENSE-images.txt``.

Run::

    python -m fastemb.data.build_images --out DIR [--limit N] [--max-side 128] [--sources tuxpaint,emoji,flags]

``--limit N`` keeps about N images per source (whole concepts, picked by a hash of their name): a small,
deterministic set for tests.
"""
from __future__ import annotations

import argparse
import gettext
import hashlib
import html
import io
import json
import logging
import random
import re
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image, ImageDraw, ImageFont

from fastemb.data.images import ImageError, decode_image, to_rgb

logger = logging.getLogger("fastemb.data.build_images")  # not __main__ under python -m
STAMPS = Path("/usr/share/tuxpaint/stamps")
EMOJI_FONT = Path("/usr/share/fonts/truetype/noto/NotoColorEmoji.ttf")
EMOJI_SIZE = 109  # the one size of the font's bitmaps
CLDR = Path("/usr/share/unicode/cldr/common")
FLAGS = Path("/usr/share/flags/countries/16x11")
ISO_3166 = Path("/usr/share/iso-codes/json/iso_3166-1.json")
LOCALES = Path("/usr/share/locale")
SOURCES = ("tuxpaint", "emoji", "flags")
PACKAGES = {"tuxpaint": ("tuxpaint-stamps-default",), "emoji": ("fonts-noto-color-emoji", "unicode-cldr-core"),
            "flags": ("famfamfam-flag-png", "iso-codes")}
LICENSES = {
    "tuxpaint": "GPL-2.0-or-later: Tux Paint stamps, (c) 2002-2022 Bill Kendrick and contributors "
                "(Debian tuxpaint-stamps-default)",
    "emoji": "image: SIL OFL 1.1, Noto Color Emoji (c) 2013-2017 Google Inc.; captions: Unicode License "
             "(Unicode-DFS-2016), CLDR annotations (c) 1991-2022 Unicode, Inc.",
    "flags": "image: public domain, famfamfam flag icons by Mark James; captions: LGPL-2.1-or-later, iso-codes",
}
SPLITS = ("train", "dev", "test", "test_seen")
NOTICE = "LICENSE-images.txt"
VARIANT_WORDS = {"mirror", "photo", "cartoon", "drawing", "outline", "outlined", "filled"}
PERSON_PREFIX = re.compile(r"^(?:(?:wo)?m[ae]n|person|people)(?: and (?:wo)?m[ae]n)? (?=\S)")
EMOJI_MARKS = re.compile("[\U0001F3FB-\U0001F3FF\uFE0F\u200D\u2640\u2642]")
REGIONAL = (0x1F1E6, 0x1F1FF)
ANNOTATION = re.compile(r'<annotation cp="([^"]+)"([^>]*)>([^<]*)</annotation>')


@dataclass
class Item:
    """One image before it is drawn: ``draw`` returns it as a PIL image or raises ImageError."""
    id: str
    source: str
    captions: list[str]
    translations: dict[str, str]
    keys: tuple[str, ...]  # concept keys: items sharing a key are one concept
    draw: Callable[[], Image.Image]
    concept: str = ""
    image: bytes = b""


@dataclass
class SourceReport:
    """A source's files or names found (``candidates``) and those not kept, by reason."""
    candidates: int = 0
    dropped: Counter = field(default_factory=Counter)


# ---------------------------------------------------------------------------------------------------- concepts

def assign_concepts(items: list[Item], prefix: str) -> None:
    """Union the items sharing a key; each item's concept is ``prefix`` + the first key of its group's first item
    (a ``flag:`` key without the prefix)."""
    parent: dict[str, str] = {}

    def root(k: str) -> str:
        while parent.setdefault(k, k) != k:
            parent[k] = parent[parent[k]]
            k = parent[k]
        return k

    for it in items:
        for k in it.keys[1:]:
            parent[root(k)] = root(it.keys[0])
    label: dict[str, str] = {}
    for it in items:
        first = it.keys[0]  # a flag's concept is shared by its emoji and its flag image: no source prefix
        it.concept = label.setdefault(root(first), first if first.startswith("flag:") else prefix + first)


def fold(text: str) -> str:
    """Lower case, letters and digits only, for comparing descriptions."""
    return " ".join(re.findall(r"\w+", text.lower()))


# ---------------------------------------------------------------------------------------------------- stamps

def read_stamp_text(path: Path) -> tuple[str, dict[str, str]]:
    """(English description, {locale: translation}) of a stamp's ``.txt``."""
    lines = path.read_text("utf-8", "replace").splitlines()
    english = lines[0].strip() if lines else ""
    translations = {}
    for line in lines[1:]:
        m = re.match(r"([A-Za-z_@]+)\.(?:utf8|UTF-8)=(.*)", line)
        if m and m.group(2).strip():
            translations[m.group(1)] = m.group(2).strip()
    return english, translations


def stamp_stem(stem: str) -> str:
    """A stamp's name less digits, ``_mirror`` and variant words: ``frog-1`` → ``frog``, ``6_saturn`` → ``saturn``."""
    words = [w for w in re.split(r"[\W_\d]+", stem.lower()) if w and w not in VARIANT_WORDS]
    return "_".join(words)


def _stamp_text(path: Path) -> Path | None:
    for stem in (path.stem, path.stem.removesuffix("_mirror")):
        if (txt := path.with_name(stem + ".txt")).exists():
            return txt
    return None


def _draw_file(path: Path, max_side: int) -> Callable[[], Image.Image]:
    def draw() -> Image.Image:
        data = path.read_bytes()
        if path.suffix == ".svg":
            data = render_svg(data, max_side * 2)
        return decode_image(data)
    return draw


def render_svg(data: bytes, width: int) -> bytes:
    """PNG bytes of an SVG drawn ``width`` pixels wide by cairosvg in its safe mode (no XML entities, no external
    files); what it cannot draw is ``svg_render_failed``."""
    import cairosvg

    try:
        return cairosvg.svg2png(bytestring=data, output_width=width)
    except Exception as err:  # noqa: BLE001 - cairosvg and its XML parsers raise many kinds; each is one drop
        logger.debug(f"SVG not drawn: {type(err).__name__}: {err}")
        raise ImageError("svg_render_failed", type(err).__name__) from None


def svg_renderer() -> bool:
    """Whether SVG stamps can be drawn (``cairosvg`` importable, with its cairo library)."""
    try:
        import cairosvg  # noqa: F401
    except (ImportError, OSError):
        return False
    return True


def stamp_items(report: SourceReport, max_side: int, root: Path = STAMPS) -> list[Item]:
    """Every usable stamp under ``root``, with its concept keys (folder + name stem, and its description)."""
    files = sorted(p for p in root.rglob("*") if p.suffix in (".png", ".svg") and p.is_file())
    if not files:
        raise FileNotFoundError(f"{root}: no stamps; install tuxpaint-stamps-default")
    report.candidates = len(files)
    can_svg = svg_renderer()
    items = []
    for path in files:
        txt = _stamp_text(path)
        reason = ("no_description" if txt is None
                  else "svg_with_png" if path.suffix == ".svg" and path.with_suffix(".png").exists()
                  else "svg_no_renderer" if path.suffix == ".svg" and not can_svg else None)
        english, translations = read_stamp_text(txt) if txt else ("", {})
        if reason is None and not english:
            reason = "no_description"
        if reason:
            report.dropped[reason] += 1
            continue
        rel = path.relative_to(root)
        folder = rel.parent.as_posix()
        keys = (f"{folder}/{stamp_stem(path.stem)}", f"text:{fold(english)}")
        items.append(Item(f"tuxpaint:{rel.as_posix()}", "tuxpaint", [english], translations, keys,
                          _draw_file(path, max_side)))
    assign_concepts(items, "tuxpaint:")
    return items


# ---------------------------------------------------------------------------------------------------- emoji

def read_annotations(cldr: Path = CLDR) -> dict[str, dict[str, tuple[str, list[str]]]]:
    """{locale: {emoji: (name, keywords)}} of CLDR's annotations and derived annotations (inherited ``↑↑↑``
    values left out; keywords of English only). The files hold one ``<annotation cp=... [type="tts"]>`` element a
    line: read with a pattern, about ten times faster than an XML parser on these 300 files."""
    out: dict[str, dict[str, tuple[str, list[str]]]] = {}
    for folder in ("annotations", "annotationsDerived"):
        for path in sorted((cldr / folder).glob("*.xml")):
            names = out.setdefault(path.stem, {})
            keywords: dict[str, list[str]] = {}
            for cp, attrs, text in ANNOTATION.findall(path.read_text("utf-8")):
                cp, text = html.unescape(cp), html.unescape(text).strip()
                if not text or text == "↑↑↑":
                    continue
                if 'type="tts"' in attrs:
                    names[cp] = (text, [])
                elif path.stem == "en":
                    keywords[cp] = [k.strip() for k in text.split("|") if k.strip()]
            for cp, kws in keywords.items():
                if cp in names:
                    names[cp] = (names[cp][0], kws)
    if not out.get("en"):
        raise FileNotFoundError(f"{cldr}: no CLDR annotations; install unicode-cldr-core")
    return out


def flag_code(cp: str) -> str | None:
    """``de`` of the flag emoji 🇩🇪 (two regional indicators), else None."""
    if len(cp) == 2 and all(REGIONAL[0] <= ord(c) <= REGIONAL[1] for c in cp):
        return "".join(chr(ord(c) - REGIONAL[0] + ord("a")) for c in cp)
    return None


def emoji_keys(cp: str, name: str) -> tuple[str, ...]:
    """Concept keys of an emoji: its name before ':' less a leading person word, and its code points less skin
    tones, VS16, ZWJ and gender signs (a flag: ``flag:<alpha-2>`` only)."""
    if code := flag_code(cp):
        return (f"flag:{code}",)
    base = name if name.startswith(("flag:", "keycap:")) else name.split(":")[0].strip()
    stripped = EMOJI_MARKS.sub("", cp)
    return (PERSON_PREFIX.sub("", base),) + ((f"cp:{stripped}",) if stripped else ())


def emoji_captions(name: str, keywords: list[str]) -> list[str]:
    """The name, then the keywords joined when they add a word the name lacks."""
    joined = ", ".join(keywords)
    return [name] + ([joined] if set(fold(joined).split()) - set(fold(name).split()) else [])


class EmojiPainter:
    """Draws emoji with Noto Color Emoji; knows which it has one glyph for."""

    def __init__(self, font: Path = EMOJI_FONT):
        if not font.exists():
            raise FileNotFoundError(f"{font}: missing; install fonts-noto-color-emoji")
        self.font = ImageFont.truetype(str(font), EMOJI_SIZE)
        self.width = self.font.getlength("\U0001F34E")

    def problem(self, cp: str) -> str | None:
        """``no_glyph`` (nothing drawn), ``no_single_glyph`` (drawn as several), or None."""
        left, top, right, bottom = self.font.getbbox(cp)
        if bottom <= top:
            return "no_glyph"
        return "no_single_glyph" if self.font.getlength(cp) > 1.5 * self.width else None

    def draw(self, cp: str) -> Image.Image:
        left, top, right, bottom = self.font.getbbox(cp)
        im = Image.new("RGBA", (right, bottom), (255, 255, 255, 0))
        ImageDraw.Draw(im).text((0, 0), cp, font=self.font, embedded_color=True)
        return to_rgb(im)


def emoji_items(report: SourceReport) -> list[Item]:
    """Every CLDR-named emoji the font draws as one glyph, base emoji first (their names label the concepts)."""
    painter = EmojiPainter()
    annotations = read_annotations()
    english = annotations["en"]
    report.candidates = len(english)
    items = []
    for cp in sorted(english, key=lambda c: (len(c), c)):
        if reason := painter.problem(cp):
            report.dropped[reason] += 1
            continue
        name, keywords = english[cp]
        translations = {loc: names[cp][0] for loc, names in sorted(annotations.items())
                        if loc != "en" and cp in names}
        items.append(Item("emoji:" + "-".join(f"{ord(c):04x}" for c in cp), "emoji", emoji_captions(name, keywords),
                          translations, emoji_keys(cp, name), lambda cp=cp: painter.draw(cp)))
    assign_concepts(items, "emoji:")
    return items


# ---------------------------------------------------------------------------------------------------- flags

def country_translations(names: list[str], locales: Path = LOCALES) -> dict[str, dict[str, str]]:
    """{English name: {locale: translated name}} from iso-codes' ``iso_3166-1`` catalogs."""
    out: dict[str, dict[str, str]] = {n: {} for n in names}
    for mo in sorted(locales.glob("*/LC_MESSAGES/iso_3166-1.mo")):
        try:
            with open(mo, "rb") as f:
                catalog = gettext.GNUTranslations(f)
        except (OSError, ValueError, LookupError, UnicodeDecodeError) as err:
            logger.warning(f"{mo}: unreadable catalog ({err})")
            continue
        locale = mo.parent.parent.name
        for n in names:
            if (t := catalog.gettext(n)) != n and t.strip():
                out[n][locale] = t
    return out


def flag_items(report: SourceReport) -> list[Item]:
    """Every famfamfam flag of an ISO 3166-1 country, with its names."""
    files = sorted(FLAGS.glob("*.png"))
    if not files or not ISO_3166.exists():
        raise FileNotFoundError(f"{FLAGS} or {ISO_3166}: missing; install famfamfam-flag-png and iso-codes")
    report.candidates = len(files)
    countries = {c["alpha_2"].lower(): c for c in json.loads(ISO_3166.read_text())["3166-1"]}
    translated = country_translations([c["name"] for c in countries.values()])
    items = []
    for path in files:
        country = countries.get(path.stem)
        if country is None:
            report.dropped["no_country_name"] += 1
            continue
        names = dict.fromkeys(country[k] for k in ("common_name", "name", "official_name") if k in country)
        items.append(Item(f"flags:{path.stem}", "flags", [f"flag of {n}" for n in names],
                          translated[country["name"]], (f"flag:{path.stem}",), _draw_file(path, 0)))
    assign_concepts(items, "flags:")
    return items


# ---------------------------------------------------------------------------------------------------- build

def concept_rank(concept: str, seed: int) -> str:
    return hashlib.sha1(f"{seed}:{concept}".encode()).hexdigest()


def limit_items(items: list[Item], limit: int, seed: int, report: SourceReport) -> list[Item]:
    """About ``limit`` items in whole concepts, concepts taken by hash rank while they fit (the first always)."""
    by_concept: dict[str, list[Item]] = {}
    for it in items:
        by_concept.setdefault(it.concept, []).append(it)
    kept: list[Item] = []
    for concept in sorted(by_concept, key=lambda c: concept_rank(c, seed)):
        group = by_concept[concept]
        if not kept or len(kept) + len(group) <= limit:
            kept += group
    report.dropped["beyond_limit"] += len(items) - len(kept)
    return kept


def png_bytes(im: Image.Image, max_side: int) -> bytes:
    """RGB PNG, longest side at most ``max_side`` (aspect kept, never enlarged)."""
    im = to_rgb(im)
    if max(im.size) > max_side:
        scale = max_side / max(im.size)
        im = im.resize((max(1, round(im.width * scale)), max(1, round(im.height * scale))), Image.LANCZOS)
    buf = io.BytesIO()
    im.save(buf, "PNG")
    return buf.getvalue()


def draw_items(items: list[Item], max_side: int, report: SourceReport) -> list[Item]:
    """Items whose image could be drawn (``image`` set); the others counted by reason."""
    out = []
    for it in items:
        try:
            it.image = png_bytes(it.draw(), max_side)
        except ImageError as err:
            report.dropped[err.reason] += 1
            continue
        except OSError as err:
            logger.warning(f"{it.id}: unreadable ({err})")
            report.dropped["unreadable_file"] += 1
            continue
        out.append(it)
    return out


def split_concepts(items: list[Item], seed: int, dev: float = 0.1, test: float = 0.1) -> dict[str, str]:
    """concept → train/dev/test: each source's concepts (a concept's source: the first of its items' sources)
    shuffled with ``seed``; at least one dev and one test concept where a source has three."""
    first_source: dict[str, str] = {}
    for it in sorted(items, key=lambda i: i.source):
        first_source.setdefault(it.concept, it.source)
    out: dict[str, str] = {}
    for source in sorted(set(first_source.values())):
        concepts = sorted(c for c, s in first_source.items() if s == source)
        random.Random(f"{seed}-{source}").shuffle(concepts)
        n = len(concepts)
        n_test, n_dev = (max(1, round(n * test)), max(1, round(n * dev))) if n >= 3 else (0, 0)
        for i, c in enumerate(concepts):
            out[c] = "test" if i < n_test else "dev" if i < n_test + n_dev else "train"
    return out


def split_items(items: list[Item], seed: int, seen_cap: int) -> dict[str, list[Item]]:
    """The four splits; ``test_seen``: one seeded image of each train concept with two or more (``seen_cap`` at
    most), moved out of train."""
    of = split_concepts(items, seed)
    splits: dict[str, list[Item]] = {s: [] for s in SPLITS}
    for it in items:
        splits[of[it.concept]].append(it)
    by_concept: dict[str, list[Item]] = {}
    for it in splits["train"]:
        by_concept.setdefault(it.concept, []).append(it)
    rng = random.Random(f"{seed}-seen")
    many = sorted(c for c, group in by_concept.items() if len(group) >= 2)
    rng.shuffle(many)
    held = {rng.choice(sorted(by_concept[c], key=lambda i: i.id)).id for c in many[:seen_cap]}
    splits["test_seen"] = [it for it in splits["train"] if it.id in held]
    splits["train"] = [it for it in splits["train"] if it.id not in held]
    return {s: sorted(rows, key=lambda i: i.id) for s, rows in splits.items()}


SCHEMA = pa.schema([("id", pa.string()), ("image", pa.binary()), ("captions", pa.list_(pa.string())),
                    ("translations", pa.string()), ("concept", pa.string()), ("source", pa.string()),
                    ("license", pa.string())])


def write_split(items: list[Item], path: Path) -> None:
    pq.write_table(pa.table({"id": [i.id for i in items], "image": [i.image for i in items],
                             "captions": [i.captions for i in items],
                             "translations": [json.dumps(i.translations, ensure_ascii=False, sort_keys=True)
                                              for i in items],
                             "concept": [i.concept for i in items], "source": [i.source for i in items],
                             "license": [LICENSES[i.source] for i in items]}, schema=SCHEMA), path,
                   compression="zstd")


def _counts(items: list[Item]) -> dict:
    return {"images": len(items), "concepts": len({i.concept for i in items})}


def split_stats(splits: dict[str, list[Item]], reports: dict[str, SourceReport]) -> dict:
    """Images and concepts per split and source, drops by reason, seen and unseen concepts."""
    train_concepts = {i.concept for i in splits["train"]}
    unseen = [i for s in ("dev", "test") for i in splits[s]]
    return {
        "splits": {s: {**_counts(rows), "by_source": {src: _counts([i for i in rows if i.source == src])
                                                      for src in reports}} for s, rows in splits.items()},
        "sources": {src: {"candidates": r.candidates, "images": sum(i.source == src for rows in splits.values()
                                                                      for i in rows),
                          "dropped": dict(sorted(r.dropped.items()))} for src, r in reports.items()},
        "seen": {**_counts(splits["test_seen"]),
                 "concepts_in_train": len({i.concept for i in splits["test_seen"]} & train_concepts)},
        "unseen": {**_counts(unseen), "concepts_in_train": len({i.concept for i in unseen} & train_concepts)},
    }


def notice_text(sources: list[str]) -> str:
    """The license notice: what each source's rows are under, then each package's Debian copyright file."""
    parts = ["Image-caption set built by fastemb/data/build_images.py from Debian packages.",
             "Each row's license column says what its image and captions are under:", ""]
    parts += [f"- {s}: {LICENSES[s]}" for s in sources]
    parts += ["", "The Tux Paint stamps are GPL-2.0-or-later: the PNG written here is the image's preferred form "
              "for modification as distributed (a resized copy of the package's file); the originals are in "
              "Debian's tuxpaint-stamps package sources.", ""]
    for package in sorted({p for s in sources for p in PACKAGES[s]}):
        copyright_file = Path("/usr/share/doc") / package / "copyright"
        text = copyright_file.read_text("utf-8", "replace") if copyright_file.exists() else "(not found)\n"
        parts += [f"==== {copyright_file} ====", text]
    return "\n".join(parts)


def collect(sources: list[str], max_side: int, limit: int | None, seed: int) -> tuple[list[Item], dict]:
    """The drawn items of every source and a report per source (one log line each)."""
    readers = {"tuxpaint": lambda r: stamp_items(r, max_side), "emoji": emoji_items, "flags": flag_items}
    items: list[Item] = []
    reports: dict[str, SourceReport] = {}
    for source in sources:
        report = reports[source] = SourceReport()
        found = readers[source](report)
        chosen = limit_items(found, limit, seed, report) if limit else found
        drawn = draw_items(chosen, max_side, report)
        items += drawn
        dropped = ", ".join(f"{k}: {v}" for k, v in sorted(report.dropped.items()))
        logger.info(f"{source}: {report.candidates} candidates, {len(drawn)} images in "
                    f"{len({i.concept for i in drawn})} concepts; dropped {sum(report.dropped.values())}"
                    + (f" ({dropped})" if dropped else ""))
    return items, reports


def build(out: Path, sources: list[str] | tuple[str, ...] = SOURCES, max_side: int = 128, limit: int | None = None,
          seed: int = 17, seen_cap: int = 500) -> dict:
    """Read, draw, split and write the set to ``out``; returns (and writes) ``stats.json``."""
    start = time.monotonic()
    unknown = set(sources) - set(SOURCES)
    if unknown:
        raise ValueError(f"unknown source(s) {sorted(unknown)}; choose from {', '.join(SOURCES)}")
    items, reports = collect(list(sources), max_side, limit, seed)
    splits = split_items(items, seed, seen_cap)
    out.mkdir(parents=True, exist_ok=True)
    for split, rows in splits.items():
        write_split(rows, out / f"{split}.parquet")
    (out / NOTICE).write_text(notice_text(list(sources)))
    stats = {"sources_used": list(sources), "max_side": max_side, "limit": limit, "seed": seed,
             "svg_renderer": svg_renderer(), **split_stats(splits, reports),
             "seconds": round(time.monotonic() - start, 1)}
    (out / "stats.json").write_text(json.dumps(stats, indent=1) + "\n")
    return stats


def main() -> None:
    from fastemb.logs import configure

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--sources", default=",".join(SOURCES), help="comma-separated: " + ", ".join(SOURCES))
    ap.add_argument("--max-side", type=int, default=128, help="longest image side in pixels")
    ap.add_argument("--limit", type=int, default=None, help="about this many images per source (whole concepts)")
    ap.add_argument("--seed", type=int, default=17)
    ap.add_argument("--seen-cap", type=int, default=500, help="at most this many test_seen images")
    a = ap.parse_args()
    configure()
    stats = build(a.out, [s.strip() for s in a.sources.split(",") if s.strip()], a.max_side, a.limit, a.seed,
                  a.seen_cap)
    splits = ", ".join(f"{s}: {v['images']} images / {v['concepts']} concepts" for s, v in stats["splits"].items())
    logger.info(f"wrote {a.out}: {splits}; seen concepts {stats['seen']['concepts']}, unseen concepts "
                f"{stats['unseen']['concepts']}; {stats['seconds']} s")


if __name__ == "__main__":
    main()
