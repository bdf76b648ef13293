"""Domain adaptation of a training job's encoder: new domain tokens, adapters, a frozen base.

``adapt_encoder(encoder, model_spec)`` applies ``model.new_tokens`` (fastemb/model/new_tokens.py) and
``model.adapters`` (fastemb/model/adapters.py). With adapters the base is frozen: only the adapters (and, with
``adapters.train_new_tokens``, the new tokens' embedding rows) get gradients, and only those parameters reach the
optimizer (``fastemb.train.param_groups``). The returned report (also kept as ``encoder.adaptation``) says what was
added and how many parameters train.
"""
from __future__ import annotations

from torch import nn

from fastemb.model.adapters import is_adapter_parameter, with_adapters
from fastemb.model.new_tokens import TRAINABLE_FROM, add_domain_tokens, train_new_rows_only


def parameter_counts(model: nn.Module) -> dict:
    """Total and trainable parameters; an embedding matrix training only its new rows counts only those rows."""
    total = trainable = 0
    for p in model.parameters():
        total += p.numel()
        if p.requires_grad:
            first = getattr(p, TRAINABLE_FROM, 0)
            trainable += (p.shape[0] - first) * p[0].numel()
    return {"total": total, "trainable": trainable, "trainable_fraction": trainable / max(total, 1)}


def freeze_base(transformer: nn.Module, new_rows_from: int | None) -> None:
    """Freeze everything but the adapters; with ``new_rows_from``, the embedding rows from there on train too."""
    for name, p in transformer.named_parameters():
        p.requires_grad_(is_adapter_parameter(name))
    if new_rows_from is not None:
        train_new_rows_only(transformer.get_input_embeddings(), new_rows_from)


def adapt_encoder(encoder, model_spec) -> dict:
    """Apply the spec's ``new_tokens`` and ``adapters`` to ``encoder`` in place; returns the report."""
    report: dict = {}
    new_rows_from = None
    if model_spec.new_tokens:
        tokens = add_domain_tokens(encoder.transformer, encoder.tokenizer, list(model_spec.new_tokens))
        report["new_tokens"] = tokens
        new_rows_from = tokens["first_new_id"] if tokens["added"] else None
    a = model_spec.adapters
    if a is not None:
        encoder.transformer = with_adapters(encoder.transformer, a.size, a.layers, a.placement, a.activation)
        freeze_base(encoder.transformer, new_rows_from if a.train_new_tokens else None)
        report["adapters"] = {**encoder.transformer.config.adapter_settings(), "train_new_tokens": a.train_new_tokens}
    report["parameters"] = parameter_counts(encoder)
    encoder.adaptation = report
    return report


def describe_adaptation(report: dict) -> str:
    """One line for the progress log: tokens added, adapters, trainable parameters."""
    parts = []
    if "new_tokens" in report:
        tokens = report["new_tokens"]
        parts.append(f"{len(tokens['added'])} new tokens" + (f" ({len(tokens['skipped'])} skipped: "
                     + ", ".join(f"{t}: {r}" for t, r in tokens["skipped"].items()) + ")" if tokens["skipped"] else ""))
    if "adapters" in report:
        a = report["adapters"]
        parts.append(f"adapters size {a['size']} ({a['placement']}) on layers {a['layers'] or 'all'}, base frozen")
    n = report["parameters"]
    parts.append(f"{n['trainable']:,} of {n['total']:,} parameters train ({100 * n['trainable_fraction']:.2f}%)")
    return "; ".join(parts)
