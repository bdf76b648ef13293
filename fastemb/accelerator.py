"""Which device a job's workers compute on, decided by the spec: DeepSpeed's accelerator and the process-group
backend of training workers, the training precision, and the device, dtype and batch budget of the embedding actors
and Serve replicas.

``train.use_gpu: true`` picks DeepSpeed's CUDA accelerator and NCCL; false picks its CPU accelerator and gloo. The
same spec gives the same choice for a local run, a Tune trial and a submitted job: each training worker applies
:func:`resolve_accelerator` before DeepSpeed is imported. An explicit ``DS_ACCELERATOR`` in the environment still
wins (the driver logs a warning when it contradicts the spec). Embedding actors (``embed.num_gpus``) and Serve
replicas (``replica.num_gpus``) run torch on the GPU Ray gave them, in fp16 unless told otherwise.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Mapping

logger = logging.getLogger(__name__)

ENV = "DS_ACCELERATOR"  # DeepSpeed reads it when it first picks its accelerator in a process
CPU, CUDA = "cpu", "cuda"
INFERENCE_DTYPES = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}
GPU_MAX_BATCH_TOKENS = 65_536  # padded tokens per forward pass on a GPU: past this a batch only adds latency
CPU_MAX_BATCH_TOKENS = 1024  # ~1k keeps a CPU forward pass's activations in cache (fastemb/index/embed.py)


@dataclass(frozen=True)
class Accelerator:
    """Where a training worker computes: DeepSpeed's accelerator, the process group's backend, and who chose it."""
    device: str  # "cpu" | "cuda" (the value of DS_ACCELERATOR in the workers)
    backend: str  # torch.distributed backend Ray Train starts: "gloo" | "nccl"
    source: str  # "spec" (train.use_gpu) or "environment" (an explicit DS_ACCELERATOR)

    @property
    def on_gpu(self) -> bool:
        return self.device == CUDA


def resolve_accelerator(use_gpu: bool, gpus_per_worker: float = 1.0, num_workers: int = 1,
                        env: Mapping[str, str] | None = None, warn: bool = True) -> Accelerator:
    """The accelerator of a training job's workers: CUDA + NCCL for ``train.use_gpu``, CPU + gloo otherwise.

    An explicit ``DS_ACCELERATOR`` in ``env`` (default: this process's environment) wins; with ``warn`` a value that
    contradicts the spec is logged. Ranks that share a GPU (``gpus_per_worker`` < 1 with several workers) talk over
    gloo: NCCL refuses two ranks on one device."""
    wanted = CUDA if use_gpu else CPU
    explicit = (os.environ if env is None else env).get(ENV) or None
    if explicit and explicit != wanted:
        if warn:
            logger.warning(f"{ENV}={explicit} in the environment overrides train.use_gpu: {str(use_gpu).lower()} "
                           f"(which picks {wanted}); unset {ENV} to let the spec choose")
        device, source = explicit, "environment"
    else:
        device, source = wanted, "spec"
    shared = device == CUDA and num_workers > 1 and gpus_per_worker < 1
    backend = "nccl" if device == CUDA and not shared else "gloo"
    return Accelerator(device, backend, source)


def apply_accelerator(use_gpu: bool, gpus_per_worker: float = 1.0, num_workers: int = 1) -> Accelerator:
    """In a training worker, before DeepSpeed is imported: resolve the accelerator and set ``DS_ACCELERATOR`` to it
    (the driver has already warned about a contradicting environment)."""
    acc = resolve_accelerator(use_gpu, gpus_per_worker, num_workers, warn=False)
    os.environ[ENV] = acc.device
    return acc


def bf16_supported() -> bool:
    """Whether this process's GPU computes in bf16 natively (compute capability 8.0 and later: A100, H100, L4, ...)."""
    import torch

    return bool(torch.cuda.is_available() and torch.cuda.is_bf16_supported(including_emulation=False))


def training_precision(precision: str, device: str, bf16: bool | None = None) -> str:
    """``train.precision`` resolved on a worker: ``auto`` is bf16 on a GPU that supports it, fp32 elsewhere (CPU, older
    GPUs). ``bf16``: whether the worker's GPU supports bf16 (default: asked of torch)."""
    if precision != "auto":
        return precision
    if device != CUDA:
        return "fp32"
    return "bf16" if (bf16_supported() if bf16 is None else bf16) else "fp32"


def inference_device(num_gpus: float, field: str) -> str:
    """``cuda`` for an actor or replica Ray gave GPUs to (``num_gpus`` > 0), else ``cpu``; refuses a GPU request that
    this process's torch cannot serve, naming ``field``."""
    if num_gpus <= 0:
        return CPU
    import torch

    if not torch.cuda.is_available():
        raise RuntimeError(f"{field}: {num_gpus:g} GPU(s) asked for, but torch in this process sees no CUDA GPU "
                           f"(torch {torch.__version__}, CUDA_VISIBLE_DEVICES="
                           f"{os.environ.get('CUDA_VISIBLE_DEVICES', '<unset>')}); install a CUDA build of torch on the "
                           f"GPU nodes or set {field}: 0")
    return CUDA


def inference_precision(precision: str, device: str) -> str:
    """The dtype name an inference forward pass runs in: ``auto`` is fp16 on a GPU, fp32 on CPU."""
    if precision == "auto":
        return "fp16" if device == CUDA else "fp32"
    return precision


def pool_precision(precision: str, num_gpus: float) -> str:
    """The dtype name of an actor pool's vectors: ``precision`` resolved for GPU actors (``num_gpus`` > 0) or CPU
    ones. A non-fp32 result belongs in the key of anything stored from those vectors (they differ by ~1e-3)."""
    return inference_precision(precision, CUDA if num_gpus > 0 else CPU)


def batch_token_budget(max_batch_tokens: int | None, device: str, hidden_size: int = 384, num_heads: int = 12,
                       max_length: int = 256, gpu_share: float = 1.0, dtype_bytes: int = 2) -> int:
    """Padded tokens per forward pass: ``max_batch_tokens`` when given; else ~1k on CPU and, on a GPU, what half of
    this actor's share of the GPU's memory holds (activations of one layer per token, 4x headroom), at most
    ``GPU_MAX_BATCH_TOKENS``."""
    if max_batch_tokens:
        return max_batch_tokens
    if device != CUDA:
        return CPU_MAX_BATCH_TOKENS
    import torch

    total = torch.cuda.get_device_properties(torch.cuda.current_device()).total_memory
    per_token = 4 * dtype_bytes * (8 * hidden_size + 2 * num_heads * max_length)
    fits = int(total * min(gpu_share, 1.0) * 0.5 // per_token)
    return max(max_length, min(GPU_MAX_BATCH_TOKENS, fits))


def stage_requests(spec, env: Mapping[str, str] | None = None) -> dict[str, dict]:
    """What each compute stage of a job spec asks Ray for, by the dotted name of its section: training workers
    (``train``: each worker's resources, the accelerator, backend and precision the spec picks), encoder actor pools
    (``embed``, ``distill.embed``: each actor's resources and dtype) and Serve replicas (``replica``). ``env``: the
    environment the job will run with (an explicit ``DS_ACCELERATOR`` there wins); default: none."""
    from fastemb.spec import EmbedSpec, TrainSpec
    from fastemb.spec.serve import ReplicaSpec

    out: dict[str, dict] = {}
    for name, section in _sections(spec):
        if isinstance(section, TrainSpec):
            acc = resolve_accelerator(section.use_gpu, section.gpus_per_worker, section.num_workers,
                                      env={} if env is None else env)
            precision = section.precision
            if precision == "auto":
                precision = "auto (bf16 where the GPU supports it)" if acc.on_gpu else "auto (fp32)"
            out[name] = {"workers": section.num_workers,
                         "per_worker": {"CPU": section.cpus_per_worker,
                                        **({"GPU": section.gpus_per_worker} if section.use_gpu else {})},
                         "accelerator": acc.device, "backend": acc.backend, "precision": precision,
                         "zero_stage": section.zero_stage}
        elif isinstance(section, EmbedSpec):
            out[name] = {"actors": section.num_actors,
                         "per_actor": {"CPU": section.threads_per_actor,
                                       **({"GPU": section.num_gpus} if section.num_gpus > 0 else {})},
                         "device": CUDA if section.num_gpus > 0 else CPU,
                         "precision": pool_precision(section.precision, section.num_gpus)}
        elif isinstance(section, ReplicaSpec):
            device = CUDA if section.num_gpus > 0 else CPU
            out[name] = {"per_replica": {"CPU": section.num_cpus,
                                         **({"GPU": section.num_gpus} if section.num_gpus > 0 else {})},
                         "device": device, "precision": inference_precision(section.precision, device)}
    return out


def _sections(model, prefix: str = ""):
    """(dotted name, section) of every pydantic model nested in ``model`` (``model`` itself excluded)."""
    from pydantic import BaseModel

    for field in type(model).model_fields:
        value = getattr(model, field)
        if isinstance(value, BaseModel):
            yield prefix + field, value
            yield from _sections(value, f"{prefix}{field}.")
