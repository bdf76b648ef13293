"""DeepSpeed engine configuration built from a ``TrainSpec``."""
from __future__ import annotations

from fastemb.accelerator import Accelerator
from fastemb.spec import TrainSpec


def deepspeed_config(train: TrainSpec, precision: str, accelerator: Accelerator | None = None) -> dict:
    """ZeRO stage, precision, micro-batch, accumulation and clipping as a DeepSpeed config dict (with the cached
    loss, unmanaged accumulation: fastemb/train/grad_cache.py).

    ``precision``: ``train.precision`` resolved for the worker's device (``fastemb.accelerator.training_precision``);
    ``accelerator``: where the worker trains. The optimizer and LR schedule are passed to ``deepspeed.initialize`` as
    torch objects, so no fused/CPU-Adam op has to be compiled; ZeRO therefore needs ``zero_allow_untested_optimizer``.
    ZeRO-3 gathers the full 16-bit (fp32 when training in fp32) weights when the model is exported."""
    cfg: dict = {
        "train_micro_batch_size_per_gpu": train.micro_batch_size,
        "gradient_accumulation_steps": train.grad_accum,
        "gradient_clipping": train.max_grad_norm,
        "steps_per_print": 10**9,
        "wall_clock_breakdown": False,
        "zero_allow_untested_optimizer": True,
        "zero_optimization": {"stage": train.zero_stage, "overlap_comm": False, "contiguous_gradients": True,
                              "reduce_bucket_size": 5e7, "allgather_bucket_size": 5e7},
    }
    zero = cfg["zero_optimization"]
    if train.zero_stage == 3:
        zero["stage3_gather_16bit_weights_on_model_save"] = True
    if accelerator is not None and accelerator.on_gpu and accelerator.backend == "gloo":
        zero["reduce_scatter"] = False  # ranks sharing a GPU talk over gloo, whose CUDA collectives are all-reduces
    if train.cached:  # the cached loss backpropagates chunk by chunk; the loop's step is the boundary
        cfg["managed_gradient_accumulation"] = False
    if precision == "bf16":
        cfg["bf16"] = {"enabled": True}
    elif precision == "fp16":
        cfg["fp16"] = {"enabled": True, "initial_scale_power": 12}
    return cfg


def preload_cpu_comm_op() -> None:
    """Load DeepSpeed's prebuilt shared-memory comm op (CPU) straight from the extension folder.

    DeepSpeed otherwise goes through torch's JIT loader, which takes a file lock on every start; a
    process killed while holding it (a SIGKILLed worker) leaves every later run waiting forever. When
    the op was built before (``dev.sh`` builds it once), it is imported directly and cached where
    DeepSpeed looks first; when it was not, DeepSpeed builds it as usual."""
    import importlib.util
    import os
    from pathlib import Path

    from deepspeed.ops.op_builder.builder import OpBuilder

    name = "deepspeed_shm_comm"
    if name in OpBuilder._loaded_ops or os.environ.get("DS_ACCELERATOR", "cpu") != "cpu":
        return
    ext_dir = os.environ.get("TORCH_EXTENSIONS_DIR")
    library = Path(ext_dir) / name / f"{name}.so" if ext_dir else None
    if library is None or not library.exists():
        return
    spec = importlib.util.spec_from_file_location(name, library)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    OpBuilder._loaded_ops[name] = module
