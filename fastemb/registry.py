"""Model registry: versions of a model with their artefacts, metrics, config and lineage.

Layout under ``root`` (a local path or any pyarrow filesystem URI)::

    versions/v0001/  model/ (its model card README.md says which version it is), compress/ (optional),
                     version.json
    state.json       {"production": "v0003", "history": ["v0001", "v0003"]}

A version is written under a temporary name and renamed into place, and ``state.json`` is replaced
as a whole, so a crash mid-write never leaves a half-registered version or a torn state. Promotion is
gated: a candidate that scores below production on the same eval set is refused unless forced.
Rollback returns production to the version promoted before it.
"""
from __future__ import annotations

import datetime
import json
import uuid
from dataclasses import dataclass
from pathlib import Path

import pyarrow.fs as pafs

from fastemb.errors import FastembError
from fastemb.model.card import CARD_FILE, CardUpdate, card_summary, key_values, render_card
from fastemb.record import files_fingerprint


class RegistryError(FastembError):
    """A registry operation that cannot be done (unknown version, refused promotion, ...)."""


@dataclass
class Registry:
    """A registry rooted at ``root`` (local folder or a pyarrow filesystem URI such as ``s3://``)."""
    root: str

    def __post_init__(self):
        self.fs, base = pafs.FileSystem.from_uri(self.root) if "://" in self.root else \
            (pafs.LocalFileSystem(), str(Path(self.root).expanduser().resolve()))
        self.base = base.rstrip("/")
        self.fs.create_dir(f"{self.base}/versions", recursive=True)

    # ------------------------------------------------------------------ state
    def _read_json(self, path: str, default=None):
        try:
            with self.fs.open_input_stream(path) as f:
                return json.loads(f.read().decode())
        except FileNotFoundError:
            return default

    def _write_json_atomic(self, path: str, value) -> None:
        tmp = f"{path}.tmp-{uuid.uuid4().hex}"
        with self.fs.open_output_stream(tmp) as f:
            f.write(json.dumps(value, indent=2, default=str).encode())
        self.fs.move(tmp, path)

    def state(self) -> dict:
        return self._read_json(f"{self.base}/state.json", {"production": None, "history": []})

    def versions(self) -> list[str]:
        infos = self.fs.get_file_info(pafs.FileSelector(f"{self.base}/versions", allow_not_found=True))
        names = [i.base_name for i in infos if i.type == pafs.FileType.Directory and i.base_name.startswith("v")
                 and self._read_json(f"{i.path}/version.json") is not None]
        return sorted(names)

    def show(self, version: str) -> dict:
        meta = self._read_json(f"{self.base}/versions/{version}/version.json")
        if meta is None:
            raise RegistryError(f"registry {self.root}: no version {version!r}; versions: {self.versions()}")
        return meta

    def model_path(self, version: str) -> str:
        return f"{self.base}/versions/{version}/model"

    def resolve(self, version: str) -> str:
        """``'production'`` → the production version's name; a version name → itself (checked)."""
        if version == "production":
            current = self.state()["production"]
            if current is None:
                raise RegistryError(f"registry {self.root}: no production version yet; promote one first")
            return current
        self.show(version)
        return version

    def local_model(self, version: str, cache_dir: str | Path) -> str:
        """A local folder holding ``version``'s model: the registry's own folder when it is local,
        otherwise a copy under ``cache_dir`` (fetched once)."""
        if isinstance(self.fs, pafs.LocalFileSystem):
            return self.model_path(version)
        dest = Path(cache_dir) / version / "model"
        if not (dest / "config.json").exists():
            dest.mkdir(parents=True, exist_ok=True)
            pafs.copy_files(self.model_path(version), str(dest), source_filesystem=self.fs,
                            destination_filesystem=pafs.LocalFileSystem())
        return str(dest)

    # ------------------------------------------------------------------ writes
    def register(self, model_dir: str, metrics: dict, config: dict, parent: str | None = None,
                 data_files: list[str] | None = None, compress_dir: str | None = None,
                 _crash_after_copy: bool = False) -> str:
        """Copy a model (and compression artefacts) in as a new version; returns its name."""
        existing = self.versions()
        version = f"v{len(existing) + 1:04d}"
        while version in existing:
            version = f"v{int(version[1:]) + 1:04d}"
        staging = f"{self.base}/versions/.staging-{uuid.uuid4().hex}"
        for src, name in ((model_dir, "model"), (compress_dir, "compress")):
            if src:
                self.fs.create_dir(f"{staging}/{name}", recursive=True)
                pafs.copy_files(str(Path(src).resolve()), f"{staging}/{name}",
                                source_filesystem=pafs.LocalFileSystem(), destination_filesystem=self.fs)
        if _crash_after_copy:  # test hook: die between copying the files and publishing the version
            raise RuntimeError("injected crash")
        meta = {"version": version, "created": datetime.datetime.now(datetime.timezone.utc).isoformat(),
                "metrics": metrics, "config": config, "parent": parent,
                "data_fingerprint": files_fingerprint(data_files) if data_files else None,
                "has_compression": bool(compress_dir)}
        if model_dir:
            self._extend_card(f"{staging}/model", meta)
        self._write_json_atomic(f"{staging}/version.json", meta)
        self.fs.move(staging, f"{self.base}/versions/{version}")
        return version

    def _extend_card(self, model: str, meta: dict) -> None:
        """The version's model card (kept, or made when the model has none) with a section on the version."""
        path = f"{model}/{CARD_FILE}"
        try:
            with self.fs.open_input_stream(path) as f:
                existing = f.read().decode("utf-8")
        except FileNotFoundError:
            existing = None
        rows = {"version": meta["version"], "registry": f"`{self.root}`", "registered": meta["created"],
                "parent version": meta["parent"],
                "metrics": ", ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}"
                                     for k, v in meta["metrics"].items() if not isinstance(v, dict)),
                "training data fingerprint": f"`{meta['data_fingerprint']}`" if meta["data_fingerprint"] else None,
                "compression artefacts": "yes (`compress/` beside `model/`)" if meta["has_compression"] else None}
        update = CardUpdate(title=None if existing else f"registry version {meta['version']}",
                            sections={"registry": key_values("Model registry", rows)})
        with self.fs.open_output_stream(path) as f:
            f.write(render_card(existing, update).encode("utf-8"))

    def card(self, version: str) -> dict | None:
        """The summary of a version's model card (fastemb/model/card.py), or None when it has none."""
        self.show(version)
        try:
            with self.fs.open_input_stream(f"{self.model_path(version)}/{CARD_FILE}") as f:
                return card_summary(f.read().decode("utf-8"))
        except FileNotFoundError:
            return None

    def promote(self, version: str, metric: str = "ndcg@10", force: bool = False,
                baseline: float | None = None) -> dict:
        """Make ``version`` production unless it scores below production on ``metric`` (then refuse).

        ``baseline``: production's score measured on the candidate's eval set (used instead of the score
        stored with the production version, which may come from another eval set)."""
        candidate = self.show(version)
        state = self.state()
        current = state["production"]
        if current and current != version and not force:
            prod = self.show(current)
            ours = candidate["metrics"].get(metric)
            theirs = baseline if baseline is not None else prod["metrics"].get(metric)
            if ours is None or theirs is None:
                raise RegistryError(f"cannot compare {version} with production {current}: {metric!r} missing")
            if ours < theirs:
                raise RegistryError(f"promotion refused: {version} {metric} {ours:.4f} < production {current} "
                                    f"{theirs:.4f} (use force to override)")
        state = {"production": version, "history": [*state["history"], version]}
        self._write_json_atomic(f"{self.base}/state.json", state)
        return state

    def rollback(self) -> dict:
        """Return production to the version promoted before the current one."""
        state = self.state()
        if len(state["history"]) < 2:
            raise RegistryError("nothing to roll back to: fewer than two promotions")
        history = state["history"][:-1]
        state = {"production": history[-1], "history": history}
        self._write_json_atomic(f"{self.base}/state.json", state)
        return state
