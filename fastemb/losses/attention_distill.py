"""MiniLM-style deep self-attention distillation: last-layer attention and value relations.

For the last layer of teacher and student, per head ``a`` and per (non-padding) query token ``t``::

    L_AT = (1 / (H·|x|)) Σ_a Σ_t KL( A^T_{a,t} ‖ A^S_{a,t} )          A = softmax(Q Kᵀ / √d_k)
    L_VR = (1 / (H·|x|)) Σ_a Σ_t KL( VR^T_{a,t} ‖ VR^S_{a,t} )        VR = softmax(V Vᵀ / √d_k)
    L    = L_AT + L_VR

``|x|`` counts the real (non-padding) tokens of the batch and padding keys have zero probability.
The teacher and student need the same number of heads and the same token sequence (same tokenizer);
their hidden sizes may differ (the relations are L × L whatever the head size).
``last_layer_attention(model, …)`` extracts ``A`` (Hugging Face ``output_attentions``, eager attention)
and the value vectors ``V`` (a hook on the last layer's value projection) from BERT- or MPNet-style models.

Reference: Wang et al., "MiniLM: Deep Self-Attention Distillation for Task-Agnostic Compression of
Pre-Trained Transformers" (NeurIPS 2020), §3.1–3.2.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def _token_mask(attention_mask: torch.Tensor | None, b: int, length: int, device) -> torch.Tensor:
    if attention_mask is None:
        return torch.ones(b, length, dtype=torch.bool, device=device)
    return attention_mask.to(torch.bool)


def _masked_row_kl(log_t: torch.Tensor, log_s: torch.Tensor, p_t: torch.Tensor,
                   token_mask: torch.Tensor) -> torch.Tensor:
    """Mean over heads and real query tokens of Σ_k p_t (log p_t − log p_s); tensors (B, H, L, L)."""
    terms = torch.where(p_t > 0, p_t * (log_t - log_s), torch.zeros_like(p_t))
    per_row = terms.sum(-1)                                             # (B, H, L)
    rows = token_mask.unsqueeze(1).to(per_row.dtype)                    # (B, 1, L)
    return (per_row * rows).sum() / (rows.sum() * per_row.shape[1]).clamp(min=1.0)


def attention_kl(teacher_attn: torch.Tensor, student_attn: torch.Tensor,
                 attention_mask: torch.Tensor | None = None, eps: float = 1e-12) -> torch.Tensor:
    """L_AT from attention probabilities (B, H, L, L) (rows sum to 1 over the keys)."""
    if teacher_attn.shape != student_attn.shape:
        raise ValueError(f"attention shapes differ: teacher {tuple(teacher_attn.shape)}, "
                         f"student {tuple(student_attn.shape)} (same heads and tokens needed)")
    teacher_attn = teacher_attn.to(student_attn.dtype).detach()
    mask = _token_mask(attention_mask, teacher_attn.shape[0], teacher_attn.shape[2], teacher_attn.device)
    return _masked_row_kl(teacher_attn.clamp_min(eps).log(), student_attn.clamp_min(eps).log(), teacher_attn, mask)


def value_relation_logits(values: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
    """V Vᵀ / √d_k per head (values (B, H, L, d_k)), padding keys set to the dtype's minimum."""
    logits = values @ values.transpose(-1, -2) / math.sqrt(values.shape[-1])
    if attention_mask is not None:
        keys = ~attention_mask.to(torch.bool)[:, None, None, :]
        logits = logits.masked_fill(keys, torch.finfo(logits.dtype).min)
    return logits


def value_relation_kl(teacher_values: torch.Tensor, student_values: torch.Tensor,
                      attention_mask: torch.Tensor | None = None) -> torch.Tensor:
    """L_VR from value vectors (B, H, L, d_k); head sizes may differ between teacher and student."""
    if teacher_values.shape[:3] != student_values.shape[:3]:
        raise ValueError(f"value shapes differ in (batch, heads, tokens): teacher {tuple(teacher_values.shape)}, "
                         f"student {tuple(student_values.shape)}")
    teacher_values = teacher_values.to(student_values.dtype).detach()
    log_t = F.log_softmax(value_relation_logits(teacher_values, attention_mask), dim=-1)
    log_s = F.log_softmax(value_relation_logits(student_values, attention_mask), dim=-1)
    mask = _token_mask(attention_mask, log_t.shape[0], log_t.shape[2], log_t.device)
    return _masked_row_kl(log_t, log_s, log_t.exp(), mask)


class AttentionDistillLoss(nn.Module):
    """MiniLM loss L_AT + L_VR (value relation optional); see the module docstring."""

    def __init__(self, value_relation: bool = True, attention_weight: float = 1.0, value_weight: float = 1.0):
        super().__init__()
        self.value_relation = value_relation
        self.attention_weight, self.value_weight = attention_weight, value_weight

    def forward(self, student_attn: torch.Tensor, teacher_attn: torch.Tensor,
                student_values: torch.Tensor | None = None, teacher_values: torch.Tensor | None = None,
                attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Attentions (B, H, L, L); values (B, H, L, d_k), needed when ``value_relation``; mask (B, L)."""
        loss = self.attention_weight * attention_kl(teacher_attn, student_attn, attention_mask)
        if self.value_relation:
            if student_values is None or teacher_values is None:
                raise ValueError("value_relation=True needs student_values and teacher_values")
            loss = loss + self.value_weight * value_relation_kl(teacher_values, student_values, attention_mask)
        return loss


def _last_self_attention(model: nn.Module) -> tuple[nn.Module, nn.Linear]:
    """(last layer's self-attention module, its value projection) of a BERT- or MPNet-style encoder."""
    layers = model.encoder.layer
    attn = layers[-1].attention
    inner = getattr(attn, "self", None) or getattr(attn, "attn", None)
    value = getattr(inner, "value", None) or getattr(inner, "v", None)
    if inner is None or not isinstance(value, nn.Linear):
        raise ValueError(f"{type(model).__name__}: cannot find the last layer's value projection "
                         "(supported: BERT-style attention.self.value, MPNet-style attention.attn.v)")
    return inner, value


def run_with_last_attention(model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                            output_hidden_states: bool = False) -> tuple[object, torch.Tensor]:
    """Run ``model`` once with attentions (and optionally hidden states); return (its output, the last layer's
    values (B, H, L, d_k)); ``output.attentions[-1]`` is the last-layer attention (B, H, L, L).

    Switches the model to eager attention (SDPA returns no probabilities) and disables the last layer's
    attention dropout during the call, so the returned rows are proper distributions."""
    inner, value_proj = _last_self_attention(model)
    if getattr(model.config, "_attn_implementation", "eager") != "eager":
        model.set_attn_implementation("eager")
    captured: list[torch.Tensor] = []
    handle = value_proj.register_forward_hook(lambda _m, _i, out: captured.append(out))
    dropout = getattr(inner, "dropout", None)
    saved_p = dropout.p if isinstance(dropout, nn.Dropout) else None
    try:
        if saved_p is not None:
            dropout.p = 0.0
        out = model(input_ids=input_ids, attention_mask=attention_mask, output_attentions=True,
                    output_hidden_states=output_hidden_states)
    finally:
        handle.remove()
        if saved_p is not None:
            dropout.p = saved_p
    heads = out.attentions[-1].shape[1]
    v = captured[-1]
    b, length, width = v.shape
    return out, v.view(b, length, heads, width // heads).transpose(1, 2)


def last_layer_attention(model: nn.Module, input_ids: torch.Tensor,
                         attention_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Run ``model`` once; return (last hidden state, last-layer attention (B, H, L, L), values (B, H, L, d_k))
    (see :func:`run_with_last_attention`)."""
    out, values = run_with_last_attention(model, input_ids, attention_mask)
    return out.last_hidden_state, out.attentions[-1], values
