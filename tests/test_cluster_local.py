"""cluster/local_cluster.py really starts a multi-node Ray cluster with token auth: the Jobs API and
the GCS refuse requests without the right token, the dashboard listens on loopback only, and stop
ends every process it started."""
from __future__ import annotations

import json
import socket
import subprocess
import sys
import urllib.error
import urllib.request

import pytest

from cluster_helpers import ROOT, group_alive, local_cluster, run_script


@pytest.fixture(scope="module")
def cluster():
    with local_cluster(workers=1) as c:
        yield c
    for n in c["state"]["nodes"]:
        assert not group_alive(n["pgid"]), f"{n['name']} still running after stop"


def _request(url: str, token: str | None = None, data: bytes | None = None) -> tuple[int, str]:
    req = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    if token is not None:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def test_nodes_up_with_token_auth(cluster):
    st = run_script("status", "--dir", str(cluster["dir"] / "c"), env=cluster["env"])
    assert st.returncode == 0, st.stdout + st.stderr
    info = json.loads(st.stdout)
    assert info["alive_nodes"] == 2 and all(info["processes_alive"].values())
    assert cluster["token"] not in cluster["start"].stdout + cluster["start"].stderr + st.stdout
    env = run_script("env", "--dir", str(cluster["dir"] / "c"), env=cluster["env"]).stdout
    assert "RAY_AUTH_MODE=token" in env and "RAY_AUTH_TOKEN_PATH=" in env and cluster["token"] not in env


def test_jobs_api_refuses_requests_without_the_token(cluster):
    url = cluster["state"]["dashboard"] + "/api/jobs/"
    assert _request(url)[0] == 401
    assert _request(url, "0" * 64)[0] == 403
    assert _request(url, cluster["token"])[0] == 200
    body = json.dumps({"entrypoint": "echo pwned", "submission_id": "fastemb-unauthenticated"}).encode()
    assert _request(url, None, body)[0] == 401
    assert _request(url, "0" * 64, body)[0] == 403
    status, jobs = _request(url, cluster["token"])
    assert status == 200 and "fastemb-unauthenticated" not in jobs


def test_dashboard_listens_on_loopback_only(cluster):
    port = int(cluster["state"]["dashboard"].rsplit(":", 1)[1])
    import ray._private.services as services

    ip = services.node_ip_address_from_perspective()
    if ip.startswith("127."):
        pytest.skip("this machine has no non-loopback address to probe")
    with socket.socket() as s:
        s.settimeout(5)
        assert s.connect_ex((ip, port)) != 0, f"dashboard reachable on {ip}:{port}"


def test_gcs_refuses_a_client_with_a_wrong_token(cluster):
    env = {**cluster["env"], "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": "0" * 64}
    code = ("import ray\n"
            f"ray.init(address={cluster['state']['address']!r}, logging_level='ERROR')\n"
            "print('CONNECTED')\n")
    p = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=180)
    assert p.returncode != 0 and "CONNECTED" not in p.stdout
    assert "InvalidAuthToken" in p.stderr or "Authentication" in p.stderr, p.stderr[-2000:]


def test_fastemb_jobs_cli_needs_the_token(cluster, tmp_path):
    ok = subprocess.run([sys.executable, "-m", "fastemb.cli", "jobs", "list"], env=cluster["env"],
                        capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert ok.returncode == 0, ok.stderr
    assert "SUBMISSION ID" in ok.stdout
    no_token = {**cluster["env"], "RAY_AUTH_TOKEN_PATH": str(tmp_path / "missing"), "HOME": str(tmp_path)}
    bad = subprocess.run([sys.executable, "-m", "fastemb.cli", "jobs", "list"], env=no_token,
                         capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert bad.returncode == 2
    assert "token" in bad.stderr.lower() and "Traceback" not in bad.stderr
