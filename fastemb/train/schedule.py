"""Learning-rate schedules: linear warmup, then linear/cosine decay or constant."""
from __future__ import annotations

import math

import torch


def warmup_decay(optimizer: torch.optim.Optimizer, total_steps: int, warmup_ratio: float, kind: str
                 ) -> torch.optim.lr_scheduler.LambdaLR:
    """LambdaLR: 0 → lr over the warmup, then ``kind`` decay to 0 at ``total_steps``."""
    warmup = max(int(total_steps * warmup_ratio), 0)

    def factor(step: int) -> float:
        if warmup and step < warmup:
            return (step + 1) / warmup
        if kind == "constant":
            return 1.0
        progress = min((step - warmup) / max(total_steps - warmup, 1), 1.0)
        return 1.0 - progress if kind == "linear" else 0.5 * (1 + math.cos(math.pi * progress))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
