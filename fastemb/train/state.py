"""What a training worker's loop changes as it runs, and its checkpoint form.

``TrainState`` holds the optimizer step and micro-step, the history (progress entries, dev evaluations, negative
refreshes, resumptions), the latest dev metrics (reported with every checkpoint), the negative pools' tables and the
loss terms accumulated since the last progress line (``LossWindow``). ``to_client_state`` is what the DeepSpeed
checkpoint keeps; ``from_client_state`` restores it, with no dev metrics and an empty loss window (a resumed worker
starts a fresh progress line). The checkpoint I/O itself is ``fastemb.train.checkpointing``.
"""
from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class LossWindow:
    """Loss terms and per-task losses since the last progress line."""
    term_sums: dict[str, float] = field(default_factory=dict)  # per term: Σ over micro-batches of value / grad_accum
    steps: int = 0  # optimizer steps in the window
    task_losses: dict[str, list[float]] = field(default_factory=dict)  # per task: its micro-batches' losses

    def add_micro_batch(self, task: str, loss: float, terms: dict[str, float], grad_accum: int) -> None:
        """Record one micro-batch's loss and its unweighted terms."""
        for name, value in terms.items():
            self.term_sums[name] = self.term_sums.get(name, 0.0) + value / grad_accum
        self.task_losses.setdefault(task, []).append(loss)

    def task_means(self) -> dict[str, float]:
        """Mean micro-batch loss of each task."""
        return {name: sum(v) / len(v) for name, v in self.task_losses.items()}

    def term_means(self) -> dict[str, float]:
        """``loss_<term>``: each term's mean per optimizer step."""
        return {f"loss_{name}": v / self.steps for name, v in self.term_sums.items()}


@dataclass
class TrainState:
    """A worker's mutable training state; see the module docstring."""
    step: int = 0
    micro: int = 0
    history: list[dict] = field(default_factory=list)
    dev: dict[str, float] = field(default_factory=dict)  # the latest dev evaluation (rank 0; {} elsewhere)
    negative_pools: dict[str, dict] = field(default_factory=dict)  # task key → NegativePool.state_dict()
    window: LossWindow = field(default_factory=LossWindow)

    def to_client_state(self) -> dict:
        """The checkpoint form (the DeepSpeed checkpoint's client state)."""
        return {"step": self.step, "micro": self.micro, "history": self.history,
                "negative_pools": self.negative_pools}

    @classmethod
    def from_client_state(cls, state: dict) -> TrainState:
        """The state a checkpoint's client state describes."""
        return cls(step=state["step"], micro=state["micro"], history=state["history"],
                   negative_pools=state.get("negative_pools") or {})
