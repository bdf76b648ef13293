"""Ray Serve deployments: one ``ArmModel`` per model version (batched encoder + search backend) and the
FastAPI ``Ingress`` (OpenAI-compatible API, limits, API key, A/B router, metrics, feedback log).

``build_app({"spec": {...}})`` is the application builder used by ``fastemb serve`` and by the generated
Serve config (``import_path: fastemb.serve.app:build_app``).
"""

import asyncio
import base64
import hashlib
import hmac
import json
import logging
import os
import time
import uuid
from typing import Literal

import numpy as np
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, StrictStr, ValidationError
from ray import serve
from ray.serve.handle import DeploymentHandle

from fastemb.serve.spec import ArmSpec, ServeJob

log = logging.getLogger("ray.serve")

LATENCY_MS_BOUNDS = [1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000, 30000]
_BATCH_BOUNDS = [1, 2, 4, 8, 16, 32, 64, 128, 256, 512]
_TOKEN_BOUNDS = [16, 64, 256, 512, 1024, 2048, 4096, 8192, 16384, 32768]
_OVER = 1 << 60


def _batch_cost(items: list) -> int:
    """Padded tokens of a batch (longest x count); over budget once it holds more items than allowed.

    Each item is ``(token_ids, max_items)``; ``max_batch_size`` of the ``@serve.batch`` is the token budget.
    """
    if len(items) > items[0][1]:
        return _OVER
    return max(len(i[0]) for i in items) * len(items)


def _chunks_by_length(lengths: list[int], max_items: int) -> list[list[int]]:
    """Indices sorted by length (longest first), cut where padding would more than double, or at max_items."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    chunks, cur = [], []
    for i in order:
        if cur and (len(cur) >= max_items or (lengths[i] * 2 < lengths[cur[0]] and len(cur) >= 8)):
            chunks.append(cur)
            cur = []
        cur.append(i)
    if cur:
        chunks.append(cur)
    return chunks


# ----------------------------------------------------------------------------------------------- model arm
@serve.deployment(max_ongoing_requests=64, health_check_period_s=10, health_check_timeout_s=30)
class ArmModel:
    """One model version: batched forward passes over token ids, plus its search backend."""

    def __init__(self, arm: dict, arm_name: str, batching: dict):
        import torch

        from fastemb.model.encoder import Encoder
        from fastemb.serve.backends import make_backend

        spec = ArmSpec.model_validate(arm)
        cpus = int(os.environ.get("FASTEMB_SERVE_THREADS", "0")) or max(1, int(_actor_cpus()))
        torch.set_num_threads(cpus)
        self.torch = torch
        self.arm_name = arm_name
        self.encoder = Encoder.load(spec.model, max_length=spec.max_length).eval()
        self.device = "cuda" if _actor_gpus() > 0 and torch.cuda.is_available() else "cpu"
        self.encoder.to(self.device)
        self.pad_id = self.encoder.tokenizer.pad_token_id or 0
        self._max_items = batching["max_batch_size"]
        self.reconfigure(batching)
        self.backend = make_backend(spec, lambda texts: self.encoder.encode(texts, batch_size=64))
        from ray.serve.metrics import Counter, Gauge, Histogram

        tags = ("arm",)
        self.m_batch = Histogram("fastemb_batch_size", "items per forward pass", _BATCH_BOUNDS, tags)
        self.m_tokens = Histogram("fastemb_batch_padded_tokens", "padded tokens per forward pass",
                                  _TOKEN_BOUNDS, tags)
        self.m_forward = Histogram("fastemb_forward_latency_ms", "forward pass latency", LATENCY_MS_BOUNDS, tags)
        self.m_items = Counter("fastemb_items_total", "inputs embedded", tags)
        self.m_queue = Gauge("fastemb_queue_depth", "inputs waiting or running in this replica", tags)
        for m in (self.m_batch, self.m_tokens, self.m_forward, self.m_items, self.m_queue):
            m.set_default_tags({"arm": arm_name})
        self._pending = 0

    def reconfigure(self, cfg: dict) -> None:
        """user_config: max_batch_size (items), max_batch_tokens (padded), batch_wait_timeout_s."""
        budget = int(cfg["max_batch_tokens"])
        if budget < self.encoder.max_length:
            raise ValueError(f"batching.max_batch_tokens ({budget}) < the model's max_length "
                             f"({self.encoder.max_length}): one long input could never be batched")
        self._max_items = int(cfg["max_batch_size"])
        self._embed_one.set_max_batch_size(budget)
        self._embed_one.set_batch_wait_timeout_s(float(cfg["batch_wait_timeout_s"]))

    def _forward(self, ids_list: list[list[int]]) -> np.ndarray:
        torch = self.torch
        out = np.empty((len(ids_list), self.encoder.dim), dtype=np.float32)
        lengths = [len(x) for x in ids_list]
        with torch.inference_mode():
            for chunk in _chunks_by_length(lengths, self._max_items):
                width = lengths[chunk[0]]
                ids = torch.full((len(chunk), width), self.pad_id, dtype=torch.long)
                mask = torch.zeros((len(chunk), width), dtype=torch.long)
                for r, i in enumerate(chunk):
                    ids[r, :lengths[i]] = torch.tensor(ids_list[i])
                    mask[r, :lengths[i]] = 1
                vec = self.encoder(ids.to(self.device), mask.to(self.device))
                out[chunk] = vec.float().cpu().numpy()
        return out

    @serve.batch(max_batch_size=8192, batch_wait_timeout_s=0.005, batch_size_fn=_batch_cost)
    async def _embed_one(self, items: list[tuple[list[int], int]]) -> list[np.ndarray]:
        ids_list = [it[0] for it in items]
        started = time.perf_counter()
        vecs = await asyncio.to_thread(self._forward, ids_list)
        self.m_forward.observe((time.perf_counter() - started) * 1000)
        self.m_batch.observe(len(items))
        self.m_tokens.observe(max(len(x) for x in ids_list) * len(ids_list))
        self.m_items.inc(len(items))
        return list(vecs)

    async def embed(self, ids_list: list[list[int]]) -> np.ndarray:
        """Vectors of already tokenised (and truncated) inputs, batched with other requests' inputs."""
        self._pending += len(ids_list)
        self.m_queue.set(self._pending)
        try:
            vecs = await asyncio.gather(*[self._embed_one((ids, self._max_items)) for ids in ids_list])
        finally:
            self._pending -= len(ids_list)
            self.m_queue.set(self._pending)
        return np.stack(vecs)

    async def search(self, ids_list: list[list[int]], k: int) -> list[list[dict]] | None:
        if self.backend is None:
            return None
        vecs = await self.embed(ids_list)
        return await asyncio.to_thread(self.backend.search, vecs, k)

    def info(self) -> dict:
        return {"arm": self.arm_name, "dim": self.encoder.dim, "max_length": self.encoder.max_length,
                "normalize": self.encoder.normalize, "index_size": getattr(self.backend, "size", None),
                "device": self.device}

    def check_health(self) -> None:
        if self.encoder is None:
            raise RuntimeError("model not loaded")


def _actor_cpus() -> float:
    try:
        import ray

        return float(ray.get_runtime_context().get_assigned_resources().get("CPU", 1.0))
    except Exception:  # noqa: BLE001 - outside a Ray actor
        return 1.0


def _actor_gpus() -> float:
    try:
        import ray

        return float(ray.get_runtime_context().get_assigned_resources().get("GPU", 0.0))
    except Exception:  # noqa: BLE001
        return 0.0


# ----------------------------------------------------------------------------------------------- API models
class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class EmbeddingsRequest(_Body):
    input: StrictStr | list[StrictStr] = Field(..., description="a string or a list of strings")
    model: StrictStr
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = Field(None, ge=1, description="keep the first N dimensions (re-normalised)")
    user: StrictStr | None = Field(None, max_length=256)
    truncate: bool | None = Field(None, description="override the server's truncation default")


class SearchRequest(_Body):
    query: StrictStr | list[StrictStr]
    k: int = Field(10, ge=1)
    model: StrictStr | None = None
    user: StrictStr | None = Field(None, max_length=256)


class FeedbackRequest(_Body):
    request_id: StrictStr = Field(..., min_length=1, max_length=128)
    clicked_id: StrictStr = Field(..., min_length=1, max_length=1024)
    user: StrictStr | None = Field(None, max_length=256)


class ApiError(Exception):
    def __init__(self, status: int, code: str, message: str, param: str | None = None, headers=None):
        super().__init__(message)
        self.status, self.code, self.message, self.param, self.headers = status, code, message, param, headers


_ERROR_TYPES = {400: "invalid_request_error", 401: "authentication_error", 404: "not_found_error",
                413: "invalid_request_error", 422: "invalid_request_error", 429: "rate_limit_error",
                503: "service_unavailable", 500: "server_error"}


def _error_response(status: int, code: str, message: str, param: str | None = None, headers=None) -> JSONResponse:
    return JSONResponse({"error": {"message": message, "type": _ERROR_TYPES.get(status, "error"),
                                   "param": param, "code": code}}, status_code=status, headers=headers)


app = FastAPI(title="fastemb", description="OpenAI-compatible embeddings and search, served by Ray Serve.")


@app.exception_handler(ApiError)
async def _api_error(request: Request, err: ApiError):
    return _error_response(err.status, err.code, err.message, err.param, err.headers)


@app.exception_handler(RequestValidationError)
async def _validation_error(request: Request, err: RequestValidationError):
    e = err.errors()[0] if err.errors() else {"loc": (), "msg": "invalid request"}
    param = ".".join(str(p) for p in e["loc"] if p != "body") or None
    return _error_response(422, "invalid_value", f"{param}: {e['msg']}" if param else e["msg"], param)


class _Tokenizer:
    """Tokeniser of one arm: the ingress counts, truncates and sends token ids to the model replicas."""

    def __init__(self, arm: ArmSpec):
        from pathlib import Path

        from transformers import AutoConfig, AutoTokenizer

        from fastemb.model.encoder import _read_st_layout, resolve_model_path

        path = Path(resolve_model_path(arm.model))
        sub, _pooling, normalize, st_max = _read_st_layout(path)
        self.tok = AutoTokenizer.from_pretrained(path / sub, local_files_only=True)
        self.max_length = arm.max_length or st_max or 256  # same rule as Encoder.load
        self.dim = int(AutoConfig.from_pretrained(path / sub, local_files_only=True).hidden_size)
        self.normalize = normalize

    def __call__(self, texts: list[str], truncate: bool) -> tuple[list[list[int]], list[int]]:
        """(token ids per text, indices of truncated texts); raises ApiError(422) when not truncating."""
        L = self.max_length
        ids = self.tok(texts, truncation=True, max_length=L + 1, add_special_tokens=True)["input_ids"]
        over = [i for i, x in enumerate(ids) if len(x) > L]
        if over and not truncate:
            raise ApiError(422, "input_too_long", f"input[{over[0]}] has more than {L} tokens and truncate is "
                           "false", f"input.{over[0]}")
        if over:
            fixed = self.tok([texts[i] for i in over], truncation=True, max_length=L)["input_ids"]
            for i, x in zip(over, fixed):
                ids[i] = x
        return ids, over


@serve.deployment(max_ongoing_requests=256)
@serve.ingress(app)
class Ingress:
    """HTTP API, limits, API key, A/B router (sticky per user), metrics and the impression/feedback log."""

    def __init__(self, spec: dict, production: DeploymentHandle, candidate: DeploymentHandle | None = None):
        from ray.serve.metrics import Counter, Gauge, Histogram

        from fastemb.serve.ab import EventLog

        self.spec = ServeJob.model_validate(spec)
        self.handles = {"production": production}
        if candidate is not None:
            self.handles["candidate"] = candidate
        self.arms = self.spec.arms()
        self.tokenizers = {name: _Tokenizer(a) for name, a in self.arms.items()}
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
        """user_config: ``candidate_weight`` changes the split in place (no restart, no dropped requests)."""
        if "candidate_weight" in cfg:
            self.weight = float(cfg["candidate_weight"])

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

    async def _body(self, request: Request, model: type[BaseModel]):
        limit = self.spec.limits.max_body_bytes
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            raise ApiError(413, "body_too_large", f"request body of {declared} bytes is over the {limit}-byte limit")
        raw = await request.body()
        if len(raw) > limit:
            raise ApiError(413, "body_too_large", f"request body of {len(raw)} bytes is over the {limit}-byte limit")
        try:
            data = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise ApiError(400, "invalid_json", f"request body is not valid JSON: {err}") from None
        if not isinstance(data, dict):
            raise ApiError(400, "invalid_json", "request body must be a JSON object")
        try:
            return model.model_validate(data)
        except ValidationError as err:
            e = err.errors()[0]
            param = ".".join(str(p) for p in e["loc"]) or None
            msg = "unknown field" if e["type"] == "extra_forbidden" else e["msg"]
            raise ApiError(422, "invalid_value", f"{param}: {msg}" if param else msg, param) from None

    def _pick_arm(self, model: str | None, user: str | None) -> str:
        if model is None or model == self.spec.model_name:
            from fastemb.serve.ab import assign_arm

            return assign_arm(user, self.weight, self.spec.ab.salt, "candidate" in self.handles)
        if model in self.served_names:
            return self.served_names[model]
        raise ApiError(404, "model_not_found", f"model {model!r} is not served; see GET /v1/models", "model")

    def _texts(self, value, what: str, max_items: int) -> list[str]:
        texts = [value] if isinstance(value, str) else list(value)
        if not texts:
            raise ApiError(422, "empty_input", f"{what} must not be an empty list", what)
        if len(texts) > max_items:
            raise ApiError(413, "too_many_inputs", f"{len(texts)} items in {what}; the limit is {max_items}", what)
        cap = self.spec.limits.max_input_chars
        for i, t in enumerate(texts):
            if len(t) > cap:
                raise ApiError(413, "input_too_large", f"{what}[{i}] has {len(t)} characters; the limit is {cap}",
                               f"{what}.{i}")
        return texts

    async def _call(self, route: str, request: Request, work):
        started = time.perf_counter()
        arm = "-"
        if self.inflight >= self.spec.limits.max_inflight_requests:
            self.m_errors.inc(tags={"route": route, "reason": "overloaded"})
            self.m_requests.inc(tags={"route": route, "arm": arm, "status": "429"})
            return _error_response(429, "overloaded", "too many requests in flight; retry later",
                                   headers={"Retry-After": "1"})
        self.inflight += 1
        self.m_inflight.set(self.inflight)
        try:
            self._auth(request)
            arm, payload, headers = await work()
            status = 200
            resp = JSONResponse(payload, headers=headers)
        except ApiError as err:
            status, resp = err.status, _error_response(err.status, err.code, err.message, err.param, err.headers)
            self.m_errors.inc(tags={"route": route, "reason": err.code})
        except Exception as err:  # noqa: BLE001 - replica loss, backpressure: JSON 429/503, counted
            log.warning("fastemb %s failed: %r", route, err, exc_info=True)
            status, code = self._classify(err)
            self.m_errors.inc(tags={"route": route, "reason": code})
            resp = _error_response(status, code, f"{code}: {type(err).__name__}; retry later",
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

    # ------------------------------------------------------------------ routes
    @app.post("/v1/embeddings")
    async def embeddings(self, request: Request):
        async def work():
            started = time.perf_counter()
            req = await self._body(request, EmbeddingsRequest)
            texts = self._texts(req.input, "input", self.spec.limits.max_inputs)
            user = req.user or request.headers.get("x-user-id")
            arm = self._pick_arm(req.model, user)
            tok = self.tokenizers[arm]
            if req.dimensions is not None and req.dimensions > tok.dim:
                raise ApiError(422, "invalid_dimensions", f"dimensions={req.dimensions} is over the model's "
                               f"{tok.dim}", "dimensions")
            truncate = self.spec.limits.truncate if req.truncate is None else req.truncate
            ids, truncated = tok(texts, truncate)
            vecs = await self.handles[arm].embed.remote(ids)
            if req.dimensions is not None and req.dimensions < tok.dim:
                vecs = np.array(vecs[:, :req.dimensions], dtype=np.float32, copy=True)
                if tok.normalize:
                    vecs /= np.maximum(np.linalg.norm(vecs, axis=1, keepdims=True), 1e-12)
            if req.encoding_format == "base64":
                data = [{"object": "embedding", "index": i,
                         "embedding": base64.b64encode(v.astype("<f4").tobytes()).decode()}
                        for i, v in enumerate(vecs)]
            else:
                data = [{"object": "embedding", "index": i, "embedding": v} for i, v in enumerate(vecs.tolist())]
            n_tokens = sum(len(x) for x in ids)
            self.m_input_tokens.inc(n_tokens, tags={"arm": arm})
            if truncated:
                self.m_truncated.inc(len(truncated), tags={"arm": arm})
            request_id = uuid.uuid4().hex
            self.events.write({"type": "embeddings", "request_id": request_id, "arm": arm, "user": user,
                               "n": len(texts), "latency_ms": round((time.perf_counter() - started) * 1000, 3)})
            payload = {"object": "list", "data": data, "model": req.model, "arm": arm, "request_id": request_id,
                       "usage": {"prompt_tokens": n_tokens, "total_tokens": n_tokens}, "truncated": truncated}
            return arm, payload, {"x-fastemb-arm": arm, "x-request-id": request_id}

        return await self._call("embeddings", request, work)

    @app.post("/v1/search")
    async def search(self, request: Request):
        async def work():
            started = time.perf_counter()
            req = await self._body(request, SearchRequest)
            queries = self._texts(req.query, "query", self.spec.limits.max_queries)
            if req.k > self.spec.limits.max_k:
                raise ApiError(422, "k_too_large", f"k={req.k} is over the limit {self.spec.limits.max_k}", "k")
            user = req.user or request.headers.get("x-user-id")
            arm = self._pick_arm(req.model, user)
            ids, truncated = self.tokenizers[arm](queries, True)
            hits = await self.handles[arm].search.remote(ids, req.k)
            if hits is None:
                raise ApiError(404, "no_index", f"arm {arm!r} has no index (give index_dir or corpus)")
            request_id = uuid.uuid4().hex
            self.events.write({"type": "search", "request_id": request_id, "arm": arm, "user": user,
                               "ids": [[h["id"] for h in row] for row in hits],
                               "latency_ms": round((time.perf_counter() - started) * 1000, 3)})
            data = [{"object": "search_result", "index": i, "query": q,
                     "hits": [{"rank": r + 1, **h} for r, h in enumerate(row)]}
                    for i, (q, row) in enumerate(zip(queries, hits))]
            n_tokens = sum(len(x) for x in ids)
            payload = {"object": "list", "data": data, "model": req.model or self.spec.model_name, "arm": arm,
                       "request_id": request_id, "truncated": truncated,
                       "usage": {"prompt_tokens": n_tokens, "total_tokens": n_tokens}}
            return arm, payload, {"x-fastemb-arm": arm, "x-request-id": request_id}

        return await self._call("search", request, work)

    @app.post("/v1/feedback")
    async def feedback(self, request: Request):
        async def work():
            req = await self._body(request, FeedbackRequest)
            self.events.write({"type": "feedback", "request_id": req.request_id, "clicked_id": req.clicked_id,
                               "user": req.user})
            self.m_feedback.inc(tags={"arm": "-"})
            return "-", {"ok": True, "request_id": req.request_id}, None

        return await self._call("feedback", request, work)

    @app.get("/v1/models")
    async def models(self, request: Request):
        async def work():
            created = int(time.time())
            data = [{"id": self.spec.model_name, "object": "model", "created": created, "owned_by": "fastemb",
                     "arms": {"production": 1 - self.weight if "candidate" in self.handles else 1.0,
                              **({"candidate": self.weight} if "candidate" in self.handles else {})}}]
            for served, arm in self.served_names.items():
                t = self.tokenizers[arm]
                data.append({"id": served, "object": "model", "created": created, "owned_by": "fastemb",
                             "arm": arm, "path": self.arms[arm].model, "dimensions": t.dim,
                             "max_input_tokens": t.max_length})
            return "-", {"object": "list", "data": data}, None

        return await self._call("models", request, work)

    @app.get("/healthz")
    async def healthz(self):
        try:
            infos = await asyncio.wait_for(asyncio.gather(*[h.info.remote() for h in self.handles.values()]), 10)
        except Exception as err:  # noqa: BLE001
            return _error_response(503, "not_ready", f"model replicas not ready: {type(err).__name__}")
        return {"status": "ok", "arms": {i["arm"]: i for i in infos}}


# ----------------------------------------------------------------------------------------------- builder
def arm_options(spec: ServeJob) -> dict:
    """Deployment options of the model arms (also written to the generated Serve config)."""
    a = spec.autoscaling
    auto = {"min_replicas": a.min_replicas, "max_replicas": a.max_replicas,
            "target_ongoing_requests": a.target_ongoing_requests, "upscale_delay_s": a.upscale_delay_s,
            "downscale_delay_s": a.downscale_delay_s, "look_back_period_s": a.look_back_period_s}
    if a.initial_replicas is not None:
        auto["initial_replicas"] = a.initial_replicas
    r = spec.replica
    return {"autoscaling_config": auto, "max_ongoing_requests": r.max_ongoing_requests,
            "max_queued_requests": r.max_queued_requests,
            "ray_actor_options": {"num_cpus": r.num_cpus, "num_gpus": r.num_gpus},
            "health_check_period_s": r.health_check_period_s, "health_check_timeout_s": r.health_check_timeout_s,
            "user_config": spec.batching.model_dump()}


def ingress_options(spec: ServeJob) -> dict:
    i = spec.ingress
    return {"num_replicas": i.num_replicas, "max_ongoing_requests": i.max_ongoing_requests,
            "ray_actor_options": {"num_cpus": i.num_cpus},
            "user_config": {"candidate_weight": spec.ab.candidate_weight}}


def build_app(args: dict):
    """Serve application builder: ``args = {"spec": <ServeJob as a dict>}``."""
    spec = ServeJob.model_validate(args["spec"])
    spec_dict = spec.model_dump(mode="json")
    batching = spec.batching.model_dump()
    arms = {}
    for name, arm in spec.arms().items():
        arms[name] = ArmModel.options(name=name, **arm_options(spec)).bind(arm.model_dump(mode="json"), name,
                                                                           batching)
    return Ingress.options(name="Ingress", **ingress_options(spec)).bind(spec_dict, arms["production"],
                                                                        arms.get("candidate"))
