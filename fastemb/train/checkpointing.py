"""A training worker's checkpoints with Ray Train: save and report, restore, the final export, a finished run.

Every rank calls each reporting function at the same point, so every rank reports the same number of times (Ray
Train counts a checkpoint once all ranks have reported it and merges their folders). A running checkpoint is the
DeepSpeed engine's state with ``TrainState.to_client_state()``; the final one is the exported student and
``history.json``, and nothing else.
"""
from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

from fastemb.train.state import TrainState

CHECKPOINT_TAG = "fastemb"
HISTORY_FILE = "history.json"


def write_checkpoint(engine, state: TrainState, directory: str) -> None:
    """This rank's DeepSpeed checkpoint in ``directory``, with the training state as its client state."""
    engine.save_checkpoint(directory, tag=CHECKPOINT_TAG, client_state=state.to_client_state())


def restore_state(engine, checkpoint) -> TrainState:
    """Load the engine (model, optimizer, schedule) from a Ray Train checkpoint and return its training state."""
    with checkpoint.as_directory() as d:
        _, client_state = engine.load_checkpoint(d, tag=CHECKPOINT_TAG)
    return TrainState.from_client_state(client_state)


def save_and_report(engine, state: TrainState, rank: int) -> None:
    """Every rank writes its DeepSpeed shard; all ranks report (Ray merges the shards). The metrics carry the latest
    dev evaluation (rank 0's are the ones Ray Train and Tune keep)."""
    import ray.train

    with tempfile.TemporaryDirectory(prefix=f"fastemb-ckpt-r{rank}-") as d:
        write_checkpoint(engine, state, d)
        ray.train.report({"step": state.step, **state.dev}, checkpoint=ray.train.Checkpoint.from_directory(d))


def gathered_weights(engine, student) -> dict | None:
    """The full transformer weights of ``student`` from a ZeRO-3 ``engine``, whose ranks each hold a slice of every
    parameter: every rank must call this (DeepSpeed gathers one layer at a time into rank 0's CPU memory, in the
    training dtype); rank 0 gets the state dict, the others None."""
    full = engine._zero3_consolidated_16bit_state_dict()  # what engine.save_16bit_model writes, as a dict
    if full is None:
        return None
    prefix = next(name for name, module in engine.module.named_modules() if module is student.transformer) + "."
    return {k[len(prefix):]: v for k, v in full.items() if k.startswith(prefix)}


def report_final(student, state: TrainState, rank: int, max_seq_length: int,
                 zero3_engine=None) -> None:
    """Rank 0 exports ``student`` (``model/``, running at ``max_seq_length`` tokens per text) and the history into the final checkpoint; all ranks report.

    ``zero3_engine``: the ZeRO-3 engine whose partitioned parameters every rank gathers for the export first."""
    import ray.train

    weights = gathered_weights(zero3_engine, student) if zero3_engine is not None else None
    with tempfile.TemporaryDirectory(prefix="fastemb-final-") as d:
        checkpoint = None
        if rank == 0:
            student.save(Path(d) / "model", max_seq_length=max_seq_length, weights=weights)
            (Path(d) / HISTORY_FILE).write_text(json.dumps(state.history))
            checkpoint = ray.train.Checkpoint.from_directory(d)
        ray.train.report({"step": state.step, "finished": True, **state.dev}, checkpoint=checkpoint)


def report_if_finished(checkpoint, rank: int) -> bool:
    """A final checkpoint (exported model, no DeepSpeed state) means the run is complete: every rank reports it
    again, with the last dev evaluation as the final report had it (a restored Tune search reads its objective from
    this report), so re-running a finished job returns its result instead of failing to resume."""
    import ray.train

    with checkpoint.as_directory() as d:
        if not (Path(d) / HISTORY_FILE).exists():
            return False
        with tempfile.TemporaryDirectory(prefix="fastemb-final-") as copy:
            final = None
            if rank == 0:
                shutil.copytree(d, copy, dirs_exist_ok=True)
                final = ray.train.Checkpoint.from_directory(copy)
            history = json.loads((Path(d) / HISTORY_FILE).read_text())
            last = max((h["step"] for h in history if "step" in h), default=0)
            dev = next(({k: v for k, v in h.items() if k != "step"} for h in reversed(history)
                        if any(k.startswith("dev_") for k in h)), {})
            ray.train.report({"step": last, "finished": True, **dev}, checkpoint=final)
    return True
