#!/usr/bin/env bash
# fastemb's one entry point on a fresh machine: bootstraps .venv (pinned packages, CPU torch,
# DeepSpeed's CPU comm op built once), then runs `fastemb ARGS...`, or the test suite with `test`.
#   ./dev.sh train jobs/contrastive.yaml      # the main job on an embedded local Ray
#   ./dev.sh test [pytest args]               # the tests
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
VENV="$ROOT/.venv"
PY="${PYTHON:-python3}"
STAMP="$VENV/.fastemb-installed"
WANT="$(cat "$ROOT/pyproject.toml" "$ROOT/dev.sh" | sha256sum | cut -c1-16)"

# No DS_ACCELERATOR: each job's spec picks DeepSpeed's accelerator (train.use_gpu; fastemb/accelerator.py).
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
export TORCH_EXTENSIONS_DIR="$VENV/torch_extensions"
export RAY_USAGE_STATS_ENABLED=0 PYTHONUNBUFFERED=1

if [ ! -f "$STAMP" ] || [ "$(cat "$STAMP")" != "$WANT" ]; then
  echo "[dev.sh] bootstrapping $VENV (first run: a few minutes)"
  [ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
  "$VENV/bin/python" -m pip install -q --upgrade pip
  # Pin torch first: an unpinned torch would pull a multi-GB CUDA build.
  "$VENV/bin/python" -m pip install -q "torch==2.13.0"
  # The rest with uv, which downloads, installs and compiles in parallel (measured here on a fresh venv: 30 s against
  # pip's 100 s, the same versions); it keeps the torch above, which satisfies the project's pin. pip if uv fails.
  # --compile-bytecode as pip does: where PYTHONDONTWRITEBYTECODE is set (it is on this machine and in CI), a module
  # installed without its .pyc is compiled again on every import in every process (the suite took 35 min, not 25).
  if ! { "$VENV/bin/python" -m pip install -q uv \
         && "$VENV/bin/uv" pip install -q --compile-bytecode --python "$VENV/bin/python" -e "$ROOT[test,bench]"; }; then
    echo "[dev.sh] uv could not install the project; installing with pip"
    "$VENV/bin/python" -m pip install -q -e "$ROOT[test,bench]"
  fi
  # DeepSpeed JIT-builds its shared-memory comm op on first use; build it once here, not in every run.
  DS_ACCELERATOR=cpu "$VENV/bin/python" -c "from deepspeed.comm.torch import build_shm_op; build_shm_op()" >/dev/null
  echo "$WANT" > "$STAMP"
fi

if [ "${1:-}" = "test" ]; then
  shift
  cd "$ROOT"
  # Two test processes (pytest-xdist), each test file whole in one of them with its own local Ray: a single process
  # keeps one of this machine's two cores idle through every import, process start and wait (about 30 % of the run).
  # Files start in tests/conftest.py's order (longest first). FASTEMB_TEST_PROCESSES=0 (or -n 0) runs in one process.
  exec "$VENV/bin/python" -m pytest -n "${FASTEMB_TEST_PROCESSES:-2}" --dist loadfile --no-loadscope-reorder "$@"
fi
exec "$VENV/bin/fastemb" "$@"
