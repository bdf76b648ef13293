"""PNG plots of results a person would rather look at."""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def training_curve(history: list[dict], path: str | Path, title: str = "training") -> Path:
    """Loss and dev nDCG@10 against the optimizer step."""
    loss = [(h["step"], h["loss"]) for h in history if "loss" in h]
    dev = [(h["step"], h["dev_ndcg@10"]) for h in history if "dev_ndcg@10" in h]
    resumed = [h["step"] for h in history if h.get("event") == "resumed"]
    fig, ax = plt.subplots(figsize=(7, 4))
    if loss:
        ax.plot(*zip(*loss), color="tab:blue", label="train loss")
    ax.set_xlabel("step")
    ax.set_ylabel("InfoNCE loss", color="tab:blue")
    for s in sorted(set(resumed)):
        ax.axvline(s, color="grey", linestyle=":", label="resumed")
    if dev:
        ax2 = ax.twinx()
        ax2.plot(*zip(*dev), "o-", color="tab:orange", label="dev nDCG@10")
        ax2.set_ylabel("dev nDCG@10", color="tab:orange")
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)


def compression_tradeoff(results: list[dict], path: str | Path, title: str = "compression") -> Path:
    """Recall@10 (vs exact) and nDCG@10 against bytes per vector, one labelled point per configuration."""
    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    xs = [r["code_bytes"] for r in results]
    ax.scatter(xs, [r["recall@10"] for r in results], color="tab:blue", label="recall@10 vs exact")
    ax.scatter(xs, [r["ndcg@10"] for r in results], color="tab:orange", marker="s", label="nDCG@10 (labels)")
    for r, x in zip(results, xs):
        ax.annotate(r["name"], (x, r["recall@10"]), fontsize=7, xytext=(3, 3), textcoords="offset points")
    ax.set_xscale("log")
    ax.set_xlabel("bytes per vector (codes, log scale)")
    ax.set_ylabel("score")
    ax.set_ylim(0, 1.05)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)
