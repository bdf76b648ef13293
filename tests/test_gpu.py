"""The pipeline's GPU paths at tiny size, through the real entry points (runs only where CUDA is present; skipped on
CPU-only machines; ``bench/gpu.sh`` runs this tier on a GPU machine).

- The DeepSpeed engine of ``fastemb.train.loop`` on one GPU over NCCL in bf16 and fp16: InfoNCE steps lower the loss.
- ``run_train`` with 2 Ray Train workers (a GPU each where there are 2, else sharing one over gloo), ZeRO-2 and
  ZeRO-3: the spec alone picks DeepSpeed's CUDA accelerator and bf16 (no DS_ACCELERATOR is set); the exported model
  loads.
- ``run_index`` with GPU encoder actors (half a GPU each, fp16) and the faiss build as CPU tasks (the quantizer's
  k-means on the GPU where faiss-gpu is installed); the vectors agree with the CPU encoder's.
- faiss-gpu, if installed: exact search equals the CPU index's, an IVF index trained on the GPU is an ordinary CPU
  index.
- A Serve replica with ``replica.num_gpus``: torch on the GPU in fp16, answering /v1/embeddings.
- ``run_train`` of an image–text job (data.format: image_text) with 2 workers on the GPU(s) in bf16: the two-tower
  model trains and its export loads.

The encoder is a small randomly initialised BERT made from a config, so no weights have to travel to the GPU machine.
"""
from __future__ import annotations

import os
import socket

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]
WORDS = [a + b for a in "bcdfghklmnprst" for b in "aeiou"]
TEXTS = [" ".join(WORDS[(7 * i) % 60:(7 * i) % 60 + 2 + i % 5]) for i in range(40)]


@pytest.fixture(autouse=True, scope="module")
def _spec_picks_the_accelerator():
    """The spec picks the accelerator: an explicit DS_ACCELERATOR other than cuda would win and test the CPU path."""
    value = os.environ.get("DS_ACCELERATOR")
    if value not in (None, "cuda"):
        pytest.fail(f"DS_ACCELERATOR={value} is set: unset it (bench/gpu.sh does) so that train.use_gpu picks CUDA")


@pytest.fixture(scope="module")
def tiny_encoder(tmp_path_factory) -> str:
    """A 2-layer BERT (hidden 64) with a vocabulary of ``WORDS``, saved as a Hugging Face folder."""
    from transformers import BertConfig, BertModel, BertTokenizerFast

    out = tmp_path_factory.mktemp("enc")
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + WORDS
    tok = BertTokenizerFast(vocab={w: i for i, w in enumerate(vocab)})
    torch.manual_seed(0)
    model = BertModel(BertConfig(vocab_size=len(vocab), hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                                 intermediate_size=128))
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return str(out)


@pytest.fixture
def nccl_group():
    """A one-process NCCL group (what Ray Train makes for one GPU worker); the environment is restored after."""
    import torch.distributed as dist

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    keys = ("MASTER_ADDR", "MASTER_PORT", "RANK", "WORLD_SIZE", "LOCAL_RANK", "DS_ACCELERATOR")
    saved = {k: os.environ.get(k) for k in keys}
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK="0", WORLD_SIZE="1", LOCAL_RANK="0")
    dist.init_process_group("nccl", rank=0, world_size=1)
    yield
    dist.destroy_process_group()
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_deepspeed_engine_trains_on_gpu(nccl_group, tiny_encoder, precision):
    from fastemb.losses import InfoNCELoss
    from fastemb.spec import parse_spec
    from fastemb.train.loop import _build_engine

    spec = parse_spec({"model": {"base": tiny_encoder, "max_length": 16},
                       "train": {"use_gpu": True, "precision": precision, "zero_stage": 2, "num_workers": 1,
                                 "micro_batch_size": 8, "lr": 1e-3, "warmup_ratio": 0.0}})
    engine = _build_engine(spec, total_steps=30)  # the accelerator comes from the spec
    assert os.environ["DS_ACCELERATOR"] == "cuda" and next(engine.module.parameters()).is_cuda
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


@pytest.mark.parametrize("zero_stage", [2, 3])
def test_run_train_two_workers_on_gpus(ray_local, tmp_path, tiny_eval, tiny_encoder, zero_stage):
    from fastemb.model.encoder import Encoder
    from fastemb.spec import parse_spec
    from fastemb.train.job import run_train

    two = torch.cuda.device_count() >= 2
    spec = parse_spec({"name": f"gpu-z{zero_stage}", "storage_path": str(tmp_path),
                       "model": {"base": tiny_encoder, "max_length": 32},
                       "data": {"max_pairs": 256, "eval": tiny_eval},
                       "train": {"num_workers": 2, "use_gpu": True, "gpus_per_worker": 1 if two else 0.5,
                                 "zero_stage": zero_stage, "micro_batch_size": 16, "max_steps": 4, "eval_every": 2,
                                 "checkpoint_every": 2, "log_every": 1, "lr": 1e-3, "warmup_ratio": 0.0}})
    report = run_train(spec)
    engine = next(h for h in report["history"] if h.get("event") == "engine")
    bf16 = torch.cuda.is_bf16_supported(including_emulation=False)
    assert engine["accelerator"] == "cuda" and engine["accelerator_source"] == "spec"
    assert engine["device"].startswith("cuda") and engine["zero_stage"] == zero_stage
    assert engine["backend"] == ("nccl" if two else "gloo")
    assert engine["precision"] == ("bf16" if bf16 else "fp32")
    losses = [h["loss"] for h in report["history"] if "loss" in h]
    assert len(losses) == 4 and all(np.isfinite(losses))
    assert Encoder.load(report["model_dir"]).encode(TEXTS[:4]).shape == (4, 64)


def test_index_with_gpu_encoder_actors_and_cpu_faiss_tasks(ray_local, tmp_path, tiny_encoder):
    from fastemb.index.faiss_gpu import faiss_gpus
    from fastemb.index.job import run_index
    from fastemb.index.shards import vectors_of
    from fastemb.model.encoder import Encoder
    from fastemb.spec import parse_spec

    pq.write_table(pa.table({"id": [f"d{i}" for i in range(len(TEXTS))], "text": TEXTS}), tmp_path / "c.parquet")
    spec = parse_spec({"job": "index", "name": "gpu-index", "storage_path": str(tmp_path / "runs"),
                       "corpus": {"path": str(tmp_path / "c.parquet")}, "model": {"base": tiny_encoder,
                                                                                   "max_length": 32},
                       "embed": {"num_actors": 2, "num_gpus": 0.5, "batch_rows": 16},
                       "index": {"type": "ivf_flat", "nlist": 4, "nprobe": 4, "add_tasks": 2,
                                 "train_on_gpu": faiss_gpus() > 0}})
    manifest = run_index(spec)
    assert manifest["counts"]["index_entries"] == len(TEXTS)
    assert manifest["build"]["trained_on"] == ("gpu" if faiss_gpus() else "cpu")
    shards = sorted((spec.run_dir / "embeddings").rglob("*.parquet"))
    table = pa.concat_tables([pq.read_table(f) for f in shards])
    order = np.argsort([int(i[1:]) for i in table.column("id").to_pylist()])
    gpu = vectors_of(table)[order]
    cpu = Encoder.load(tiny_encoder, max_length=32).encode(TEXTS)
    diff = np.abs(gpu - cpu).max()
    assert 0 < diff < 2e-2, f"fp16 GPU vectors differ from the fp32 CPU ones by {diff}"  # > 0: fp16 really ran


def _faiss_gpus() -> int:
    from fastemb.index.faiss_gpu import faiss_gpus

    return faiss_gpus()


@pytest.mark.skipif(not _faiss_gpus(), reason="faiss-gpu not installed (pip install faiss-gpu in place of faiss-cpu)")
def test_faiss_gpu_search_and_ivf_training():
    import faiss

    from fastemb.index.faiss_gpu import gpu_clustering
    from fastemb.mine.topk import chunked_topk, exact_index, normalize_rows

    rng = np.random.default_rng(0)
    corpus, queries = normalize_rows(rng.normal(size=(5000, 64))), normalize_rows(rng.normal(size=(200, 64)))
    cpu = faiss.IndexFlatIP(64)
    cpu.add(corpus)
    want = cpu.search(queries, 10)[1]
    got = np.concatenate([rows for _, _, rows in chunked_topk(exact_index(corpus, 10), queries, 10, 64)])
    assert (got == want).mean() > 0.99
    index = faiss.index_factory(64, "IVF32,Flat", faiss.METRIC_INNER_PRODUCT)
    with gpu_clustering(index) as on_gpu:
        index.train(corpus)
    assert on_gpu and index.is_trained
    back = faiss.deserialize_index(faiss.serialize_index(index))  # a plain CPU index file
    back.add(corpus)
    assert back.ntotal == 5000


def test_serve_replica_on_a_gpu(ray_local, tmp_path, tiny_encoder):
    import httpx

    from fastemb.model.encoder import Encoder
    from serve_helpers import free_port, start_service, stop_service

    _, url = start_service({"port": free_port(), "production": {"model": tiny_encoder, "max_length": 32},
                            "replica": {"num_gpus": 0.5, "num_cpus": 1},
                            "autoscaling": {"min_replicas": 1, "max_replicas": 1},
                            "feedback_dir": str(tmp_path / "ab")})
    try:
        arm = httpx.get(url + "/healthz", timeout=30).json()["arms"]["production"]
        assert (arm["device"], arm["precision"], arm["inference_backend"]) == ("cuda", "fp16", "torch")
        r = httpx.post(url + "/v1/embeddings", json={"input": TEXTS[:8], "model": "fastemb"}, timeout=60)
        assert r.status_code == 200
        got = np.array([d["embedding"] for d in r.json()["data"]], dtype=np.float32)
    finally:
        stop_service()
    want = Encoder.load(tiny_encoder, max_length=32).encode(TEXTS[:8])
    assert np.abs(got - want).max() < 2e-2


def test_image_text_trains_on_gpus(ray_local, tmp_path, tiny_encoder):
    """The two-tower model on the GPU path: images (drawn here: coloured shapes, their colour and shape words as
    captions) decoded on Ray Data, 2 Ray Train workers on the GPU(s), DeepSpeed in bf16 where supported."""
    import io

    from PIL import Image, ImageDraw

    from fastemb.model.image_text import ImageTextModel
    from fastemb.spec import parse_spec
    from fastemb.train.job import run_train

    rows = []
    for i in range(48):
        image = Image.new("RGB", (40, 40), "white")
        colour = ("red", "green", "blue", "black")[i % 4]
        (ImageDraw.Draw(image).ellipse if i % 3 else ImageDraw.Draw(image).rectangle)((8, 8, 32, 32), fill=colour)
        buf = io.BytesIO()
        image.save(buf, format="PNG")
        rows.append({"image": buf.getvalue(), "captions": [f"{WORDS[i % 4]} {WORDS[4 + i % 3]}"],
                     "concept": f"{i % 4}-{i % 3}"})
    for split, part in (("train", rows[:32]), ("dev", rows[32:40]), ("test", rows[40:])):
        pq.write_table(pa.Table.from_pylist(part), tmp_path / f"{split}.parquet")
    two = torch.cuda.device_count() >= 2
    spec = parse_spec({"name": "gpu-image-text", "storage_path": str(tmp_path / "runs"),
                       "model": {"base": tiny_encoder, "max_length": 16},
                       "data": {"format": "image_text", "train": str(tmp_path / "train.parquet"),
                                "eval": str(tmp_path)},
                       "image_text": {"image_size": 32, "widths": [16, 32], "depths": [1, 1]}, "general": None,
                       "train": {"num_workers": 2, "use_gpu": True, "gpus_per_worker": 1 if two else 0.5,
                                 "micro_batch_size": 8, "max_steps": 4, "eval_every": 4, "log_every": 1,
                                 "lr": 1e-3, "warmup_ratio": 0.0}})
    report = run_train(spec)
    engine = next(h for h in report["history"] if h.get("event") == "engine")
    assert engine["accelerator"] == "cuda" and engine["device"].startswith("cuda")
    losses = [h["loss"] for h in report["history"] if "loss" in h]
    assert len(losses) == 4 and all(np.isfinite(losses))
    model = ImageTextModel.load(report["model_dir"])
    assert model.encode([TEXTS[0]]).shape == (1, model.dim)
