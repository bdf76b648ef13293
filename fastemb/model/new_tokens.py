"""Domain terms as new tokens, their embedding rows initialised from the mean of their sub-tokens.

A term the tokenizer splits into pieces ("kubectl" → ku ##be ##ct ##l) becomes one added token; the embedding
matrix grows by one row per term and that row starts as the mean of the rows of the term's sub-tokens under the
original tokenizer, the usual initialisation of new vocabulary (e.g. Hewitt, 2021, "Initializing New Word
Embeddings for Pretrained Language Models"; Gururangan et al., 2020, "Don't Stop Pretraining"). Terms are added as
whole words (``single_word``) in the tokenizer's normalised form (lower case for uncased models), so "Kubectl" and
"kubectl" both map to the new id and "kubectlx" does not. The tokenizer and the resized embeddings are saved with
the model, so ``Encoder.load`` and sentence-transformers read them back unchanged.
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

# Attribute put on an embedding matrix whose rows below this index are frozen (only the new rows train).
TRAINABLE_FROM = "fastemb_trainable_from"


def read_terms(source: list[str] | str) -> list[str]:
    """Terms from a list, or from a text file with one term a line (blank lines and ``#`` comments ignored)."""
    if isinstance(source, str):
        path = Path(source).expanduser()
        if not path.is_file():
            raise ValueError(f"file {source!r} not found (give a list of terms or a text file "
                             "with one term a line)")
        lines = path.read_text(encoding="utf-8").splitlines()
        source = [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]
    bad = [t for t in source if not isinstance(t, str) or not t.strip()]
    if bad or not source:
        raise ValueError(f"expected non-empty terms, got {bad or 'none'}")
    terms = [" ".join(t.split()) for t in source]
    dupes = sorted({t for t in terms if terms.count(t) > 1})
    if dupes:
        raise ValueError(f"duplicate terms {dupes}")
    return terms


def _normalized(tokenizer, term: str) -> str:
    normalizer = getattr(getattr(tokenizer, "backend_tokenizer", None), "normalizer", None)
    return normalizer.normalize_str(term) if normalizer is not None else term


def add_domain_tokens(transformer: nn.Module, tokenizer, terms: list[str]) -> dict:
    """Add ``terms`` to ``tokenizer`` (in place) and grow ``transformer``'s input embeddings to match.

    Returns ``{"added": {term: {"id", "sub_tokens"}}, "skipped": {term: reason}, "first_new_id"}``. A term that
    already is a single token (or normalises to one added before) is skipped and reported."""
    from transformers import AddedToken

    first_new_id = len(tokenizer)
    plan: dict[str, tuple[str, list[int]]] = {}
    skipped: dict[str, str] = {}
    for term in terms:
        form = _normalized(tokenizer, term)
        ids = tokenizer(term, add_special_tokens=False)["input_ids"]
        if len(ids) == 1:
            skipped[term] = f"already one token ({tokenizer.convert_ids_to_tokens(ids)[0]!r})"
        elif any(form == other for other, _ in plan.values()):
            skipped[term] = f"same normalised form as another term ({form!r})"
        elif not ids:
            skipped[term] = "the tokenizer yields no tokens for it"
        else:
            plan[term] = (form, ids)
    tokenizer.add_tokens([AddedToken(form, single_word=True, normalized=True) for form, _ in plan.values()])
    added = {}
    if plan:
        embeddings = transformer.resize_token_embeddings(len(tokenizer), mean_resizing=False)
        with torch.no_grad():
            for term, (form, ids) in plan.items():
                new_id = tokenizer.convert_tokens_to_ids(form)
                embeddings.weight[new_id] = embeddings.weight[ids].mean(0)
                added[term] = {"id": int(new_id), "sub_tokens": tokenizer.convert_ids_to_tokens(ids)}
    return {"added": added, "skipped": skipped, "first_new_id": first_new_id}


def train_new_rows_only(embeddings: nn.Embedding, first_new_id: int) -> None:
    """Let only rows ``first_new_id…`` of a (trainable) embedding matrix learn: the other rows' gradients are zeroed
    before the optimizer sees them. The matrix must get no weight decay (``fastemb.train.param_groups`` checks
    ``TRAINABLE_FROM``), so with Adam the frozen rows stay exactly as they were."""
    weight = embeddings.weight
    weight.requires_grad_(True)
    setattr(weight, TRAINABLE_FROM, first_new_id)

    def mask(grad: torch.Tensor) -> torch.Tensor:
        grad = grad.clone()
        grad[:first_new_id] = 0
        return grad

    weight.register_hook(mask)
