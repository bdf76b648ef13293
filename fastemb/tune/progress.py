"""One log line per ended Tune trial: its objective, its parameters, finished or stopped early (or failed).

Tune's own console output (status tables every few seconds, a result box per report) is hidden unless
FASTEMB_LOG_LEVEL=DEBUG (``fastemb.logs.ray_tune_verbosity``); the trials' training workers log their progress and
dev-evaluation lines as any training job does.
"""
from __future__ import annotations

import logging

from ray.tune import Callback

logger = logging.getLogger(__name__)


def _short(value) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


class TrialLines(Callback):
    """Logs ``trial 3f44bcd2 finished at step 6: dev_ndcg@10_compressed 0.6227 (temperature 0.05, lr 0.0001, ...)``
    when a trial ends; ``metric`` is the objective, ``params`` the sampled parameters shown."""

    def __init__(self, metric: str, params: list[str]) -> None:
        self.metric, self.params = metric, list(params)

    def on_trial_complete(self, iteration: int, trials: list, trial, **info) -> None:
        result = trial.last_result or {}
        ended = "finished" if result.get("finished") else "stopped early"
        value = result.get(self.metric)
        objective = f"{self.metric} {value:.4f}" if isinstance(value, (int, float)) else f"no {self.metric}"
        params = ", ".join(f"{p} {_short(trial.config.get(p))}" for p in self.params)
        logger.info(f"trial {trial.trial_id} {ended} at step {result.get('step', '?')}: {objective} ({params})")

    def on_trial_error(self, iteration: int, trials: list, trial, **info) -> None:
        logger.warning(f"trial {trial.trial_id} failed; its error: {trial.error_file or trial.path}")
