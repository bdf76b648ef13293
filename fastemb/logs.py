"""Logging for every fastemb process: one format, one level, library chatter hidden.

Modules log through ``logging.getLogger(__name__)``. The ``fastemb`` logger has one handler that writes
``[fastemb <stage>] message`` to whatever ``sys.stderr`` is at that moment; the stage is the module's package
(``fastemb.train.progress`` → ``[fastemb train]``) and warnings read ``[fastemb train] warning: ...``. A
command's result (the JSON the CLI prints) stays on stdout. The handler is installed when the package is
imported (:func:`install`), so the driver, Ray Train workers, Ray Data actors and Serve replicas all log alike;
it does not propagate to the root logger, which Ray Train configures in its workers (each line would show twice).

``FASTEMB_LOG_LEVEL`` (default ``INFO``) is fastemb's level. Unless it is ``DEBUG``, :func:`configure` also
hides library output a user can do nothing about: chatty loggers (:data:`QUIET_LOGGERS`), notes
(:data:`QUIET_MESSAGES`), deprecation warnings
raised inside libraries (:data:`QUIET_WARNINGS`), Ray Data's and Hugging Face's progress output outside a
terminal (:func:`quiet_env`), Ray Train's per-report lines (:func:`ray_train_logging`), Ray Tune's status tables
(:func:`ray_tune_verbosity`) and DeepSpeed's prints (:func:`hidden_prints`). The CLI calls :func:`configure` first;
Ray workers run it as their ``worker_process_setup_hook`` (:data:`SETUP_HOOK`, set by ``fastemb.ray_env`` and
``fastemb submit`` in the job's runtime_env; Ray ignores the hook in an actor's runtime_env, so Serve replicas call
:func:`configure` themselves).
"""
from __future__ import annotations

import contextlib
import importlib.util
import io
import logging
import os
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path

LEVEL_ENV = "FASTEMB_LOG_LEVEL"
SETUP_HOOK = "fastemb.logs.configure"  # Ray's runtime_env ``worker_process_setup_hook``: runs in every worker

# Library loggers whose INFO lines are noise; shown again with FASTEMB_LOG_LEVEL=DEBUG.
QUIET_LOGGERS = {
    # "Loading faiss with AVX512 support." / "Could not load library ... ModuleNotFoundError" for every CPU variant
    # that faiss-cpu does not ship, in each process that imports faiss under a root logger at INFO (Ray Train's)
    "faiss.loader": logging.WARNING,
    "optuna": logging.WARNING,  # "A new study created in memory" (Optuna sets INFO on import: see quiet_loggers)
    "ray.tune.tune": logging.WARNING,  # "Wrote the latest version of all result files and experiment state to ..."
}
# Deprecation warnings raised by a library's own call, not by ours: (message regex, category, what calls it).
QUIET_WARNINGS = [
    (r"`torch\.distributed\.all_gather_into_tensor` is deprecated", FutureWarning,
     "DeepSpeed ZeRO-1/2's optimizer step (deepspeed/runtime/utils.py all_gather_dp_groups), ZeRO-3's parameter gather"),
    (r"`torch\.distributed\.reduce_scatter_tensor` is deprecated", FutureWarning,
     "DeepSpeed ZeRO-3's gradient reduction (deepspeed/comm/torch.py reduce_scatter_fn)"),
    (r"`ExecutionOptions\.exclude_resources` is deprecated", DeprecationWarning,
     "Ray Train's DataConfig.default_ingest_options, in its DatasetManager actor"),
]
# Library notes with nothing to act on, dropped by their logger and message prefix: (logger, prefix, who logs it).
QUIET_MESSAGES = [
    ("ray._private.authentication.authentication_token_setup", "Token authentication is enabled for this Ray cluster",
     "Ray, when it enables token auth on a local cluster it starts (fastemb's embedded Ray)"),
    ("DeepSpeed", "Setting accelerator to CPU",
     "DeepSpeed's accelerator detection when deepspeed is imported, to stdout: in a job's driver by transformers' "
     "save_pretrained (through accelerate); fastemb picks DeepSpeed's accelerator from the spec (accelerator.py)"),
    ("root", "Please consider to run pre-processing before quantization",
     "onnxruntime's quantize_dynamic, advice logged at each int8 quantization (model/quantize.py), which quantizes "
     "the MatMul weights of the exported graph as it is (ONNX Runtime optimises the graph when it loads it)"),
    ("ray.serve", "`max_batch_size` (",
     "Ray Serve's check, at each replica start and batching change, that max_ongoing_requests can fill a batch: it "
     "counts a batch in items, where the replica's @serve.batch counts padded tokens (its batch_size_fn, "
     "serve/embedder.py), so it fires for every token budget above max_ongoing_requests"),
]


def level() -> int:
    """fastemb's log level from ``FASTEMB_LOG_LEVEL`` (a level name; INFO when unset or not a level)."""
    value = logging.getLevelName(os.environ.get(LEVEL_ENV, "INFO").strip().upper())
    return value if isinstance(value, int) else logging.INFO


def verbose() -> bool:
    """True when ``FASTEMB_LOG_LEVEL=DEBUG``: library output is shown as the libraries print it."""
    return level() <= logging.DEBUG


class StageFormatter(logging.Formatter):
    """``[fastemb <stage>] message``, the stage being the package below ``fastemb`` in the logger's name."""

    def format(self, record: logging.LogRecord) -> str:
        parts = record.name.split(".")
        stage = parts[1] if len(parts) > 1 and parts[1] not in ("cli", "__main__") else ""
        prefix = f"[fastemb {stage}]" if stage else "[fastemb]"
        if record.levelno >= logging.WARNING:
            prefix += f" {record.levelname.lower()}:"
        return f"{prefix} {super().format(record)}"


class StderrHandler(logging.StreamHandler):
    """Writes to the ``sys.stderr`` of the moment of each record (Ray workers, Serve replicas and pytest swap it)."""

    def __init__(self) -> None:
        super().__init__(sys.stderr)

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, _value) -> None:
        pass


def install() -> None:
    """Give the ``fastemb`` logger its handler and level; idempotent (the package runs it on import)."""
    logger = logging.getLogger("fastemb")
    if not any(isinstance(h, StderrHandler) for h in logger.handlers):
        handler = StderrHandler()
        handler.setFormatter(StageFormatter())
        logger.addHandler(handler)
    logger.setLevel(level())
    logger.propagate = False


class _DropMessage(logging.Filter):
    def __init__(self, prefix: str) -> None:
        super().__init__()
        self.prefix = prefix

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(self.prefix)


def _ray_train_report_logger() -> str | None:
    """Name of the logger of Ray Train's "Reporting training result N: TrainingReport(...)" line (once per rank
    and report). Ray names it by the module's file path, so it hangs under the root logger, not ``ray.train``,
    and Ray Train's own level setting does not reach it."""
    found = importlib.util.find_spec("ray")
    if not found or not found.submodule_search_locations:
        return None
    return str(Path(list(found.submodule_search_locations)[0]) / "train" / "v2" / "_internal" / "execution"
               / "context.py")


def configure() -> None:
    """Set up logging for a fastemb process (CLI, Ray worker): :func:`install`, and unless verbose, hide library
    chatter. Also Ray's ``worker_process_setup_hook``. Idempotent."""
    install()
    if verbose():
        return
    quiet_loggers()
    report_logger = _ray_train_report_logger()
    if report_logger:
        logging.getLogger(report_logger).setLevel(logging.WARNING)
    for name, prefix, _who in QUIET_MESSAGES:
        quiet = logging.getLogger(name)
        if not any(isinstance(f, _DropMessage) and f.prefix == prefix for f in quiet.filters):
            quiet.addFilter(_DropMessage(prefix))
    for message, category, _caller in QUIET_WARNINGS:
        warnings.filterwarnings("ignore", message=message, category=category)
    for key, value in quiet_env(terminal=sys.stderr.isatty()).items():
        os.environ.setdefault(key, value)
    if "ray.data" in sys.modules:  # imported before this ran: RAY_DATA_LOG_LEVEL is read at import
        logging.getLogger("ray.data").setLevel(os.environ.get("RAY_DATA_LOG_LEVEL", "WARNING"))


def quiet_loggers() -> None:
    """Give the chatty library loggers (:data:`QUIET_LOGGERS`) their quiet level (nothing when verbose). Run it again
    after importing a library that sets its own logger's level when imported (Optuna does)."""
    if verbose():
        return
    for name, lvl in QUIET_LOGGERS.items():
        logging.getLogger(name).setLevel(lvl)


def quiet_env(terminal: bool = False) -> dict[str, str]:
    """Environment variables that keep library output out of logs (none when verbose). ``terminal``: this
    process writes to a terminal, where progress bars are worth showing; Ray workers never do."""
    if verbose():
        return {}
    env = {"RAY_DATA_LOG_LEVEL": "WARNING",  # dataset plans, "execution finished", progress logged outside a tty
           # Ray Tune's legacy console output, silent at verbose=0 (ray_tune_verbosity); the new one prints a
           # configuration box and where the results go whatever the verbosity
           "RAY_AIR_NEW_OUTPUT": "0"}
    if not terminal:
        env["RAY_TQDM"] = "0"  # Ray Data progress bars drawn in actors and forwarded to the driver as log lines
        env["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"  # transformers' "Loading weights" / "Writing model shards"
    return env


def worker_env() -> dict[str, str]:
    """What Ray workers need to log like the driver: fastemb's level, the quiet settings, and print as print."""
    # Ray Train's print patch tees each print() in a worker to stdout *and* to a root-logger record on stderr:
    # it tees whenever sys.stdout is not sys.__stdout__, which in a Ray worker (stdout redirected to its log
    # file) is always, so every line printed in a training worker reached the driver twice.
    env = {"RAY_TRAIN_ENABLE_PRINT_PATCH": "0", **quiet_env(terminal=False)}
    if LEVEL_ENV in os.environ:
        env[LEVEL_ENV] = os.environ[LEVEL_ENV]
    return env


def ray_train_logging():
    """Ray Train's ``LoggingConfig``: its INFO lines (worker group started, each checkpoint, each report, per
    rank) only when verbose; warnings and errors always."""
    from ray.train import LoggingConfig

    return LoggingConfig(log_level="INFO" if verbose() else "WARNING")


def ray_tune_verbosity() -> int:
    """Ray Tune's ``RunConfig(verbose=...)``: its status tables and per-trial result boxes only when verbose (Tune's
    default, 1); otherwise silent (0), and fastemb logs one line per ended trial (``fastemb.tune.tuner``)."""
    return 1 if verbose() else 0


@contextlib.contextmanager
def hidden_prints() -> Iterator[None]:
    """Hide what library code prints to stdout inside the block (e.g. DeepSpeed's "... built successfully");
    shown when verbose, and written to stderr if the block raises."""
    if verbose():
        yield
        return
    captured = io.StringIO()
    try:
        with contextlib.redirect_stdout(captured):
            yield
    except BaseException:
        sys.stderr.write(captured.getvalue())
        raise
