"""What ``fastemb submit`` does with each path field of a spec (the fields marked ``input_path`` / ``output_path`` in
the schema, found by fastemb/spec/paths.py), so that the job finds on the cluster what it found here.

- an output (relative): pinned to its absolute path here; that must be a filesystem every node mounts at the same
  path (the contract of ``storage_path``), or an object-store URI;
- an input that exists here, inside the runtime_env's ``working_dir`` and not excluded from its upload: kept, as a
  path relative to the working_dir (where the job runs on the cluster);
- an input that exists here but is not uploaded, and lies under the spec's ``storage_path`` (or a ``--shared``
  folder): pinned to its absolute path, which every node mounts;
- any other input that exists here: refused, naming the field, why, and the fixes.

Values that are URIs, or inputs that do not exist here (an alias such as ``all-MiniLM-L6-v2``, ``wordnet``), are
left as they are. Whether Ray uploads a file is decided with Ray's own matchers
(``ray._private.runtime_env.packaging``): Ray's default excludes, the runtime_env's ``excludes`` and the
``.gitignore`` / ``.rayignore`` files of every folder on the way, gitignore-style.
"""
from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Iterator

from pydantic import BaseModel

from fastemb.spec.base import is_uri
from fastemb.spec.paths import path_values

@dataclass(frozen=True)
class PathDecision:
    """What happens to one path field: ``pinned``, ``uploaded``, ``kept`` or ``refused``."""
    field: str
    kind: str
    value: str   # as written (or the schema's default)
    action: str
    result: str  # what the cluster gets
    why: str

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class _Rule:
    """One source of excludes: its name, its patterns, the folder they are relative to, and Ray's matcher."""
    label: str
    patterns: list[str]
    base: Path
    match: Callable[[Path], bool]

    def describe(self, path: Path) -> str:
        """The label, plus the first of the patterns that alone matches ``path``."""
        from ray._private.thirdparty.pathspec import PathSpec

        rel = str(path.relative_to(self.base))
        for pattern in self.patterns:
            p = pattern.strip()
            if p and not p.startswith(("#", "!")) and PathSpec.from_lines("gitwildmatch", [p]).match_file(rel):
                return f"{self.label} ({p!r})"
        return self.label


class UploadRules:
    """Which paths under a ``working_dir`` Ray uploads with it, by Ray's own rules and matchers."""

    def __init__(self, working_dir: str | Path, excludes: list[str], runtime_env_name: str = "runtime_env.yaml"):
        from ray._private import ray_constants
        from ray._private.runtime_env.packaging import _get_excludes

        self.root = Path(working_dir).resolve()
        self.include_gitignore = os.environ.get(ray_constants.RAY_RUNTIME_ENV_IGNORE_GITIGNORE, "0") != "1"
        defaults = ray_constants.get_runtime_env_default_excludes()
        self.rules = [_Rule("Ray's default excludes", defaults, self.root, _get_excludes(self.root, defaults)),
                      _Rule(f"{runtime_env_name} excludes", list(excludes), self.root,
                            _get_excludes(self.root, list(excludes)))]

    def _ignore_files(self, folder: Path) -> list[_Rule]:
        """The rules of a folder's ``.gitignore`` (unless Ray is told to ignore those) and ``.rayignore``."""
        from ray._private.runtime_env.packaging import _get_ignore_file

        out = []
        for name in (".gitignore", ".rayignore") if self.include_gitignore else (".rayignore",):
            match = _get_ignore_file(folder, name)
            if match is not None:
                out.append(_Rule(str((folder / name).relative_to(self.root)), (folder / name).read_text().splitlines(),
                                 folder, match))
        return out

    def _excluded(self, path: Path, rules: list[_Rule]) -> str | None:
        rule = next((r for r in rules if r.match(path)), None)
        return None if rule is None else f"{path.relative_to(self.root)} is excluded by {rule.describe(path)}"

    def excluded_by(self, path: str | Path) -> str | None:
        """None if Ray uploads ``path`` (inside the working_dir) and, for a folder, every file under it; else which
        entry is left out and by which rule. Follows Ray's walk (``packaging._dir_travel``): each folder's ignore
        files apply to what lies under it."""
        target = Path(path).resolve()
        rules = list(self.rules)
        node = self.root
        for part in ("", *target.relative_to(self.root).parts):
            node = node / part if part else node
            if node.is_dir():
                rules += self._ignore_files(node)
            why = self._excluded(node, rules)
            if why:
                return why
        return next(self._excluded_below(target, rules), None) if target.is_dir() else None

    def _excluded_below(self, folder: Path, rules: list[_Rule]) -> Iterator[str]:
        """The first excluded entry under a folder, if any."""
        for child in sorted(folder.iterdir()):
            inner = rules + (self._ignore_files(child) if child.is_dir() else [])
            why = self._excluded(child, inner)
            if why:
                yield why
                return
            if child.is_dir():
                yield from self._excluded_below(child, inner)


def _inside(path: Path, folder: str | Path) -> bool:
    return path.is_relative_to(Path(folder).resolve())


def decide_paths(job_type: type[BaseModel], raw: dict, uploads: UploadRules, storage_path: str | None,
                 shared: list[str] = ()) -> list[PathDecision]:
    """A decision for every path field that has a string value in the spec as written (``raw``, overrides applied)."""
    return [PathDecision(field, kind, value, *_decide(kind, value, uploads, storage_path, shared))
            for field, kind, value in path_values(job_type, raw)]


def _decide(kind: str, value: str, uploads: UploadRules, storage_path: str | None,
            shared: list[str]) -> tuple[str, str, str]:
    """(action, what the cluster gets, why) for one path value."""
    here = Path(value).expanduser()
    if is_uri(value):
        return "kept", value, "a URI: every node reads it itself"
    if kind == "output":
        if here.is_absolute():
            return "kept", value, "absolute: must be a filesystem every node mounts at this path"
        return "pinned", os.path.abspath(here), ("relative output pinned to an absolute path: it must be storage "
                                                 "every node mounts at this path, or use an s3:// URI")
    if not here.exists():
        return "kept", value, "not found here: an alias, a shipped data set or a path on the cluster, left as it is"
    path = here.resolve()
    if _inside(path, uploads.root):
        excluded = uploads.excluded_by(path)
        if excluded is None:
            return "uploaded", path.relative_to(uploads.root).as_posix(), \
                f"uploaded with the working_dir {uploads.root}"
        why = excluded
    else:
        why = f"outside the working_dir {uploads.root} that is uploaded"
    if storage_path and not is_uri(storage_path) and _inside(path, storage_path):
        return "pinned", os.path.abspath(here), f"not uploaded ({why}); pinned on the shared storage_path " \
                                                f"{storage_path}"
    for folder in shared:
        if _inside(path, folder):
            return "pinned", os.path.abspath(here), f"not uploaded ({why}); pinned on the shared path {folder} " \
                                                    "(--shared)"
    return "refused", os.path.abspath(here), why


def refusal_message(refused: list[PathDecision], storage_path: str | None, runtime_env_name: str) -> str:
    """Why each refused input would not reach the cluster, and the fixes."""
    lines = [f"{d.field} {d.value!r}: {d.why}, so the job would not find it on the cluster" for d in refused]
    where = f"under storage_path ({storage_path})" if storage_path and not is_uri(storage_path) else \
        "under a storage_path"
    fixes = (f"put it {where} or in another folder every node mounts at the same path (declare that folder with "
             f"--shared DIR), or use an object-store URI (s3://); or keep it inside the working_dir and "
             f"un-exclude it (runtime_env {runtime_env_name} excludes, .gitignore, .rayignore)")
    return "\n  ".join(["path fields that would not reach the cluster:", *lines, f"fix: {fixes}"])
