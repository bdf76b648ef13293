"""The path fields of a job spec, found through the schema's markers (``input_path`` / ``output_path`` in
fastemb/spec/base.py) rather than a hand-written list.

- :func:`path_fields` walks a job type's schema: nested sections, optional ones, lists of sections (``tasks``, as
  ``tasks.*.data``) and job specs nested in another (the demo's stages); it yields each declared path field's dotted
  name and kind.
- :func:`path_values` walks a spec's values the same way (a dict as written, defaults filled in from the schema, or a
  validated spec), with list indices (``tasks.0.data``); only string values are yielded.
- :func:`absolute_inputs` makes a spec's relative input paths that exist here absolute, for processes that run in
  another working directory (Tune trials).

``fastemb submit`` (pin, upload or refuse), Tune and the demo (where each stage's outputs go) build on these.
"""
from __future__ import annotations

import os
import types
from pathlib import Path
from typing import Any, Iterator, NamedTuple, TypeVar, Union, get_args, get_origin

from pydantic import BaseModel
from pydantic.fields import FieldInfo

from fastemb.spec.base import PathKind, SpecError, is_uri, path_kind

LIST_ITEM = "*"  # stands for a list index in path_fields' dotted names
Spec = TypeVar("Spec", bound=BaseModel)


class PathValue(NamedTuple):
    field: str  # dotted, with list indices: "tasks.0.data"
    kind: PathKind
    value: str


def _members(annotation: Any) -> tuple[Any, ...]:
    return get_args(annotation) if get_origin(annotation) in (Union, types.UnionType) else (annotation,)


def section_types(annotation: Any) -> list[tuple[type[BaseModel], bool]]:
    """The section types inside a field's annotation, each with whether it is a list item."""
    out = []
    for member in _members(annotation):
        if get_origin(member) is list:
            out += [(sub, True) for arg in get_args(member) for sub, _ in section_types(arg)]
        elif isinstance(member, type) and issubclass(member, BaseModel):
            out.append((member, False))
    return out


def _marked(field: FieldInfo) -> PathKind | None:
    kind = path_kind(field)
    return kind if kind in ("input", "output") else None


def path_fields(model: type[BaseModel], prefix: str = "") -> Iterator[tuple[str, PathKind]]:
    """Every declared path field of a schema: (dotted name, ``input`` | ``output``); list items appear as ``*``."""
    for name, field in model.model_fields.items():
        dotted = prefix + name
        kind = _marked(field)
        if kind:
            yield dotted, kind
            continue
        for sub, many in section_types(field.annotation):
            yield from path_fields(sub, f"{dotted}.{LIST_ITEM}." if many else f"{dotted}.")


def path_values(model: type[BaseModel], values: dict[str, Any] | BaseModel, prefix: str = "") -> Iterator[PathValue]:
    """The string values of a spec's path fields. ``values``: a spec as written (a key left out takes the schema's
    default; a section left out is walked with its fields' defaults) or a validated spec."""
    if isinstance(values, BaseModel):
        values = values.model_dump()
    for name, field in model.model_fields.items():
        dotted = prefix + name
        given = name in values
        value = values[name] if given else field.get_default(call_default_factory=True)
        if isinstance(value, BaseModel):
            value = value.model_dump() if given else {}
        kind = _marked(field)
        if kind:
            if isinstance(value, str):
                yield PathValue(dotted, kind, value)
            continue
        for sub, many in section_types(field.annotation):
            if many and isinstance(value, list):
                for i, item in enumerate(value):
                    if isinstance(item, (dict, BaseModel)):
                        yield from path_values(sub, item, f"{dotted}.{i}.")
            elif not many and isinstance(value, dict):
                yield from path_values(sub, value, f"{dotted}.")


def is_local_path(value: str) -> bool:
    """A value that names something on this machine (not a URI, and it exists)."""
    return not is_uri(value) and Path(value).expanduser().exists()


def absolute_inputs(spec: Spec) -> Spec:
    """The spec with every relative input path that exists here made absolute (aliases, 'wordnet', URIs and
    absolute paths stay as they are)."""
    values = spec.model_dump()
    changed = False
    for field, kind, value in path_values(type(spec), values):
        if kind == "input" and not os.path.isabs(value) and is_local_path(value):
            values = set_dotted(values, field, os.path.abspath(os.path.expanduser(value)))
            changed = True
    return type(spec).model_validate(values) if changed else spec


_MISSING = object()


def get_dotted(tree: Any, dotted: str, default: Any = None) -> Any:
    """The value at ``a.b.0.c`` in nested dicts and lists, or ``default``."""
    node = tree
    for part in dotted.split("."):
        if isinstance(node, dict) and part in node:
            node = node[part]
        elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        else:
            return default
    return node


def set_dotted(tree: dict[str, Any], dotted: str, value: Any) -> dict[str, Any]:
    """A copy of ``tree`` with ``value`` at ``a.b.c``. Containers along the way are copied (the input is not
    changed); a missing or non-dict one becomes a dict, except that a numeric part indexes an existing list."""
    parts = dotted.split(".")
    root = dict(tree)
    node: Any = root
    for i, part in enumerate(parts):
        last = i == len(parts) - 1
        if isinstance(node, list):
            if not part.isdigit() or int(part) >= len(node):
                raise SpecError(f"override {dotted!r}: {'.'.join(parts[:i])} has {len(node)} item(s); "
                                f"{part!r} is not one of their indices")
            key: Any = int(part)
        else:
            key = part
        if last:
            node[key] = value
            break
        child = node[key] if isinstance(node, list) else node.get(key, _MISSING)
        nxt_is_index = parts[i + 1].isdigit()
        if isinstance(child, list) and nxt_is_index:
            child = list(child)
        elif isinstance(child, dict):
            child = dict(child)
        else:
            child = {}
        node[key] = child
        node = child
    return root
