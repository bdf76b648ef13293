"""A smaller WordNet evaluation folder for a benchmark's --quick run: the first queries of each split and a corpus of
their relevant definitions plus the first others (the same protocol at a fraction of the encoding time)."""
from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

WORDNET = Path(__file__).resolve().parents[1] / "fastemb" / "datasets" / "wordnet"


def eval_subset(out: str | Path, queries: int, corpus: int) -> str:
    """Write ``{dev,test}_{queries,corpus}.parquet`` with ``queries`` queries and ``corpus`` texts per split."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    for split in ("dev", "test"):
        texts = pq.read_table(WORDNET / f"{split}_corpus.parquet")
        kept = pq.read_table(WORDNET / f"{split}_queries.parquet").slice(0, queries)
        wanted = pa.array(sorted({i for ids in kept.column("relevant_ids").to_pylist() for i in ids}))
        relevant = texts.filter(pc.is_in(texts["id"], value_set=wanted))
        others = texts.filter(pc.invert(pc.is_in(texts["id"], value_set=wanted)))
        pq.write_table(pa.concat_tables([relevant, others.slice(0, max(corpus - relevant.num_rows, 0))]),
                       out / f"{split}_corpus.parquet")
        pq.write_table(kept, out / f"{split}_queries.parquet")
    return str(out)
