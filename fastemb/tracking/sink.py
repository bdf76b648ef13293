"""Rank 0's live training metrics, added to the MLflow run its driver opened, without ever making training wait.

The loop puts each progress entry and dev evaluation on a queue (:meth:`MetricSink.log` never blocks: when the queue
is full an entry is dropped); a daemon thread imports mlflow and writes what is queued in batches. A store that fails
costs one warning, and the thread drops everything after it. :meth:`MetricSink.close` waits a bounded time for the
queue to empty at the end of training.
"""
from __future__ import annotations

import logging
import queue
import threading
import time
from typing import Any

from fastemb.tracking.target import client_env, numeric

logger = logging.getLogger(__name__)
_STOP = object()


class MetricSink:
    """Metrics queued by the training loop and written to run ``run_id`` at ``uri`` by a background thread."""

    def __init__(self, uri: str, run_id: str, max_queued: int = 10_000):
        self.uri, self.run_id = uri, run_id
        self.failed = False
        self.written = 0
        self._queue: queue.Queue = queue.Queue(max_queued)
        self._thread = threading.Thread(target=self._drain, name="fastemb-mlflow-sink", daemon=True)
        self._thread.start()

    def log(self, metrics: dict[str, Any], step: int, timestamp_s: float | None = None) -> None:
        """Queue the numeric entries of ``metrics`` at ``step`` (returns at once)."""
        if self.failed:
            return
        try:
            values = numeric({k: v for k, v in metrics.items() if k not in ("step", "time")})
            self._queue.put_nowait((values, step, int((timestamp_s or time.time()) * 1000)))
        except queue.Full:
            pass

    def close(self, timeout_s: float = 10.0) -> None:
        """Let the thread write what is queued, waiting at most ``timeout_s``."""
        try:
            self._queue.put(_STOP, timeout=timeout_s)
        except queue.Full:
            return
        self._thread.join(timeout_s)

    def _drain(self) -> None:
        client = None
        while True:
            items = [self._queue.get()]
            while not self._queue.empty() and len(items) < 200:
                items.append(self._queue.get_nowait())
            stop = any(item is _STOP for item in items)
            entries = [item for item in items if item is not _STOP]
            if entries and not self.failed:
                try:
                    if client is None:
                        client_env()
                        from mlflow.tracking import MlflowClient

                        client = MlflowClient(self.uri)
                    from mlflow.entities import Metric

                    metrics = [Metric(k, v, ms, step) for values, step, ms in entries for k, v in values.items()]
                    for i in range(0, len(metrics), 1000):  # MLflow's limit on metrics per batch
                        client.log_batch(self.run_id, metrics=metrics[i:i + 1000])
                    self.written += len(metrics)
                except Exception as err:  # noqa: BLE001 - the store's failures must never stop training
                    self.failed = True
                    logger.warning(f"MLflow: live training metrics could not be written to {self.uri} "
                                   f"({type(err).__name__}: {str(err).strip()[:200]}); training goes on without them")
            if stop:
                return
