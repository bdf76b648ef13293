"""One MLflow child run per Ray Tune trial, under the search's run: Ray Tune's ``MLflowLoggerCallback``, made safe.

Ray's callback (``ray.air.integrations.mlflow``) runs on the Tune driver: it opens a run per trial with the trial's
sampled parameters and logs every result the trial reports. fastemb adds what it lacks: each trial run is a child of
the search's run (``mlflow.parentRunId``); each report logs the objective and the trial's dev metrics under names
MLflow accepts (Ray would log ``dev_ndcg@10_compressed`` as is, which MLflow refuses); a trial that ASHA stopped
before its last step ends ``KILLED`` and tagged ``fastemb.trial_status: STOPPED EARLY`` (Ray ends it ``FINISHED``);
and any failure of the store costs one warning and turns the callback off instead of failing the search.
"""
from __future__ import annotations

import logging
from typing import Any

from fastemb.tracking.run import PARENT_TAG
from fastemb.tracking.target import Target, client_env, numeric

client_env()  # before Ray's integration imports mlflow

from ray.air.integrations.mlflow import MLflowLoggerCallback  # noqa: E402

STATUS_TAG = "fastemb.trial_status"
logger = logging.getLogger(__name__)


class TrialRuns(MLflowLoggerCallback):
    """Child runs of ``parent_run_id``, one per trial; ``metrics``: the result keys logged at every report."""

    def __init__(self, target: Target, parent_run_id: str, metrics: list[str]):
        super().__init__(tracking_uri=target.uri, experiment_name=target.experiment,
                         tags={PARENT_TAG: parent_run_id, "fastemb.kind": "tune-trial"})
        self.metrics = metrics
        self.off = False

    def setup(self, *args, **kwargs) -> None:
        self._safely("setup", super().setup, *args, **kwargs)

    def log_trial_start(self, trial) -> None:
        self._safely("opening a trial run", super().log_trial_start, trial)

    def log_trial_result(self, iteration: int, trial, result: dict[str, Any]) -> None:
        if trial not in getattr(self, "_trial_runs", {}):
            return
        values = numeric({k: result[k] for k in self.metrics if k in result})
        self._safely("logging a trial result", self.mlflow_util.log_metrics, run_id=self._trial_runs[trial],
                     metrics_to_log=values, step=result.get("training_iteration", iteration))

    def log_trial_end(self, trial, failed: bool = False) -> None:
        run_id = getattr(self, "_trial_runs", {}).get(trial)
        if run_id is None:
            return
        finished = (trial.last_result or {}).get("finished")
        status, label = ("FAILED", "ERROR") if failed else ("FINISHED", "FINISHED") if finished else \
            ("KILLED", "STOPPED EARLY")
        self._safely("tagging a trial run", lambda: self.mlflow_util._get_client().set_tag(run_id, STATUS_TAG, label))
        self._safely("closing a trial run", self.mlflow_util.end_run, run_id=run_id, status=status)

    def _safely(self, what: str, call, *args, **kwargs) -> None:
        if self.off:
            return
        try:
            call(*args, **kwargs)
        except Exception as err:  # noqa: BLE001 - the store's failures must never stop the search
            self.off = True
            logger.warning(f"MLflow {what} failed at {self.tracking_uri} ({type(err).__name__}: "
                           f"{str(err).strip()[:200]}); the search goes on without tracking its trials")
