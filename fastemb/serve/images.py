"""Image inputs of ``/v1/embeddings`` and ``/v1/search``: the request convention, and turning its inputs into pictures
within the serve spec's limits (``limits.max_image_bytes``, ``max_image_pixels``, ``image_formats``).

Convention: Infinity's (michaelfeil/infinity). A request says ``"modality": "image"`` and each ``input`` (or
``query``) item is an image as a base64 data URL, ``data:image/png;base64,iVBOR...``::

    {"model": "fastemb", "modality": "image", "input": ["data:image/png;base64,..."]}

Why this one: it keeps OpenAI's request shape (``input`` a string or a list of strings, the same response), so the
OpenAI clients send it through ``extra_body={"modality": "image"}``, and Infinity's clients and the integrations
built on them speak it as is. vLLM's other convention, chat-style ``messages`` with ``image_url`` content parts, changes
the request shape for one input per message. The default ``modality`` is ``text``, so text clients are unchanged.

Infinity also fetches ``http(s)://`` URLs; this server is offline and fetches nothing: such an item answers 400
``image_url_not_supported``. Every bad image answers a JSON 4xx naming the item (``param``: ``input.3``), never a 500:

=====  ===========================================================================================================
400    an item that is not a base64 data URL (``image_url_not_supported`` for http(s); ``invalid_image_input``)
413    ``image_too_large``: over ``max_image_bytes`` bytes, or over ``max_image_pixels`` pixels (a decompression bomb,
       refused from the header before any pixel is decoded)
415    ``unsupported_image_format``: a media type that is not an image, or a format outside ``image_formats`` (SVG
       text, TIFF, ...)
422    ``invalid_base64`` (the data is not base64) and ``invalid_image`` (empty, corrupt or truncated data)
=====  ===========================================================================================================

A text-only model asked for an image answers 400 ``text_only_model`` (fastemb/serve/app.py).
"""
from __future__ import annotations

import base64
import binascii
import re

from fastemb.data.images import ImageError, decode_image
from fastemb.serve.api import ApiError

DATA_URL = re.compile(r"^data:(?P<media>[^;,]*)(?P<params>(;[^;,]*)*),", re.I)
# an ImageError reason -> (status, code)
IMAGE_ERRORS = {"too_many_bytes": (413, "image_too_large"), "too_many_pixels": (413, "image_too_large"),
                "unsupported_format": (415, "unsupported_image_format"), "empty": (422, "invalid_image"),
                "corrupt": (422, "invalid_image"), "truncated": (422, "invalid_image")}


def image_items(value, what: str, max_items: int) -> list[str]:
    """The data URL strings of an ``input``/``query`` value (a string or a list of strings)."""
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list) or not all(isinstance(x, str) for x in items):
        raise ApiError(422, "invalid_value", f"{what}: with modality image, must be a data URL string or a list of "
                       "them (data:image/png;base64,...)", what)
    if not items:
        raise ApiError(422, "empty_input", f"{what} must not be an empty list", what)
    if len(items) > max_items:
        raise ApiError(413, "too_many_inputs", f"{len(items)} items in {what}; the limit is {max_items}", what)
    return items


def data_url_bytes(item: str, param: str, max_bytes: int) -> bytes:
    """The bytes of one base64 data URL; ApiError 400/413/415/422 naming ``param``."""
    if item[:8].lower().startswith(("http://", "https://")):
        raise ApiError(400, "image_url_not_supported", f"{param}: image URLs are not fetched (this server is offline);"
                       " send the image itself as a data URL: data:image/png;base64,<data>", param)
    match = DATA_URL.match(item)
    if not match or "base64" not in match["params"].lower().split(";"):
        raise ApiError(400, "invalid_image_input", f"{param}: an image input must be a base64 data URL "
                       "(data:image/<format>;base64,<data>)", param)
    media = match["media"].strip().lower()
    if media and not media.startswith("image/"):
        raise ApiError(415, "unsupported_image_format", f"{param}: media type {media[:60]!r} is not an image", param)
    payload = item[match.end():]
    if len(payload) * 3 // 4 > max_bytes + 3:  # before decoding: base64 holds 3 bytes per 4 characters
        raise ApiError(413, "image_too_large", f"{param}: about {len(payload) * 3 // 4} bytes; the limit is "
                       f"{max_bytes}", param)
    try:
        return base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        raise ApiError(422, "invalid_base64", f"{param}: the data after 'base64,' is not valid base64", param) \
            from None


def decode_item(item: str, param: str, limits) -> object:
    """One data URL → an RGB picture within ``limits`` (the serve spec's ``LimitsSpec``)."""
    data = data_url_bytes(item, param, limits.max_image_bytes)
    try:
        return decode_image(data, max_bytes=limits.max_image_bytes, max_pixels=limits.max_image_pixels,
                            formats=limits.image_formats)
    except ImageError as err:
        status, code = IMAGE_ERRORS.get(err.reason, (422, "invalid_image"))
        raise ApiError(status, code, f"{param}: {err}"[:300], param) from None


def parse_images(value, what: str, max_items: int, limits) -> list:
    """The pictures of an ``input``/``query`` value sent with ``modality: image``, in order."""
    items = image_items(value, what, max_items)
    single = isinstance(value, str)
    return [decode_item(item, what if single else f"{what}.{i}", limits) for i, item in enumerate(items)]
