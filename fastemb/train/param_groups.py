"""Optimizer parameter groups: weight decay on weights, none on biases, LayerNorms and row-masked embeddings.

Frozen parameters (``requires_grad=False``, e.g. the base under adapters) are left out, so DeepSpeed holds
optimizer state for the trainable parameters only. An embedding matrix that trains only its new rows
(``fastemb.model.new_tokens.train_new_rows_only``) gets no weight decay: decoupled decay would shrink its frozen
rows even though their gradients are zero.
"""
from __future__ import annotations

from torch import nn

from fastemb.model.new_tokens import TRAINABLE_FROM

NO_DECAY = ("bias", "LayerNorm")


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """AdamW groups of ``model``'s trainable parameters (empty groups dropped)."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        skip = any(k in name for k in NO_DECAY) or hasattr(p, TRAINABLE_FROM)
        (no_decay if skip else decay).append(p)
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return [g for g in groups if g["params"]]
