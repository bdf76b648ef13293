"""The sentence-transformers peer of bench/image_text.py: ``SentenceTransformerTrainer`` on image–caption pairs, as in
its CLIP training example, on N processes (torch's launcher, DDP over gloo on CPU), with the same towers: it starts
from the untrained two-tower model fastemb builds (saved as a sentence-transformers Router folder, routed by column:
``image`` → the image route, ``caption`` → the text route).

The loss is its in-batch negatives loss, MultipleNegativesRankingLoss, in both directions (caption → image and image
→ caption, each its own softmax: ``partition_mode="per_direction"``, CLIP's symmetric loss) with embeddings gathered
across processes. The optimizer has fastemb's parameter groups (the text tower at ``text_lr`` , the rest at ``lr``,
no weight decay on biases and LayerNorms) and the trainer's linear schedule with the same warm-up. Each epoch of the
dataset pairs every image with one of its captions drawn at random (fastemb samples one per image per epoch too); no
image augmentation (the trainer has none built in).

``train_st_image_text(...)`` launches the processes and returns the saved model, the training time, the trainer's
pairs per second and each process's peak resident memory. Run as a script, this file is one such process.
"""
from __future__ import annotations

import json
import random
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
UNUSED = re.compile(r"sub_modules\.text\.0\.model\.pooler\.|sub_modules\.image\.0\.model\.layernorm\.")


def train_st_image_text(rows: list[dict], base_dir: str | Path, out_dir: str | Path, *, batch: int, lr: float,
                        text_lr: float, epochs: int, temperature: float, warmup_ratio: float, weight_decay: float,
                        workers: int, threads: int = 1, seed: int = 42) -> dict:
    """Train the Router model in ``base_dir`` on ``rows`` (``{image: bytes, captions: [...]}``); returns
    ``{model_dir, train_s, pairs_per_s, peak_rss_mib: [per process], loss}``."""
    from bench.st_peer import launch

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = random.Random(seed)
    order = [(i, rng.choice(list(r["captions"]))) for _ in range(epochs) for i, r in enumerate(rows)]
    pq.write_table(pa.table({"image": [rows[i]["image"] for i, _ in order], "caption": [c for _, c in order]}),
                   out / "pairs.parquet")
    config = {"base_dir": str(base_dir), "batch": batch, "lr": lr, "text_lr": text_lr, "temperature": temperature,
              "warmup_ratio": warmup_ratio, "weight_decay": weight_decay, "threads": threads, "seed": seed}
    (out / "config.json").write_text(json.dumps(config))
    return launch(__file__, out, workers, threads)


def _optimizer(model, cfg: dict):
    """AdamW with fastemb's groups: the text tower (the Router's text route's Transformer) at ``text_lr``."""
    import torch

    groups: dict[tuple[bool, bool], list] = {}
    for name, p in model.named_parameters():
        if p.requires_grad:
            key = ("bias" in name or "LayerNorm" in name or "layernorm" in name, ".sub_modules.text.0." in name)
            groups.setdefault(key, []).append(p)
    return torch.optim.AdamW([{"params": ps, "weight_decay": 0.0 if no_decay else cfg["weight_decay"],
                               "lr": cfg["text_lr"] if text else cfg["lr"]}
                              for (no_decay, text), ps in groups.items()], lr=cfg["lr"])


def _worker(out: Path) -> None:
    """One training process (launched by torch.distributed.run)."""
    import torch
    import torch.distributed as dist
    import pyarrow.parquet as pq
    from datasets import Dataset, Features, Value
    from datasets import Image as DatasetImage
    from sentence_transformers import (SentenceTransformer, SentenceTransformerTrainer,
                                       SentenceTransformerTrainingArguments, losses)

    from bench.st_peer import train_and_report

    cfg = json.loads((out / "config.json").read_text())
    torch.set_num_threads(cfg["threads"])
    model = SentenceTransformer(cfg["base_dir"], device="cpu")
    for name, p in model.named_parameters():  # outside the embeddings (BERT's pooler, ConvNeXt's pooled-output norm):
        if UNUSED.search(name):               # no gradient, which DDP refuses; fastemb never updates them either
            p.requires_grad_(False)
    pairs = pq.read_table(out / "pairs.parquet").to_pydict()  # images stay encoded until a batch decodes them
    data = Dataset.from_dict({"caption": pairs["caption"], "image": [{"bytes": b, "path": None}
                                                                     for b in pairs["image"]]},
                             features=Features({"caption": Value("string"), "image": DatasetImage()}))
    loss = losses.MultipleNegativesRankingLoss(model, scale=1 / cfg["temperature"], gather_across_devices=True,
                                               directions=("query_to_doc", "doc_to_query"),
                                               partition_mode="per_direction")
    args = SentenceTransformerTrainingArguments(
        output_dir=str(out / "trainer"), per_device_train_batch_size=cfg["batch"], learning_rate=cfg["lr"],
        num_train_epochs=1, warmup_ratio=cfg["warmup_ratio"], lr_scheduler_type="linear",
        weight_decay=cfg["weight_decay"], max_grad_norm=1.0, save_strategy="no", report_to="none", logging_steps=10,
        use_cpu=True, ddp_backend="gloo", seed=cfg["seed"], dataloader_drop_last=True,
        ddp_find_unused_parameters=False,  # two forward passes (captions, images) use each parameter once
        router_mapping={"caption": "text", "image": "image"})
    trainer = SentenceTransformerTrainer(model=model, args=args, train_dataset=data, loss=loss,
                                         optimizers=(_optimizer(model, cfg), None))
    world = dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1

    def rate(train_s: float) -> dict:  # the pairs trained: optimizer steps × pairs per step over all processes
        pairs = trainer.state.global_step * cfg["batch"] * world
        return {"pairs": pairs, "pairs_per_s": pairs / train_s}

    train_and_report(trainer, model, out, rate)


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    from bench.st_peer import worker_main

    worker_main("one sentence-transformers image–text training process", _worker)
