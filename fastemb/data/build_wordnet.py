"""Build fastemb's WordNet retrieval dataset from Debian's ``wordnet-base`` package.

Task: *lemmas → definition*. Each WordNet synset gives one pair
``query = "lemma1, lemma2, ..."`` and ``positive = definition`` (its gloss without the
quoted usage examples). Synsets are split into train / dev / test **by synset**, so no
definition or query seen in training appears in an evaluation corpus.

Evaluation protocol (test): 2,000 queries searched against 20,000 definitions, all from
synsets that are not in the training split. Dev: 500 queries against 5,000 definitions.

Run ``python -m fastemb.data.build_wordnet [--wordnet-dir /usr/share/wordnet] [--out DIR]``
after ``apt-get install wordnet-base``.
"""
from __future__ import annotations

import argparse
import random
import re
import shutil
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

POS_FILES = {"n": "data.noun", "v": "data.verb", "a": "data.adj", "r": "data.adv"}
DEFAULT_OUT = Path(__file__).resolve().parent.parent / "datasets" / "wordnet"
LICENSE_SRC = Path("/usr/share/doc/wordnet-base/copyright")


def parse_data_line(line: str, pos: str) -> tuple[str, list[str], str] | None:
    """Parse one ``data.*`` line into (synset id, lemmas, definition); None for header lines."""
    if line.startswith("  ") or "|" not in line:
        return None
    head, gloss = line.split("|", 1)
    fields = head.split()
    offset, w_cnt = fields[0], int(fields[3], 16)
    words = [fields[4 + 2 * i] for i in range(w_cnt)]
    lemmas: list[str] = []
    for w in words:
        w = re.sub(r"\([a-z]+\)$", "", w).replace("_", " ")  # adjective markers like "(p)"
        if w not in lemmas:
            lemmas.append(w)
    definition = gloss.strip().split('"', 1)[0].strip().rstrip(";").strip()
    if not definition or not lemmas:
        return None
    return f"{pos}{offset}", lemmas, definition


def read_wordnet(wordnet_dir: Path) -> list[tuple[str, str, str]]:
    """All synsets as (synset id, query, definition)."""
    rows = []
    for pos, fname in POS_FILES.items():
        with open(wordnet_dir / fname, encoding="utf-8", errors="replace") as f:
            for line in f:
                parsed = parse_data_line(line, pos)
                if parsed:
                    sid, lemmas, definition = parsed
                    rows.append((sid, ", ".join(lemmas), definition))
    return rows


def _write(path: Path, columns: dict) -> None:
    pq.write_table(pa.table(columns), path, compression="zstd")


def _write_eval(out: Path, name: str, synsets: list, n_queries: int, rng: random.Random) -> None:
    corpus_ids = [s for s, _, _ in synsets]
    _write(out / f"{name}_corpus.parquet", {"id": corpus_ids, "text": [d for _, _, d in synsets]})
    picked = rng.sample(synsets, n_queries)
    _write(out / f"{name}_queries.parquet", {
        "id": [f"q-{s}" for s, _, _ in picked],
        "text": [q for _, q, _ in picked],
        "relevant_ids": [[s] for s, _, _ in picked],
    })


def build(wordnet_dir: Path, out: Path, n_test: int = 20_000, n_dev: int = 5_000,
          n_test_queries: int = 2_000, n_dev_queries: int = 500, seed: int = 13) -> dict:
    """Write train pairs and dev/test evaluation sets; returns the counts."""
    rows = read_wordnet(wordnet_dir)
    rng = random.Random(seed)
    rng.shuffle(rows)
    test, dev, train = rows[:n_test], rows[n_test:n_test + n_dev], rows[n_test + n_dev:]
    out.mkdir(parents=True, exist_ok=True)
    _write(out / "train.parquet", {"query": [q for _, q, _ in train], "positive": [d for _, _, d in train],
                                   "synset": [s for s, _, _ in train]})
    _write_eval(out, "dev", dev, n_dev_queries, rng)
    _write_eval(out, "test", test, n_test_queries, rng)
    # Full definition corpus (every synset), used by the corpus-embedding benchmarks.
    _write(out / "all_definitions.parquet", {"id": [s for s, _, _ in rows], "text": [d for _, _, d in rows]})
    if LICENSE_SRC.exists():
        shutil.copy(LICENSE_SRC, out / "LICENSE-WordNet.txt")
    return {"synsets": len(rows), "train": len(train), "dev": len(dev), "test": len(test)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--wordnet-dir", type=Path, default=Path("/usr/share/wordnet"))
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = ap.parse_args()
    if not (args.wordnet_dir / "data.noun").exists():
        raise SystemExit(f"{args.wordnet_dir}/data.noun not found: apt-get install wordnet-base")
    print(build(args.wordnet_dir, args.out))


if __name__ == "__main__":
    main()
