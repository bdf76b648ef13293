"""Synonym normalization: file formats, matching rules, validation, and the one tokenizer hook used everywhere."""
from __future__ import annotations

import json
import pickle

import pytest
import torch

from fastemb.data.synonyms import (SynonymError, SynonymNormalizer, SynonymTokenizer, attach_synonyms, load_synonyms,
                                   read_synonym_file)

ENTRIES = [("NYC", "new york city"), ("big apple", "new york city"), ("e-mail", "email"), ("c++", "cplusplus"),
           ("cat", "feline"), ("big cat", "large feline")]


def test_case_insensitive_whole_words_and_longest_match_first():
    n = SynonymNormalizer(ENTRIES)
    assert n.normalize("I love nyc and the Big  Apple") == "I love new york city and the new york city"
    assert n.normalize("a BIG CAT, not a cat") == "a large feline, not a feline"          # longest first
    assert n.normalize("concatenate cats category") == "concatenate cats category"        # whole words only
    assert n.normalize("send an E-Mail in C++.") == "send an email in cplusplus."          # punctuation in variants
    assert n.normalize("nyc-based") == "new york city-based"                              # '-' is a word boundary
    assert n.normalize("big\tapple\ncat") == "new york city\nfeline"                      # phrase across whitespace
    assert n.normalize("no variants here") == "no variants here"


def test_one_pass_and_idempotent():
    n = SynonymNormalizer([("kitty", "cat"), ("moggy", "cat")])
    once = n.normalize("kitty moggy")
    assert once == "cat cat" and n.normalize(once) == once


@pytest.mark.parametrize("fmt", ["tsv", "json", "yaml"])
def test_file_formats_read_the_same_dictionary(tmp_path, fmt):
    if fmt == "tsv":
        f = tmp_path / "syn.tsv"
        f.write_text("# variant\tcanonical\n\nNYC\tnew york city\nbig apple\tnew york city\ncat\tfeline\n")
    elif fmt == "json":
        f = tmp_path / "syn.json"
        f.write_text(json.dumps({"new york city": ["NYC", "big apple"], "cat": "feline"}))
    else:
        f = tmp_path / "syn.yaml"
        f.write_text("NYC: new york city\nbig apple: new york city\nfeline: [cat]\n")
    n = SynonymNormalizer.from_file(f)
    assert n.mapping == {"nyc": "new york city", "big apple": "new york city", "cat": "feline"}
    assert load_synonyms(f).fingerprint == n.fingerprint


def test_bad_dictionaries_name_the_entry(tmp_path):
    f = tmp_path / "bad.tsv"
    f.write_text("NYC\tnew york city\nnyc\tmanhattan\n")
    with pytest.raises(SynonymError, match=r"bad.tsv:2: variant 'nyc' maps to 'manhattan'"):
        SynonymNormalizer.from_file(f)
    f.write_text("a\tb\tc\n")
    with pytest.raises(SynonymError, match=r"bad.tsv:1: expected"):
        read_synonym_file(f)
    with pytest.raises(SynonymError, match="is itself a variant"):
        SynonymNormalizer([("kitty", "cat"), ("cat", "feline")])
    with pytest.raises(SynonymError, match="not found"):
        load_synonyms(tmp_path / "missing.tsv")
    (tmp_path / "x.csv").write_text("a,b")
    with pytest.raises(SynonymError, match="unknown format"):
        load_synonyms(tmp_path / "x.csv")
    assert len(SynonymNormalizer([("Cat", "cat")])) == 0                                   # identity entries dropped


def _tokenizer():
    from transformers import AutoTokenizer

    from fastemb.model.encoder import default_model_path
    return AutoTokenizer.from_pretrained(default_model_path(), local_files_only=True)


def test_tokenizer_hook_normalises_every_call_and_saves_the_dictionary(tmp_path):
    base = _tokenizer()
    tok = attach_synonyms(base, SynonymNormalizer(ENTRIES))
    assert isinstance(tok, SynonymTokenizer)
    want = base(["new york city is a large feline"])["input_ids"]
    assert tok(["NYC is a big cat"])["input_ids"] == want
    assert tok(text=["NYC is a big cat"])["input_ids"] == want
    assert tok.encode("NYC") == base.encode("new york city")
    assert tok.pad_token_id == base.pad_token_id and len(tok) == len(base)
    tok.save_pretrained(tmp_path)
    assert json.loads((tmp_path / "synonyms.json").read_text())["nyc"] == "new york city"
    assert (tmp_path / "tokenizer_config.json").exists()
    assert load_synonyms(tmp_path).mapping == SynonymNormalizer(ENTRIES).mapping           # from the folder
    assert pickle.loads(pickle.dumps(tok))(["nyc"])["input_ids"] == base(["new york city"])["input_ids"]
    (tmp_path / "plain_model").mkdir()                                                     # a folder without one
    assert attach_synonyms(base, None) is base and attach_synonyms(base, tmp_path / "plain_model") is base


def test_encoder_applies_the_dictionary_in_train_encode_index_and_serve_paths_and_keeps_it_on_save(tmp_path):
    import pyarrow as pa

    from fastemb.index.embed import EmbedActor
    from fastemb.model.encoder import Encoder

    syn = tmp_path / "syn.tsv"
    syn.write_text("NYC\tnew york city\n")
    plain = Encoder.load("all-MiniLM-L6-v2", max_length=32)
    enc = Encoder.load("all-MiniLM-L6-v2", max_length=32, synonyms=str(syn))
    target = plain.encode(["flights to new york city"])
    assert torch.allclose(torch.from_numpy(enc.encode(["flights to NYC"])), torch.from_numpy(target), atol=1e-5)
    enc.eval(), plain.eval()
    with torch.no_grad():                                                       # the training path (embed)
        assert torch.allclose(enc.embed(["flights to NYC"]), plain.embed(["flights to new york city"]), atol=1e-5)
    assert not torch.allclose(torch.from_numpy(plain.encode(["flights to NYC"])), torch.from_numpy(target), atol=1e-3)
    enc.save(tmp_path / "model")                                                # the dictionary travels with the model
    reloaded = Encoder.load(str(tmp_path / "model"))
    assert torch.allclose(torch.from_numpy(reloaded.encode(["flights to NYC"])), torch.from_numpy(target), atol=1e-5)
    actor = EmbedActor({"base": str(tmp_path / "model")}, "id", "text")         # the index embedder
    out = actor(pa.table({"id": ["a"], "text": ["flights to NYC"]}))
    vec = torch.tensor(out.column("vector").to_pylist()[0])
    assert torch.allclose(vec, torch.from_numpy(target[0]), atol=1e-4)
    from fastemb.serve.embedder import Embedder                                 # the serving path
    from fastemb.spec import ArmSpec
    from fastemb.serve.versions import load

    served = load(ArmSpec(model=str(tmp_path / "model"), max_length=32), "v1", str(tmp_path / "model"))
    ids, _ = Embedder._tokenize(served, ["flights to NYC"], True)
    assert ids == [plain.tokenizer("flights to new york city")["input_ids"]]
    assert torch.allclose(torch.from_numpy(served.encoder.encode(["flights to NYC"])), torch.from_numpy(target),
                          atol=1e-5)
