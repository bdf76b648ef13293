"""The exposure check shared by the serve and cluster tests: the TCP listening sockets of a set of processes, and
which of those that other machines can reach answer without credentials.

A listener bound to loopback is out of reach. One bound to another address (or to all of them) is probed from this
machine through its non-loopback address, as another host would: with plain HTTP requests (``GET /``, ``/metrics``,
``/stats``, ``/docs``, no Authorization header: any status below 400 is an answer), and, when it does not speak
HTTP/1, with empty gRPC calls to a few methods of Ray's services (an OK status is an answer; Ray's token auth answers
UNAUTHENTICATED). gRPC's standard health check (``grpc.health.v1.Health/Check``) is not probed: Ray's servers answer
it without a token, with a bare SERVING status and no details, which the exposure rule allows (a liveness check may
stay open if it carries nothing).
"""
from __future__ import annotations

import ipaddress
import os
import socket

import psutil

HTTP_PATHS = ("/", "/metrics", "/stats", "/docs")
GRPC_METHODS = ("/ray.rpc.NodeInfoGcsService/CheckAlive", "/ray.rpc.NodeInfoGcsService/GetAllNodeInfo",
                "/ray.rpc.NodeManagerService/GetSystemConfig", "/ray.rpc.CoreWorkerService/NumPendingTasks",
                "/ray.rpc.ReporterService/GetProfilingStats")


def process_tree(root: int | None = None) -> list[psutil.Process]:
    """``root`` (default: this process) and everything it started."""
    p = psutil.Process(root or os.getpid())
    return [p, *p.children(recursive=True)]


def process_groups(pgids: set[int]) -> list[psutil.Process]:
    """Every process whose process group is one of ``pgids`` (the nodes of cluster/local_cluster.py)."""
    out = []
    for p in psutil.process_iter():
        try:
            if os.getpgid(p.pid) in pgids:
                out.append(p)
        except (ProcessLookupError, psutil.Error):
            pass
    return out


def listening(procs: list[psutil.Process]) -> list[dict]:
    """TCP listeners of ``procs``: [{ip, port, pid, name}], one per address."""
    seen: dict[tuple[str, int], dict] = {}
    for p in procs:
        try:
            conns, name = p.net_connections(kind="tcp"), p.name()
        except psutil.Error:
            continue
        for c in conns:
            if c.status == psutil.CONN_LISTEN:
                seen.setdefault((c.laddr.ip, c.laddr.port), {"ip": c.laddr.ip, "port": c.laddr.port, "pid": p.pid,
                                                            "name": name})
    return sorted(seen.values(), key=lambda x: (x["ip"], x["port"]))


def machine_address() -> str | None:
    """This machine's first non-loopback IPv4 address (what another host would connect to), or None."""
    for addrs in psutil.net_if_addrs().values():
        for a in addrs:
            if a.family == socket.AF_INET and not ipaddress.ip_address(a.address).is_loopback:
                return a.address
    return None


def _loopback(ip: str) -> bool:
    addr = ipaddress.ip_address(ip.split("%")[0])
    return addr.is_loopback or bool(getattr(addr, "ipv4_mapped", None) and addr.ipv4_mapped.is_loopback)


def _http_status(host: str, port: int, path: str) -> int | None:
    """Status of a plain ``GET path`` without credentials, or None if the server does not answer HTTP/1."""
    try:
        with socket.create_connection((host, port), timeout=3) as s:
            s.sendall(f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nConnection: close\r\n\r\n".encode())
            head = s.recv(64)
    except OSError:
        return None
    parts = head.split(b" ", 2)
    if len(parts) >= 2 and parts[0].startswith(b"HTTP/1.") and parts[1].isdigit():
        return int(parts[1])
    return None


def _grpc_answers(host: str, port: int) -> str | None:
    """The first of GRPC_METHODS that an empty call without a token gets an OK answer from, else None."""
    import grpc

    with grpc.insecure_channel(f"{host}:{port}") as channel:
        for method in GRPC_METHODS:
            call = channel.unary_unary(method, request_serializer=None, response_deserializer=None)
            try:
                call(b"", timeout=3)
            except grpc.RpcError as err:
                if err.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
                    return None  # no gRPC server there: the other methods would wait as long for nothing
                continue
            return method
    return None


def open_without_auth(found: list[dict]) -> list[str]:
    """The listeners of ``found`` that another host reaches and that answer it without credentials."""
    target = machine_address()
    bad = []
    for x in found:
        if _loopback(x["ip"]):
            continue
        host = target if x["ip"] in ("0.0.0.0", "::", "*") else x["ip"].split("%")[0]
        if host is None:
            continue
        where = f"{x['name']} (pid {x['pid']}) on {x['ip']}:{x['port']}"
        statuses = [_http_status(host, x["port"], HTTP_PATHS[0])]
        if statuses[0] is not None:  # it speaks HTTP/1: every path is asked
            statuses += [_http_status(host, x["port"], path) for path in HTTP_PATHS[1:]]
        answered = [(p, s) for p, s in zip(HTTP_PATHS, statuses) if s is not None and s < 400]
        if answered:
            bad.append(f"{where}: HTTP {answered[0][1]} for GET {answered[0][0]} without credentials")
        elif all(s is None for s in statuses):
            method = _grpc_answers(host, x["port"])
            if method:
                bad.append(f"{where}: gRPC {method} answered without a token")
    return bad
