"""HTTP API shapes of the service: request bodies (OpenAI-compatible), JSON errors, and reading a body: content type,
size limit, strict JSON, text that a tokenizer can take, and the inputs to embed.

Every check answers a JSON 4xx naming the field (``param``), before anything reaches a tokenizer:
- 415 when the body is not declared ``application/json``;
- 400 for a body that is not strict JSON (``NaN``/``Infinity``, nesting deeper than Python's parser takes, an integer
  of more digits than Python converts), and for a string holding an unpaired UTF-16 surrogate (``"\\ud800"`` is valid
  JSON, but not text: no tokenizer can encode it) or an empty input string (as OpenAI answers);
- 422 for a wrong type: strict, so ``"dimensions": "64"`` or ``"truncate": 1`` is refused, not coerced.
"""
from __future__ import annotations

import json
from typing import Any, Literal

from fastapi import Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, StrictStr, ValidationError


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class EmbeddingsRequest(_Body):
    input: Any = Field(..., description="a string, a list of strings, a list of token ids or a list of token-id lists "
                                        "(ids of the model's tokenizer, without its special tokens)")
    model: StrictStr
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: StrictInt | None = Field(None, ge=1, description="keep the first N dimensions (re-normalised)")
    user: StrictStr | None = Field(None, max_length=256)
    truncate: StrictBool | None = Field(None, description="override the server's truncation default")
    modality: Literal["text", "image"] = Field("text", description="image: each input is a base64 data URL of an "
                                               "image (Infinity's convention, fastemb/serve/images.py)")


class SearchRequest(_Body):
    query: Any = Field(..., description="a string or a list of strings")
    k: StrictInt = Field(10, ge=1)
    model: StrictStr | None = None
    user: StrictStr | None = Field(None, max_length=256)
    modality: Literal["text", "image"] = Field("text", description="image: each query is a base64 data URL of an "
                                               "image (image → image or image → text search)")


class FeedbackRequest(_Body):
    request_id: StrictStr = Field(..., min_length=1, max_length=128)
    clicked_id: StrictStr = Field(..., min_length=1, max_length=1024)
    query_index: StrictInt = Field(0, ge=0, description="which query of a batched search the click belongs to")
    user: StrictStr | None = Field(None, max_length=256)


class ApiError(Exception):
    """An error answered as JSON ``{"error": {message, type, param, code}}`` with ``status``."""

    def __init__(self, status: int, code: str, message: str, param: str | None = None, headers=None):
        super().__init__(message)
        self.status, self.code, self.message, self.param, self.headers = status, code, message, param, headers


_ERROR_TYPES = {400: "invalid_request_error", 401: "authentication_error", 404: "not_found_error",
                408: "timeout_error", 413: "invalid_request_error", 415: "invalid_request_error",
                422: "invalid_request_error", 429: "rate_limit_error", 503: "service_unavailable",
                500: "server_error"}


def error_body(status: int, code: str, message: str, param: str | None = None) -> dict:
    """The OpenAI-style error object (also written by the Serve proxy middleware and HAProxy's error pages)."""
    return {"error": {"message": message, "type": _ERROR_TYPES.get(status, "error"), "param": param, "code": code}}


def error_response(status: int, code: str, message: str, param: str | None = None, headers=None) -> JSONResponse:
    """The OpenAI-style JSON error response."""
    return JSONResponse(error_body(status, code, message, param), status_code=status, headers=headers)


def _json_media_type(content_type: str) -> bool:
    media = content_type.split(";", 1)[0].strip().lower()
    return media == "application/json" or (media.startswith("application/") and media.endswith("+json"))


def _no_constant(name: str):
    raise ValueError(f"{name} is not JSON (numbers must be finite)")


def _unpaired_surrogate(data) -> str | None:
    """Path (``input.3``) of the first string or key holding an unpaired UTF-16 surrogate, else None. Iterative:
    a body nested as deep as the parser allows must not overflow the stack here."""
    stack = [(data, "")]
    while stack:
        value, path = stack.pop()
        if isinstance(value, str):
            try:
                value.encode("utf-8")
            except UnicodeEncodeError:
                return path or "body"
        elif isinstance(value, dict):
            for k, v in value.items():
                key_path = f"{path}.{k}" if path else str(k)
                stack.append((k, key_path))
                stack.append((v, key_path))
        elif isinstance(value, list):
            stack.extend((v, f"{path}.{i}" if path else str(i)) for i, v in enumerate(value))
    return None


def _printable(path: str) -> str:
    """A param path that can itself be encoded (a key may be the bad string)."""
    return path.encode("utf-8", "backslashreplace").decode("utf-8")


async def read_body(request: Request, model: type[BaseModel], limit: int) -> BaseModel:
    """Parse and validate a JSON body of at most ``limit`` bytes; ApiError(400/413/415/422) naming the problem."""
    content_type = request.headers.get("content-type", "")
    if not _json_media_type(content_type):
        raise ApiError(415, "unsupported_media_type", "the request body must be JSON sent with "
                       f"Content-Type: application/json (got {content_type[:80] or 'no Content-Type'!r})")
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise ApiError(413, "body_too_large", f"request body of {declared} bytes is over the {limit}-byte limit")
    raw = await request.body()
    if len(raw) > limit:
        raise ApiError(413, "body_too_large", f"request body of {len(raw)} bytes is over the {limit}-byte limit")
    try:
        data = json.loads(raw, parse_constant=_no_constant)
    except RecursionError:
        raise ApiError(400, "invalid_json", "request body is nested too deeply") from None
    except ValueError as err:  # JSONDecodeError, UnicodeDecodeError, NaN/Infinity, integers past Python's digit limit
        raise ApiError(400, "invalid_json", f"request body is not valid JSON: {str(err)[:200]}") from None
    if not isinstance(data, dict):
        raise ApiError(400, "invalid_json", "request body must be a JSON object")
    bad = _unpaired_surrogate(data)
    if bad is not None:
        raise ApiError(400, "invalid_unicode", f"{_printable(bad)}: holds an unpaired UTF-16 surrogate (an escape "
                       "such as \\ud800 without its pair), which is not text; send valid Unicode", _printable(bad))
    try:
        return model.model_validate(data)
    except ValidationError as err:
        e = err.errors(include_url=False, include_input=False)[0]
        param = ".".join(str(p) for p in e["loc"]) or None
        msg = "unknown field" if e["type"] == "extra_forbidden" else e["msg"]
        raise ApiError(422, "invalid_value", f"{param}: {msg}" if param else msg, param) from None


def _is_token_id(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _is_token_list(x) -> bool:
    return isinstance(x, list) and all(_is_token_id(t) for t in x)


def parse_inputs(value, what: str, max_items: int, max_chars: int,
                 token_ids: bool) -> tuple[list[str] | list[list[int]], bool]:
    """``(items, are_token_ids)`` of an ``input``/``query`` value, checked against the limits.

    A string or a list of strings; with ``token_ids`` also a list of token ids (one input) or a list of token-id lists
    (OpenAI's forms). Whether the ids belong to the model's tokenizer is checked by the model (``Embedder``).
    """
    forms = ("a string, a list of strings, a list of token ids or a list of token-id lists" if token_ids
             else "a string or a list of strings")
    if isinstance(value, str):
        items, are_ids = [value], False
    elif isinstance(value, list) and value and token_ids and all(_is_token_id(x) for x in value):
        items, are_ids = [value], True
    elif isinstance(value, list) and all(isinstance(x, str) for x in value):
        items, are_ids = list(value), False
    elif isinstance(value, list) and token_ids and all(_is_token_list(x) for x in value):
        items, are_ids = list(value), True
    else:
        raise ApiError(422, "invalid_value", f"{what}: must be {forms} (one kind, not mixed)", what)
    if not items:
        raise ApiError(422, "empty_input", f"{what} must not be an empty list", what)
    if len(items) > max_items:
        raise ApiError(413, "too_many_inputs", f"{len(items)} items in {what}; the limit is {max_items}", what)
    single = isinstance(value, str) or (are_ids and len(items) == 1 and value is items[0])
    for i, item in enumerate(items):
        param = what if single else f"{what}.{i}"
        if not item:
            kind = "token-id list" if are_ids else "string"
            raise ApiError(400, "empty_input", f"{param}: must not be an empty {kind}", param)
        if len(item) > max_chars:
            unit = "token ids" if are_ids else "characters"
            raise ApiError(413, "input_too_large", f"{param} has {len(item)} {unit}; the limit is {max_chars}", param)
    return items, are_ids
