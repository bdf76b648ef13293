"""DeepSpeed engine configuration built from a ``TrainSpec``."""
from __future__ import annotations

from fastemb.spec import TrainSpec


def deepspeed_config(train: TrainSpec) -> dict:
    """ZeRO stage, precision, micro-batch, accumulation and clipping as a DeepSpeed config dict.

    The optimizer and LR schedule are passed to ``deepspeed.initialize`` as torch objects, so no
    fused/CPU-Adam op has to be compiled; ZeRO therefore needs ``zero_allow_untested_optimizer``."""
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
    if train.precision == "bf16":
        cfg["bf16"] = {"enabled": True}
    elif train.precision == "fp16":
        cfg["fp16"] = {"enabled": True, "initial_scale_power": 12}
    return cfg
