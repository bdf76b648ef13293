"""fastemb's logging: one format naming the stage, the level from FASTEMB_LOG_LEVEL, one line per record, and
library chatter (faiss's loader, DeepSpeed's deprecated collective, prints and accelerator note, Ray Train's print
tee) hidden unless FASTEMB_LOG_LEVEL=DEBUG."""
from __future__ import annotations

import builtins
import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

from fastemb import logs

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def fresh_level(monkeypatch):
    """Let a test change FASTEMB_LOG_LEVEL; the fastemb logger gets the default level back afterwards."""
    yield monkeypatch
    monkeypatch.delenv(logs.LEVEL_ENV, raising=False)
    logs.install()


def test_lines_name_the_stage(capsys):
    logging.getLogger("fastemb.train.progress").info("step 2/8 | loss 0.8609")
    logging.getLogger("fastemb.mine.job").warning("no negatives for 3 rows")
    logging.getLogger("fastemb.cli").info("ready")
    assert capsys.readouterr().err.splitlines() == ["[fastemb train] step 2/8 | loss 0.8609",
                                                    "[fastemb mine] warning: no negatives for 3 rows",
                                                    "[fastemb] ready"]


class _Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


def test_one_handler_and_nothing_for_the_root_logger(capsys):
    """Ray Train gives its workers' root logger a console handler: a fastemb record must not reach it too."""
    logs.install()
    logs.install()
    logger = logging.getLogger("fastemb")
    assert sum(isinstance(h, logs.StderrHandler) for h in logger.handlers) == 1 and not logger.propagate
    root, console = logging.getLogger(), _Collect()
    root.addHandler(console)
    try:
        logging.getLogger("fastemb.index.build").info("trained in 0.7s")
    finally:
        root.removeHandler(console)
    assert capsys.readouterr().err == "[fastemb index] trained in 0.7s\n" and console.records == []


def test_level_from_the_environment(fresh_level, capsys):
    fresh_level.setenv(logs.LEVEL_ENV, "warning")
    logs.install()
    log = logging.getLogger("fastemb.serve.versions")
    log.info("now serving registry version v2")
    log.error("could not load registry version v3")
    assert capsys.readouterr().err == "[fastemb serve] error: could not load registry version v3\n"
    fresh_level.setenv(logs.LEVEL_ENV, "DEBUG")
    logs.install()
    log.debug("polling")
    assert capsys.readouterr().err == "[fastemb serve] polling\n" and logs.verbose()
    fresh_level.setenv(logs.LEVEL_ENV, "chatty")  # not a level: the default
    assert logs.level() == logging.INFO


def test_worker_env(fresh_level):
    fresh_level.delenv(logs.LEVEL_ENV, raising=False)
    env = logs.worker_env()
    assert env["RAY_TRAIN_ENABLE_PRINT_PATCH"] == "0" and env["RAY_DATA_LOG_LEVEL"] == "WARNING"
    assert env["HF_HUB_DISABLE_PROGRESS_BARS"] == "1" and logs.LEVEL_ENV not in env
    fresh_level.setenv(logs.LEVEL_ENV, "DEBUG")
    assert logs.worker_env() == {"RAY_TRAIN_ENABLE_PRINT_PATCH": "0", logs.LEVEL_ENV: "DEBUG"}


def test_ray_train_print_patch_is_off_in_workers(monkeypatch):
    """The root cause of the doubled progress lines: Ray Train's print patch tees every print() of a worker to
    stdout and to a log record on stderr. With fastemb's worker env Ray leaves print alone."""
    from ray.train.v2._internal.logging.patch_print import patch_print_function

    original = builtins.print
    try:
        monkeypatch.delenv("RAY_TRAIN_ENABLE_PRINT_PATCH", raising=False)
        patch_print_function()
        assert builtins.print is not original  # Ray's default: patched
        builtins.print = original
        for key, value in logs.worker_env().items():
            monkeypatch.setenv(key, value)
        patch_print_function()
        assert builtins.print is original
    finally:
        builtins.print = original


def test_the_quieted_ray_train_logger_is_the_one_ray_uses():
    path = Path(logs._ray_train_report_logger())
    source = path.read_text()
    assert "logging.getLogger(__file__)" in source and "Reporting training result" in source


def test_serves_item_count_warning_is_dropped_and_its_other_warnings_kept(monkeypatch, caplog):
    """Ray Serve's own check, with its own wording, on a replica whose token budget (the embedder's @serve.batch
    max_batch_size) exceeds max_ongoing_requests: hidden after configure(); another ray.serve warning still shows."""
    from types import SimpleNamespace

    from ray import serve
    from ray.serve.batching import _BatchQueue

    monkeypatch.setattr(serve, "get_replica_context", lambda: SimpleNamespace(
        _deployment_config=SimpleNamespace(max_ongoing_requests=64)))
    queue = SimpleNamespace(max_batch_size=8192, max_concurrent_batches=1)
    serve_logger = logging.getLogger("ray.serve")
    monkeypatch.setattr(serve_logger, "filters", [])
    for key in {**logs.quiet_env(terminal=False), **logs.quiet_env(terminal=True)}:  # configure() sets them
        monkeypatch.setenv(key, "")  # recorded as they were, restored after the test (later tests' Rays inherit them)
        monkeypatch.delenv(key)
    with caplog.at_level(logging.WARNING, logger="ray.serve"):
        _BatchQueue._warn_if_max_batch_size_exceeds_max_ongoing_requests(queue)
        assert "`max_batch_size` (8192)" in caplog.text  # Ray's message, before fastemb's filter
        caplog.clear()
        logs.configure()
        _BatchQueue._warn_if_max_batch_size_exceeds_max_ongoing_requests(queue)
        serve_logger.warning("a replica is unhealthy")
    assert [r.getMessage() for r in caplog.records] == ["a replica is unhealthy"]


def test_hidden_prints(fresh_level, capsys):
    with logs.hidden_prints():
        print("DeepSpeed deepspeed.ops.comm.deepspeed_shm_comm_op built successfully")
    assert capsys.readouterr() == ("", "")
    with pytest.raises(RuntimeError), logs.hidden_prints():
        print("building op")
        raise RuntimeError("failed")
    assert capsys.readouterr().err == "building op\n"  # kept when the block fails
    fresh_level.setenv(logs.LEVEL_ENV, "DEBUG")
    with logs.hidden_prints():
        print("shown")
    assert capsys.readouterr().out == "shown\n"


_PROBE = r"""
import json, logging, os, sys, warnings
import torch.distributed as dist
logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")  # a root at INFO, as in Ray Train workers
from fastemb import logs
logs.configure()
import faiss  # its loader logs one line per CPU variant it tries
dist.init_process_group("gloo", init_method="tcp://127.0.0.1:" + sys.argv[1], rank=0, world_size=1)
import torch
with warnings.catch_warnings(record=True) as caught:  # the deprecated collectives DeepSpeed's ZeRO steps call
    dist.all_gather_into_tensor(torch.zeros(2), torch.ones(2))
    dist.reduce_scatter_tensor(torch.zeros(2), torch.ones(2))
dist.destroy_process_group()
import deepspeed  # detects its accelerator when imported (DS_ACCELERATOR unset), noting CPU on stdout
print(json.dumps({"warnings": [str(w.message) for w in caught], "env": {k: os.environ.get(k) for k in
                  ("RAY_DATA_LOG_LEVEL", "HF_HUB_DISABLE_PROGRESS_BARS")}}))
"""


@pytest.mark.parametrize("level", ["INFO", "DEBUG"])
def test_library_chatter_hidden_unless_debug(level):
    from fastemb.ray_env import free_port

    env = {**os.environ, logs.LEVEL_ENV: level, "PYTHONPATH": str(ROOT)}
    env.pop("RAY_DATA_LOG_LEVEL", None)
    env.pop("HF_HUB_DISABLE_PROGRESS_BARS", None)
    env.pop("DS_ACCELERATOR", None)
    p = subprocess.run([sys.executable, "-c", _PROBE, str(free_port())], capture_output=True, text=True, env=env,
                       timeout=300, cwd=ROOT)
    assert p.returncode == 0, p.stderr[-3000:]
    out = json.loads(p.stdout.strip().splitlines()[-1])
    faiss_lines = [line for line in p.stderr.splitlines() if line.startswith("faiss.loader")]
    deprecated = [w for w in out["warnings"] if "all_gather_into_tensor" in w or "reduce_scatter_tensor" in w]
    accelerator_note = [line for line in p.stdout.splitlines() if "Setting accelerator to CPU" in line]
    if level == "DEBUG":
        assert faiss_lines and len(deprecated) == 2 and accelerator_note and out["env"] == {"RAY_DATA_LOG_LEVEL": None,
                                                                       "HF_HUB_DISABLE_PROGRESS_BARS": None}
    else:
        assert not faiss_lines and not deprecated and not accelerator_note, p.stdout[-3000:] + p.stderr[-3000:]
        assert out["env"] == {"RAY_DATA_LOG_LEVEL": "WARNING", "HF_HUB_DISABLE_PROGRESS_BARS": "1"}
