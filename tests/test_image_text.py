"""Image–text alignment (issue 17): the symmetric image–text InfoNCE loss against a loop reference (values,
gradients, false negatives, two processes), the two-tower model's export as sentence-transformers loads it (the same vectors),
its freezing and learning rates, the spec's rules, and a training run on Ray Train over real images (Debian's stamps,
emoji and flags; .ci/run installs the packages)."""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from fastemb.losses import SymmetricInfoNCELoss
from fastemb.spec import SpecError, parse_spec

BUILTIN = {"image_size": 32, "widths": [8, 16], "depths": [1, 1]}


def _leaves(*shape, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g, dtype=torch.float64).requires_grad_(True)


def reference(x, t, tau, cosine=True, image_ids=None, text_ids=None):
    """Loop reference: for each caption a softmax over the images, for each image one over the captions; a candidate
    with the positive's id (not the positive) is left out."""
    sim = (lambda a, b: F.cosine_similarity(a, b, dim=0)) if cosine else (lambda a, b: a @ b)

    def direction(anchors, candidates, ids):
        total = 0.0
        for i in range(len(anchors)):
            keep = [j for j in range(len(candidates)) if j == i or ids is None or ids[j] != ids[i]]
            logits = torch.stack([sim(anchors[i], candidates[j]) / tau for j in keep])
            total = total - torch.log_softmax(logits, 0)[keep.index(i)]
        return total / len(anchors)

    return (direction(t, x, image_ids) + direction(x, t, text_ids)) / 2


@pytest.mark.parametrize("cosine", [True, False])
def test_clip_loss_matches_loop_reference_values_and_gradients(cosine):
    x, t = _leaves(6, 5, seed=1), _leaves(6, 5, seed=2)
    image_ids, text_ids = torch.tensor([1, 2, 1, 3, 4, 5]), torch.tensor([7, 8, 9, 7, 10, 11])
    loss, terms = SymmetricInfoNCELoss(0.1, "cosine" if cosine else "dot", gather_across_workers=False)(
        x, t, image_ids, text_ids)
    gx, gt = torch.autograd.grad(loss, (x, t))
    ref = reference(x, t, 0.1, cosine, image_ids.tolist(), text_ids.tolist())
    rx, rt = torch.autograd.grad(ref, (x, t))
    assert torch.allclose(loss, ref, atol=1e-10)
    assert torch.allclose(gx, rx, atol=1e-10) and torch.allclose(gt, rt, atol=1e-10)
    assert torch.allclose((terms["text_to_image"] + terms["image_to_text"]) / 2, loss.detach())
    unmasked, _ = SymmetricInfoNCELoss(0.1, "cosine" if cosine else "dot", gather_across_workers=False,
                                       mask_false_negatives=False)(x, t, image_ids, text_ids)
    assert unmasked > loss    # the masked same-concept images and equal captions were counted as negatives


def test_clip_loss_refuses_bad_settings_and_shapes():
    with pytest.raises(ValueError, match="temperature"):
        SymmetricInfoNCELoss(0)
    with pytest.raises(ValueError, match="similarity"):
        SymmetricInfoNCELoss(0.1, "l2")
    with pytest.raises(ValueError, match="same shape"):
        SymmetricInfoNCELoss(0.1, gather_across_workers=False)(torch.zeros(3, 4), torch.zeros(2, 4))


def _clip_worker(rank, world, port, x, t, ids, out):
    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    b = x.shape[0] // world
    sl = slice(rank * b, (rank + 1) * b)
    lx, lt = x[sl].clone().requires_grad_(True), t[sl].clone().requires_grad_(True)
    loss, _ = SymmetricInfoNCELoss(0.05)(lx, lt, ids[sl], ids[sl] + 100)
    loss.backward()
    out[rank] = (loss.detach(), lx.grad, lt.grad)
    dist.destroy_process_group()


def test_clip_loss_gathered_on_two_processes_equals_single_process():
    """Each rank's pairs against every rank's images and captions (gathered with their gradient): the mean of the
    ranks' losses is the single-process loss, the averaged gradients its gradients, with a false negative across
    ranks masked."""
    import socket

    import torch.multiprocessing as mp

    x, t = _leaves(6, 4, seed=3).detach(), _leaves(6, 4, seed=4).detach()
    ids = torch.tensor([1, 2, 3, 1, 5, 6])   # rows 0 and 3, on two ranks: one concept
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with mp.Manager() as manager:
        out = manager.dict()
        mp.spawn(_clip_worker, args=(2, port, x, t, ids, out), nprocs=2, join=True)
        results = [out[0], out[1]]
    sx, st = x.clone().requires_grad_(True), t.clone().requires_grad_(True)
    single, _ = SymmetricInfoNCELoss(0.05, gather_across_workers=False)(sx, st, ids, ids + 100)
    single.backward()
    assert torch.allclose((results[0][0] + results[1][0]) / 2, single, atol=1e-10)
    for k, full in ((1, sx.grad), (2, st.grad)):
        assert torch.allclose(torch.cat([results[0][k], results[1][k]]) / 2, full, atol=1e-10)


@pytest.fixture(scope="module")
def two_tower(tiny_model):
    from fastemb.model.image_text import ImageTextModel

    return ImageTextModel.build(tiny_model, "builtin", BUILTIN["image_size"], BUILTIN["widths"], BUILTIN["depths"],
                                None, 64, seed=0)


def _pictures() -> list[Image.Image]:
    rng = np.random.default_rng(0)
    return [Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)) for h, w in ((40, 50), (64, 30), (8, 8))]


def test_exported_model_loads_in_sentence_transformers_with_the_same_vectors(two_tower, tiny_model, tmp_path):
    """The Router folder: sentence-transformers encodes text and images with fastemb's vectors (≤ 1e-5), fastemb loads
    it back, the untrained text side is the base text model's, and a batch mixing the two is refused by
    sentence-transformers (documented: one modality per call)."""
    from sentence_transformers import SentenceTransformer

    from fastemb.model.encoder import Encoder
    from fastemb.model.image_text import ImageTextModel, is_image_text_folder

    texts, pictures = ["a red apple", "the flag of France"], _pictures()
    vectors_t, vectors_i = two_tower.encode(texts), two_tower.encode_images(pictures)
    two_tower.save(tmp_path / "m", max_seq_length=256)
    assert is_image_text_folder(tmp_path / "m") and not is_image_text_folder(tiny_model)
    st = SentenceTransformer(str(tmp_path / "m"), device="cpu")
    assert np.abs(st.encode(texts) - vectors_t).max() <= 1e-5
    assert np.abs(st.encode(pictures) - vectors_i).max() <= 1e-5
    with pytest.raises(ValueError, match="modalit"):
        st.encode([pictures[0], texts[0]])
    loaded = ImageTextModel.load(tmp_path / "m")
    assert loaded.text.max_length == 256
    assert np.abs(loaded.encode(texts) - vectors_t).max() <= 1e-6
    assert np.abs(loaded.encode_images(pictures) - vectors_i).max() <= 1e-6
    assert np.abs(Encoder.load(tiny_model, max_length=64).encode(texts) - vectors_t).max() <= 1e-5
    assert np.allclose(np.linalg.norm(vectors_i, axis=1), 1, atol=1e-5)


def test_freezing_and_the_text_towers_learning_rate(two_tower):
    from fastemb.train.param_groups import param_groups

    two_tower.freeze("text")
    groups = param_groups(two_tower, 0.01, {"text.": 1e-5})
    trained = {id(p) for g in groups for p in g["params"]}
    assert not any(id(p) in trained for p in two_tower.text.parameters())
    assert all(id(p) in trained for p in two_tower.image.parameters()) and id(two_tower.text_proj.weight) in trained
    assert all("lr" not in g for g in groups)     # the text tower is locked: no group at its learning rate
    two_tower.freeze("none")
    groups = param_groups(two_tower, 0.01, {"text.": 1e-5})
    text_ids = {id(p) for p in two_tower.text.parameters()}
    for g in groups:
        assert all((id(p) in text_ids) == (g.get("lr") == 1e-5) for p in g["params"])
    with pytest.raises(ValueError, match="freeze"):
        two_tower.freeze("both")


def test_spec_rules_name_the_field():
    base = {"job": "train", "data": {"format": "image_text"}, "image_text": {}}
    cases = [({"loss": {"hard_negatives": 2}}, "loss.hard_negatives"),
             ({"tasks": [{"name": "w", "data": "wordnet"}]}, "tasks: with data.format: image_text"),
             ({"data": {}, "tasks": [{"name": "i", "kind": "image_text", "data": "x", "loss": {"hard_negatives": 1}}]},
              "tasks.0.loss.hard_negatives"),
             ({"image_text": {"widths": [8, 16], "depths": [1]}}, "image_text.depths"),
             ({"train": {"zero_stage": 3}}, "train.zero_stage"),
             ({"image_text": None}, "image_text: data.format: image_text \\(or a task of kind image_text\\) and the "
                                    "image_text section go together"),
             ({"image_text": {"freeze": "both"}}, "image_text.freeze")]
    for extra, field in cases:
        with pytest.raises(SpecError, match=field.replace(".", r"\.")):
            parse_spec({**base, **extra})
    with pytest.raises(SpecError, match="set data.format: image_text"):
        parse_spec({"job": "train", "image_text": {}})
    job = parse_spec({"job": "train"}, [], "train")
    assert job.image_text is None
    recipe = Path(__file__).resolve().parents[1] / "jobs" / "image_text.yaml"
    from fastemb.spec import load_spec

    assert load_spec(recipe, [], "train").image_text.vision == "builtin"


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    from fastemb.data.build_images import build

    out = tmp_path_factory.mktemp("images")
    build(out, ["emoji", "flags"], max_side=48, limit=24)  # the command line's run: tests/test_image_data.py
    return out


def test_single_image_task_resolution():
    from fastemb.train.tasks import job_tasks

    spec = parse_spec({"job": "train", "data": {"format": "image_text", "train": "x.parquet"}, "image_text": {}})
    assert [(t.key, t.kind, t.data) for t in job_tasks(spec)] == [("train", "image_text", "x.parquet")]


def _pairs_loss(model, spec) -> float:
    """The symmetric image–text loss of ``model`` over every pair its image task trained on at once (one fixed batch,
    each image's first caption; the loss of single micro-batches is too noisy to compare over a few steps)."""
    from fastemb.data.images import decode_image
    from fastemb.train.tasks import job_tasks, load_task_pairs

    rows, _ = load_task_pairs(spec, next(t for t in job_tasks(spec) if t.kind == "image_text"))
    images = torch.from_numpy(model.encode_images([decode_image(r["image"]) for r in rows]))
    texts = torch.from_numpy(model.encode([r["captions"][0] for r in rows]))
    ids = [hash(r["concept"]) for r in rows], [hash(r["captions"][0]) for r in rows]
    loss, _ = SymmetricInfoNCELoss(spec.loss.temperature, gather_across_workers=False)(
        images, texts, *(torch.tensor(i) for i in ids))
    return float(loss)


def test_image_text_trains_on_ray_train_beside_text_pairs_and_exports(ray_local, tmp_path, tiny_model, images):
    """A Ray Train worker (DeepSpeed ZeRO-2; the loss's gathering across workers is the loss module's, tested above on
    two processes), images decoded on Ray Data, an image task beside a WordNet text-pairs task (tasks: each
    micro-batch from one; the image task's 8 pairs are one micro-batch, so its loss is compared on the batch it trained
    on): the image loss falls, the exported model is scored as sentence-transformers would load it,
    base first, both directions, and the report, the curve and the top-5 grid are written."""
    from sentence_transformers import SentenceTransformer

    from fastemb.model.image_text import ImageTextModel
    from fastemb.train.job import cli_summary, run_train

    spec = parse_spec({"job": "train", "name": "it", "storage_path": str(tmp_path / "runs"),
                       "model": {"base": tiny_model, "max_length": 16}, "data": {"eval": str(images)},
                       "tasks": [{"name": "images", "kind": "image_text", "data": str(images / "train.parquet"),
                                  "max_pairs": 8},
                                 {"name": "words", "data": "wordnet", "max_pairs": 48, "weight": 0.3}],
                       "image_text": {**BUILTIN, "augment": False}, "general": None,
                       "train": {"num_workers": 1, "micro_batch_size": 8, "max_steps": 8, "epochs": 10, "lr": 2e-3,
                                 "warmup_ratio": 0, "checkpoint_every": 100, "log_every": 1, "eval_every": 8}})
    report = run_train(spec)
    steps = [h for h in report["history"] if "loss_task_images" in h]
    assert len(steps) >= 4 and all(h["loss_image_to_text"] > 0 for h in steps)
    assert any("loss_task_words" in h for h in report["history"])
    base, tuned = (_pairs_loss(m, spec)
                   for m in (ImageTextModel.from_spec(spec), ImageTextModel.load(report["model_dir"])))
    assert tuned < base - 0.1, (base, tuned)  # one fixed batch: every training pair, the same seeded start
    assert set(report["pairs"]) == {"images", "words"} and report["pairs"]["words"]["kept"] == 48
    scores = report["image_text"]
    assert set(scores["tuned"]) == {"unseen", "seen"}
    for who in ("base", "tuned"):
        for split in ("unseen", "seen"):
            for d in ("text_to_image", "image_to_text"):
                m = scores[who][split][d]
                assert set(m) >= {"recall@1", "recall@5", "recall@10", "ndcg@10", "random_recall@10"}
                assert 0 <= m["recall@1"] <= m["recall@5"] <= m["recall@10"] <= 1
    assert report["tuned"] != report["base"] and report["lengths"]["export"] == 256
    assert report["pairs"]["images"]["kept"] == 8 and not report["pairs"]["images"]["skipped"]
    run = tmp_path / "runs" / "it"
    for png in ("training_curve.png", "top5_grid.png"):
        assert (run / png).stat().st_size > 5_000
    assert json.loads((run / "report.json").read_text())["name"] == "it"
    st = SentenceTransformer(report["model_dir"], device="cpu")
    assert st.encode(["a red apple"]).shape == (1, 384)
    assert "unseen t2i recall@10" in cli_summary(report)
