"""Symmetric image–text InfoNCE (the CLIP loss), with negatives gathered across workers.

A batch holds B (image, caption) pairs with image embeddings ``x_i`` and caption embeddings ``t_i``; ``s`` is cosine
similarity (or dot product) and ``τ`` the temperature. Every image and caption of the *global* batch is a candidate
(all-gathered across workers with their gradient, as InfoNCE does, fastemb/losses/infonce.py)::

    L_t→x,i = -log( exp(s(t_i, x_i) / τ) / Σ_j exp(s(t_i, x_j) / τ) )      (a caption finds its image)
    L_x→t,i = -log( exp(s(x_i, t_i) / τ) / Σ_j exp(s(x_i, t_j) / τ) )      (an image finds its caption)
    L = (mean_i L_t→x,i + mean_i L_x→t,i) / 2

False negatives are masked: another image of the same concept (``image_ids``, e.g. a hash of its concept: two
stamps of one subject, two skin tones of one emoji) is not a negative of a caption, and another caption with the
same text (``text_ids``) is not a negative of an image. Each rank averages over its own pairs; data-parallel gradient
averaging then gives the gradient of the mean over the global batch.

References: Radford et al., "Learning Transferable Visual Models From Natural Language Supervision" (CLIP, ICML 2021;
the symmetric loss); Zhang et al., "Contrastive Learning of Medical Visual Representations from Paired Images and
Text" (ConVIRT, 2020); van den Oord et al. (2018, InfoNCE); Zhai et al., "LiT: Zero-Shot Transfer with Locked-image
text Tuning" (CVPR 2022; the same loss with one tower frozen).
"""
from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from fastemb.losses.gather import all_gather_no_grad, all_gather_with_grad, rank_and_world, same_text_mask


class SymmetricInfoNCELoss(nn.Module):
    """Image → caption plus caption → image InfoNCE over a batch of pairs; see the module docstring. Called, it
    returns ``(loss, {"text_to_image": ..., "image_to_text": ...})``."""

    def __init__(self, temperature: float = 0.05, similarity: Literal["cosine", "dot"] = "cosine",
                 gather_across_workers: bool = True, mask_false_negatives: bool = True):
        super().__init__()
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        if similarity not in ("cosine", "dot"):
            raise ValueError(f"similarity must be 'cosine' or 'dot', got {similarity!r}")
        self.temperature, self.similarity = temperature, similarity
        self.gather, self.mask_false_negatives = gather_across_workers, mask_false_negatives

    def forward(self, image: torch.Tensor, text: torch.Tensor, image_ids: torch.Tensor | None = None,
                text_ids: torch.Tensor | None = None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """image, text: (B, d), row i of each a pair; ``image_ids``, ``text_ids``: (B,) int64 hashes (the image's
        concept, the caption's text) for false-negative masking, None: nothing masked."""
        if image.shape != text.shape:
            raise ValueError(f"image and text embeddings must have the same shape, got {tuple(image.shape)} and "
                             f"{tuple(text.shape)}")
        gather = all_gather_with_grad if self.gather else (lambda t: t)
        gather_ids = all_gather_no_grad if self.gather else (lambda t: t)
        rank, _ = rank_and_world() if self.gather else (0, 1)
        if self.similarity == "cosine":
            image, text = F.normalize(image, dim=-1), F.normalize(text, dim=-1)
        all_images, all_texts = gather(image), gather(text)
        target = torch.arange(len(image), device=image.device) + rank * len(image)
        mask = self.mask_false_negatives
        to_image = self._direction(text, all_images, target, image_ids if mask else None, gather_ids)
        to_text = self._direction(image, all_texts, target, text_ids if mask else None, gather_ids)
        return (to_image + to_text) / 2, {"text_to_image": to_image.detach(), "image_to_text": to_text.detach()}

    def _direction(self, anchors: torch.Tensor, candidates: torch.Tensor, target: torch.Tensor,
                   candidate_ids: torch.Tensor | None, gather_ids) -> torch.Tensor:
        """Mean cross-entropy of each anchor against every gathered candidate, its own pair's the positive;
        candidates with the positive's id (other than the positive) are masked."""
        scores = anchors @ candidates.T / self.temperature
        if candidate_ids is not None:
            false_neg = same_text_mask(target, len(candidates), candidate_ids, None, gather_ids)
            scores = scores.masked_fill(false_neg, torch.finfo(scores.dtype).min)
        return F.cross_entropy(scores, target)
