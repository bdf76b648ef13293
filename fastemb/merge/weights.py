"""Weight-space merging: θ = Σ wᵢ·θᵢ over models of one architecture and one tokenizer.

WiSE-FT (Wortsman et al. 2022, "Robust fine-tuning of zero-shot models") interpolates a fine-tuned model with the
model it started from: the tuned weights keep most of their in-domain gain while the base's weights bring back what
fine-tuning made it forget. LM-Cocktail (Xiao et al. 2023, "LM-Cocktail: Resilient Tuning of Language Models via
Model Merging") does the same with several models and weights. Interpolating only means something for models that
share every parameter's role: the same architecture (layers, widths, pooling) and the same tokenizer (the same token
ids for the same text), which :func:`check_mergeable` requires.
"""
from __future__ import annotations

import copy
import hashlib
import json
from collections.abc import Sequence

import torch

from fastemb.errors import FastembError
from fastemb.model.encoder import Encoder


class MergeError(FastembError, ValueError):
    """Models that cannot be merged; the message names the spec field that gave the model."""


def architecture(encoder: Encoder) -> dict:
    """What two models must share to be merged, besides every weight's shape."""
    cfg = encoder.transformer.config
    return {"class": type(encoder.transformer).__name__, "model_type": cfg.model_type,
            "layers": getattr(cfg, "num_hidden_layers", None), "width": encoder.dim,
            "heads": getattr(cfg, "num_attention_heads", None),
            "intermediate": getattr(cfg, "intermediate_size", None),
            "pooling": encoder.pooling, "normalize": encoder.normalize}


def tokenizer_fingerprint(tokenizer) -> tuple[int, str]:
    """(vocabulary size, hash of everything that maps a text to token ids): a fast tokenizer's full definition
    (normaliser, pre-tokeniser, vocabulary, added tokens) without its truncation and padding settings, or a slow
    one's vocabulary and class; a synonym dictionary in front of it counts too."""
    inner = getattr(tokenizer, "tokenizer", tokenizer)  # a SynonymTokenizer wraps the model's own tokenizer
    backend = getattr(inner, "backend_tokenizer", None)
    if backend is not None:
        definition = json.loads(backend.to_str())
        for key in ("truncation", "padding"):
            definition.pop(key, None)
    else:
        definition = {"class": type(inner).__name__, "vocab": sorted(inner.get_vocab().items())}
    normalizer = getattr(tokenizer, "normalizer", None)
    definition["synonyms"] = getattr(normalizer, "fingerprint", None)
    digest = hashlib.sha256(json.dumps(definition, sort_keys=True).encode()).hexdigest()
    return len(inner.get_vocab()), digest


def _describe(arch: dict) -> str:
    return (f"{arch['class']} ({arch['model_type']}, {arch['layers']} layers, width {arch['width']}, "
            f"{arch['pooling']} pooling{', normalised' if arch['normalize'] else ''})")


def check_mergeable(encoders: Sequence[Encoder], fields: Sequence[str]) -> None:
    """Raise :class:`MergeError` naming ``fields[i]`` when model ``i`` differs from the first in architecture, in a
    weight's shape, or in its tokenizer."""
    ref, ref_field = encoders[0], fields[0]
    ref_arch, ref_tok = architecture(ref), tokenizer_fingerprint(ref.tokenizer)
    ref_shapes = {k: tuple(v.shape) for k, v in ref.transformer.state_dict().items()}
    for enc, field in zip(encoders[1:], fields[1:]):
        arch = architecture(enc)
        if arch != ref_arch:
            raise MergeError(f"{field}: architecture {_describe(arch)} differs from {ref_field}'s "
                             f"{_describe(ref_arch)}; only models of one architecture can be merged")
        tok = tokenizer_fingerprint(enc.tokenizer)
        if tok != ref_tok:
            detail = f"{tok[0]} tokens vs {ref_tok[0]}" if tok[0] != ref_tok[0] else \
                "same vocabulary size, other tokens or text normalisation"
            raise MergeError(f"{field}: tokenizer differs from {ref_field}'s ({detail}); merged weights would read "
                             "token ids that mean other things")
        shapes = {k: tuple(v.shape) for k, v in enc.transformer.state_dict().items()}
        if shapes != ref_shapes:
            name = sorted(set(shapes) ^ set(ref_shapes)) or [k for k in shapes if shapes[k] != ref_shapes[k]]
            raise MergeError(f"{field}: weights differ in name or shape from {ref_field}'s (first: {name[0]}); "
                             "only models of one architecture can be merged")


def interpolate(state_dicts: Sequence[dict[str, torch.Tensor]], weights: Sequence[float]) -> dict[str, torch.Tensor]:
    """Σ wᵢ·θᵢ for every floating-point tensor (computed in float32, stored in the first model's dtype); other
    tensors (integer buffers such as position ids) are the first model's."""
    out = {}
    for name, first in state_dicts[0].items():
        if not first.is_floating_point():
            out[name] = first.clone()
            continue
        acc = torch.zeros_like(first, dtype=torch.float32)
        for sd, w in zip(state_dicts, weights):
            acc += float(w) * sd[name].float()
        out[name] = acc.to(first.dtype)
    return out


def merged_encoder(encoders: Sequence[Encoder], weights: Sequence[float]) -> Encoder:
    """A copy of the first encoder (its tokenizer, pooling, length) holding the interpolated weights."""
    merged = copy.deepcopy(encoders[0])
    merged.transformer.load_state_dict(interpolate([e.transformer.state_dict() for e in encoders], weights))
    return merged.eval()
