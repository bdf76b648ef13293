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


def pareto_front(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """Points (cost, quality) not dominated by a cheaper-or-equal point of higher quality."""
    front, best = [], float("-inf")
    for cost, quality in sorted(points, key=lambda p: (p[0], -p[1])):
        if quality > best:
            front.append((cost, quality))
            best = quality
    return front


def tune_trials(rows: list[dict], metric: str, path: str | Path) -> Path:
    """Objective vs temperature, vs batch size, and vs bytes/vector with its Pareto front."""
    done = [r for r in rows if r.get(metric) is not None]
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    for ax, key, log in ((axes[0], "temperature", True), (axes[1], "micro_batch_size", False)):
        ax.scatter([r[key] for r in done], [r[metric] for r in done], color="tab:blue")
        ax.set_xscale("log" if log else "linear")
        ax.set_xlabel(key)
        ax.set_ylabel(metric)
    pts = [(r["bytes_per_vector"], r[metric]) for r in done if r.get("bytes_per_vector")]
    axes[2].scatter(*zip(*pts), color="tab:blue", label="trials") if pts else None
    front = pareto_front(pts)
    if front:
        axes[2].plot(*zip(*front), "o-", color="tab:red", label="Pareto front")
        axes[2].legend()
    axes[2].set_xlabel("bytes / vector")
    axes[2].set_ylabel(metric)
    fig.suptitle("fastemb tune: trials")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)


def language_bars(rows: list[dict], path: str | Path, title: str = "translation retrieval") -> Path:
    """Per language: base and distilled xx→en accuracy@1 (bars) and the tokenizer's unknown-token share (dots)."""
    import numpy as np

    rows = [r for r in rows if "base xx→en accuracy@1" in r]
    langs = [r["language"] for r in rows]
    x = np.arange(len(langs))
    fig, ax = plt.subplots(figsize=(max(6, 0.8 * len(langs) + 2), 4))
    tuned = any("tuned xx→en accuracy@1" in r for r in rows)
    width = 0.4 if tuned else 0.6
    ax.bar(x - (width / 2 if tuned else 0), [r["base xx→en accuracy@1"] for r in rows], width, label="base",
           color="tab:grey")
    if tuned:
        ax.bar(x + width / 2, [r.get("tuned xx→en accuracy@1", 0) for r in rows], width, label="distilled",
               color="tab:blue")
    ax.plot(x, [r.get("unk_share") or 0 for r in rows], "o", color="tab:red", label="[UNK] share of tokens")
    ax.set_xticks(x, langs)
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("xx→en accuracy@1")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(loc="upper right", fontsize=8)
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)


def image_grid(queries: list[str], images: list[list], hits: list[list[bool]], path: str | Path,
               title: str = "text → image: top 5") -> Path:
    """One row per text query: the query, then its top images (PIL) left to right, relevant ones framed green and
    others red."""
    cols = max((len(row) for row in images), default=1)
    fig, axes = plt.subplots(len(queries), cols + 1, figsize=(1.6 * (cols + 1) + 1.6, 1.6 * len(queries)),
                             squeeze=False, gridspec_kw={"width_ratios": [2.2] + [1] * cols})
    for r, (query, row, row_hits) in enumerate(zip(queries, images, hits)):
        axes[r][0].text(0.98, 0.5, query if len(query) <= 60 else query[:57] + "...", ha="right", va="center",
                        wrap=True, fontsize=8)
        axes[r][0].axis("off")
        for c in range(cols):
            ax = axes[r][c + 1]
            ax.set_xticks([])
            ax.set_yticks([])
            if c >= len(row):
                ax.axis("off")
                continue
            ax.imshow(row[c])
            for side in ax.spines.values():
                side.set_edgecolor("tab:green" if row_hits[c] else "tab:red")
                side.set_linewidth(3)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return Path(path)
