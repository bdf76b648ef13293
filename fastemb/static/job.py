"""``fastemb static``: distil ``spec.model`` into a static token-embedding model (fastemb/model/static.py) at
``spec.output`` and, with ``split`` set, evaluate the static model and its source on that split of ``data.eval``
(``fastemb eval``'s figures and cache): nDCG@10 kept, encode speed ratio, bytes per vector and on disk."""
from __future__ import annotations

import logging
from pathlib import Path

import pyarrow.parquet as pq

from fastemb.data.eval_sets import check_eval_set, eval_dir_path
from fastemb.data.pairs import DataError
from fastemb.eval.retrieval import evaluate_model
from fastemb.model.encoder import model_width
from fastemb.model.static import StaticEncoder, distil_static
from fastemb.spec import StaticJob
from fastemb.spec.sections import ModelSpec
from fastemb.storage import write_json

logger = logging.getLogger(__name__)


def vocab_texts(source: str, field: str = "vocab_from") -> list[str]:
    """The ``text`` column of every parquet file of ``source`` (an evaluation-set alias, a folder or a file)."""
    path = eval_dir_path(source)
    files = sorted(path.glob("*.parquet")) if path.is_dir() else [path]
    files = [f for f in files if f.exists() and "text" in pq.read_schema(f).names]
    if not files:
        raise DataError(f"{field}: {source}: no parquet file with a `text` column")
    return [t for f in files for t in pq.read_table(f, columns=["text"]).column("text").to_pylist()
            if isinstance(t, str) and t]


def folder_bytes(folder: str | Path) -> int:
    """Bytes of a model folder's files."""
    return sum(f.stat().st_size for f in Path(folder).rglob("*") if f.is_file())


def run_static(spec: StaticJob) -> dict:
    """Distil, then (with ``split``) evaluate the static model and its source; returns (and writes to
    ``spec.report``) the paths, sizes and metrics."""
    if spec.split:
        check_eval_set(spec.data.eval, (spec.split,), "data.eval")
    texts = vocab_texts(spec.vocab_from) if spec.vocab_from else None
    out = distil_static(spec.model, spec.output, spec.dim, spec.sif, texts)
    result: dict = {"model": spec.model, "output": str(out), "dim": spec.dim, "bytes_on_disk": folder_bytes(out)}
    if spec.split:
        static = evaluate_model(ModelSpec(base=str(out)), spec.data, spec.split, show_progress=True)
        source = evaluate_model(ModelSpec(base=spec.model), spec.data, spec.split, show_progress=True)
        result.update(
            split=spec.split, static=static, source=source,
            ndcg_kept=static["ndcg@10"] / source["ndcg@10"] if source["ndcg@10"] else None,
            encode_speedup=static["encode_docs_per_s"] / source["encode_docs_per_s"],
            bytes_per_vector={"static": 4 * StaticEncoder.load(out).dim, "source": 4 * model_width(spec.model)})
        logger.info(f"static nDCG@10 {static['ndcg@10']:.4f} vs {source['ndcg@10']:.4f} "
                    f"({result['ndcg_kept']:.0%} kept), encode {result['encode_speedup']:.0f}x the source's speed")
    if spec.report:
        write_json(spec.report, result)
    return result


def cli_summary(result: dict) -> dict:
    """What ``fastemb static`` prints: the result."""
    return result
