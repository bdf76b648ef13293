"""HTTP API shapes of the service: request bodies (OpenAI-compatible), JSON errors and body parsing with limits."""
from __future__ import annotations

import json
from typing import Literal

from fastapi import Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, StrictStr, ValidationError


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
    """An error answered as JSON ``{"error": {message, type, param, code}}`` with ``status``."""

    def __init__(self, status: int, code: str, message: str, param: str | None = None, headers=None):
        super().__init__(message)
        self.status, self.code, self.message, self.param, self.headers = status, code, message, param, headers


_ERROR_TYPES = {400: "invalid_request_error", 401: "authentication_error", 404: "not_found_error",
                413: "invalid_request_error", 422: "invalid_request_error", 429: "rate_limit_error",
                503: "service_unavailable", 500: "server_error"}


def error_response(status: int, code: str, message: str, param: str | None = None, headers=None) -> JSONResponse:
    """The OpenAI-style JSON error body."""
    return JSONResponse({"error": {"message": message, "type": _ERROR_TYPES.get(status, "error"),
                                   "param": param, "code": code}}, status_code=status, headers=headers)


async def read_body(request: Request, model: type[BaseModel], limit: int) -> BaseModel:
    """Parse and validate a JSON body of at most ``limit`` bytes; ApiError(400/413/422) naming the problem."""
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
