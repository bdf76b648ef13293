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


def param_groups(model: nn.Module, weight_decay: float, lr_by_prefix: dict[str, float] | None = None) -> list[dict]:
    """AdamW groups of ``model``'s trainable parameters (empty groups dropped). ``lr_by_prefix``: parameters whose name
    starts with a key get that learning rate (an image–text model's pretrained text tower trains slower than its
    image tower from scratch); the others the optimizer's."""
    groups: dict[tuple[bool, float | None], list] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        skip = any(k in name for k in NO_DECAY) or hasattr(p, TRAINABLE_FROM)
        lr = next((v for prefix, v in (lr_by_prefix or {}).items() if name.startswith(prefix)), None)
        groups.setdefault((skip, lr), []).append(p)
    return [{"params": params, "weight_decay": 0.0 if skip else weight_decay, **({"lr": lr} if lr is not None else {})}
            for (skip, lr), params in sorted(groups.items(), key=lambda kv: (kv[0][0], kv[0][1] or 0.0))]
