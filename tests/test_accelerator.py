"""The accelerator chosen by the spec, checked on CPU without CUDA: ``train.use_gpu`` picks DeepSpeed's CUDA
accelerator, NCCL, a GPU per worker and bf16 where the GPU has it; without it, CPU, gloo and fp32. An explicit
``DS_ACCELERATOR`` wins with a warning. The same choice reaches the DeepSpeed config, Ray Train's scaling and backend,
the encoder actors and Serve replicas, and ``fastemb submit --dry-run``."""
from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from fastemb.accelerator import (CPU_MAX_BATCH_TOKENS, apply_accelerator, batch_token_budget, inference_device,
                                 inference_precision, pool_precision, resolve_accelerator, stage_requests,
                                 training_precision)
from fastemb.spec import SpecError, load_spec, parse_spec
from fastemb.train.deepspeed_config import deepspeed_config
from fastemb.train.trainer import scaling_and_backend

ROOT = Path(__file__).resolve().parents[1]
JOBS = ROOT / "jobs"


@pytest.fixture
def no_ds_env(monkeypatch):
    """The spec chooses: no DS_ACCELERATOR in this process's environment."""
    unset_ds_env(monkeypatch)


def unset_ds_env(monkeypatch) -> None:
    """Remove DS_ACCELERATOR for this test only: set first, so monkeypatch restores the original (also an absent
    one) after whatever the test (apply_accelerator) writes there."""
    monkeypatch.setenv("DS_ACCELERATOR", "")
    monkeypatch.delenv("DS_ACCELERATOR")


def _train(gpu: bool, **train):
    return load_spec(JOBS / "contrastive.yaml", [f"train.use_gpu={str(gpu).lower()}",
                                                 *(f"train.{k}={v}" for k, v in train.items())])


def test_gpu_spec_picks_cuda_nccl_bf16_and_a_gpu_per_worker(no_ds_env):
    spec = _train(True)
    acc = resolve_accelerator(spec.train.use_gpu, spec.train.gpus_per_worker, spec.train.num_workers)
    assert (acc.device, acc.backend, acc.source) == ("cuda", "nccl", "spec") and acc.on_gpu
    precision = training_precision(spec.train.precision, acc.device, bf16=True)
    assert spec.train.precision == "auto" and precision == "bf16"
    assert training_precision("auto", "cuda", bf16=False) == "fp32"  # a GPU without bf16 (V100, T4)
    cfg = deepspeed_config(spec.train, precision, acc)
    assert cfg["bf16"] == {"enabled": True} and "fp16" not in cfg
    assert "reduce_scatter" not in cfg["zero_optimization"]
    scaling, backend = scaling_and_backend(spec)
    assert scaling.use_gpu and scaling.num_workers == 2
    assert scaling._resources_per_worker_not_none == {"CPU": 1, "GPU": 1}
    assert backend.backend == "nccl"


def test_cpu_spec_keeps_cpu_gloo_fp32(no_ds_env):
    spec = _train(False)
    acc = resolve_accelerator(spec.train.use_gpu, spec.train.gpus_per_worker, spec.train.num_workers)
    assert (acc.device, acc.backend, acc.source) == ("cpu", "gloo", "spec") and not acc.on_gpu
    precision = training_precision(spec.train.precision, acc.device)
    assert precision == "fp32"
    cfg = deepspeed_config(spec.train, precision, acc)
    assert "bf16" not in cfg and "fp16" not in cfg and cfg["zero_optimization"]["stage"] == 2
    scaling, backend = scaling_and_backend(spec)
    assert not scaling.use_gpu and scaling._resources_per_worker_not_none == {"CPU": 1}
    assert backend.backend == "gloo"
    assert training_precision("bf16", "cpu") == "bf16"  # an explicit precision is kept


def test_shared_gpus_talk_over_gloo_and_zero3_gathers_on_export(no_ds_env):
    spec = _train(True, gpus_per_worker=0.5, zero_stage=3)
    acc = resolve_accelerator(True, 0.5, 2)
    assert (acc.device, acc.backend) == ("cuda", "gloo")  # NCCL refuses two ranks on one GPU
    cfg = deepspeed_config(spec.train, "bf16", acc)
    assert cfg["zero_optimization"]["reduce_scatter"] is False
    assert cfg["zero_optimization"]["stage3_gather_16bit_weights_on_model_save"] is True
    scaling, backend = scaling_and_backend(spec)
    assert scaling._resources_per_worker_not_none == {"CPU": 1, "GPU": 0.5} and backend.backend == "gloo"
    assert resolve_accelerator(True, 0.5, 1).backend == "nccl"  # one worker alone on its half GPU


def test_explicit_environment_wins_with_a_warning(monkeypatch, caplog):
    caplog.set_level(logging.WARNING, logger="fastemb.accelerator")
    acc = resolve_accelerator(True, env={"DS_ACCELERATOR": "cpu"})
    assert (acc.device, acc.backend, acc.source) == ("cpu", "gloo", "environment")
    assert "DS_ACCELERATOR=cpu" in caplog.text and "use_gpu: true" in caplog.text
    caplog.clear()
    assert resolve_accelerator(False, env={"DS_ACCELERATOR": "cpu"}).source == "spec"  # agrees: no warning
    assert caplog.text == ""
    # A worker applies the choice before DeepSpeed is imported; an explicit value stays.
    unset_ds_env(monkeypatch)
    assert apply_accelerator(True).device == "cuda"
    import os

    assert os.environ["DS_ACCELERATOR"] == "cuda"
    assert apply_accelerator(False).device == "cuda"  # now explicit in this environment
    monkeypatch.setenv("DS_ACCELERATOR", "cpu")
    assert apply_accelerator(False).device == "cpu"


def test_inference_device_precision_and_batch_budget():
    assert inference_device(0, "embed.num_gpus") == "cpu"
    import torch

    if not torch.cuda.is_available():  # this CPU machine: a GPU request is refused, naming the field
        with pytest.raises(RuntimeError, match="embed.num_gpus: 0.5 GPU"):
            inference_device(0.5, "embed.num_gpus")
    assert inference_precision("auto", "cuda") == "fp16" and inference_precision("auto", "cpu") == "fp32"
    assert pool_precision("auto", 0.25) == "fp16" and pool_precision("auto", 0) == "fp32"
    assert batch_token_budget(None, "cpu") == CPU_MAX_BATCH_TOKENS == 1024
    assert batch_token_budget(4096, "cuda") == 4096


@pytest.mark.parametrize("spec, field, words", [
    ({"job": "index", "embed": {"precision": "fp16"}}, "embed", "needs a GPU"),
    ({"job": "index", "embed": {"num_gpus": 1, "backend": "onnx"}}, "embed", "onnx runs on CPU only"),
    ({"job": "index", "embed": {"num_gpus": -1}}, "embed.num_gpus", "greater than or equal to 0"),
    ({"job": "serve", "replica": {"precision": "bf16"}}, "replica", "needs a GPU"),
    ({"job": "train", "train": {"gpus_per_worker": 0}}, "train.gpus_per_worker", "greater than 0"),
])
def test_gpu_fields_are_validated(spec, field, words):
    with pytest.raises(SpecError) as err:
        parse_spec(spec)
    assert field in str(err.value) and words in str(err.value)


def test_stage_requests_of_gpu_stages():
    train = stage_requests(_train(True))["train"]
    assert train == {"workers": 2, "per_worker": {"CPU": 1, "GPU": 1.0}, "accelerator": "cuda", "backend": "nccl",
                     "precision": "auto (bf16 where the GPU supports it)", "zero_stage": 2}
    assert stage_requests(_train(False))["train"]["per_worker"] == {"CPU": 1}
    index = stage_requests(load_spec(JOBS / "index.yaml", ["embed.num_gpus=0.5"]))["embed"]
    assert index == {"actors": 2, "per_actor": {"CPU": 1, "GPU": 0.5}, "device": "cuda", "precision": "fp16"}
    distill = parse_spec({"job": "train", "distill": {"kl": {}}, "loss": {"hard_negatives": 1},
                          "train": {"use_gpu": True}})
    distill = distill.model_copy(update={"distill": distill.distill.model_copy(
        update={"embed": distill.distill.embed.model_copy(update={"num_gpus": 1.0})})})
    assert stage_requests(distill)["distill.embed"]["per_actor"] == {"CPU": 1, "GPU": 1.0}
    serve = stage_requests(parse_spec({"job": "serve", "replica": {"num_gpus": 1}}))["replica"]
    assert serve == {"per_replica": {"CPU": 1.0, "GPU": 1.0}, "device": "cuda", "precision": "fp16"}
    # an explicit DS_ACCELERATOR the job runs with (fastemb submit --env) wins there too
    assert stage_requests(_train(True), {"DS_ACCELERATOR": "cpu"})["train"]["accelerator"] == "cpu"


def test_dry_run_of_a_gpu_training_job(capsys, tmp_path, monkeypatch):
    """``fastemb submit --dry-run jobs/contrastive.yaml train.use_gpu=true``: the workers ask for a GPU each, DeepSpeed
    runs on CUDA over NCCL, and the job carries no DS_ACCELERATOR of the submitting machine (the spec decides there)."""
    from fastemb.cli import main

    token = tmp_path / "auth_token"
    token.write_text("e" * 64)
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", str(token))
    monkeypatch.delenv("RAY_AUTH_TOKEN", raising=False)
    monkeypatch.setenv("DS_ACCELERATOR", "cpu")  # this machine's setting: not the cluster's
    rc = main(["submit", str(JOBS / "contrastive.yaml"), "train.use_gpu=true", "--runtime-env",
               str(ROOT / "runtime_env.yaml"), "--dry-run"])
    out, err = capsys.readouterr()
    assert rc == 0
    sub = json.loads(out)
    assert "DS_ACCELERATOR" not in sub["runtime_env"]["env_vars"]
    assert sub["resources"]["train"]["per_worker"] == {"CPU": 1, "GPU": 1.0}
    assert sub["resources"]["train"]["accelerator"] == "cuda"
    assert "train: 2 workers x (1 CPU + 1 GPU), DeepSpeed on cuda (nccl)" in err


def test_half_precision_forward_returns_float32_close_to_fp32(tmp_path):
    """The torch forward pass GPU actors and replicas use, in bf16 (runs on CPU too): weights cast once, float32 out,
    close to the fp32 vectors but not equal to them."""
    import numpy as np
    import torch
    from transformers import BertConfig, BertModel, BertTokenizerFast

    from fastemb.model.encoder import Encoder
    from fastemb.model.onnx_backend import TorchForward, pad_batch

    words = [a + b for a in "bcdfg" for b in "aeiou"]
    tok = BertTokenizerFast(vocab={w: i for i, w in enumerate(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + words)})
    torch.manual_seed(0)
    BertModel(BertConfig(vocab_size=30, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                         intermediate_size=64)).save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    texts = [" ".join(words[i:i + 3 + i % 4]) for i in range(10)]
    batch = pad_batch(tok(texts)["input_ids"], 0)
    fp32 = TorchForward(Encoder.load(str(tmp_path)).eval())(*batch)
    half = TorchForward(Encoder.load(str(tmp_path)).eval(), "bf16")
    got = half(*batch)
    assert next(half.encoder.parameters()).dtype == torch.bfloat16 and got.dtype == np.float32
    assert 0 < np.abs(got - fp32).max() < 5e-2
