"""Registry-driven serving: the service follows the registry's production version, and `fastemb registry promote`
/ `rollback` switch the served model without downtime while requests keep being answered.

Two real models: the shipped MiniLM (v0001) and a copy with perturbed token embeddings (v0002), so each response's
vector tells which model really computed it; v0003 is a broken model folder that must never replace a working one.
"""
from __future__ import annotations

import time

import httpx
import numpy as np
import pytest

from serve_helpers import ClientThreads, free_port, start_service, stop_service

PROBE = "a small domesticated carnivore kept as a pet"


@pytest.fixture(scope="module")
def registry(tmp_path_factory, minilm_path):
    import torch

    from fastemb.model.encoder import Encoder
    from fastemb.registry import Registry

    tmp = tmp_path_factory.mktemp("serve_registry")
    other = tmp / "perturbed"
    enc = Encoder.load(minilm_path)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        w = enc.transformer.get_input_embeddings().weight
        w.add_(0.5 * w.std() * torch.randn(w.shape, generator=g))
    enc.save(other)
    broken = tmp / "broken"
    broken.mkdir()
    (broken / "modules.json").write_text("[]")
    (broken / "model.safetensors").write_bytes(b"not weights")
    reg = Registry(str(tmp / "registry"))
    assert reg.register(minilm_path, {"ndcg@10": 0.50}, {}) == "v0001"
    assert reg.register(str(other), {"ndcg@10": 0.60}, {}, parent="v0001") == "v0002"
    assert reg.register(str(broken), {"ndcg@10": 0.70}, {}, parent="v0002") == "v0003"
    reg.promote("v0001")
    refs = {v: Encoder.load(reg.model_path(v)).encode([PROBE])[0] for v in ("v0001", "v0002")}
    assert np.abs(refs["v0001"] - refs["v0002"]).max() > 1e-2  # really two different models
    return reg, refs


@pytest.fixture(scope="module")
def service(ray_local, registry, tmp_path_factory):
    reg, _ = registry
    spec, url = start_service({
        "port": free_port(),
        "production": {"registry": reg.root, "corpus": "wordnet", "corpus_limit": 50, "registry_poll_s": 0.5},
        "autoscaling": {"min_replicas": 1, "max_replicas": 1},
        "feedback_dir": str(tmp_path_factory.mktemp("ab")),
    })
    yield spec, url
    stop_service()


class Load(ClientThreads):
    """Closed-loop clients embedding PROBE; every answer kept (status, version tag, vector)."""

    def __init__(self, url: str, threads: int = 2):
        self.url = url
        self.results: list[list[tuple]] = [[] for _ in range(threads)]
        super().__init__(threads)

    def _run(self, i: int) -> None:
        deadline = time.monotonic() + 300
        with httpx.Client(timeout=60) as client:
            while not self.stop.is_set() and time.monotonic() < deadline:
                try:
                    r = client.post(self.url + "/v1/embeddings", json={"input": PROBE, "model": "fastemb"})
                    body = r.json() if r.status_code == 200 else {}
                    self.results[i].append((r.status_code, body.get("model_version"),
                                            r.headers.get("x-fastemb-model-version"),
                                            np.array(body["data"][0]["embedding"]) if body else None))
                except httpx.HTTPError as err:
                    self.results[i].append(("transport", repr(err), None, None))

    def latest_versions(self) -> set:
        return {r[-1][1] for r in self.results if r}

    def wait_all(self, version: str, timeout_s: float) -> None:
        """Until every client's newest answer came from ``version``."""
        deadline = time.monotonic() + timeout_s
        n0 = [len(r) for r in self.results]
        while time.monotonic() < deadline:
            if all(len(r) > n for r, n in zip(self.results, n0)) and self.latest_versions() == {version}:
                return
            time.sleep(0.2)
        raise AssertionError(f"still serving {self.latest_versions()} after {timeout_s}s, want {version}")


def _models(url: str) -> dict:
    return {d["id"]: d for d in httpx.get(url + "/v1/models", timeout=30).json()["data"]}


def test_promote_and_rollback_without_downtime(registry, service):
    from fastemb.cli import main

    reg, refs = registry
    _, url = service
    assert _models(url)["fastemb-production"]["version"] == "v0001"
    with Load(url) as load:
        load.wait_all("v0001", 60)
        assert main(["registry", "promote", "v0002", "--root", reg.root]) == 0
        load.wait_all("v0002", 120)
        models = _models(url)
        assert models["fastemb-production"]["version"] == "v0002"
        assert models["fastemb"]["versions"] == {"production": "v0002"}
        hit = httpx.post(url + "/v1/search", json={"query": "a musical instrument", "k": 3}, timeout=60).json()
        assert hit["model_version"] == "v0002" and len(hit["data"][0]["hits"]) == 3
        # a broken version promoted by force is never swapped in: the working one keeps answering
        assert main(["registry", "promote", "v0003", "--root", reg.root, "--force"]) == 0
        time.sleep(4)  # several polls, a failed load included
        load.wait_all("v0002", 30)
        assert main(["registry", "rollback", "--root", reg.root]) == 0  # v0003 -> v0002
        assert main(["registry", "rollback", "--root", reg.root]) == 0  # v0002 -> v0001
        load.wait_all("v0001", 120)
    assert _models(url)["fastemb-production"]["version"] == "v0001"

    answers = [a for r in load.results for a in r]
    assert answers and all(a[0] == 200 for a in answers), [a[:2] for a in answers if a[0] != 200][:5]
    for status, version, header, vec in answers:
        assert version == header and version in refs
        np.testing.assert_allclose(vec, refs[version], atol=1e-5, rtol=0)  # the tag names the model that ran
    for r in load.results:  # each client saw v0001, then v0002, then v0001 again: no flapping
        seq = [a[1] for a in r]
        runs = [v for i, v in enumerate(seq) if i == 0 or seq[i - 1] != v]
        assert runs == ["v0001", "v0002", "v0001"], runs
