"""A one-line training progress report: step, loss, throughput, ETA."""
from __future__ import annotations

import logging
import time

logger = logging.getLogger(__name__)


def _fmt_duration(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s"


class ProgressLine:
    """Logs ``step 120/625 | loss 0.8123 | 41.2 pairs/s | ETA 3m12s`` every ``every`` steps (``verbose``: rank 0)."""

    def __init__(self, total_steps: int, pairs_per_step: int, every: int, start_step: int = 0,
                 verbose: bool = True):
        self.verbose = verbose
        self.total, self.pairs_per_step, self.every = total_steps, pairs_per_step, every
        self.t0, self.step0 = time.perf_counter(), start_step
        self.loss_sum, self.loss_n = 0.0, 0

    def update(self, step: int, loss: float, extra: dict[str, float] | None = None) -> dict | None:
        """Record a step's loss; returns the reported stats on reporting steps (``extra``: losses by task, logged)."""
        self.loss_sum += loss
        self.loss_n += 1
        if step % self.every and step != self.total:
            return None
        elapsed = time.perf_counter() - self.t0
        rate = (step - self.step0) * self.pairs_per_step / max(elapsed, 1e-9)
        eta = (self.total - step) * self.pairs_per_step / max(rate, 1e-9)
        stats = {"step": step, "loss": self.loss_sum / self.loss_n, "pairs_per_s": rate}
        if self.verbose:
            tasks = " | " + ", ".join(f"{name} {value:.4f}" for name, value in extra.items()) if extra else ""
            logger.info(f"step {step}/{self.total} | loss {stats['loss']:.4f}{tasks} | {rate:.1f} pairs/s | "
                        f"ETA {_fmt_duration(eta)}")
        self.loss_sum, self.loss_n = 0.0, 0
        return stats
