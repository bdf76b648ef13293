"""The Ray Serve service end to end: real Serve, real MiniLM, real HTTP on 127.0.0.1.

One service (production + candidate arm, API key, A/B at 50 %) is started for the module.
"""
from __future__ import annotations

import base64
import concurrent.futures as cf
import json
import os
import threading
from pathlib import Path

import httpx
import numpy as np
import pytest
import yaml

from listeners import listening, open_without_auth, process_tree
from serve_helpers import free_port, start_service, stop_service

KEY = os.environ["FASTEMB_TEST_API_KEY"]  # set by tests/conftest.py before the session's Ray starts
H = {"Authorization": f"Bearer {KEY}"}
JSON = {**H, "content-type": "application/json"}
LONG = " ".join(f"word{i} of a rather long definition" for i in range(120))  # > 256 tokens


@pytest.fixture(scope="module")
def service(ray_local, tmp_path_factory):
    fb = tmp_path_factory.mktemp("ab")
    spec, url = start_service({
        "port": free_port(),
        "production": {"model": "all-MiniLM-L6-v2", "corpus": "wordnet", "corpus_limit": 300},
        "candidate": {"model": "all-MiniLM-L6-v2", "max_length": 32, "corpus": "wordnet", "corpus_limit": 300},
        "ab": {"candidate_weight": 0.5},
        "autoscaling": {"min_replicas": 1, "max_replicas": 1},
        "limits": {"max_inputs": 64, "max_input_chars": 20_000, "max_body_bytes": 64_000,
                   "max_inflight_requests": 2, "max_k": 20},
        "api_key_env": "FASTEMB_TEST_API_KEY",
        "feedback_dir": str(fb),
    })
    yield spec, url
    stop_service()


@pytest.fixture(scope="module")
def st_model(minilm_path):
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(minilm_path, device="cpu")


def _post(url, path, body, headers=H, **kw):
    return httpx.post(url + path, json=body, headers=headers, timeout=60, **kw)


def test_openai_client_matches_sentence_transformers(service, st_model):
    import openai

    _, url = service
    client = openai.OpenAI(base_url=url + "/v1", api_key=KEY, max_retries=0)
    texts = ["a small domesticated carnivore", "hello", LONG, "the act of moving something from one place to "
             "another", "ünïcödé text — with punctuation!"]
    st_model.max_seq_length = 256
    want = st_model.encode(texts, convert_to_numpy=True, normalize_embeddings=False)
    for fmt in ("float", "base64"):
        resp = client.embeddings.create(input=texts, model="fastemb-production", encoding_format=fmt)
        if fmt == "float":
            got = np.array([d.embedding for d in resp.data], dtype=np.float32)
        else:  # asked for explicitly, the client hands back the raw base64 of little-endian float32
            got = np.stack([np.frombuffer(base64.b64decode(d.embedding), dtype="<f4") for d in resp.data])
        assert got.shape == want.shape
        np.testing.assert_allclose(got, want, atol=1e-5, rtol=0)
        assert [d.index for d in resp.data] == list(range(len(texts)))
        assert resp.usage.prompt_tokens == resp.usage.total_tokens > 256
    # the client's default (base64, decoded by the client) and a single string
    one = client.embeddings.create(input="hello", model="fastemb-production")
    np.testing.assert_allclose(np.array(one.data[0].embedding), want[1], atol=1e-5, rtol=0)
    # the candidate arm (max_length 32) equals sentence-transformers at 32 tokens
    st_model.max_seq_length = 32
    want32 = st_model.encode(texts, convert_to_numpy=True)
    st_model.max_seq_length = 256
    cand = client.embeddings.create(input=texts, model="fastemb-candidate", encoding_format="float")
    np.testing.assert_allclose(np.array([d.embedding for d in cand.data]), want32, atol=1e-5, rtol=0)


def test_truncation_dimensions_and_base64(service, st_model):
    _, url = service
    r = _post(url, "/v1/embeddings", {"input": ["short", LONG], "model": "fastemb-production"})
    assert r.status_code == 200 and r.json()["truncated"] == [1]
    r = _post(url, "/v1/embeddings", {"input": ["short", LONG], "model": "fastemb-production", "truncate": False})
    assert r.status_code == 422 and r.json()["error"]["param"] == "input.1"
    r = _post(url, "/v1/embeddings", {"input": ["short text"], "model": "fastemb-production", "dimensions": 64,
                                      "encoding_format": "base64"})
    assert r.status_code == 200
    v = np.frombuffer(base64.b64decode(r.json()["data"][0]["embedding"]), dtype="<f4")
    full = st_model.encode(["short text"])[0][:64]
    assert v.shape == (64,)
    np.testing.assert_allclose(v, full / np.linalg.norm(full), atol=1e-5)
    assert abs(np.linalg.norm(v) - 1) < 1e-5


def test_search_feedback_and_ab_report(service, capsys, tmp_path):
    import pyarrow.parquet as pq

    from fastemb.cli import main

    spec, url = service
    r = _post(url, "/v1/search", {"query": ["a small dog", "a musical instrument"], "k": 5,
                                  "model": "fastemb-production", "user": "alice"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["arm"] == "production" and r.headers["x-fastemb-arm"] == "production"
    for row in body["data"]:
        hits = row["hits"]
        assert len(hits) == 5 and [h["rank"] for h in hits] == [1, 2, 3, 4, 5]
        scores = [h["score"] for h in hits]
        assert scores == sorted(scores, reverse=True) and all(h["text"] and h["id"] for h in hits)
    clicked = body["data"][0]["hits"][1]["id"]
    f = _post(url, "/v1/feedback", {"request_id": body["request_id"], "clicked_id": clicked, "user": "alice"})
    assert f.status_code == 200 and f.json()["ok"] is True
    assert _post(url, "/v1/feedback", {"request_id": body["request_id"]}).status_code == 422
    assert main(["ab", "report", spec.feedback_dir, "--json"]) == 0
    rep = json.loads(capsys.readouterr().out)
    prod = rep["arms"]["production"]
    assert prod["searches"] >= 1 and prod["clicks"] == 1 and prod["mrr_of_clicks"] == 0.5
    # a click on the batch's second query, then the logs exported as training pairs (fastemb feedback export)
    top = body["data"][1]["hits"][0]
    assert _post(url, "/v1/feedback", {"request_id": body["request_id"], "clicked_id": top["id"], "query_index": 1,
                                       "user": "alice"}).status_code == 200
    assert _post(url, "/v1/feedback", {"request_id": body["request_id"], "clicked_id": top["id"],
                                       "query_index": -1}).status_code == 422
    assert main(["ab", "report", spec.feedback_dir, "--json"]) == 0
    prod = json.loads(capsys.readouterr().out)["arms"]["production"]
    assert prod["clicks"] == 2 and prod["mrr_of_clicks"] == 0.75  # ranks 2 and 1, each within its own query
    out = tmp_path / "pairs.parquet"
    assert main(["feedback", "export", f"feedback_dir={spec.feedback_dir}", "corpus=wordnet:test", f"output={out}",
                 "min_impressions=1"]) == 0
    rows = {r["query"]: r for r in pq.read_table(out).to_pylist()}
    dog = body["data"][0]["hits"]
    assert rows["a small dog"]["positive"] == dog[1]["text"] and rows["a small dog"]["negatives"] == [dog[0]["text"]]
    assert rows["a musical instrument"]["positive"] == top["text"] and rows["a musical instrument"]["negatives"] == []


def test_ab_split_is_sticky_per_user(service):
    _, url = service
    seen = {}
    for i in range(24):
        for _ in range(2):
            r = _post(url, "/v1/embeddings", {"input": "x", "model": "fastemb", "user": f"user-{i}"})
            assert r.status_code == 200
            arm = r.json()["arm"]
            assert r.headers["x-fastemb-arm"] == arm
            assert seen.setdefault(i, arm) == arm
    assert set(seen.values()) == {"production", "candidate"}
    r = _post(url, "/v1/embeddings", {"input": "x", "model": "fastemb-candidate", "user": "user-0"})
    assert r.json()["arm"] == "candidate"


def test_token_id_inputs_embed_like_their_text(service, minilm_path):
    """OpenAI's token-array inputs: ids of the model's tokenizer (without its special tokens) embed as their text."""
    from transformers import AutoTokenizer

    _, url = service
    tok = AutoTokenizer.from_pretrained(minilm_path)
    texts = ["a small domesticated carnivore", "hello"]
    ids = [tok(t, add_special_tokens=False)["input_ids"] for t in texts]
    by_text = _post(url, "/v1/embeddings", {"input": texts, "model": "fastemb-production", "encoding_format": "float"})
    by_ids = _post(url, "/v1/embeddings", {"input": ids, "model": "fastemb-production", "encoding_format": "float"})
    one = _post(url, "/v1/embeddings", {"input": ids[0], "model": "fastemb-production", "encoding_format": "float"})
    assert by_text.status_code == by_ids.status_code == one.status_code == 200, (by_ids.text, one.text)
    want = np.array([d["embedding"] for d in by_text.json()["data"]])
    np.testing.assert_allclose(np.array([d["embedding"] for d in by_ids.json()["data"]]), want, atol=1e-6)
    np.testing.assert_allclose(np.array(one.json()["data"][0]["embedding"]), want[0], atol=1e-6)
    assert by_ids.json()["usage"] == by_text.json()["usage"]
    long_ids = ids[0] * 60  # > 256 tokens: cut like a text (truncated), or refused with truncate=false
    assert _post(url, "/v1/embeddings", {"input": [long_ids], "model": "fastemb-production"}).json()["truncated"] == [0]
    r = _post(url, "/v1/embeddings", {"input": [long_ids], "model": "fastemb-production", "truncate": False})
    assert r.status_code == 422 and r.json()["error"]["code"] == "input_too_long"
    r = _post(url, "/v1/embeddings", {"input": [ids[0], [5, len(tok)]], "model": "fastemb-production"})
    err = r.json()["error"]
    assert r.status_code == 422 and err["code"] == "invalid_token_ids" and err["param"] == "input.1.1"
    assert "tokenizer" in err["message"] and str(len(tok) - 1) in err["message"]


def test_models_and_health(service):
    _, url = service
    h = httpx.get(url + "/healthz", headers=H, timeout=30)
    assert h.status_code == 200 and set(h.json()["arms"]) == {"production", "candidate"}
    assert h.json()["arms"]["production"]["index_size"] == 300
    # without the key: liveness only, nothing about the models (no versions, no filesystem paths)
    bare = httpx.get(url + "/healthz", timeout=30)
    assert bare.status_code == 200 and bare.json() == {"status": "ok"}
    # the API docs follow the key too
    for path in ("/openapi.json", "/docs", "/redoc"):
        r = httpx.get(url + path, timeout=30)
        assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key", path
        assert httpx.get(url + path, headers=H, timeout=30).status_code == 200, path
    assert "/v1/embeddings" in httpx.get(url + "/openapi.json", headers=H, timeout=30).json()["paths"]
    m = httpx.get(url + "/v1/models", headers=H, timeout=30).json()
    ids = {d["id"] for d in m["data"]}
    assert ids == {"fastemb", "fastemb-production", "fastemb-candidate"}
    by_id = {d["id"]: d for d in m["data"]}
    assert by_id["fastemb-production"]["version"] == "all-MiniLM-L6-v2"  # a plain folder: its name is the version
    assert by_id["fastemb"]["versions"] == {"production": "all-MiniLM-L6-v2", "candidate": "all-MiniLM-L6-v2"}


def test_replica_logs_hold_no_item_count_batch_warning(service):
    """The real replicas' Serve logs (Ray's session folder, logs/serve/replica_*.log): the embedder's token budget
    (@serve.batch max_batch_size 8192) above max_ongoing_requests (64) made Ray Serve warn in every replica at its
    first batch until fastemb.logs dropped it; the replicas' other records are still there."""
    import ray

    _, url = service
    for model in ("fastemb-production", "fastemb-candidate"):  # each arm's batch queue starts with its first input
        assert _post(url, "/v1/embeddings", {"input": ["a first batch"], "model": model}).status_code == 200
    session = ray._private.worker._global_node.get_session_dir_path()
    logs = {p.name: p.read_text(errors="replace") for p in (Path(session) / "logs" / "serve").glob("replica_*.log")}
    assert any("fastemb" in name for name in logs) and any(text.strip() for text in logs.values()), sorted(logs)
    assert not [name for name, text in logs.items() if "`max_batch_size` (" in text]


@pytest.mark.parametrize("case", ["no_key", "wrong_key", "basic_scheme"])
def test_api_key_required(service, case):
    _, url = service
    headers = {"no_key": {}, "wrong_key": {"Authorization": "Bearer nope"},
               "basic_scheme": {"Authorization": f"Basic {KEY}"}}[case]
    for method, path, body in [("post", "/v1/embeddings", {"input": "x", "model": "fastemb"}),
                               ("post", "/v1/search", {"query": "x"}), ("get", "/v1/models", None)]:
        r = httpx.request(method, url + path, json=body, headers=headers, timeout=30)
        assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
        assert r.headers["www-authenticate"] == "Bearer"


DEEP = b'{"model": "fastemb", "input": ' + b"[" * 20_000 + b"]" * 20_000 + b"}"


@pytest.mark.parametrize("body,status,code", [
    (b"{not json", 400, "invalid_json"),
    (b"[1, 2]", 400, "invalid_json"),
    (b'{"model": "fastemb", "input": "abc\\ud800x"}', 400, "invalid_unicode"),  # a lone surrogate (issue 16)
    (b'{"model": "fastemb", "input": ["ok", "\\udfff"]}', 400, "invalid_unicode"),
    (b'{"model": "fastemb\\ud83d", "input": "x"}', 400, "invalid_unicode"),
    (b'{"model": "fastemb", "input": "x", "dimensions": NaN}', 400, "invalid_json"),
    (b'{"model": "fastemb", "input": "x", "dimensions": ' + b"9" * 5000 + b"}", 400, "invalid_json"),
    (DEEP, 400, "invalid_json"),
    ({"input": "", "model": "fastemb"}, 400, "empty_input"),
    ({"input": ["x", ""], "model": "fastemb"}, 400, "empty_input"),
    ({"input": [[]], "model": "fastemb"}, 400, "empty_input"),
    ({"input": "x", "model": "fastemb", "dimensions": "64"}, 422, "invalid_value"),
    ({"input": "x", "model": "fastemb", "dimensions": 64.0}, 422, "invalid_value"),
    ({"input": "x", "model": "fastemb", "truncate": 1}, 422, "invalid_value"),
    ({"input": [[1, 2], "x"], "model": "fastemb"}, 422, "invalid_value"),
    ({"input": [[1, True]], "model": "fastemb"}, 422, "invalid_value"),
    ({"input": [[101, -1]], "model": "fastemb-production"}, 422, "invalid_token_ids"),
    ({"input": [10**30], "model": "fastemb-production"}, 422, "invalid_token_ids"),
    ({"input": "x"}, 422, "invalid_value"),
    ({"input": 5, "model": "fastemb"}, 422, "invalid_value"),
    ({"input": [], "model": "fastemb"}, 422, "empty_input"),
    ({"input": "x", "model": "fastemb", "extra": 1}, 422, "invalid_value"),
    ({"input": "x", "model": "fastemb", "encoding_format": "int8"}, 422, "invalid_value"),
    ({"input": "x", "model": "fastemb", "dimensions": 4096}, 422, "invalid_dimensions"),
    ({"input": "x", "model": "gpt-4"}, 404, "model_not_found"),
    ({"input": ["x"] * 65, "model": "fastemb"}, 413, "too_many_inputs"),
    ({"input": "y" * 20_001, "model": "fastemb"}, 413, "input_too_large"),
    ({"input": ["z" * 9_000] * 8, "model": "fastemb"}, 413, "body_too_large"),
])
def test_bad_requests_get_json_errors(service, body, status, code):
    _, url = service
    kw = {"content": body} if isinstance(body, bytes) else {"json": body}
    r = httpx.post(url + "/v1/embeddings", headers=JSON, timeout=30, **kw)
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert err["code"] == code and err["message"]


@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded", None])
def test_json_content_type_required(service, content_type):
    _, url = service
    headers = {**H, **({"content-type": content_type} if content_type else {})}
    r = httpx.post(url + "/v1/embeddings", content=b'{"input": "x", "model": "fastemb"}', headers=headers, timeout=30)
    assert r.status_code == 415 and r.json()["error"]["code"] == "unsupported_media_type", r.text


def test_search_limits(service):
    _, url = service
    assert _post(url, "/v1/search", {"query": "x", "k": 21}).json()["error"]["param"] == "k"
    assert _post(url, "/v1/search", {"query": "x", "k": "5"}).json()["error"]["param"] == "k"
    assert _post(url, "/v1/search", {"query": ["q"] * 65}).status_code == 413
    r = httpx.post(url + "/v1/search", content=b'{"query": "\\udfff"}', headers=JSON, timeout=30)
    assert r.status_code == 400 and r.json()["error"]["param"] == "query", r.text
    r = _post(url, "/v1/search", {"query": [[101, 102]]})  # token ids: /v1/embeddings only
    assert r.status_code == 422 and "list of strings" in r.json()["error"]["message"]


def test_overload_answers_429(service):
    """max_inflight_requests=2 per ingress: a burst of 12 concurrent requests gets some 429s, never 5xx."""
    _, url = service
    body = {"input": [f"definition number {i} of something rather long" for i in range(48)], "model": "fastemb"}
    gate = threading.Barrier(12)

    def one(_):
        gate.wait()
        return _post(url, "/v1/embeddings", body)

    with cf.ThreadPoolExecutor(12) as pool:
        results = list(pool.map(one, range(12)))
    codes = sorted(r.status_code for r in results)
    assert set(codes) <= {200, 429} and 429 in codes and 200 in codes, codes
    r429 = next(r for r in results if r.status_code == 429)
    assert r429.json()["error"]["code"] == "overloaded" and r429.headers["retry-after"] == "1"


def test_fuzzed_requests_never_500(service):
    """Any JSON (and any bytes) gets a JSON answer below 500: text over the whole Unicode range (unpaired surrogates,
    NUL and other controls), numbers past float and int64 range, deep nesting, token-id arrays."""
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    _, url = service
    char = st.characters(codec=None, exclude_categories=())  # surrogates (Cs) and controls included
    text = st.one_of(st.text(char, max_size=40), st.sampled_from(["", "\x00", "a\x00b", "\ud800", "x\udfffy",
                                                                  "\ud83d", "\U0001f600", "\ufeff", "\u202e"]))
    number = st.one_of(st.integers(), st.integers(-2**40, 2**40), st.sampled_from([2**63, -2**63 - 1, 10**300]),
                       st.floats(allow_nan=True, allow_infinity=True))
    scalar = st.one_of(st.none(), st.booleans(), number, text)
    anyjson = st.recursive(scalar, lambda c: st.one_of(st.lists(c, max_size=4),
                                                       st.dictionaries(text, c, max_size=3)), max_leaves=8)
    token_ids = st.integers(-3, 31_000) | st.sampled_from([30_521, 30_522, 2**31, 2**64, -2**63])
    tokens = st.one_of(st.lists(token_ids, max_size=12), st.lists(st.lists(token_ids, max_size=12), max_size=4))
    inputs = st.one_of(text, st.lists(text, max_size=6), tokens, anyjson)
    emb = st.fixed_dictionaries({}, optional={
        "input": inputs, "model": st.one_of(st.sampled_from(["fastemb", "fastemb-candidate"]), anyjson),
        "encoding_format": st.one_of(st.sampled_from(["float", "base64"]), anyjson),
        "dimensions": st.one_of(st.integers(-5, 500), anyjson), "user": st.one_of(text, anyjson),
        "truncate": st.one_of(st.booleans(), anyjson)})
    emb = st.builds(lambda known, extra: {**extra, **known}, emb,
                    st.dictionaries(text, anyjson, max_size=1) | st.just({}))
    search = st.fixed_dictionaries({}, optional={"query": inputs, "k": st.one_of(st.integers(-3, 30), anyjson),
                                                 "model": anyjson, "user": anyjson})
    feedback = st.fixed_dictionaries({}, optional={"request_id": st.one_of(text, anyjson),
                                                   "clicked_id": st.one_of(text, anyjson)})
    closer = {"[": "]", '{"a": ': "}"}
    deep = st.builds(lambda d, o, key: (f'{{"{key}": ' + o * d + "1" + closer[o] * d + "}").encode(),
                     st.integers(1, 12_000), st.sampled_from(list(closer)), st.sampled_from(["input", "query"]))
    case = st.one_of(st.tuples(st.just("/v1/embeddings"), emb), st.tuples(st.just("/v1/search"), search),
                     st.tuples(st.just("/v1/feedback"), feedback),
                     st.tuples(st.sampled_from(["/v1/embeddings", "/v1/search"]), st.binary(max_size=64) | deep))
    statuses = []

    @settings(max_examples=160, deadline=None, database=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    @given(case)
    def check(c):
        path, body = c
        # json.dumps (ASCII, escapes kept) can carry what httpx's UTF-8 encoder cannot: unpaired surrogates, NaN
        content = body if isinstance(body, bytes) else json.dumps(body).encode()
        r = httpx.post(url + path, headers=JSON, content=content, timeout=60)
        statuses.append(r.status_code)
        assert r.status_code < 500, (path, content[:300], r.text)
        payload = r.json()
        if r.status_code >= 400:
            assert payload["error"]["message"] and payload["error"]["code"]

    check()
    assert 200 in statuses and any(400 <= s < 500 for s in statuses)


def test_serve_config_yaml_is_valid_for_serve_deploy(tmp_path):
    from ray.serve.schema import ServeDeploySchema

    from fastemb.serve.job import write_serve_config
    from fastemb.spec import load_spec

    spec = load_spec("jobs/serve.yaml", [f"config_out={tmp_path}/serve.yaml", "candidate.model=all-MiniLM-L6-v2",
                                         "ab.candidate_weight=0.2"])
    path = write_serve_config(spec, spec.config_out)
    cfg = yaml.safe_load(path.read_text())
    ServeDeploySchema.model_validate(cfg)
    app = cfg["applications"][0]
    assert app["import_path"] == "fastemb.serve.deployments:build_app" and cfg["http_options"]["host"] == "127.0.0.1"
    deps = {d["name"]: d for d in app["deployments"]}
    assert set(deps) == {"Ingress", "production", "candidate"}
    for arm in ("production", "candidate"):
        d = deps[arm]
        assert d["autoscaling_config"]["max_replicas"] >= d["autoscaling_config"]["min_replicas"]
        assert d["max_ongoing_requests"] >= d["user_config"]["max_batch_size"]
    assert deps["Ingress"]["user_config"] == {"candidate_weight": 0.2}
    # the builder accepts exactly what the config passes it
    from fastemb.serve.deployments import build_app

    build_app(app["args"])
    # one arm: one fused deployment (API + model, no router hop) carrying the arm's autoscaling and batching
    single = load_spec("jobs/serve.yaml", [f"config_out={tmp_path}/single.yaml"])
    cfg = yaml.safe_load(write_serve_config(single, single.config_out).read_text())
    ServeDeploySchema.model_validate(cfg)
    deps = {d["name"]: d for d in cfg["applications"][0]["deployments"]}
    assert set(deps) == {"production"}
    d = deps["production"]
    assert d["autoscaling_config"]["max_replicas"] == single.autoscaling.max_replicas
    assert d["user_config"] == {**single.batching.model_dump(), "candidate_weight": 0.0}
    assert d["logging_config"] == {"enable_access_log": False}
    env = cfg["applications"][0]["runtime_env"]["env_vars"]
    assert env["RAY_SERVE_RUN_USER_CODE_IN_SEPARATE_THREAD"] == "0"
    build_app(cfg["applications"][0]["args"])


def test_serve_spec_errors_name_the_field():
    from fastemb.spec import SpecError, parse_spec

    with pytest.raises(SpecError, match="max_ongoing_requests"):
        parse_spec({"job": "serve", "replica": {"max_ongoing_requests": 8}, "batching": {"max_batch_size": 32}})
    with pytest.raises(SpecError, match="candidate"):
        parse_spec({"job": "serve", "ab": {"candidate_weight": 0.3}})
    with pytest.raises(SpecError, match="index_dir or corpus"):
        parse_spec({"job": "serve", "production": {"index_dir": "a", "corpus": "b"}})
    with pytest.raises(SpecError, match="version needs registry"):
        parse_spec({"job": "serve", "production": {"version": "v0002"}})
    with pytest.raises(SpecError, match="registry with index_dir"):
        parse_spec({"job": "serve", "production": {"registry": "reg", "index_dir": "idx"}})
    with pytest.raises(SpecError, match="fused"):
        parse_spec({"job": "serve", "candidate": {}, "ingress": {"fused": True}})
    assert parse_spec({"job": "serve"}).fused and not parse_spec({"job": "serve", "candidate": {}}).fused


def test_nothing_answers_other_hosts_without_auth(service):
    """The service (Serve's proxy ingress) and the session's embedded Ray: every listening socket is on loopback,
    or, reached from another host, answers nothing without credentials (Serve's replica gRPC server: Ray's token)."""
    found = listening(process_tree())
    assert any(x["port"] == service[0].port and x["ip"] == "127.0.0.1" for x in found), found
    print("listeners:", [(x["name"], x["ip"], x["port"]) for x in found])
    assert open_without_auth(found) == []


def test_prometheus_metrics_exported(service):
    """Custom metrics (requests by arm/status, latency histogram, batch size, errors by reason) reach the node's
    Prometheus endpoint (Ray's metrics agent; pushed every few seconds, so wait with a deadline)."""
    import time

    import ray

    _, url = service
    _post(url, "/v1/embeddings", {"input": ["metrics probe"], "model": "fastemb-production"})
    _post(url, "/v1/embeddings", {"input": 5, "model": "fastemb"})
    port = ray._private.worker._global_node.metrics_export_port
    wanted = ["fastemb_requests_total", "fastemb_request_latency_ms_bucket", "fastemb_batch_size_bucket",
              "fastemb_errors_total", "fastemb_input_tokens_total", "fastemb_queue_depth"]
    deadline, text = time.monotonic() + 90, ""
    while time.monotonic() < deadline:
        text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
        if all(w in text for w in wanted):
            break
        time.sleep(2)
    missing = [w for w in wanted if w not in text]
    assert not missing, missing
    assert 'arm="production"' in text and 'reason="invalid_value"' in text


def _asgi(app, path: str = "/v1/embeddings") -> tuple[int, dict, bytes]:
    """One HTTP request through an ASGI app: (status, headers, body)."""
    import asyncio

    sent = []

    async def receive():
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message):
        sent.append(message)

    asyncio.run(app({"type": "http", "path": path, "method": "POST", "headers": []}, receive, send))
    starts = [m for m in sent if m["type"] == "http.response.start"]
    assert len(starts) == 1, sent
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return starts[0]["status"], {k.decode(): v.decode() for k, v in starts[0]["headers"]}, body


def _responder(status: int, content_type: bytes, body: bytes, headers=()):
    async def app(scope, receive, send):
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-type", content_type), *headers]})
        await send({"type": "http.response.body", "body": body})
    return app


@pytest.mark.parametrize("inner,status,code,retry", [
    # Serve's proxy for a replica that died holding the request (plain text), a full queue, an unknown route
    (_responder(500, b"text/plain; charset=utf-8", b"Internal Server Error"), 503, "replica_unavailable", "1"),
    (_responder(429, b"text/plain", b"too many", [(b"retry-after", b"3")]), 429, "overloaded", "3"),
    (_responder(408, b"text/plain", b"Request abc timed out after 5s."), 503, "timeout", "1"),
    (_responder(404, b"text/plain", b"Path '/x' not found."), 404, "not_found", None),
])
def test_proxy_middleware_turns_serve_errors_into_json(inner, status, code, retry):
    from fastemb.serve.proxy import JsonErrors

    got, headers, body = _asgi(JsonErrors(inner))
    err = json.loads(body)["error"]
    assert (got, err["code"], headers.get("retry-after")) == (status, code, retry)
    assert headers["content-type"] == "application/json" and err["message"]
    assert "Internal Server Error" not in err["message"] and "timed out after" not in err["message"]


def test_proxy_middleware_passes_answers_and_catches_failures():
    from fastemb.serve.proxy import JsonErrors

    ok = _responder(200, b"application/json", b'{"data": []}')
    assert _asgi(JsonErrors(ok)) == (200, {"content-type": "application/json"}, b'{"data": []}')
    fastemb_error = _responder(422, b"application/json", b'{"error": {"code": "invalid_value"}}')
    assert _asgi(JsonErrors(fastemb_error))[2] == b'{"error": {"code": "invalid_value"}}'

    async def raises(scope, receive, send):
        raise RuntimeError("the proxy failed")

    async def silent(scope, receive, send):
        return None

    for inner in (raises, silent):  # uvicorn would answer a plain-text 500 (or drop the connection)
        status, headers, body = _asgi(JsonErrors(inner))
        assert status == 503 and headers["retry-after"] == "1" and json.loads(body)["error"]["code"]
