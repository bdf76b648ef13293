"""What every job spec is made of: the section base class, the run-job base, the error type, and the markers of
fields that name a filesystem path or URI.

Path markers live in a field's metadata (``json_schema_extra={"path": ...}``): ``input`` (the job reads it),
``output`` (the job writes it), or ``none`` (a string that looks like a path but is not one, e.g. a registry version
name). ``fastemb/spec/paths.py`` walks them; ``fastemb submit``, Tune trials and the demo act on what it finds.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic.fields import FieldInfo

from fastemb.errors import FastembError

PATH_KEY = "path"  # the metadata key of a path marker
PathKind = Literal["input", "output"]


class SpecError(FastembError, ValueError):
    """A job spec that cannot be used; the message names each bad field."""


class Section(BaseModel):
    """A part of a job spec: unknown keys are refused, assignments validated."""
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


def input_path(default: Any = ..., **kwargs: Any) -> Any:
    """A field naming a file, folder or URI the job reads (a value that is not a local path, such as an alias or
    'wordnet', is left alone by path handling)."""
    return Field(default, json_schema_extra={PATH_KEY: "input"}, **kwargs)


def output_path(default: Any = ..., **kwargs: Any) -> Any:
    """A field naming a file, folder or URI the job writes."""
    return Field(default, json_schema_extra={PATH_KEY: "output"}, **kwargs)


def not_path(default: Any = ..., **kwargs: Any) -> Any:
    """A string field whose name or description sounds like a path but which names none (a version, a column)."""
    return Field(default, json_schema_extra={PATH_KEY: "none"}, **kwargs)


def path_kind(field: FieldInfo) -> PathKind | Literal["none"] | None:
    """A field's path marker: ``input``, ``output``, ``none`` (declared not a path), or None (unmarked)."""
    extra = field.json_schema_extra
    return extra.get(PATH_KEY) if isinstance(extra, dict) else None


def is_uri(value: str) -> bool:
    """An object-store (or other scheme) URI rather than a filesystem path."""
    return "://" in value


class RayRunSpec(Section):
    """Where the job runs."""
    address: str | None = Field(None, description="join this Ray cluster; default: start an embedded local one")
    num_cpus: int | None = Field(None, gt=0, description="CPUs for the embedded local Ray (default: all)")


# the words that switch ``tracking.mlflow`` on (a local store in the run folder) or off, besides YAML's true / false
TRACKING_ON, TRACKING_OFF = ("on", "true", "yes", "local"), ("off", "false", "no", "none", "")
SPEC_FILE = "job.yaml"  # the copy of its resolved spec that every run job keeps in its run folder (fastemb/record.py)


class TrackingSpec(Section):
    """Experiment tracking with MLflow (fastemb/tracking/): the run's parameters, metrics and artifacts."""
    mlflow: bool | str = output_path(
        False, description="off (false, the default); on (true): a local store in the run folder "
        "(<run>/mlflow.db, artifacts in <run>/mlartifacts); a folder: a local store there; or a tracking URI "
        "(http://host:5000, sqlite:////abs/mlflow.db, databricks). An unreachable server costs a warning, not the job")
    experiment: str | None = Field(None, min_length=1, description="MLflow experiment (default: the job's name; "
                                   "the demo's stages log under the demo's)")

    @field_validator("mlflow", mode="before")
    @classmethod
    def _switch(cls, v: Any) -> Any:
        if v is None:
            return False
        if isinstance(v, str) and v.strip().lower() in TRACKING_ON + TRACKING_OFF:
            return v.strip().lower() in TRACKING_ON
        return v

    @field_validator("mlflow")
    @classmethod
    def _absolute_store(cls, v: bool | str) -> bool | str:
        return v if isinstance(v, bool) or is_uri(v) else os.path.abspath(os.path.expanduser(v))

    @property
    def enabled(self) -> bool:
        return self.mlflow is not False


URI_STORAGE_JOBS = ("train", "index")  # jobs that stage their run folder for an object-store storage_path


class RunJob(Section):
    """A job that writes to ``{storage_path}/{name}/`` and runs on Ray."""
    name: str = Field("run", pattern=r"^[A-Za-z0-9_.-]+$")
    storage_path: str = output_path("runs", description="output root: a local/shared path, or for train and index "
                                    "jobs an object-store URI (s3://...; see fastemb/storage.py)")
    ray: RayRunSpec = RayRunSpec()
    tracking: TrackingSpec = TrackingSpec()

    @field_validator("storage_path")
    @classmethod
    def _absolute_storage(cls, v: str) -> str:
        return v if is_uri(v) else os.path.abspath(os.path.expanduser(v))

    @model_validator(mode="after")
    def _uri_storage(self) -> "RunJob":
        job = getattr(self, "job", None)
        if is_uri(self.storage_path) and job not in URI_STORAGE_JOBS:
            raise ValueError(f"storage_path: an object-store URI is supported by {', '.join(URI_STORAGE_JOBS)} jobs; "
                             f"a {job} job needs a local or shared filesystem path (mounted at the same path on "
                             "every node)")
        return self

    @property
    def run_dir(self) -> Path:
        """``{storage_path}/{name}``; for a URI, the local staging folder that mirrors it (fastemb/storage.py)."""
        if is_uri(self.storage_path):
            from fastemb.storage import staging_dir

            return staging_dir(self.storage_path, self.name)
        return Path(self.storage_path) / self.name

    @property
    def output_location(self) -> str:
        """Where the run's outputs end up: the run folder, or ``{uri}/{name}``."""
        if is_uri(self.storage_path):
            return f"{self.storage_path.partition('?')[0].rstrip('/')}/{self.name}"
        return str(self.run_dir)
