"""Domain adaptation: new domain tokens (mean-of-sub-tokens rows), bottleneck adapters with the base frozen, and
SimCSE-style pre-training on raw text, as units and as real 2-worker Ray Train + DeepSpeed runs."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from sentence_transformers import SentenceTransformer

from fastemb.data.pairs import DataError
from fastemb.data.raw_text import load_raw_texts
from fastemb.model.adapters import ADAPTER_WEIGHTS, BertModelWithAdapters, load_adapters, with_adapters
from fastemb.model.domain import adapt_encoder, parameter_counts
from fastemb.model.encoder import Encoder
from fastemb.spec import SpecError, parse_spec
from fastemb.train.param_groups import param_groups

TEXTS = ["kubectl apply -f the manifest", "a Kubernetes cluster of nodes", "relating to the stars",
         "machine learning for retrieval"]
TERMS = ["kubectl", "Kubernetes", "machine learning", "dog", "KUBECTL"]


def _embedding_rows(encoder: Encoder) -> torch.Tensor:
    return encoder.transformer.get_input_embeddings().weight.detach().clone()


def _st_encode_in_fresh_process(model_dir: Path, tmp_path: Path, trust_remote_code: bool) -> np.ndarray:
    """sentence-transformers in a process that never imported fastemb (so no class is registered locally)."""
    out = tmp_path / "st.npy"
    code = ("import sys, json, numpy as np\n"
            "from sentence_transformers import SentenceTransformer\n"
            f"m = SentenceTransformer({str(model_dir)!r}, device='cpu', trust_remote_code={trust_remote_code})\n"
            f"np.save({str(out)!r}, m.encode({TEXTS!r}))\n")
    env = {**os.environ, "HF_MODULES_CACHE": str(tmp_path / "hf_modules"), "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=tmp_path,
                          timeout=300)
    if proc.returncode:
        raise RuntimeError(proc.stderr[-2000:])
    return np.load(out)


def test_domain_spec_errors_name_the_field(tmp_path):
    terms_file = tmp_path / "terms.txt"
    terms_file.write_text("# domain terms\nkubectl\n\nKubernetes\n")
    ok = parse_spec({"model": {"new_tokens": str(terms_file), "adapters": {"size": 16, "layers": [0, 5]}},
                     "data": {"format": "raw", "text_column": "body"}})
    assert ok.model.new_tokens == ["kubectl", "Kubernetes"]  # the file is read when the spec is validated
    assert ok.model.adapters.size == 16 and ok.data.format == "raw"
    cases = [({"model": {"new_tokens": ["a", "a"]}}, "model.new_tokens: .*duplicate"),
             ({"model": {"new_tokens": str(tmp_path / "missing.txt")}}, "model.new_tokens: .*not found"),
             ({"model": {"new_tokens": [" "]}}, "model.new_tokens"),
             ({"model": {"adapters": {"layers": [3, 1]}}}, "model.adapters.layers"),
             ({"model": {"adapters": {"size": 0}}}, "model.adapters.size"),
             ({"model": {"adapters": {"placement": "everywhere"}}}, "model.adapters.placement"),
             ({"data": {"format": "lines"}}, "data.format"),
             ({"data": {"format": "raw"}, "loss": {"hard_negatives": 1}}, "loss.hard_negatives: not with data.format"),
             ({"data": {"format": "raw"}, "distill": {"kl": {}}}, "distill: not with data.format")]
    for raw, field in cases:
        with pytest.raises(SpecError, match=field):
            parse_spec(raw)


def test_shipped_domain_job_validates(monkeypatch):
    from fastemb.spec import load_spec

    root = Path(__file__).resolve().parents[1]
    monkeypatch.chdir(root)                                           # new_tokens: a path relative to the repo
    spec = load_spec(root / "jobs" / "domain.yaml")
    assert spec.data.format == "raw" and spec.model.adapters is not None
    assert "racemes" in spec.model.new_tokens and not any(t.startswith("#") for t in spec.model.new_tokens)


def test_new_tokens_are_one_id_start_at_the_sub_token_mean_and_reload_everywhere(tmp_path, minilm_path):
    enc = Encoder.load(minilm_path, max_length=32)
    old_rows = _embedding_rows(enc)
    sub_ids = {t: enc.tokenizer(t, add_special_tokens=False)["input_ids"] for t in TERMS}
    report = adapt_encoder(enc, parse_spec({"model": {"new_tokens": TERMS}}).model)
    added, skipped = report["new_tokens"]["added"], report["new_tokens"]["skipped"]
    assert set(added) == {"kubectl", "Kubernetes", "machine learning"}
    assert "already one token" in skipped["dog"] and "same normalised form" in skipped["KUBECTL"]
    rows = _embedding_rows(enc)
    assert rows.shape[0] == old_rows.shape[0] + 3 and torch.equal(rows[:old_rows.shape[0]], old_rows)
    for term, info in added.items():
        assert len(sub_ids[term]) > 1
        assert enc.tokenizer(term, add_special_tokens=False)["input_ids"] == [info["id"]]
        assert torch.allclose(rows[info["id"]], old_rows[sub_ids[term]].mean(0), atol=0, rtol=0)
    # whole words, either case; not inside a longer word
    ids = enc.tokenizer("KUBECTL, kubectl kubectlx", add_special_tokens=False)["input_ids"]
    assert ids.count(added["kubectl"]["id"]) == 2
    assert report["parameters"]["trainable"] == report["parameters"]["total"]  # no adapters: everything trains

    enc.save(tmp_path / "model")
    ours = enc.encode(TEXTS)
    reloaded = Encoder.load(str(tmp_path / "model"))
    assert reloaded.tokenizer("kubectl", add_special_tokens=False)["input_ids"] == [added["kubectl"]["id"]]
    assert np.abs(reloaded.encode(TEXTS) - ours).max() <= 1e-6
    st = SentenceTransformer(str(tmp_path / "model"), device="cpu")
    assert st.tokenizer.tokenize("kubectl apply") == ["kubectl", "apply"]
    assert np.abs(st.encode(TEXTS) - ours).max() <= 1e-5


def test_adapters_start_as_the_base_and_load_in_fastemb_and_sentence_transformers(tmp_path, minilm_path):
    base = Encoder.load(minilm_path, max_length=32)
    base_out = base.encode(TEXTS)
    enc = Encoder.load(minilm_path, max_length=32)
    report = adapt_encoder(enc, parse_spec({"model": {"adapters": {"size": 16, "layers": [1, 4],
                                                                   "placement": "houlsby"}}}).model)
    assert isinstance(enc.transformer, BertModelWithAdapters)
    assert np.abs(enc.encode(TEXTS) - base_out).max() <= 1e-6          # zero-initialised up-projections
    trainable = {n for n, p in enc.named_parameters() if p.requires_grad}
    assert trainable and all(".adapter." in n for n in trainable)
    assert len(trainable) == 2 * 2 * 4                                   # 2 layers × 2 places × (down, up) × (w, b)
    per_adapter = (384 * 16 + 16) + (16 * 384 + 384)
    assert report["parameters"]["trainable"] == 4 * per_adapter == parameter_counts(enc)["trainable"]
    groups = param_groups(enc, 0.01)
    assert sum(len(g["params"]) for g in groups) == len(trainable)      # the optimizer sees adapters only

    with torch.no_grad():                                                # as if trained
        for name, p in enc.transformer.named_parameters():
            if ".adapter." in name:
                p.add_(torch.randn_like(p) * 0.05)
    ours = enc.encode(TEXTS)
    assert np.abs(ours - base_out).max() > 1e-3
    enc.save(tmp_path / "model")
    assert np.abs(Encoder.load(str(tmp_path / "model")).encode(TEXTS) - ours).max() <= 1e-6
    st = _st_encode_in_fresh_process(tmp_path / "model", tmp_path, trust_remote_code=True)
    assert np.abs(st - ours).max() <= 1e-5
    with pytest.raises(RuntimeError, match="trust_remote_code"):       # never silently the base without adapters
        _st_encode_in_fresh_process(tmp_path / "model", tmp_path, trust_remote_code=False)

    # the adapters alone (adapters.safetensors) on a fresh base give the same model
    weights = load_file(str(tmp_path / "model" / ADAPTER_WEIGHTS))
    assert weights and all(".adapter." in k for k in weights)
    fresh = Encoder.load(minilm_path, max_length=32)
    fresh.transformer = load_adapters(fresh.transformer, tmp_path / "model" / ADAPTER_WEIGHTS)
    assert np.abs(fresh.encode(TEXTS) - ours).max() <= 1e-6


def test_adapter_errors_name_the_field(minilm_path):
    enc = Encoder.load(minilm_path)
    with pytest.raises(ValueError, match=r"model\.adapters\.layers: \[0, 6\]"):
        with_adapters(enc.transformer, 8, [0, 6])
    adapted = with_adapters(enc.transformer, 8, [0])
    with pytest.raises(ValueError, match="model.adapters: the base already has adapters"):
        with_adapters(adapted, 16, [0])
    assert with_adapters(adapted, 8, [0]) is adapted                    # same settings: keep training them


def test_raw_text_rows_reports_and_errors(tmp_path):
    lines = [{"body": "a domain sentence"}, {"body": "a domain sentence"}, {"body": ""}, {"body": None},
             {"body": 3}, {"body": "another one"}]
    path = tmp_path / "raw.jsonl"
    path.write_text("\n".join(json.dumps(x) for x in lines) + "\n{not json\n")
    rows, report = load_raw_texts(str(path), "body")
    assert rows == [{"query": "a domain sentence", "positive": "a domain sentence"},
                    {"query": "another one", "positive": "another one"}]
    assert report.read == 7 and report.kept == 2
    assert report.skipped == {"duplicate": 1, "body empty": 1, "body null": 1, "body not a string (int)": 1,
                              "invalid JSON": 1}
    with pytest.raises(DataError, match=r"no column 'text' \(data.text_column\)"):
        load_raw_texts(str(path), "text")
    wordnet, wn_report = load_raw_texts("wordnet", max_texts=100)
    assert len(wordnet) == 100 and wn_report.read > 100_000 and all(r["query"] == r["positive"] for r in wordnet)


def _frequent_split_words(pairs: list[dict], tokenizer, n: int) -> list[str]:
    """The ``n`` words of ``pairs`` that occur most often and that the tokenizer splits into several pieces."""
    import re
    from collections import Counter

    words = Counter(w for p in pairs for text in (p["query"], p["positive"])
                    for w in re.findall(r"[a-z]+", text.lower()) if len(w) > 5)
    split = [w for w, _ in words.most_common() if len(tokenizer(w, add_special_tokens=False)["input_ids"]) > 1]
    return split[:n]


def test_adapter_run_trains_adapters_and_new_rows_only(ray_local, tmp_path, tiny_eval, tiny_model):
    """A short 2-worker DeepSpeed ZeRO-2 run on the one-layer cut: base weights (old embedding rows included)
    unchanged, the adapter and the new tokens' rows changed, the trainable-parameter count reported, the export loading
    in fastemb."""
    from fastemb.data.pairs import load_pairs
    from fastemb.train.job import run_train

    base = Encoder.load(tiny_model, max_length=32)
    pairs, _ = load_pairs("wordnet", 256, 0, 42)                          # the sample the job trains on
    terms = _frequent_split_words(pairs, base.tokenizer, 3)
    spec = parse_spec({"name": "adapters", "storage_path": str(tmp_path),
                       "model": {"base": tiny_model, "max_length": 32, "new_tokens": terms,
                                 "adapters": {"size": 16, "layers": [0]}},
                       "data": {"max_pairs": 256, "eval": tiny_eval},   # one epoch: 8 steps, every pair seen
                       "general": None,
                       "train": {"micro_batch_size": 16, "num_workers": 2, "epochs": 1, "lr": 1e-3,
                                 "warmup_ratio": 0.0, "log_every": 1, "eval_every": 1000, "checkpoint_every": 100}})
    report = run_train(spec)

    reference = Encoder.load(tiny_model, max_length=32)                   # the base with the same new tokens
    added = adapt_encoder(reference, parse_spec({"model": {"new_tokens": terms}}).model)["new_tokens"]
    assert len(added["added"]) == 3
    n_old = added["first_new_id"]
    trained = Encoder.load(report["model_dir"])
    assert isinstance(trained.transformer, BertModelWithAdapters)
    ref_params = dict(reference.transformer.named_parameters())
    changed_adapters = 0
    for name, p in trained.transformer.named_parameters():
        if ".adapter." in name:
            changed_adapters += name.endswith("up.weight") and bool(p.abs().max() > 0)
        elif name == "embeddings.word_embeddings.weight":
            assert torch.equal(p[:n_old], ref_params[name][:n_old]), "old token rows moved"
            moved = (p[n_old:] - ref_params[name][n_old:]).abs().amax(dim=1)
            assert bool((moved > 0).all()), f"new token rows did not train: {moved}"
        else:
            assert torch.equal(p, ref_params[name]), f"frozen base weight {name} changed"
    assert changed_adapters == 1                                          # the up-projection left zero
    params = report["domain"]["parameters"]
    per_adapter = (384 * 16 + 16) + (16 * 384 + 384)
    assert params["trainable"] == per_adapter + 3 * 384
    assert params["total"] == sum(p.numel() for p in trained.transformer.parameters())
    assert np.abs(trained.encode(TEXTS) - base.encode(TEXTS)).max() > 1e-4


def test_simcse_raw_text_run_lowers_the_loss_and_exports(ray_local, tmp_path, tiny_eval, tiny_model):
    """Unsupervised domain pre-training on the shipped WordNet definitions (each text its own positive, dropout
    noise) through the normal Ray Train loop (one worker: the 2-worker paths are the adapter run's)."""
    from fastemb.train.job import run_train

    spec = parse_spec({"name": "simcse", "storage_path": str(tmp_path),
                       "model": {"base": tiny_model, "max_length": 32},
                       "data": {"format": "raw", "train": "wordnet", "max_pairs": 1024, "eval": tiny_eval},
                       "general": None,
                       "loss": {"temperature": 0.2},
                       "train": {"micro_batch_size": 32, "num_workers": 1, "max_steps": 16, "lr": 1e-4,
                                 "warmup_ratio": 0.0, "log_every": 1, "eval_every": 1000, "checkpoint_every": 100}})
    report = run_train(spec)
    assert report["pairs"]["kept"] == 1024 and report["pairs"]["skipped"]["duplicate"] > 0
    losses = [h["loss"] for h in report["history"] if "loss" in h]
    assert len(losses) == 16
    first, last = np.mean(losses[:4]), np.mean(losses[-4:])
    slope = np.polyfit(np.arange(len(losses)), losses, 1)[0]
    assert last < 0.9 * first and slope < 0, f"SimCSE loss did not decrease: {losses}"
    model_dir = Path(report["model_dir"])
    ours = Encoder.load(str(model_dir)).encode(TEXTS)
    st = SentenceTransformer(str(model_dir), device="cpu").encode(TEXTS)
    assert np.abs(ours - st).max() <= 1e-5
