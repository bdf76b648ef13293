"""GPU path of the training engine (runs only where CUDA is present; skipped on CPU-only machines).

Builds the real per-worker DeepSpeed engine of ``fastemb.train.loop`` over NCCL with bf16 and fp16 and
ZeRO-2, and checks that InfoNCE training steps run and lower the loss on a fixed batch. The encoder is a
small randomly initialised BERT made from a config, so no weights have to travel to the GPU machine.
"""
from __future__ import annotations

import os
import socket

import pytest
import torch

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]
WORDS = [a + b for a in "bcdfghklmnprst" for b in "aeiou"]


@pytest.fixture(scope="module")
def nccl_group():
    import torch.distributed as dist

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK="0", WORLD_SIZE="1", LOCAL_RANK="0")
    os.environ.pop("DS_ACCELERATOR", None)
    dist.init_process_group("nccl", rank=0, world_size=1)
    yield
    dist.destroy_process_group()


def _tiny_encoder_folder(tmp_path) -> str:
    from transformers import BertConfig, BertModel, BertTokenizerFast

    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + WORDS
    tok = BertTokenizerFast(vocab={w: i for i, w in enumerate(vocab)})
    model = BertModel(BertConfig(vocab_size=len(vocab), hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                                 intermediate_size=128))
    model.save_pretrained(tmp_path / "enc")
    tok.save_pretrained(tmp_path / "enc")
    return str(tmp_path / "enc")


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_deepspeed_engine_trains_on_gpu(nccl_group, tmp_path, precision):
    from fastemb.losses import InfoNCELoss
    from fastemb.spec import parse_spec
    from fastemb.train.loop import _build_engine

    spec = parse_spec({"model": {"base": _tiny_encoder_folder(tmp_path), "max_length": 16},
                       "train": {"use_gpu": True, "precision": precision, "zero_stage": 2, "num_workers": 1,
                                 "micro_batch_size": 8, "lr": 1e-3, "warmup_ratio": 0.0}})
    engine = _build_engine(spec, total_steps=30)
    assert next(engine.module.parameters()).is_cuda
    loss_fn = InfoNCELoss(0.05)
    queries = [f"{WORDS[i]} {WORDS[i + 1]}" for i in range(8)]
    docs = [" ".join(WORDS[i:i + 4]) for i in range(8)]
    losses = []
    for _ in range(30):
        loss = loss_fn(engine.module.embed(queries).float(), engine.module.embed(docs).float())
        engine.backward(loss)
        engine.step()
        losses.append(loss.item())
    assert all(torch.isfinite(torch.tensor(losses)))
    assert sum(losses[-5:]) / 5 < sum(losses[:5]) / 5
