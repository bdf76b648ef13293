"""Where a job's MLflow runs go, the client settings fastemb uses, and the names MLflow accepts."""
from __future__ import annotations

import json
import logging
import math
import os
import re
import shutil
import socket
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from fastemb import logs
from fastemb.model.teachers import cache_root
from fastemb.spec import TrackingSpec
from fastemb.spec.base import is_uri

LOCAL_DB, LOCAL_ARTIFACTS = "mlflow.db", "mlartifacts"
MAX_PARAM_CHARS = 6000  # MLflow's limit on a parameter's value
# MLflow's client, as fastemb runs it: no usage telemetry (no network but the tracking server), few and short HTTP
# retries (a down server must cost seconds, not MLflow's ~4 minutes of backoff), its INFO chatter hidden.
CLIENT_ENV = {"MLFLOW_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "true", "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1",
              "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1", "MLFLOW_HTTP_REQUEST_TIMEOUT": "10"}

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Target:
    """An MLflow store (tracking URI), the experiment a job logs to, and where a new experiment's artifacts go (a
    local store's artifact folder; a server decides for itself)."""
    uri: str
    experiment: str
    artifact_root: str | None = None

    @property
    def is_server(self) -> bool:
        return self.uri.startswith(("http://", "https://"))

    def as_dict(self) -> dict[str, Any]:
        return {"uri": self.uri, "experiment": self.experiment, "artifact_root": self.artifact_root}


def resolve_target(tracking: TrackingSpec, run_dir: Path, job_name: str) -> Target | None:
    """The target of a job's ``tracking`` section (None when tracking is off)."""
    if not tracking.enabled:
        return None
    experiment = tracking.experiment or job_name
    if tracking.mlflow is True:
        return local_store(run_dir, experiment)
    if not is_uri(tracking.mlflow):
        return local_store(Path(tracking.mlflow), experiment)
    return Target(tracking.mlflow, experiment)


def local_store(folder: Path, experiment: str) -> Target:
    """MLflow's SQLite store in ``folder`` (``mlflow.db``), artifacts in ``folder/mlartifacts``."""
    folder = Path(folder).expanduser().resolve()
    return Target(f"sqlite:///{folder / LOCAL_DB}", experiment, (folder / LOCAL_ARTIFACTS).as_uri())


def seed_local_store(target: Target) -> None:
    """Start a new local store as a copy of an empty one (``$FASTEMB_CACHE/mlflow/empty-<mlflow version>.db``, made
    once): MLflow builds a new SQLite store by running its schema migrations, seconds for every new run folder. Any
    failure leaves the store to MLflow."""
    db = Path(target.uri.removeprefix("sqlite:///")) if target.uri.startswith("sqlite:///") else None
    if db is None or db.exists():
        return
    try:
        import mlflow
        from mlflow.tracking import MlflowClient

        template = cache_root() / "mlflow" / f"empty-{mlflow.__version__}.db"
        if not template.is_file():
            template.parent.mkdir(parents=True, exist_ok=True)
            partial = template.with_name(f"{template.name}.{os.getpid()}.partial")
            MlflowClient(f"sqlite:///{partial}").search_experiments()  # creates the tables
            os.replace(partial, template)
        db.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(template, db)
    except Exception as err:  # noqa: BLE001 - a cache that fails costs MLflow's own (slower) store creation
        logger.debug(f"no copy of an empty MLflow store ({err}); MLflow creates {db}")


def ui_command(target: Target) -> str:
    """The command that browses a target's runs."""
    if target.is_server:
        return f"open {target.uri}"
    return f"mlflow ui --backend-store-uri {target.uri}"


def client_env() -> None:
    """Set fastemb's MLflow client settings in this process (a value the user set wins); call before importing
    mlflow."""
    for key, value in CLIENT_ENV.items():
        os.environ.setdefault(key, value)
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "DEBUG" if logs.verbose() else "WARNING")


def unreachable(target: Target, timeout_s: float = 3.0) -> str | None:
    """Why a tracking server cannot be used right now (None when it answers, and for stores that are not servers)."""
    if not target.is_server:
        return None
    url = urlparse(target.uri)
    try:
        with socket.create_connection((url.hostname, url.port or (443 if url.scheme == "https" else 80)), timeout_s):
            pass
        with urllib.request.urlopen(target.uri.rstrip("/") + "/health", timeout=timeout_s) as resp:
            return None if resp.status == 200 else f"GET /health answered {resp.status}"
    except (OSError, urllib.error.URLError) as err:
        return f"{type(err).__name__}: {err}"


_BAD_CHARS = re.compile(r"[^/\w.\- :]")


def metric_key(name: str) -> str:
    """A metric or parameter name MLflow accepts (``dev_ndcg@10`` → ``dev_ndcg_at_10``)."""
    return _BAD_CHARS.sub("_", name.replace("@", "_at_"))


def numeric(metrics: dict[str, Any]) -> dict[str, float]:
    """The finite numbers of a flat dict, under names MLflow accepts (booleans and strings left out)."""
    out = {}
    for key, value in metrics.items():
        if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            out[metric_key(key)] = float(value)
    return out


def flatten_params(tree: dict[str, Any], prefix: str = "") -> dict[str, str]:
    """A nested dict (a job spec) as dotted MLflow parameters; lists and None as JSON, long values cut."""
    out: dict[str, str] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            out.update(flatten_params(value, f"{name}."))
            continue
        text = value if isinstance(value, str) else json.dumps(value, default=str)
        out[metric_key(name)] = text if len(text) <= MAX_PARAM_CHARS else text[:MAX_PARAM_CHARS - 1] + "…"
    return out
