"""One MLflow run of a job, written by its driver; the store's failures cost a warning, never the job."""
from __future__ import annotations

import contextlib
import contextvars
import json
import logging
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from fastemb.tracking.target import (Target, client_env, flatten_params, metric_key, numeric, resolve_target,
                                     seed_local_store, ui_command, unreachable)

RUN_FILE = "mlflow_run.json"  # in the run folder: the MLflow run a rerun of the job goes on with
PARENT_TAG = "mlflow.parentRunId"
BATCH = 100  # MLflow's log_batch limit on parameters per call (and a modest number of metrics)

logger = logging.getLogger(__name__)
_parent: contextvars.ContextVar[str | None] = contextvars.ContextVar("fastemb_mlflow_parent", default=None)


class Tracker:
    """An MLflow run (or nothing: a tracker that is off ignores every call).

    Every store call goes through :meth:`_call`: the first failure of the store logs one warning naming it and turns the
    tracker off for the rest of the run."""

    def __init__(self, target: Target | None = None, client: Any = None, run_id: str | None = None):
        self.target, self.client, self.run_id = target, client, run_id
        self.resumed = False  # the run was opened by an earlier attempt of the job (run_dir/mlflow_run.json)

    @property
    def enabled(self) -> bool:
        return self.run_id is not None

    @classmethod
    def start(cls, target: Target | None, run_name: str, *, run_dir: Path | None = None,
              tags: dict[str, str] | None = None) -> Tracker:
        """Open the run ``run_name`` in ``target``'s experiment (the run ``run_dir/mlflow_run.json`` names, when it is
        in the same store: a rerun of a job goes on with its run). Inside :meth:`as_parent` of another tracker, the
        run is that run's child. Returns a tracker that is off when ``target`` is None or the store fails."""
        if target is None:
            return cls()
        why = unreachable(target)
        if why:
            logger.warning(f"MLflow tracking server {target.uri} is unreachable ({why}); the job runs without "
                           "tracking")
            return cls()
        tracker = cls(target)
        try:
            tracker._open(run_name, run_dir, tags or {})
        except Exception as err:  # noqa: BLE001 - the store's failures must never stop the job
            tracker._off("opening the run", err)
        return tracker

    def _open(self, run_name: str, run_dir: Path | None, tags: dict[str, str]) -> None:
        client_env()
        from mlflow.tracking import MlflowClient

        target = self.target
        seed_local_store(target)
        self.client = MlflowClient(target.uri)
        previous = _read_run_file(run_dir, target)
        if previous and _exists(self.client, previous):
            self.client.update_run(previous, status="RUNNING")
            self.run_id, self.resumed = previous, True
        else:
            experiment = self.client.get_experiment_by_name(target.experiment)
            experiment_id = experiment.experiment_id if experiment else self.client.create_experiment(
                target.experiment, artifact_location=target.artifact_root)
            parent = {PARENT_TAG: _parent.get()} if _parent.get() else {}
            self.run_id = self.client.create_run(experiment_id, run_name=run_name, tags={**tags, **parent}).info.run_id
        if run_dir is not None:
            run_dir.mkdir(parents=True, exist_ok=True)
            (run_dir / RUN_FILE).write_text(json.dumps({**target.as_dict(), "run_id": self.run_id}))
        logger.info(f"MLflow run {run_name} ({self.run_id}) in experiment {target.experiment!r} at {target.uri}; "
                    f"browse: {ui_command(target)}")

    @contextlib.contextmanager
    def as_parent(self) -> Iterator[None]:
        """Runs started inside this block are children of this run."""
        token = _parent.set(self.run_id) if self.enabled else None
        try:
            yield
        finally:
            if token is not None:
                _parent.reset(token)

    def worker_config(self) -> dict | None:
        """What rank 0 needs to add metrics to this run (fastemb/tracking/sink.py), or None when off."""
        return {"uri": self.target.uri, "run_id": self.run_id} if self.enabled else None

    def info(self) -> dict | None:
        """Where the run is (report.json's ``mlflow``)."""
        if not self.enabled:
            return None
        return {**self.target.as_dict(), "run_id": self.run_id, "ui": ui_command(self.target)}

    # ------------------------------------------------------------------------------------------------ writes
    def log_params(self, params: dict[str, Any]) -> None:
        """Parameters, nested dicts flattened to dotted names (``train.lr``)."""
        if not self.enabled:
            return
        items = list(flatten_params(params).items())
        for i in range(0, len(items), BATCH):
            self._batch(params=dict(items[i:i + BATCH]))

    def log_metrics(self, metrics: dict[str, Any], step: int | None = None, timestamp_s: float | None = None) -> None:
        """The numeric entries of ``metrics`` at ``step`` (names made MLflow-safe: ``ndcg@10`` → ``ndcg_at_10``)."""
        values = numeric(metrics)
        if values:
            self._batch(metrics=values, step=step or 0, timestamp_s=timestamp_s)

    def log_history(self, entries: list[dict]) -> None:
        """Training-history entries (each with ``step`` and ``time``) as metrics at their own steps and times."""
        for entry in entries:
            if "step" in entry:
                self.log_metrics({k: v for k, v in entry.items() if k not in ("step", "time")}, entry["step"],
                                 entry.get("time"))

    def log_record(self, record: dict[str, Any]) -> None:
        """The reproducible record (fastemb/record.py) as tags; the commit also as MLflow's own source tag."""
        code = record.get("code") or {}
        self.set_tags({"mlflow.source.git.commit": code.get("git_commit"), "fastemb.git_dirty": code.get("dirty"),
                       "fastemb.versions": record.get("versions"), "fastemb.seeds": record.get("seeds"),
                       "fastemb.data_fingerprint": record.get("data_fingerprint"),
                       "fastemb.spec_file": record.get("spec_file")})

    def set_tags(self, tags: dict[str, Any]) -> None:
        self._batch(tags={metric_key(k): v if isinstance(v, str) else json.dumps(v, default=str)
                          for k, v in tags.items() if v is not None})

    def log_artifacts(self, paths: list[Path], artifact_path: str | None = None) -> None:
        """Files and folders that exist (a folder's files keep their layout)."""
        for path in map(Path, paths):
            if not self.enabled or not path.exists():
                continue
            upload = self.client.log_artifacts if path.is_dir() else self.client.log_artifact
            self._call(f"uploading {path.name}", lambda up=upload, p=str(path): up(self.run_id, p, artifact_path))

    def finish(self, status: str = "FINISHED") -> None:
        """End the run with ``status`` (FINISHED, FAILED, KILLED)."""
        self._call("closing the run", lambda: self.client.set_terminated(self.run_id, status=status))

    @contextlib.contextmanager
    def running(self) -> Iterator[Tracker]:
        """The run as a block: FINISHED when it ends normally, FAILED (and re-raised) when it raises."""
        try:
            yield self
        except BaseException:
            self.finish("FAILED")
            raise
        self.finish()

    # ------------------------------------------------------------------------------------------------ guards
    def _batch(self, metrics: dict[str, float] | None = None, params: dict[str, str] | None = None,
               tags: dict[str, str] | None = None, step: int = 0, timestamp_s: float | None = None) -> None:
        if not self.enabled:
            return
        from mlflow.entities import Metric, Param, RunTag

        ms = int((timestamp_s or time.time()) * 1000)
        self._call("logging", lambda: self.client.log_batch(
            self.run_id, metrics=[Metric(k, v, ms, step) for k, v in (metrics or {}).items()],
            params=[Param(k, v) for k, v in (params or {}).items()],
            tags=[RunTag(k, v) for k, v in (tags or {}).items()]))

    def _call(self, what: str, call: Callable[[], Any]) -> Any:
        """``call()`` (a store call) when the tracker is on; a failure turns the tracker off with a warning."""
        if not self.enabled:
            return None
        try:
            return call()
        except Exception as err:  # noqa: BLE001 - the store's failures must never stop the job
            self._off(what, err)
            return None

    def _off(self, what: str, err: Exception) -> None:
        lines = str(err).strip().splitlines()
        logger.warning(f"MLflow {what} failed at {self.target.uri} ({type(err).__name__}: "
                       f"{lines[0][:300] if lines else ''}); the job goes on without tracking")
        self.run_id = None


def track_job(spec) -> Tracker:
    """The MLflow run of a run job (a ``RunJob``; off unless its ``tracking.mlflow`` is set), named after the job, in
    its run folder's store by default, with the flattened resolved spec as its parameters."""
    tracker = Tracker.start(resolve_target(spec.tracking, spec.run_dir, spec.name), spec.name, run_dir=spec.run_dir,
                            tags={"fastemb.job": spec.job})
    tracker.log_params(spec.model_dump(mode="json"))
    return tracker


def _read_run_file(run_dir: Path | None, target: Target) -> str | None:
    path = run_dir / RUN_FILE if run_dir is not None else None
    if path is None or not path.is_file():
        return None
    try:
        saved = json.loads(path.read_text())
    except ValueError:
        return None
    same = saved.get("uri") == target.uri and saved.get("experiment") == target.experiment
    return saved.get("run_id") if same else None


def _exists(client, run_id: str) -> bool:
    from mlflow.exceptions import MlflowException

    try:
        return client.get_run(run_id).info.lifecycle_stage == "active"
    except MlflowException:
        return False
