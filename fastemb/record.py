"""The reproducible record of a run, and the copy of its spec kept in the run folder.

The record is what it takes to run the job again and get the same result: the git commit of fastemb's code (and
whether the checkout had uncommitted changes), the versions of the libraries that shape the numbers, every seed in the
spec, a fingerprint of the training data and the full resolved job spec. ``report.json`` (``record``), the model
card and the MLflow run carry the same record. Every run job writes its resolved spec to ``<run>/job.yaml`` when it
starts (:func:`keep_spec`), so ``fastemb <job> <run>/job.yaml`` (or ``fastemb <job> <run>``) runs it again.
"""
from __future__ import annotations

import functools
import hashlib
import importlib.metadata
import platform
import subprocess
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel

from fastemb.spec import SPEC_FILE, RunJob

ROOT = Path(__file__).resolve().parents[1]
# library → the distributions that may provide it (the first one installed is reported)
LIBRARIES = {"torch": ("torch",), "ray": ("ray",), "deepspeed": ("deepspeed",), "transformers": ("transformers",),
             "sentence-transformers": ("sentence-transformers",), "faiss": ("faiss-cpu", "faiss-gpu", "faiss"),
             "mlflow": ("mlflow-skinny", "mlflow"), "fastemb": ("fastemb",)}


@functools.lru_cache(maxsize=1)
def code_version() -> dict[str, Any]:
    """The git commit of the fastemb checkout that runs, and whether tracked files differ from it (None outside a
    git checkout, e.g. an installed package or a Ray Jobs working_dir)."""
    def git(*args: str) -> str | None:
        try:
            out = subprocess.run(["git", "-C", str(ROOT), *args], capture_output=True, text=True, timeout=10)
        except (OSError, subprocess.SubprocessError):
            return None
        return out.stdout.strip() if out.returncode == 0 else None

    commit = git("rev-parse", "HEAD") if (ROOT / ".git").exists() else None
    dirty = git("status", "--porcelain", "--untracked-files=no") if commit else None
    return {"git_commit": commit, "dirty": bool(dirty) if commit else None}


@functools.lru_cache(maxsize=1)
def library_versions() -> dict[str, str | None]:
    """Python's and each library's version (from the installed distributions: nothing is imported)."""
    out: dict[str, str | None] = {"python": platform.python_version()}
    for library, dists in LIBRARIES.items():
        out[library] = None
        for dist in dists:
            try:
                out[library] = importlib.metadata.version(dist)
                break
            except importlib.metadata.PackageNotFoundError:
                continue
    return out


def hardware() -> dict[str, Any]:
    """The driver's CPU, and the Ray cluster's CPUs, GPUs and nodes when Ray is up (where the workers ran)."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    except OSError:
        pass
    out: dict[str, Any] = {"driver CPU": cpu}
    try:
        import ray

        if ray.is_initialized():
            res = ray.cluster_resources()
            out["cluster"] = (f"{res.get('CPU', 0):g} CPUs, {res.get('GPU', 0):g} GPUs, "
                              f"{sum(1 for n in ray.nodes() if n.get('Alive'))} node(s)")
    except Exception:  # noqa: BLE001 - a description of the hardware must not fail a job
        pass
    return out


def seeds(spec: BaseModel | dict) -> dict[str, int]:
    """Every seed the spec sets, by dotted field (``train.seed``, ``negatives_pool.seed``, ``index.seed``, ...)."""
    out: dict[str, int] = {}

    def walk(node: Any, prefix: str) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                if (key == "seed" or key.endswith("_seed")) and isinstance(value, int):
                    out[prefix + key] = value
                else:
                    walk(value, f"{prefix}{key}.")
        elif isinstance(node, list):
            for i, value in enumerate(node):
                walk(value, f"{prefix}{i}.")

    walk(spec.model_dump(mode="json") if isinstance(spec, BaseModel) else spec, "")
    return out


def files_fingerprint(paths: list[str | Path]) -> str:
    """sha256 over the names and bytes of files (a folder: every file under it), in sorted order."""
    h = hashlib.sha256()
    for p in sorted(map(str, paths)):
        for f in sorted(Path(p).rglob("*")) if Path(p).is_dir() else [Path(p)]:
            if f.is_file():
                h.update(f.name.encode())
                with open(f, "rb") as fh:
                    for block in iter(lambda: fh.read(1 << 20), b""):
                        h.update(block)
    return h.hexdigest()


def reproducible_record(spec: BaseModel, data_fingerprint: str | dict[str, str] | None = None) -> dict[str, Any]:
    """The record of a run of ``spec``: code, library versions, seeds, data fingerprint and where its spec is kept
    (the spec itself is ``report.json``'s ``spec`` and ``<run>/job.yaml``)."""
    return {"code": code_version(), "versions": library_versions(), "seeds": seeds(spec),
            "data_fingerprint": data_fingerprint,
            "spec_file": str(spec.run_dir / SPEC_FILE) if isinstance(spec, RunJob) else None}


def spec_yaml(spec: BaseModel) -> str:
    """The full resolved spec as YAML (what ``load_spec`` reads back)."""
    return yaml.safe_dump(spec.model_dump(mode="json"), sort_keys=False, allow_unicode=True)


def keep_spec(spec: RunJob) -> Path:
    """Write the resolved spec to ``<run>/job.yaml``; ``fastemb <job> <run>/job.yaml`` runs the same job again."""
    path = spec.run_dir / SPEC_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    job = getattr(spec, "job", "train")
    path.write_text(f"# The resolved spec of this run, written by `fastemb {job}`. Run it again with:\n"
                    f"#   fastemb {job} {path}\n# (the same name and storage_path: a finished run returns its result, "
                    "an interrupted one resumes; add name=<new> for a fresh run)\n" + spec_yaml(spec))
    return path
