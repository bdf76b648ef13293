"""Synonym normalization: rewrite variants to their canonical form before texts are tokenised.

A dictionary maps variants to canonical forms. Matching is case-insensitive, on whole words or whole
phrases (a variant never matches inside a longer word; the words of a phrase may be separated by any
whitespace), longest variant first, in one left-to-right pass (replaced text is not matched again)::

    "NYC"            -> "new york city"
    "new york city"  -> (canonical, unchanged)
    "e-mail"         -> "email"

File formats (picked by extension):

* ``.tsv`` / ``.txt``: ``variant<TAB>canonical`` per line; blank lines and lines starting with ``#`` ignored;
* ``.json`` / ``.yaml`` / ``.yml``: an object whose values are either a string (``{variant: canonical}``)
  or a list (``{canonical: [variant, ...]}``); both forms may be mixed.

A variant mapped to two different canonical forms, or a canonical form that is itself a variant of
another one (a chain), is refused with the entries named.

One function applies it everywhere: ``attach_synonyms(tokenizer, source)`` wraps a Hugging Face tokenizer
so every call normalises its texts first; ``Encoder.load`` uses it, so training (``Encoder.embed``),
evaluation and query encoding (``Encoder.encode``) and the index embedder (``EmbedActor``, which calls the
encoder's tokenizer) all apply the same dictionary. Saving the wrapped tokenizer also writes
``synonyms.json`` next to it, so a model folder carries its dictionary to indexing and serving.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path
from typing import Any, Iterable, Mapping

import yaml

from fastemb.errors import FastembError

SYNONYMS_FILE = "synonyms.json"


class SynonymError(FastembError, ValueError):
    """A synonym dictionary that cannot be used; the message names the file and the entry."""


def _clean(text: str) -> str:
    return " ".join(text.split())


def _pairs_from_mapping(raw: Any, source: str) -> list[tuple[str, str, str]]:
    """(variant, canonical, where) from {variant: canonical} and/or {canonical: [variants]}."""
    if not isinstance(raw, Mapping):
        raise SynonymError(f"{source}: expected an object of variant: canonical (or canonical: [variants]), "
                           f"got {type(raw).__name__}")
    out = []
    for key, value in raw.items():
        if isinstance(value, str):
            out.append((str(key), value, f"{source}: {key!r}"))
        elif isinstance(value, list) and all(isinstance(v, str) for v in value):
            out.extend((v, str(key), f"{source}: {key!r}") for v in value)
        else:
            raise SynonymError(f"{source}: entry {key!r}: value must be a string or a list of strings, got {value!r}")
    return out


def read_synonym_file(path: str | os.PathLike) -> list[tuple[str, str, str]]:
    """Read (variant, canonical, where) entries from a .tsv/.txt, .json or .yaml/.yml file."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise SynonymError(f"synonym dictionary {str(p)!r} not found")
    suffix = p.suffix.lower()
    text = p.read_text(encoding="utf-8")
    if suffix in (".tsv", ".txt"):
        out = []
        for n, line in enumerate(text.splitlines(), 1):
            if not line.strip() or line.lstrip().startswith("#"):
                continue
            cols = line.rstrip("\r\n").split("\t")
            if len(cols) != 2:
                raise SynonymError(f"{p}:{n}: expected 'variant<TAB>canonical', got {len(cols)} column(s): {line!r}")
            out.append((cols[0], cols[1], f"{p}:{n}"))
        return out
    try:
        if suffix == ".json":
            raw = json.loads(text)
        elif suffix in (".yaml", ".yml"):
            raw = yaml.safe_load(text)
        else:
            raise SynonymError(f"{p}: unknown format {suffix!r}; use .tsv, .txt, .json, .yaml or .yml")
    except (json.JSONDecodeError, yaml.YAMLError) as err:
        raise SynonymError(f"{p}: unreadable ({err})") from None
    return _pairs_from_mapping(raw or {}, str(p))


class SynonymNormalizer:
    """Compiled dictionary: ``normalize(text)`` rewrites every variant to its canonical form."""

    def __init__(self, entries: Iterable[tuple[str, str] | tuple[str, str, str]]):
        mapping: dict[str, tuple[str, str]] = {}             # lowercased variant → (canonical, where)
        for entry in entries:
            variant, canonical = _clean(entry[0]), _clean(entry[1])
            where = entry[2] if len(entry) > 2 else repr(entry[0])
            if not variant or not canonical:
                raise SynonymError(f"{where}: empty variant or canonical form")
            key = variant.lower()
            if key == canonical.lower():
                continue                                     # identity entry: nothing to rewrite
            if key in mapping and mapping[key][0] != canonical:
                raise SynonymError(f"{where}: variant {variant!r} maps to {canonical!r} but {mapping[key][1]} maps "
                                   f"it to {mapping[key][0]!r}")
            mapping[key] = (canonical, where)
        for key, (canonical, where) in mapping.items():
            if canonical.lower() in mapping:
                other = mapping[canonical.lower()]
                raise SynonymError(f"{where}: canonical form {canonical!r} is itself a variant of {other[0]!r} "
                                   f"({other[1]}); map {key!r} to {other[0]!r} directly")
        self.mapping: dict[str, str] = {k: c for k, (c, _) in mapping.items()}
        self._pattern = self._compile(self.mapping)

    @staticmethod
    def _compile(mapping: Mapping[str, str]) -> re.Pattern | None:
        if not mapping:
            return None
        # Longest first: Python's alternation takes the first alternative that matches at a position.
        variants = sorted(mapping, key=lambda v: (-len(v), v))
        alternatives = [r"\s+".join(re.escape(w) for w in v.split(" ")) for v in variants]
        return re.compile(r"(?<!\w)(?:" + "|".join(alternatives) + r")(?!\w)", re.IGNORECASE)

    @classmethod
    def from_file(cls, path: str | os.PathLike) -> "SynonymNormalizer":
        return cls(read_synonym_file(path))

    def __len__(self) -> int:
        return len(self.mapping)

    @property
    def fingerprint(self) -> str:
        """Short hash of the dictionary (record it next to an index to detect a mismatch at serving time)."""
        return hashlib.sha256(json.dumps(sorted(self.mapping.items())).encode()).hexdigest()[:16]

    def normalize(self, text: str) -> str:
        """``text`` with every variant replaced by its canonical form."""
        if self._pattern is None or not isinstance(text, str):
            return text
        return self._pattern.sub(lambda m: self.mapping.get(_clean(m.group(0)).lower(), m.group(0)), text)

    def normalize_many(self, texts: Iterable[str]) -> list[str]:
        return [self.normalize(t) for t in texts]

    def save(self, folder: str | os.PathLike) -> Path:
        """Write ``synonyms.json`` ({variant: canonical}) into ``folder``."""
        out = Path(folder) / SYNONYMS_FILE
        out.write_text(json.dumps(dict(sorted(self.mapping.items())), indent=1, ensure_ascii=False), encoding="utf-8")
        return out


def load_synonyms(source: str | os.PathLike | None) -> SynonymNormalizer | None:
    """A dictionary file, a model folder holding ``synonyms.json``, or None → a normalizer or None."""
    if source is None:
        return None
    p = Path(source).expanduser()
    if p.is_dir():
        return SynonymNormalizer.from_file(p / SYNONYMS_FILE) if (p / SYNONYMS_FILE).is_file() else None
    return SynonymNormalizer.from_file(p)


class SynonymTokenizer:
    """A tokenizer that normalises texts before tokenising; everything else is the wrapped tokenizer's."""

    def __init__(self, tokenizer, normalizer: SynonymNormalizer):
        self.tokenizer = tokenizer
        self.normalizer = normalizer

    def _texts(self, text):
        if isinstance(text, str):
            return self.normalizer.normalize(text)
        if isinstance(text, (list, tuple)):
            return [self._texts(t) for t in text]            # also (text, pair) tuples
        return text

    def __call__(self, text=None, *args, **kwargs):
        if "text" in kwargs:
            kwargs["text"] = self._texts(kwargs["text"])
        if "text_pair" in kwargs:
            kwargs["text_pair"] = self._texts(kwargs["text_pair"])
        return self.tokenizer(self._texts(text) if text is not None else text, *args, **kwargs)

    def encode(self, text, *args, **kwargs):
        return self.tokenizer.encode(self._texts(text), *args, **kwargs)

    def tokenize(self, text, *args, **kwargs):
        return self.tokenizer.tokenize(self._texts(text), *args, **kwargs)

    def save_pretrained(self, folder, *args, **kwargs):
        """Save the tokenizer and, next to it, the dictionary (``synonyms.json``)."""
        files = self.tokenizer.save_pretrained(folder, *args, **kwargs)
        self.normalizer.save(folder)
        return files

    def __len__(self) -> int:
        return len(self.tokenizer)

    def __getattr__(self, name: str):
        if name in ("tokenizer", "normalizer") or name.startswith("__"):
            raise AttributeError(name)                       # not set yet (unpickling): no recursion
        return getattr(self.tokenizer, name)


def attach_synonyms(tokenizer, source: str | os.PathLike | SynonymNormalizer | None):
    """The one hook: ``tokenizer`` normalising with ``source`` (file, model folder, normalizer); unchanged when
    there is no dictionary. Re-attaching replaces the previous dictionary."""
    base = tokenizer.tokenizer if isinstance(tokenizer, SynonymTokenizer) else tokenizer
    normalizer = source if isinstance(source, SynonymNormalizer) else load_synonyms(source)
    if normalizer is None or len(normalizer) == 0:
        return tokenizer
    return SynonymTokenizer(base, normalizer)
