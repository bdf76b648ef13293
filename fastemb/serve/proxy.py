"""Ray Serve's HTTP proxy, answering like fastemb: every error as fastemb's JSON body, and no request left waiting
for a replica when there is none.

Serve runs ``middlewares()`` in each of its HTTP servers (``RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH``: the proxy
actor, the fallback proxy of HAProxy mode, and in HAProxy mode each replica's own HTTP server). ``fastemb serve`` sets
the variable before Serve starts (``deployments.proxy_env``); on a cluster fastemb did not start, set it on every node.

- A response Serve writes itself is plain text: 500 for a replica that died holding the request, 503 for a
  deployment that failed, 408 for a request timeout, 429 for a full queue, 404 for an unknown route. It is rewritten
  as the JSON error body; 5xx and 408 become 503 with ``Retry-After`` (a retry may well succeed), with a fixed
  message (Serve's text carries actor ids and addresses).
- Serve's router queues a request until a replica is back when its deployment has none (10 s or more after a
  crash: the controller's health check, a new process, the model load). A request still unanswered after
  ``unavailable_after_s`` while the proxy's router knows no running replica of its deployment is cancelled and
  answered 503 ``no_replica`` with ``Retry-After``.
"""
from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os

from fastemb.serve.api import error_body

IMPORT_PATH_ENV = "RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH"
UNAVAILABLE_AFTER_ENV = "FASTEMB_SERVE_UNAVAILABLE_AFTER_S"
RETRY_AFTER_S = 1
_POLL_S = 0.25  # how often a waiting request looks at the router again, once past unavailable_after_s
_HELD_BODY_BYTES = 2048

logger = logging.getLogger(__name__)


def middlewares() -> list:
    """Serve's proxy callback: the middlewares of every Serve HTTP server."""
    from starlette.middleware import Middleware

    return [Middleware(JsonErrors, unavailable_after_s=float(os.environ.get(UNAVAILABLE_AFTER_ENV, "2")))]


def _header(headers, name: bytes) -> bytes:
    return next((v for k, v in headers if k.lower() == name), b"")


def _rewrite(status: int, headers, body: bytes) -> tuple[int, str, str, int | None]:
    """(status, code, message, Retry-After seconds) of fastemb's JSON answer to a plain-text error of Serve's."""
    if status == 429:
        retry = _header(headers, b"retry-after").decode() or str(RETRY_AFTER_S)
        return 429, "overloaded", "the service is at capacity; retry later", int(retry) if retry.isdigit() else 1
    if status == 408:
        return 503, "timeout", "the request timed out in the service; retry later", RETRY_AFTER_S
    if status >= 500:
        return (503, "replica_unavailable", "no model replica could answer this request (one may be restarting); "
                "retry later", RETRY_AFTER_S)
    text = body.decode("utf-8", "replace").strip()[:200]
    return status, "not_found" if status == 404 else "invalid_request", text or f"HTTP {status}", None


class _Reply:
    """The response on its way out: a non-JSON error response is held back and sent as the JSON error body."""

    def __init__(self, send):
        self._send = send
        self.started = False  # the inner app has begun its response
        self.passed_through = False  # ... and its start went out as it was
        self.finished = False  # fastemb's JSON error went out: nothing more is sent
        self._held: tuple[int, list] | None = None
        self._body = b""

    async def send(self, message) -> None:
        if self.finished:
            return
        kind = message["type"]
        if kind == "http.response.start":
            self.started = True
            headers = message.get("headers") or []
            if message["status"] >= 400 and not _header(headers, b"content-type").startswith(b"application/json"):
                self._held = (message["status"], headers)
                return
            self.passed_through = True
        elif kind == "http.response.body" and self._held is not None:
            self._body = (self._body + message.get("body", b""))[:_HELD_BODY_BYTES]
            if not message.get("more_body", False):
                status, headers = self._held
                await self.error(*_rewrite(status, headers, self._body),
                                 request_id=_header(headers, b"x-request-id"))
            return
        await self._send(message)

    async def error(self, status: int, code: str, message: str, retry_after_s: int | None,
                    request_id: bytes = b"") -> None:
        """Send fastemb's JSON error (once; later messages of the inner app are dropped)."""
        if self.finished:
            return
        self.finished = True
        body = json.dumps(error_body(status, code, message)).encode()
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
        if retry_after_s is not None:
            headers.append((b"retry-after", str(retry_after_s).encode()))
        if request_id:
            headers.append((b"x-request-id", request_id))
        await self._send({"type": "http.response.start", "status": status, "headers": headers})
        await self._send({"type": "http.response.body", "body": body})


def _serve_proxy(app):
    """Serve's HTTPProxy under the middlewares Serve wraps it in, or None (a replica's own HTTP server)."""
    for _ in range(8):
        if app is None or hasattr(app, "proxy_router"):
            return app
        app = getattr(app, "_app", None) or getattr(app, "app", None)
    return None


def known_replicas(proxy, path: str) -> int | None:
    """Running replicas the proxy's router knows for the deployment serving ``path``; None when it cannot tell
    (no route yet, a router not yet made, or a Ray Serve whose router is laid out differently than 2.60's)."""
    try:
        match = proxy.proxy_router.match_route(path)
        if match is None:
            return None
        router = match[1]._router
        if router is None:
            return None
        request_router = getattr(router, "_asyncio_router", router).request_router
        return None if request_router is None else len(request_router.curr_replicas)
    except Exception:  # noqa: BLE001 - Serve internals changed: no fast failure, but never a broken proxy
        logger.debug("cannot read the replicas of the route of %s", path, exc_info=True)
        return None


class JsonErrors:
    """ASGI middleware of Serve's HTTP servers (see the module docstring)."""

    def __init__(self, app, unavailable_after_s: float = 2.0):
        self.app = app
        self.unavailable_after_s = unavailable_after_s
        self._proxy = _serve_proxy(app)

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        reply = _Reply(send)
        inner = asyncio.ensure_future(self.app(scope, receive, reply.send))
        try:
            if not await self._answered_in_time(inner, reply, scope.get("path", "/")):
                inner.cancel()
                with contextlib.suppress(BaseException):
                    await inner
                await reply.error(503, "no_replica", "no model replica is running (one is being started); retry "
                                  "later", RETRY_AFTER_S)
                return
            inner.result()
        except Exception:  # noqa: BLE001 - an error of Serve's own before any response: JSON, not a dropped socket
            if reply.passed_through:
                raise
            logger.warning("request failed in Serve's proxy", exc_info=True)
        finally:
            if not inner.done():
                inner.cancel()
        if not reply.passed_through:  # no answer, or a held error without its end: answer now (once)
            await reply.error(503, "replica_unavailable", "no model replica answered this request; retry later",
                              RETRY_AFTER_S)

    async def _answered_in_time(self, inner: asyncio.Future, reply: _Reply, path: str) -> bool:
        """Wait for ``inner``; False once it has waited ``unavailable_after_s`` without an answer while no replica
        of its deployment runs."""
        if self._proxy is None:
            await asyncio.wait({inner})
            return True
        timeout = self.unavailable_after_s
        while True:
            done, _ = await asyncio.wait({inner}, timeout=timeout)
            if done or reply.started:
                if not done:
                    await asyncio.wait({inner})
                return True
            if known_replicas(self._proxy, path) == 0:
                return False
            timeout = _POLL_S
