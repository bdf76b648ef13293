"""The general-domain guard: how a model scores on the general set against its base, and the gate a registration
can apply (general nDCG@10 ≥ the base's − tolerance)."""
from __future__ import annotations

GATE_METRIC = "ndcg@10"


def general_gate(base: dict, tuned: dict, tolerance: float, metric: str = GATE_METRIC) -> dict:
    """Whether ``tuned`` (general test metrics) stays within ``tolerance`` of ``base`` on ``metric``."""
    floor = base[metric] - tolerance
    return {"metric": metric, "base": base[metric], "tuned": tuned[metric], "delta": tuned[metric] - base[metric],
            "tolerance": tolerance, "passed": tuned[metric] >= floor - 1e-12}


def general_section(eval_name: str, base: dict, tuned: dict, tolerance: float) -> dict:
    """A report's ``general`` section: the set, base and tuned metrics, their deltas and the gate's verdict."""
    return {"eval": eval_name, "base": base, "tuned": tuned,
            "delta": {k: tuned[k] - base[k] for k in base if isinstance(base[k], (int, float)) and k in tuned},
            "gate": general_gate(base, tuned, tolerance)}
