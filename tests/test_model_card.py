"""Model cards (fastemb/model/card.py): what huggingface_hub parses, updates that replace their own parts, a
third-party card kept and extended, and registry versions carrying a card that `fastemb registry show` summarises."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from huggingface_hub import ModelCard

from fastemb.model.card import (BEGIN, CardUpdate, EvalSet, card_summary, has_fastemb_card, key_values, read_card,
                                write_card)
from fastemb.model.encoder import default_model_path
from fastemb.registry import Registry


def _update(ndcg: float = 0.51) -> CardUpdate:
    evals = [EvalSet("in-domain", "wordnet", "test", {"ndcg@10": ndcg, "mrr@10": 0.4, "alignment": 0.3},
                     {"ndcg@10": 0.45, "mrr@10": 0.35}, 64)]
    return CardUpdate(title="tiny", base_model="sentence-transformers/all-MiniLM-L6-v2", tags=["loss:InfoNCE"],
                      datasets=["wordnet"], language=["en"], evaluations=evals,
                      sections={"training": key_values("Training", {"workers": 2, "ZeRO stage": 2})},
                      metadata={"data_fingerprint": "0123abcd"})


def _results(card: ModelCard) -> dict[str, tuple]:
    return {r.metric_type: (r.metric_value, r.dataset_type, r.dataset_split, (r.metric_args or {}).get("max_seq_length"))
            for r in card.data.eval_results}


def test_a_card_parses_with_its_metadata_and_model_index(tmp_path):
    path = write_card(tmp_path, _update())
    card = ModelCard.load(path)  # strict: invalid metadata or model-index raises
    d = card.data
    assert (d.library_name, d.pipeline_tag, d.base_model) == ("sentence-transformers", "sentence-similarity",
                                                             "sentence-transformers/all-MiniLM-L6-v2")
    assert {"sentence-transformers", "fastemb", "loss:InfoNCE"} <= set(d.tags) and d.datasets == ["wordnet"]
    assert d.data_fingerprint == "0123abcd" and d.model_name == "tiny"
    # ranking metrics only (not alignment), tuned as cosine_*, base as base_cosine_*, at the measured length
    assert _results(card) == {"cosine_ndcg@10": (0.51, "wordnet", "test", 64), "cosine_mrr@10": (0.4, "wordnet", "test", 64),
                              "base_cosine_ndcg@10": (0.45, "wordnet", "test", 64),
                              "base_cosine_mrr@10": (0.35, "wordnet", "test", 64)}
    assert "| in-domain: wordnet test | nDCG@10 | 0.4500 | 0.5100 | +0.0600 | 64 |" in card.text
    assert read_card(tmp_path).data.base_model == d.base_model and has_fastemb_card(tmp_path)


def test_a_later_update_replaces_its_own_parts_and_keeps_the_rest(tmp_path):
    write_card(tmp_path, _update(0.51))
    write_card(tmp_path, CardUpdate(sections={"registry": key_values("Model registry", {"version": "v0002"})}))
    write_card(tmp_path, _update(0.55))  # re-evaluated: same set and metrics, new values
    card = ModelCard.load(tmp_path / "README.md")
    assert _results(card)["cosine_ndcg@10"][0] == 0.55 and len(card.data.eval_results) == 4
    summary = card_summary((tmp_path / "README.md").read_text())
    assert summary["fastemb_sections"] == ["training", "evaluation", "registry"]
    assert summary["results"]["wordnet/test cosine_ndcg@10"] == 0.55 and summary["title"] == "tiny"
    assert card.text.count(BEGIN) == 1 and card.text.count("## Training") == 1


def test_a_third_party_card_is_kept_and_extended(tmp_path):
    shutil.copy(Path(default_model_path()) / "README.md", tmp_path / "README.md")
    theirs = ModelCard.load(tmp_path / "README.md")
    write_card(tmp_path, _update())
    ours = ModelCard.load(tmp_path / "README.md")
    assert theirs.text.strip() in ours.text                    # their whole body, unchanged, above fastemb's block
    assert ours.text.index(theirs.text.strip()) < ours.text.index(BEGIN)
    assert ours.data.license == theirs.data.license == "apache-2.0"
    assert set(theirs.data.datasets) < set(ours.data.datasets) and "wordnet" in ours.data.datasets
    assert set(theirs.data.tags) < set(ours.data.tags)
    assert card_summary((tmp_path / "README.md").read_text())["title"] == "tiny"


def test_registry_versions_carry_a_card_and_show_prints_its_summary(tmp_path, capsys):
    from fastemb.cli import main

    third_party = tmp_path / "third-party"
    third_party.mkdir()
    shutil.copy(Path(default_model_path()) / "README.md", third_party / "README.md")
    (third_party / "config.json").write_text("{}")
    ours = tmp_path / "ours"
    ours.mkdir()
    write_card(ours, _update())
    reg = Registry(str(tmp_path / "registry"))
    v1 = reg.register(str(third_party), {"dev_ndcg@10": 0.5}, {"job": "x"})
    v2 = reg.register(str(ours), {"dev_ndcg@10": 0.6}, {"job": "y"}, parent=v1)
    card1 = ModelCard.load(Path(reg.model_path(v1)) / "README.md")
    assert "This is a [sentence-transformers](https://www.SBERT.net) model" in card1.text  # theirs, kept
    assert (third_party / "README.md").read_text() == (Path(default_model_path()) / "README.md").read_text()
    summary = reg.card(v2)
    assert summary["fastemb_sections"] == ["training", "evaluation", "registry"] and summary["title"] == "tiny"
    assert "v0002" in ModelCard.load(Path(reg.model_path(v2)) / "README.md").text
    assert main(["registry", "show", v2, "--root", str(tmp_path / "registry")]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["version"] == v2 and shown["card"]["results"]["wordnet/test cosine_ndcg@10"] == 0.51
    with pytest.raises(Exception, match="no version"):
        reg.card("v0009")


def test_a_base_is_named_as_the_hub_names_it(tmp_path):
    """An alias gives its Hub id, a folder with a card the card's base_model (its lineage), any other folder its name
    (the training tests run on a local one-layer folder, so they see only the last case)."""
    from fastemb.model.card import hub_id

    assert hub_id("all-MiniLM-L6-v2") == "sentence-transformers/all-MiniLM-L6-v2"
    assert hub_id("all-mpnet-base-v2") == "sentence-transformers/all-mpnet-base-v2"
    (tmp_path / "tuned").mkdir()
    write_card(tmp_path / "tuned", _update())
    assert hub_id(str(tmp_path / "tuned")) == "sentence-transformers/all-MiniLM-L6-v2"
    (tmp_path / "plain").mkdir()
    assert hub_id(str(tmp_path / "plain")) == "plain"
