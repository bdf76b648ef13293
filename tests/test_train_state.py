"""The training loop's state (fastemb/train/state.py) and its checkpoint form: the loss window's means, and a round
trip of ``TrainState`` through a real DeepSpeed checkpoint (one gloo rank, no Ray) with a refreshed negative pool."""
from __future__ import annotations

import os
import socket

import pytest
import torch

from fastemb.data.pairs import load_pairs
from fastemb.model.encoder import Encoder
from fastemb.spec import NegativePoolSpec, parse_spec
from fastemb.train.state import LossWindow, TrainState


def test_loss_window_means_per_step_and_per_task():
    window = LossWindow()
    for task, loss, terms in (("a", 1.0, {"infonce": 0.5, "kl": 2.0}), ("b", 3.0, {"infonce": 1.5}),
                              ("a", 2.0, {"infonce": 1.0, "kl": 4.0}), ("a", 6.0, {"infonce": 3.0})):
        window.add_micro_batch(task, loss, terms, grad_accum=2)
    window.steps = 2
    assert window.task_means() == {"a": 3.0, "b": 3.0}
    assert window.term_means() == {"loss_infonce": (0.5 + 1.5 + 1.0 + 3.0) / 2 / 2, "loss_kl": (2.0 + 4.0) / 2 / 2}


def test_client_state_holds_step_micro_history_and_pools_but_not_dev_or_window():
    state = TrainState(step=7, micro=14, history=[{"step": 5, "loss": 0.3}], dev={"dev_ndcg@10": 0.4},
                       negative_pools={"train": {"rows": torch.arange(6).view(3, 2), "refreshed_at": 4,
                                                 "shape": [3, 10, 2]}})
    state.window.add_micro_batch("train", 0.3, {"kl": 1.0}, 1)
    client = state.to_client_state()
    assert set(client) == {"step", "micro", "history", "negative_pools"}
    back = TrainState.from_client_state(client)
    assert (back.step, back.micro, back.history) == (7, 14, [{"step": 5, "loss": 0.3}])
    assert torch.equal(back.negative_pools["train"]["rows"], torch.arange(6).view(3, 2))
    assert back.dev == {} and back.window == LossWindow()
    assert TrainState.from_client_state({"step": 1, "micro": 1, "history": []}).negative_pools == {}


@pytest.fixture()
def gloo_group():
    import torch.distributed as dist

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    saved = {k: os.environ.get(k) for k in ("MASTER_ADDR", "MASTER_PORT", "RANK", "WORLD_SIZE", "LOCAL_RANK")}
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK="0", WORLD_SIZE="1", LOCAL_RANK="0")
    dist.init_process_group("gloo", rank=0, world_size=1)
    yield
    dist.destroy_process_group()
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


def test_train_state_round_trips_through_a_deepspeed_checkpoint(gloo_group, tmp_path, minilm_path, monkeypatch):
    """A state with history and a refreshed pool, saved with an engine after a step, comes back from the checkpoint
    into a new engine: the same step, micro-step, history and pool table (the pool gives the same negatives), the
    same weights; the dev metrics and the loss window start empty."""
    from ray.train import Checkpoint

    from fastemb.losses import InfoNCELoss
    from fastemb.train.checkpointing import restore_state, write_checkpoint
    from fastemb.train.loop import _build_engine
    from fastemb.train.negative_pool import NegativePool

    spec = parse_spec({"model": {"base": minilm_path, "keep_layers": [0], "max_length": 16},
                       "train": {"num_workers": 1, "micro_batch_size": 4, "lr": 1e-3, "warmup_ratio": 0.0}})
    monkeypatch.setenv("DS_ACCELERATOR", "cpu")  # what the engine's worker sets (apply_accelerator), for this test only
    engine = _build_engine(spec, total_steps=10)
    loss = InfoNCELoss(0.05)(engine.module.embed(["a dog", "a cat", "a star", "a tree"]),
                             engine.module.embed(["canine", "feline", "sun", "plant"]))
    engine.backward(loss)
    engine.step()

    pairs, _ = load_pairs("wordnet", 40, 0, 3)
    cfg = NegativePoolSpec(refresh_every=1, pool_size=40, top_k=10)
    pool = NegativePool("train", pairs, 2, cfg)
    pool.refresh(Encoder.load(minilm_path, max_length=16), step=1)
    state = TrainState(step=1, micro=1, history=[{"step": 1, "loss": loss.item()}], dev={"dev_ndcg@10": 0.5},
                       negative_pools={"train": pool.state_dict()})
    write_checkpoint(engine, state, str(tmp_path / "ckpt"))

    fresh = _build_engine(spec, total_steps=10)
    trained, untrained = engine.module.state_dict(), fresh.module.state_dict()
    assert any(not torch.equal(trained[name], untrained[name]) for name in trained)
    back = restore_state(fresh, Checkpoint.from_directory(str(tmp_path / "ckpt")))
    assert (back.step, back.micro, back.history) == (state.step, state.micro, state.history)
    assert back.dev == {} and back.window == LossWindow()
    restored = NegativePool("train", pairs, 2, cfg)
    restored.load_state_dict(back.negative_pools["train"])
    assert restored.refreshed_at == 1
    assert all(restored.negatives_for(p["query"]) == pool.negatives_for(p["query"]) for p in pairs)
    restored_weights = fresh.module.state_dict()
    assert all(torch.equal(trained[name], restored_weights[name]) for name in trained)
