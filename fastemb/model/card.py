"""Model cards: a model folder's ``README.md``, as sentence-transformers and the Hugging Face Hub write and read it.

A card is YAML metadata (``library_name: sentence-transformers``, ``base_model``, ``tags``, ``datasets``,
``pipeline_tag: sentence-similarity``, a ``model-index`` with the evaluation results, ...) and a Markdown body.
``huggingface_hub.ModelCard.load(<folder>/README.md)`` parses what :func:`write_card` writes.

An exporter (training, distillation, a Tune winner, a registry version, merging, an index built with the model)
describes what it knows as a :class:`CardUpdate` (metadata, evaluation sets, named body sections) and calls
:func:`write_card`. fastemb's part of the body lies between ``<!-- fastemb:begin -->`` and ``<!-- fastemb:end -->``,
one ``<!-- fastemb:section NAME -->`` per section, so a later update replaces its own sections and keeps the others.
A folder whose card fastemb did not write (a third-party model) keeps that card: its text stays, fastemb's block is
appended below it, and the metadata is merged (tags, datasets and languages joined; an evaluation result replaced only
by one for the same task, dataset, split and metric).

The evaluation results follow the sentence-transformers convention (task ``information-retrieval``, metric types such
as ``cosine_ndcg@10``); the base model's figures on the same set are the metrics prefixed ``base_``. Each carries the
sequence length it was measured at (``args: {max_seq_length: N}``).
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from huggingface_hub import EvalResult, ModelCard, ModelCardData

CARD_FILE = "README.md"
BEGIN, END = "<!-- fastemb:begin -->", "<!-- fastemb:end -->"
SECTION = re.compile(r"<!-- fastemb:section ([\w-]+) -->\n")
BLOCK = re.compile(re.escape(BEGIN) + r"\n?(.*?)" + re.escape(END) + r"\n?", re.S)
# sections in the order a card shows them (others follow, in the order they were added)
SECTION_ORDER = ("summary", "training", "trial", "tune", "merge", "evaluation", "compression", "registry", "usage",
                 "limitations", "record")
RANKING_METRICS = {"ndcg@10": "nDCG@10", "mrr@10": "MRR@10", "recall@1": "Recall@1", "recall@10": "Recall@10",
                   "recall@100": "Recall@100", "map@100": "MAP@100"}
TASK = ("information-retrieval", "Information Retrieval")
BASE_PREFIX = "base_"
# base-model aliases fastemb resolves to local folders → their Hugging Face Hub ids
HUB_IDS = {"all-MiniLM-L6-v2": "sentence-transformers/all-MiniLM-L6-v2",
           "all-mpnet-base-v2": "sentence-transformers/all-mpnet-base-v2"}
DEFAULT_TAGS = ["sentence-transformers", "sentence-similarity", "feature-extraction", "fastemb"]


@dataclass
class EvalSet:
    """One evaluation set's ranking metrics: the model's, and the base model's on the same set when measured."""
    label: str                     # what the table calls it: "in-domain", "general", "dev"
    dataset: str                   # dataset id ("wordnet") or the evaluation folder's name
    split: str                     # "test", "dev"
    tuned: dict[str, Any]
    base: dict[str, Any] | None = None
    max_seq_length: int | None = None  # the tokens per text the figures were measured at

    def eval_results(self, similarity: str) -> list[EvalResult]:
        """The set's figures as model-index results (the base model's prefixed ``base_``)."""
        out = []
        for who, metrics in (("", self.tuned), (BASE_PREFIX, self.base or {})):
            for key, pretty in RANKING_METRICS.items():
                if isinstance(metrics.get(key), (int, float)):
                    out.append(EvalResult(
                        task_type=TASK[0], task_name=TASK[1], dataset_type=self.dataset,
                        dataset_name=f"{self.dataset} ({self.label})", dataset_split=self.split,
                        metric_type=f"{who}{similarity}_{key}", metric_value=float(metrics[key]),
                        metric_name=f"{'Base model ' if who else ''}{similarity.capitalize()} {pretty}",
                        metric_args={"max_seq_length": self.max_seq_length} if self.max_seq_length else None))
        return out


@dataclass
class CardUpdate:
    """What an exporter knows about a model: metadata, evaluation sets and body sections (name → Markdown)."""
    title: str | None = None
    base_model: str | list[str] | None = None
    tags: list[str] = field(default_factory=list)
    datasets: list[str] = field(default_factory=list)
    language: list[str] = field(default_factory=list)
    license: str | None = None
    similarity: str = "cosine"
    evaluations: list[EvalSet] = field(default_factory=list)
    sections: dict[str, str] = field(default_factory=dict)
    metadata: dict[str, Any] = field(default_factory=dict)  # further keys, e.g. {"data_fingerprint": ...}


# ---------------------------------------------------------------------------------------------------- writing

def write_card(model_dir: str | Path, update: CardUpdate) -> Path:
    """Write (or extend) ``<model_dir>/README.md`` with ``update``; returns its path."""
    path = Path(model_dir) / CARD_FILE
    existing = path.read_text(encoding="utf-8") if path.exists() else None
    path.write_text(render_card(existing, update), encoding="utf-8")
    return path


def render_card(existing: str | None, update: CardUpdate) -> str:
    """The card text: ``existing`` (a card or None) with ``update`` merged in."""
    if existing is not None:
        card = ModelCard(existing, ignore_metadata_errors=True)
        data, text = card.data, card.text
    else:
        data, text = ModelCardData(), ""
    data = _merge_metadata(data, update)
    body = _merge_body(text, update)
    card = ModelCard(f"---\n{data.to_yaml()}\n---\n{body}")
    return str(card)


def _merge_metadata(data: ModelCardData, update: CardUpdate) -> ModelCardData:
    """``data`` with fastemb's keys set (what it already holds stays unless fastemb knows better)."""
    def joined(old: Any, new: list[str]) -> list[str] | None:
        items = ([old] if isinstance(old, str) else list(old or [])) + [x for x in new if x]
        return list(dict.fromkeys(items)) or None

    data.library_name = data.library_name or "sentence-transformers"
    data.pipeline_tag = data.pipeline_tag or "sentence-similarity"
    if update.base_model:
        data.base_model = update.base_model
    data.tags = joined(data.tags, DEFAULT_TAGS + update.tags)
    data.datasets = joined(data.datasets, update.datasets)
    data.language = joined(data.language, update.language)
    data.license = data.license or update.license
    ours = [r for e in update.evaluations for r in e.eval_results(update.similarity)]
    if ours:
        kept = [r for r in data.eval_results or [] if not any(r.is_equal_except_value(o) for o in ours)]
        data.eval_results = kept + ours
        data.model_name = data.model_name or update.title or "fastemb model"
    for key, value in update.metadata.items():
        setattr(data, key, value)
    return data


def _merge_body(text: str, update: CardUpdate) -> str:
    """The body with fastemb's block updated (appended below a card fastemb did not write)."""
    match = BLOCK.search(text)
    title, sections = _parse_block(match.group(1)) if match else (None, {})
    sections.update({name: body.strip() for name, body in update.sections.items()})
    if update.evaluations:
        sections["evaluation"] = evaluation_section(update.evaluations)
    foreign = (text[:match.start()] + text[match.end():]).strip() if match else text.strip()
    title = update.title or title or "fastemb model"
    order = [s for s in SECTION_ORDER if s in sections] + [s for s in sections if s not in SECTION_ORDER]
    heading = f"# {title}" if not foreign else f"## fastemb: {title}"
    block = "\n\n".join([heading] + [f"<!-- fastemb:section {name} -->\n{sections[name]}" for name in order])
    block = f"{BEGIN}\n{block}\n{END}\n"
    return f"\n{foreign}\n\n{block}" if foreign else f"\n{block}"


def _parse_block(block: str) -> tuple[str | None, dict[str, str]]:
    """(title, name → section) of fastemb's block."""
    parts = SECTION.split(block)
    head = parts[0].strip()
    title = re.sub(r"^#+ (fastemb: )?", "", head.splitlines()[0]) if head else None
    return title, {parts[i]: parts[i + 1].strip() for i in range(1, len(parts) - 1, 2)}


# ---------------------------------------------------------------------------------------------------- reading

def read_card(model_dir: str | Path) -> ModelCard | None:
    """The folder's card (strictly parsed: invalid metadata raises), or None when it has none."""
    path = Path(model_dir) / CARD_FILE
    return ModelCard.load(path) if path.is_file() else None


def model_languages(model_dir: str | Path) -> list[str] | None:
    """The languages a model folder's card names (its ``language`` metadata: the languages it was trained for), or
    None when it has no card or the card names none; a card whose metadata does not parse names none."""
    path = Path(model_dir) / CARD_FILE
    if not path.is_file():
        return None
    try:
        language = ModelCard(path.read_text(encoding="utf-8"), ignore_metadata_errors=True).data.language
    except Exception:  # noqa: BLE001 — a broken card must not break serving
        return None
    return ([language] if isinstance(language, str) else list(language)) if language else None


def has_fastemb_card(model_dir: str | Path) -> bool:
    """Whether a folder's card holds a part fastemb wrote."""
    path = Path(model_dir) / CARD_FILE
    return path.is_file() and BEGIN in path.read_text(encoding="utf-8")


def card_summary(text: str) -> dict[str, Any]:
    """The card at a glance: title, base model, tags, datasets, languages, its evaluation results and its
    sections (what ``fastemb registry show`` prints)."""
    card = ModelCard(text, ignore_metadata_errors=True)
    d = card.data
    match = BLOCK.search(card.text)
    title, sections = _parse_block(match.group(1)) if match else (None, {})
    if title is None:
        title = next((line.lstrip("# ").strip() for line in card.text.splitlines() if line.startswith("# ")), None)
    results = {f"{r.dataset_type}/{r.dataset_split or '-'} {r.metric_type}": r.metric_value
               for r in d.eval_results or []}
    return {"title": title, "base_model": d.base_model, "license": d.license, "language": d.language,
            "datasets": d.datasets, "tags": d.tags, "results": results, "fastemb_sections": list(sections),
            "written_by_fastemb": bool(match)}


# ---------------------------------------------------------------------------------------------------- sections

def hub_id(name_or_path: str) -> str:
    """A base model as the Hub names it: an alias's Hub id; a folder's own card's ``base_model`` (a model fastemb
    trained names the model its lineage started from) or, failing that, the folder's name."""
    if name_or_path in HUB_IDS:
        return HUB_IDS[name_or_path]
    card = Path(name_or_path) / CARD_FILE
    if card.is_file():
        base = ModelCard(card.read_text(encoding="utf-8"), ignore_metadata_errors=True).data.base_model
        if isinstance(base, str):
            return base
    return Path(name_or_path).name or name_or_path


def table(header: list[str], rows: list[list[Any]]) -> str:
    """A Markdown table (floats with 4 decimals)."""
    def cell(v: Any) -> str:
        return f"{v:.4f}" if isinstance(v, float) else ("–" if v is None else str(v))
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows])


def key_values(title: str, rows: dict[str, Any]) -> str:
    """A section of (what, value) rows."""
    return f"## {title}\n\n" + table(["", ""], [[k, v] for k, v in rows.items() if v is not None])


def evaluation_section(evaluations: list[EvalSet]) -> str:
    """The evaluation table: each set's ranking metrics, base vs this model and the difference."""
    rows = []
    for e in evaluations:
        for key, pretty in RANKING_METRICS.items():
            tuned = e.tuned.get(key)
            if not isinstance(tuned, (int, float)):
                continue
            base = (e.base or {}).get(key)
            rows.append([f"{e.label}: {e.dataset} {e.split}", pretty, base, tuned,
                         f"{tuned - base:+.4f}" if isinstance(base, (int, float)) else None,
                         e.max_seq_length])
    return ("## Evaluation\n\nExact search (faiss, cosine) over each set's corpus; the base model measured on the same "
            "set with the same settings.\n\n"
            + table(["set", "metric", "base model", "this model", "Δ", "max_seq_length"], rows))


def usage_section(trust_remote_code: bool = False) -> str:
    """How to load the folder with sentence-transformers and how to serve it with fastemb."""
    remote = ", trust_remote_code=True" if trust_remote_code else ""
    note = ("\n\nThe folder carries its adapter code (`adapters.py`): sentence-transformers and transformers load it "
            "with `trust_remote_code=True`." if trust_remote_code else "")
    return f"""## Usage

### sentence-transformers

```python
from sentence_transformers import SentenceTransformer

model = SentenceTransformer("path/to/this/folder"{remote})
embeddings = model.encode(["a large wild cat of Africa", "to move quickly on foot"])
print(model.similarity(embeddings, embeddings))
```{note}

### fastemb serve

```bash
fastemb serve jobs/serve.yaml production.model=path/to/this/folder
curl -s http://127.0.0.1:8000/v1/embeddings -H 'Content-Type: application/json' \\
  -d '{{"input": ["a large wild cat of Africa"], "model": "fastemb"}}'
```"""


def record_section(record: dict[str, Any], spec: dict[str, Any] | None = None) -> str:
    """The reproducible record (fastemb/record.py) and, folded, the full resolved job spec."""
    code, versions = record.get("code") or {}, record.get("versions") or {}
    commit = code.get("git_commit")
    rows = {"code (git commit)": f"`{commit}`" + (" (uncommitted changes)" if code.get("dirty") else "")
            if commit else "not a git checkout",
            "library versions": ", ".join(f"{k} {v}" for k, v in versions.items() if v),
            "seeds": ", ".join(f"`{k}` {v}" for k, v in (record.get("seeds") or {}).items()) or None,
            "data fingerprint": _fingerprint_text(record.get("data_fingerprint")),
            "job spec": f"`{record['spec_file']}`" if record.get("spec_file") else None}
    text = key_values("Reproducibility", rows)
    if spec:
        text += ("\n\n<details><summary>The full resolved job spec</summary>\n\n```yaml\n"
                 + yaml.safe_dump(spec, sort_keys=False, allow_unicode=True).strip() + "\n```\n\n</details>")
    return text


def _fingerprint_text(fp: str | dict | None) -> str | None:
    if isinstance(fp, dict):
        return ", ".join(f"{k} `{v}`" for k, v in fp.items())
    return f"`{fp}`" if fp else None
