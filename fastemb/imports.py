"""Keep DeepSpeed's import from loading MLflow, which fastemb's DeepSpeed use never needs.

``import deepspeed`` imports its autotuner, whose module body runs ``try: import mlflow`` (to log autotuning
experiments, a DeepSpeed feature fastemb does not use). With ``mlflow-skinny`` installed (``tracking.mlflow``),
that import made ``import deepspeed`` 7× slower on this 2-core machine (13.4–14.1 s against 1.8–1.9 s, measured in
the same minutes under the same load), and every training worker, Tune trial and training driver pays it.

:func:`install` adds a meta-path finder that refuses ``mlflow`` to that one module only: DeepSpeed then takes its
own ``except ImportError`` branch (no autotuning MLflow logging). Any other import of ``mlflow`` (fastemb's tracking,
a user's code) is untouched, and once ``mlflow`` is loaded the finder is never asked again.
"""
from __future__ import annotations

import importlib.abc
import sys

HIDDEN_FROM = "deepspeed.autotuning.autotuner"


class _NoMlflowForDeepSpeedAutotuner(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name != "mlflow":
            return None
        frame = sys._getframe(1)
        while frame is not None:
            if frame.f_globals.get("__name__") == HIDDEN_FROM:
                raise ModuleNotFoundError(f"mlflow is not loaded for {HIDDEN_FROM} (fastemb/imports.py)",
                                          name="mlflow")
            frame = frame.f_back
        return None


def install() -> None:
    """Add the finder once per process (first on ``sys.meta_path``)."""
    if not any(isinstance(f, _NoMlflowForDeepSpeedAutotuner) for f in sys.meta_path):
        sys.meta_path.insert(0, _NoMlflowForDeepSpeedAutotuner())
