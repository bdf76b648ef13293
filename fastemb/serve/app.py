"""The service's request handlers: the FastAPI routes of the ``Ingress`` (OpenAI-compatible API, limits, API key,
A/B router, metrics, feedback log) and the ``ArmModel`` deployment class of a model arm.

Two layouts, same API (built by ``fastemb/serve/deployments.py``):
- **fused** (one arm, the default without a candidate): one deployment named after the arm (``production``) holds the
  HTTP API *and* the model (``Embedder``), so a request is proxy -> replica -> batch, with no extra hop;
  it is autoscaled as the arm.
- **A/B** (a candidate arm): the ``Ingress`` router deployment picks the arm (weighted, sticky per user) and calls
  the arm's ``ArmModel`` deployment, each autoscaled on its own.
"""

import asyncio
import base64
import hashlib
import hmac
import logging
import os
import time
import uuid

import numpy as np
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from ray import serve
from ray.serve.handle import DeploymentHandle
from starlette.exceptions import HTTPException as StarletteHTTPException

from fastemb.logs import configure as configure_logging
from fastemb.serve.api import (ApiError, EmbeddingsRequest, FeedbackRequest, SearchRequest, error_response,
                               parse_inputs, read_body)
from fastemb.serve.embedder import LATENCY_MS_BOUNDS, Embedded, Embedder
from fastemb.serve.images import parse_images
from fastemb.spec import ServeJob

logger = logging.getLogger(__name__)


# ----------------------------------------------------------------------------------------------- model arm
@serve.deployment(max_ongoing_requests=64, health_check_period_s=10, health_check_timeout_s=30)
class ArmModel:
    """One arm's model behind the A/B router: an ``Embedder`` (batched forward passes + search backend)."""

    def __init__(self, arm: dict, arm_name: str, batching: dict, precision: str = "auto"):
        configure_logging()  # see Ingress.__init__
        self.core = Embedder(arm, arm_name, batching, precision)

    def reconfigure(self, cfg: dict) -> None:
        self.core.reconfigure(cfg)

    async def embed_texts(self, texts: list[str], truncate: bool) -> Embedded:
        return await self.core.embed_texts(texts, truncate)

    async def embed_token_ids(self, token_lists: list[list[int]], truncate: bool) -> Embedded:
        return await self.core.embed_token_ids(token_lists, truncate)

    async def search_texts(self, texts: list[str], k: int):
        return await self.core.search_texts(texts, k)

    async def embed_images(self, images: list) -> Embedded:
        return await self.core.embed_images(images)

    async def search_images(self, images: list, k: int):
        return await self.core.search_images(images, k)

    def info(self) -> dict:
        return self.core.info()

    def check_health(self) -> None:
        self.core.check_health()


# ----------------------------------------------------------------------------------------------- HTTP API
# The OpenAPI schema and its pages are routes of the Ingress below, so that they ask for the API key when one is set.
app = FastAPI(title="fastemb", description="OpenAI-compatible embeddings and search, served by Ray Serve.",
              docs_url=None, redoc_url=None, openapi_url=None)


@app.exception_handler(ApiError)
async def _api_error(request: Request, err: ApiError):
    return error_response(err.status, err.code, err.message, err.param, err.headers)


@app.exception_handler(StarletteHTTPException)
async def _http_error(request: Request, err: StarletteHTTPException):
    code = {404: "not_found", 405: "method_not_allowed"}.get(err.status_code, "http_error")
    return error_response(err.status_code, code, str(err.detail), headers=getattr(err, "headers", None))


@app.exception_handler(RequestValidationError)
async def _validation_error(request: Request, err: RequestValidationError):
    e = err.errors()[0] if err.errors() else {"loc": (), "msg": "invalid request"}
    param = ".".join(str(p) for p in e["loc"] if p != "body") or None
    return error_response(422, "invalid_value", f"{param}: {e['msg']}" if param else e["msg"], param)


class _LocalArm:
    """An arm whose model lives in this replica (fused layout): same calls as a deployment handle, no hop."""

    def __init__(self, core: Embedder):
        self.core = core

    async def embed_texts(self, texts: list[str], truncate: bool) -> Embedded:
        return await self.core.embed_texts(texts, truncate)

    async def embed_token_ids(self, token_lists: list[list[int]], truncate: bool) -> Embedded:
        return await self.core.embed_token_ids(token_lists, truncate)

    async def search_texts(self, texts: list[str], k: int):
        return await self.core.search_texts(texts, k)

    async def embed_images(self, images: list) -> Embedded:
        return await self.core.embed_images(images)

    async def search_images(self, images: list, k: int):
        return await self.core.search_images(images, k)

    async def info(self) -> dict:
        return self.core.info()


class _RemoteArm:
    """An arm served by its ``ArmModel`` deployment (A/B layout)."""

    def __init__(self, handle: DeploymentHandle):
        self.handle = handle

    async def embed_texts(self, texts: list[str], truncate: bool) -> Embedded:
        return await self.handle.embed_texts.remote(texts, truncate)

    async def embed_token_ids(self, token_lists: list[list[int]], truncate: bool) -> Embedded:
        return await self.handle.embed_token_ids.remote(token_lists, truncate)

    async def search_texts(self, texts: list[str], k: int):
        return await self.handle.search_texts.remote(texts, k)

    async def embed_images(self, images: list) -> Embedded:
        return await self.handle.embed_images.remote(images)

    async def search_images(self, images: list, k: int):
        return await self.handle.search_images.remote(images, k)

    async def info(self) -> dict:
        return await self.handle.info.remote()


async def _embedding_inputs(req: EmbeddingsRequest, lim) -> tuple[list, str]:
    """The inputs of an embeddings request and their kind: ``image`` (pictures, decoded off the event loop), ``ids``
    (token-id lists) or ``text``."""
    if req.modality == "image":
        return await asyncio.to_thread(parse_images, req.input, "input", lim.max_inputs, lim), "image"
    items, token_ids = parse_inputs(req.input, "input", lim.max_inputs, lim.max_input_chars, token_ids=True)
    return items, "ids" if token_ids else "text"


async def _embed(backend, items: list, kind: str, truncate: bool) -> Embedded:
    """The arm's vectors of inputs of ``kind`` (see ``_embedding_inputs``)."""
    if kind == "image":
        return await backend.embed_images(items)
    embed = backend.embed_token_ids if kind == "ids" else backend.embed_texts
    return await embed(items, truncate)


def _refuse_text_only(res: Embedded, model: str | None, arm: str) -> None:
    """A clear 400 when images were asked of a text-only model."""
    if res.text_only:
        raise ApiError(400, "text_only_model", f"model {model or arm!r} (arm {arm}) is text-only: it has no image "
                       "tower, so it cannot embed images; send text (modality: text) or ask a model whose "
                       "/v1/models entry lists the image modality", "modality")


@serve.ingress(app)
class Ingress:
    """HTTP API, limits, API key, A/B router (sticky per user), metrics and the impression/feedback log.

    ``production``/``candidate``: deployment handles (A/B layout), or None for the fused layout, where the production
    model is loaded in this replica.
    """

    def __init__(self, spec: dict, production: DeploymentHandle | None = None,
                 candidate: DeploymentHandle | None = None):
        from ray.serve.metrics import Counter, Gauge, Histogram

        from fastemb.serve.ab import EventLog

        # fastemb's logging, library chatter hidden: Ray runs a worker_process_setup_hook only from a job's
        # runtime_env (ray.init, job submission), not from an actor's, so a replica deployed from a Serve config
        # (serve deploy, RayService) would not get it
        configure_logging()
        self.spec = ServeJob.model_validate(spec)
        self.arms = self.spec.arms()
        self.local: Embedder | None = None
        if production is None:
            self.local = Embedder(self.arms["production"].model_dump(mode="json"), "production",
                                  self.spec.batching.model_dump(), self.spec.replica.precision)
            self.backends = {"production": _LocalArm(self.local)}
        else:
            self.backends = {"production": _RemoteArm(production)}
            if candidate is not None:
                self.backends["candidate"] = _RemoteArm(candidate)
        self.served_names = {a.served_name or f"{self.spec.model_name}-{name}": name for name, a in self.arms.items()}
        self.key_digest = None
        if self.spec.api_key_env:
            key = os.environ.get(self.spec.api_key_env)
            if not key:
                raise RuntimeError(f"api_key_env={self.spec.api_key_env}: variable not set in the replica")
            self.key_digest = hashlib.sha256(key.encode()).digest()
        self.weight = self.spec.ab.candidate_weight
        self.inflight = 0
        self.events = EventLog(self.spec.feedback_dir)
        self.m_requests = Counter("fastemb_requests_total", "HTTP requests", ("route", "arm", "status"))
        self.m_latency = Histogram("fastemb_request_latency_ms", "request latency", LATENCY_MS_BOUNDS,
                                   ("route", "arm"))
        self.m_errors = Counter("fastemb_errors_total", "failed requests by reason", ("route", "reason"))
        self.m_input_tokens = Counter("fastemb_input_tokens_total", "input tokens embedded", ("arm",))
        self.m_truncated = Counter("fastemb_truncated_inputs_total", "inputs truncated", ("arm",))
        self.m_inflight = Gauge("fastemb_inflight_requests", "requests in this ingress replica")
        self.m_feedback = Counter("fastemb_feedback_total", "feedback events", ("arm",))

    def reconfigure(self, cfg: dict) -> None:
        """user_config: ``candidate_weight`` changes the split in place; in the fused layout also the batching."""
        if "candidate_weight" in cfg:
            self.weight = float(cfg["candidate_weight"])
        if self.local is not None and "max_batch_tokens" in cfg:
            self.local.reconfigure(cfg)

    def check_health(self) -> None:
        if self.local is not None:
            self.local.check_health()

    # ------------------------------------------------------------------ helpers
    def _auth(self, request: Request) -> None:
        if self.key_digest is None:
            return
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        presented = hashlib.sha256(token.strip().encode()).digest()
        if scheme.lower() != "bearer" or not hmac.compare_digest(presented, self.key_digest):
            raise ApiError(401, "invalid_api_key", "missing or invalid API key (Authorization: Bearer <key>)",
                           headers={"WWW-Authenticate": "Bearer"})

    def _pick_arm(self, model: str | None, user: str | None) -> str:
        if model is None or model == self.spec.model_name:
            from fastemb.serve.ab import assign_arm

            return assign_arm(user, self.weight, self.spec.ab.salt, "candidate" in self.backends)
        if model in self.served_names:
            return self.served_names[model]
        raise ApiError(404, "model_not_found", f"model {model!r} is not served; see GET /v1/models", "model")

    def _authorized(self, request: Request) -> bool:
        try:
            self._auth(request)
        except ApiError:
            return False
        return True

    async def _call(self, route: str, request: Request, work):
        started = time.perf_counter()
        arm = "-"
        if self.inflight >= self.spec.limits.max_inflight_requests:
            self.m_errors.inc(tags={"route": route, "reason": "overloaded"})
            self.m_requests.inc(tags={"route": route, "arm": arm, "status": "429"})
            return error_response(429, "overloaded", "too many requests in flight; retry later",
                                  headers={"Retry-After": "1"})
        self.inflight += 1
        self.m_inflight.set(self.inflight)
        try:
            self._auth(request)
            arm, payload, headers = await work()
            status = 200
            resp = JSONResponse(payload, headers=headers)
        except ApiError as err:
            status, resp = err.status, error_response(err.status, err.code, err.message, err.param, err.headers)
            self.m_errors.inc(tags={"route": route, "reason": err.code})
        except Exception as err:  # noqa: BLE001 - replica loss, backpressure: JSON 429/503, counted
            logger.warning("%s failed: %r", route, err, exc_info=True)
            status, code = self._classify(err)
            self.m_errors.inc(tags={"route": route, "reason": code})
            resp = error_response(status, code, f"{code}: {type(err).__name__}; retry later",
                                  headers={"Retry-After": "1"})
        finally:
            self.inflight -= 1
            self.m_inflight.set(self.inflight)
        ms = (time.perf_counter() - started) * 1000
        self.m_requests.inc(tags={"route": route, "arm": arm, "status": str(status)})
        self.m_latency.observe(ms, tags={"route": route, "arm": arm})
        return resp

    @staticmethod
    def _classify(err: Exception) -> tuple[int, str]:
        from ray import exceptions as rex
        from ray.serve.exceptions import BackPressureError

        if isinstance(err, BackPressureError):
            return 429, "backpressure"
        if isinstance(err, (rex.RayActorError, rex.ActorUnavailableError, rex.ActorDiedError)):
            return 503, "replica_unavailable"
        if isinstance(err, (TimeoutError, asyncio.TimeoutError, rex.GetTimeoutError)):
            return 503, "timeout"
        return 500, "internal"

    @staticmethod
    def _headers(arm: str, request_id: str, version: str) -> dict:
        return {"x-fastemb-arm": arm, "x-request-id": request_id, "x-fastemb-model-version": version}

    # ------------------------------------------------------------------ routes
    @app.post("/v1/embeddings")
    async def embeddings(self, request: Request):
        async def work():
            started = time.perf_counter()
            req = await read_body(request, EmbeddingsRequest, self.spec.limits.max_body_bytes)
            lim = self.spec.limits
            texts, kind = await _embedding_inputs(req, lim)
            user = req.user or request.headers.get("x-user-id")
            arm = self._pick_arm(req.model, user)
            truncate = lim.truncate if req.truncate is None else req.truncate
            res = await _embed(self.backends[arm], texts, kind, truncate)
            _refuse_text_only(res, req.model, arm)
            if res.bad_token is not None:
                i, j, value = res.bad_token
                shown = str(value) if abs(value) < 10**12 else f"{str(value)[:12]}..."
                raise ApiError(422, "invalid_token_ids", f"input[{i}][{j}] = {shown} is not a token id of this "
                               f"model's tokenizer (ids 0..{res.vocab_size - 1}): token-id inputs must be ids of the "
                               "served model's tokenizer, without its special tokens", f"input.{i}.{j}")
            if res.too_long is not None:
                raise ApiError(422, "input_too_long", f"input[{res.too_long}] has more than {res.max_length} tokens "
                               "and truncate is false", f"input.{res.too_long}")
            if req.dimensions is not None and req.dimensions > res.dim:
                raise ApiError(422, "invalid_dimensions", f"dimensions={req.dimensions} is over the model's "
                               f"{res.dim}", "dimensions")
            vecs = res.vectors
            if req.dimensions is not None and req.dimensions < res.dim:
                vecs = np.array(vecs[:, :req.dimensions], dtype=np.float32, copy=True)
                if res.normalize:
                    vecs /= np.maximum(np.linalg.norm(vecs, axis=1, keepdims=True), 1e-12)
            if req.encoding_format == "base64":
                data = [{"object": "embedding", "index": i,
                         "embedding": base64.b64encode(v.astype("<f4").tobytes()).decode()}
                        for i, v in enumerate(vecs)]
            else:
                data = [{"object": "embedding", "index": i, "embedding": v} for i, v in enumerate(vecs.tolist())]
            if res.n_tokens:  # none for images
                self.m_input_tokens.inc(res.n_tokens, tags={"arm": arm})
            if res.truncated:
                self.m_truncated.inc(len(res.truncated), tags={"arm": arm})
            request_id = uuid.uuid4().hex
            self.events.write({"type": "embeddings", "request_id": request_id, "arm": arm, "user": user,
                               "model_version": res.version, "n": len(texts),
                               "latency_ms": round((time.perf_counter() - started) * 1000, 3)})
            payload = {"object": "list", "data": data, "model": req.model, "arm": arm,
                       "model_version": res.version, "request_id": request_id,
                       "usage": {"prompt_tokens": res.n_tokens, "total_tokens": res.n_tokens},
                       "truncated": res.truncated}
            return arm, payload, self._headers(arm, request_id, res.version)

        return await self._call("embeddings", request, work)

    @app.post("/v1/search")
    async def search(self, request: Request):
        async def work():
            started = time.perf_counter()
            req = await read_body(request, SearchRequest, self.spec.limits.max_body_bytes)
            lim = self.spec.limits
            if req.k > self.spec.limits.max_k:
                raise ApiError(422, "k_too_large", f"k={req.k} is over the limit {self.spec.limits.max_k}", "k")
            if req.modality == "image":
                images = await asyncio.to_thread(parse_images, req.query, "query", lim.max_queries, lim)
                queries = [None] * len(images)  # no query text: the results say `query: null`, the log keeps none
            else:
                queries, _ = parse_inputs(req.query, "query", lim.max_queries, lim.max_input_chars, token_ids=False)
            user = req.user or request.headers.get("x-user-id")
            arm = self._pick_arm(req.model, user)
            if req.modality == "image":
                hits, res = await self.backends[arm].search_images(images, req.k)
            else:
                hits, res = await self.backends[arm].search_texts(queries, req.k)
            _refuse_text_only(res, req.model, arm)
            if hits is None:
                raise ApiError(404, "no_index", f"arm {arm!r} has no index (give index_dir or corpus)")
            request_id = uuid.uuid4().hex
            self.events.write({"type": "search", "request_id": request_id, "arm": arm, "user": user,
                               "model_version": res.version, "ids": [[h["id"] for h in row] for row in hits],
                               **({"queries": queries} if self.spec.log_queries and req.modality == "text" else {}),
                               "latency_ms": round((time.perf_counter() - started) * 1000, 3)})
            data = [{"object": "search_result", "index": i, "query": q,
                     "hits": [{"rank": r + 1, **h} for r, h in enumerate(row)]}
                    for i, (q, row) in enumerate(zip(queries, hits))]
            payload = {"object": "list", "data": data, "model": req.model or self.spec.model_name, "arm": arm,
                       "model_version": res.version, "request_id": request_id, "truncated": res.truncated,
                       "usage": {"prompt_tokens": res.n_tokens, "total_tokens": res.n_tokens}}
            return arm, payload, self._headers(arm, request_id, res.version)

        return await self._call("search", request, work)

    @app.post("/v1/feedback")
    async def feedback(self, request: Request):
        async def work():
            req = await read_body(request, FeedbackRequest, self.spec.limits.max_body_bytes)
            self.events.write({"type": "feedback", "request_id": req.request_id, "clicked_id": req.clicked_id,
                               "query_index": req.query_index, "user": req.user})
            self.m_feedback.inc(tags={"arm": "-"})
            return "-", {"ok": True, "request_id": req.request_id}, None

        return await self._call("feedback", request, work)

    @app.get("/v1/models")
    async def models(self, request: Request):
        async def work():
            created = int(time.time())
            infos = dict(zip(self.backends, await asyncio.gather(*[b.info() for b in self.backends.values()])))
            has_cand = "candidate" in self.backends
            data = [{"id": self.spec.model_name, "object": "model", "created": created, "owned_by": "fastemb",
                     "arms": {"production": 1 - self.weight if has_cand else 1.0,
                              **({"candidate": self.weight} if has_cand else {})},
                     "versions": {arm: i["version"] for arm, i in infos.items()}}]
            for served, arm in self.served_names.items():
                i = infos[arm]
                data.append({"id": served, "object": "model", "created": created, "owned_by": "fastemb",
                             "arm": arm, "version": i["version"], "path": i["path"], "dimensions": i["dim"],
                             "modalities": i["modalities"],
                             "languages": i.get("languages"),
                             "max_input_tokens": i["max_length"], "registry": i["registry"],
                             "follows_production": i["follows_production"]})
            return "-", {"object": "list", "data": data}, None

        return await self._call("models", request, work)

    @app.get("/healthz")
    async def healthz(self, request: Request):
        """Liveness for anyone; the arms' details (versions, paths, index sizes) only with the API key, when set."""
        try:
            infos = await asyncio.wait_for(asyncio.gather(*[b.info() for b in self.backends.values()]), 10)
        except Exception as err:  # noqa: BLE001
            return error_response(503, "not_ready", f"model replicas not ready: {type(err).__name__}",
                                  headers={"Retry-After": "1"})
        if not self._authorized(request):
            return {"status": "ok"}
        return {"status": "ok", "arms": {i["arm"]: i for i in infos}}

    # ------------------------------------------------------------------ API docs (with the API key, when set)
    @app.get("/openapi.json", include_in_schema=False)
    async def openapi_schema(self, request: Request):
        self._auth(request)
        return JSONResponse(app.openapi())

    @app.get("/docs", include_in_schema=False)
    async def swagger_ui(self, request: Request):
        from fastapi.openapi.docs import get_swagger_ui_html

        self._auth(request)
        return get_swagger_ui_html(openapi_url=self._docs_url("openapi.json"), title=f"{app.title} - API")

    @app.get("/redoc", include_in_schema=False)
    async def redoc(self, request: Request):
        from fastapi.openapi.docs import get_redoc_html

        self._auth(request)
        return get_redoc_html(openapi_url=self._docs_url("openapi.json"), title=f"{app.title} - API")

    def _docs_url(self, name: str) -> str:
        return self.spec.route_prefix.rstrip("/") + "/" + name
