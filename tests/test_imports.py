"""No import cycles among fastemb's modules: every module is parsed with ``ast`` (nothing is imported), module-level
and function-level imports alike, and the strongly connected components of the import graph are reported. And
``import deepspeed`` after fastemb does not load MLflow (fastemb/imports.py)."""
from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _modules(package_dir: Path) -> dict[str, Path]:
    """Dotted module name → file, for every ``.py`` file under a package folder (``__init__.py`` is the package)."""
    out = {}
    for f in sorted(package_dir.rglob("*.py")):
        parts = f.relative_to(package_dir.parent).with_suffix("").parts
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = f
    return out


def _targets(module: str, is_package: bool, node: ast.Import | ast.ImportFrom) -> list[str]:
    """The modules an import statement may load: ``from a import b`` counts as importing ``a`` and ``a.b``."""
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    if node.level:  # relative: from the module's package, up level - 1
        package = module.split(".") if is_package else module.split(".")[:-1]
        base = ".".join(package[: len(package) - node.level + 1] + ([node.module] if node.module else []))
    else:
        base = node.module or ""
    return [base] + [f"{base}.{alias.name}" for alias in node.names]


def import_graph(package_dir: Path) -> dict[str, set[str]]:
    """Module → the modules of the same package it imports anywhere in its body."""
    modules = _modules(package_dir)
    graph: dict[str, set[str]] = {m: set() for m in modules}
    for module, path in modules.items():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                graph[module] |= {t for t in _targets(module, path.name == "__init__.py", node)
                                  if t in modules and t != module}
    return graph


def import_cycles(package_dir: str | Path) -> list[list[str]]:
    """The import cycles of a package folder: each a sorted list of the modules that import each other (Tarjan's
    strongly connected components with more than one module)."""
    graph = import_graph(Path(package_dir))
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    cycles: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return sorted(cycles)


def test_fastemb_has_no_import_cycles():
    cycles = import_cycles(ROOT / "fastemb")
    assert not cycles, "import cycles:\n" + "\n".join(" <-> ".join(c) for c in cycles)


def test_the_checker_finds_cycles(tmp_path):
    pkg = tmp_path / "pkg"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from pkg import b\n")                       # b is a submodule: imports pkg.b
    (pkg / "b.py").write_text("def f():\n    import pkg.a\n")              # function-level imports count
    (pkg / "sub" / "c.py").write_text("from ..a import x\n")               # relative, three modules round
    (pkg / "d.py").write_text("from pkg.sub import c\n")
    (pkg / "e.py").write_text("import os\nfrom pkg import a\n")            # imports into a cycle: not part of it
    assert import_cycles(pkg) == [["pkg.a", "pkg.b"]]
    (pkg / "a.py").write_text("from pkg import b\nfrom pkg import d\n")
    assert import_cycles(pkg) == [["pkg.a", "pkg.b", "pkg.d", "pkg.sub.c"]]
    (pkg / "a.py").write_text("from pkg import e\n")
    assert import_cycles(pkg) == [["pkg.a", "pkg.e"]]


def test_deepspeed_imports_without_mlflow_which_stays_importable():
    probe = ("import json, sys; import fastemb, deepspeed; loaded = 'mlflow' in sys.modules; import mlflow; "
             "print(json.dumps([loaded, mlflow.__name__]))")
    env = {**os.environ, "DS_ACCELERATOR": "cpu", "PYTHONPATH": str(ROOT)}
    p = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, env=env, timeout=300, cwd=ROOT)
    assert p.returncode == 0, p.stderr[-3000:]
    assert json.loads(p.stdout.strip().splitlines()[-1]) == [False, "mlflow"]
