"""Multi-task training (fastemb/train/tasks.py): the spec section, the seeded task sampler over real Ray Data
shards, and a short real 2-worker run mixing WordNet pairs (negatives refreshed by the pool) and a SimCSE task."""
from __future__ import annotations

import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

from fastemb.spec import SpecError, load_spec, parse_spec
from fastemb.train.trainer import plan_steps
from fastemb.train.tasks import micro_batches_done, task_schedule, task_stream

ROOT = Path(__file__).resolve().parents[1]
TWO = [{"name": "a", "data": "wordnet"}, {"name": "b", "kind": "simcse", "data": "wordnet"}]


def test_task_spec_errors_name_the_field():
    ok = parse_spec({"tasks": [{"name": "a", "data": "wordnet", "weight": 2, "loss": {"hard_negatives": 1}},
                               {"name": "b", "kind": "simcse", "data": "wordnet", "loss": {"temperature": 0.1}}],
                     "negatives_pool": {"refresh_every": 5}})
    assert ok.tasks[0].effective_loss(ok.loss).hard_negatives == 1
    assert ok.tasks[1].effective_loss(ok.loss).temperature == 0.1 and ok.tasks[1].effective_loss(ok.loss).similarity == "cosine"
    cases = [({"tasks": [TWO[0], {**TWO[0]}]}, "tasks.1.name"),
             ({"tasks": [{**TWO[0], "weight": 0}]}, "tasks.0.weight"),
             ({"tasks": [{**TWO[0], "loss": {"temperature": -1}}]}, "tasks.0.loss"),
             ({"tasks": [{**TWO[0], "loss": {"bogus": 1}}]}, "tasks.0.loss"),
             ({"tasks": [{"name": "a"}]}, "tasks.0.data"),
             ({"tasks": [TWO[0]], "data": {"train": "x.parquet"}}, "data.train"),
             ({"tasks": [{**TWO[1], "loss": {"hard_negatives": 1}}]}, "tasks.0.loss.hard_negatives"),
             ({"tasks": [{**TWO[0], "distill": True}]}, "tasks.0.distill"),
             ({"tasks": TWO, "distill": {"kl": {}}}, "distill: with tasks"),
             ({"tasks": []}, "tasks"),
             ({"negatives_pool": {"refresh_every": 5}}, "negatives_pool: needs hard negatives"),
             ({"negatives_pool": {}, "loss": {"hard_negatives": 1}}, "negatives_pool.refresh_every"),
             ({"negatives_pool": {"refresh_every": 5, "range_min": 100}, "loss": {"hard_negatives": 1}},
              "negatives_pool"),
             ({"negatives_pool": {"refresh_every": 5}, "loss": {"hard_negatives": 1}, "distill": {"kl": {}}},
              "negatives_pool: distill.kl"),
             ({"job": "tune", "tasks": TWO}, "tasks: not supported by fastemb tune")]
    for raw, field in cases:
        with pytest.raises(SpecError, match=field.replace(".", r"\.")):
            parse_spec(raw)
    spec = parse_spec({"tasks": TWO, "train": {"micro_batch_size": 16, "num_workers": 2}})
    with pytest.raises(SpecError, match="train.micro_batch_size.*task 'b'"):
        plan_steps(spec, {"train_a": 100, "train_b": 20})
    plan = plan_steps(spec, {"train_a": 100, "train_b": 64})
    assert plan["micro_steps_per_task_epoch"] == {"train_a": 3, "train_b": 2} and plan["total_steps"] == 5
    shipped = load_spec(ROOT / "jobs" / "multitask.yaml")
    assert len(shipped.tasks) == 3 and shipped.negatives_pool and sum(t.distill for t in shipped.tasks) == 1


def test_schedule_follows_weights_and_is_the_same_in_every_process():
    schedule = task_schedule([3.0, 1.0, 0.5], 9000, seed=11)
    share = np.bincount(schedule, minlength=3) / len(schedule)
    assert np.allclose(share, [3 / 4.5, 1 / 4.5, 0.5 / 4.5], atol=0.02)
    other = subprocess.run([sys.executable, "-c", "from fastemb.train.tasks import task_schedule; "
                            "print(task_schedule([3.0, 1.0, 0.5], 9000, 11).tobytes().hex())"],
                           capture_output=True, text=True, check=True, cwd=ROOT).stdout.strip()
    assert other == schedule.tobytes().hex()               # another process (another rank) draws the same tasks
    assert task_schedule([3.0, 1.0, 0.5], 9000, 12).tolist() != schedule.tolist()
    assert micro_batches_done(schedule, 100, 3) == np.bincount(schedule[:100], minlength=3).tolist()


def test_each_rank_streams_single_task_batches_in_step(ray_local):
    """Two ranks (threads) over real streaming-split shards, as Ray Train hands them out: every micro-batch is from
    the scheduled task, ranks see disjoint rows, a task that runs out starts over, and a stream resumed after m
    micro-batches continues where it stopped."""
    import ray.data

    t = parse_spec({"train": {"micro_batch_size": 4, "length_window": 2}}).train
    data = {name: [{"query": f"{name}{i}", "positive": f"p {name}{i}"} for i in range(n)]
            for name, n in (("a", 48), ("b", 24))}
    per_epoch = {"a": 48 // 8, "b": 24 // 8}
    schedule = task_schedule([2.0, 1.0], 30, seed=3)
    shards = {name: ray.data.from_items(rows).streaming_split(2, equal=True) for name, rows in data.items()}
    seen: dict[int, list[tuple[int, list[str]]]] = {0: [], 1: []}

    def rank(r: int) -> None:
        streams = [task_stream(shards[name][r], t, per_epoch[name], 0, i) for i, name in enumerate("ab")]
        for m in range(len(schedule)):
            batch = next(streams[schedule[m]])
            seen[r].append((int(schedule[m]), [row["query"] for row in batch]))

    threads = [threading.Thread(target=rank, args=(r,)) for r in (0, 1)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(timeout=300)
    for r in (0, 1):
        assert len(seen[r]) == len(schedule)
        for task, queries in seen[r]:
            assert len(queries) == 4 and {q[0] for q in queries} == {"ab"[task]}   # one source per batch
    b_rows = {r: [q for task, qs in seen[r] for q in qs if task == 1] for r in (0, 1)}
    assert int((schedule == 1).sum()) > per_epoch["b"]            # task b ran out and started over
    first_epoch = [set(b_rows[r][:12]) for r in (0, 1)]           # 3 batches of 4 per rank and epoch
    assert not first_epoch[0] & first_epoch[1] and first_epoch[0] | first_epoch[1] == {f"b{i}" for i in range(24)}

    local = ray.data.from_items(data["a"])                        # resumption of one stream (a single rank)
    fresh = task_stream(local, t, 12, 0, 0)
    full = [[row["query"] for row in next(fresh)] for _ in range(15)]
    resumed = task_stream(local, t, 12, 5, 0)
    assert [[row["query"] for row in next(resumed)] for _ in range(10)] == full[5:15]


def test_three_task_run_with_a_refreshed_negative_pool_and_a_distillation_task(ray_local, tmp_path, tiny_eval,
                                                                              minilm_path, tiny_model):
    """2 Ray Train workers, ZeRO-2: WordNet pairs without negatives (the pool mines them before step 1 and again
    every 4 steps), a SimCSE task on WordNet definitions and a distillation task (KL from a teacher, whose outputs
    are computed once for that task's pairs only)."""
    from fastemb.train.job import run_train

    spec = parse_spec({
        "name": "multi", "storage_path": str(tmp_path), "model": {"base": tiny_model, "max_length": 32},
        "data": {"eval": tiny_eval}, "general": None,
        "tasks": [{"name": "pairs", "data": "wordnet", "max_pairs": 256, "weight": 2, "loss": {"hard_negatives": 1}},
                  {"name": "defs", "kind": "simcse", "data": "wordnet", "max_pairs": 128, "weight": 1,
                   "loss": {"temperature": 0.1}},
                  {"name": "teach", "data": "wordnet", "max_pairs": 96, "weight": 1, "distill": True}],
        "distill": {"teacher": minilm_path, "kl": {"in_batch": True}, "embed": {"num_actors": 1, "batch_rows": 64}},
        "negatives_pool": {"refresh_every": 4, "pool_size": 200, "top_k": 20, "query_chunk": 64},
        "train": {"num_workers": 2, "micro_batch_size": 16, "max_steps": 10, "log_every": 1, "eval_every": 1000,
                  "checkpoint_every": 1000, "lr": 1e-4},
    })
    report = run_train(spec)
    history = report["history"]
    refreshes = report["negative_pool_refreshes"]
    assert [r["step"] for r in refreshes] == [0, 4, 8] and {r["task"] for r in refreshes} == {"pairs"}
    assert refreshes[0]["old_score_mean"] is None and refreshes[0]["changed"] == refreshes[0]["negatives"] == refreshes[0]["queries"] > 200
    assert all(r["old_score_mean"] is not None and r["seconds"] > 0 for r in refreshes[1:])
    assert sum(r["changed"] for r in refreshes[1:]) > 0 and refreshes[1]["pool"] == 200
    steps = [h for h in history if "loss" in h]
    assert len(steps) == report["plan"]["total_steps"] == 10
    tasks_logged = {k for h in steps for k in h if k.startswith("loss_task_")}
    assert tasks_logged == {"loss_task_pairs", "loss_task_defs", "loss_task_teach"}
    assert any("loss_kl" in h for h in steps)                       # the distillation term ran on the teach batches
    assert set(report["pairs"]) == {"pairs", "defs", "teach"} and report["pairs"]["defs"]["kept"] == 128
    teacher = report["teacher_outputs"]
    assert set(teacher) == {"teach"} and teacher["teach"]["texts"] <= 2 * 96 and Path(teacher["teach"]["path"]).exists()
    assert Path(report["model_dir"], "config.json").exists()
