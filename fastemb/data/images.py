"""Images: decode with limits, and load image–caption data.

Image–text format (parquet; one file or a folder of files):

=============  ==========  ==========================================================================
column         required    meaning
=============  ==========  ==========================================================================
``image``      one of two  the encoded image (bytes: PNG, JPEG, GIF, WEBP or BMP)
``path``       one of two  an image file's path instead of bytes (relative: to the parquet's folder)
``captions``   yes         a list of captions, or one caption (a string)
``id``         no          the image's id (default: a hash of its bytes)
``concept``    no          what the image shows, for splits and seen/unseen reports (default: the id)
=============  ==========  ==========================================================================

Bad rows are skipped and counted by reason (``RowReport.skipped``), never a crash: each ``ImageError`` reason
(``empty``, ``too_many_bytes``, ``unsupported_format``, ``corrupt``, ``truncated``, ``too_many_pixels``),
``missing_caption``, ``caption_type``, ``missing_image``, ``unreadable_path``. Bad captions inside a list are removed
and counted (``RowReport.captions_removed``).

Limits: the byte count is checked first, then the format and the pixel count from the header (before any pixel is
decoded: a decompression bomb is refused without allocating it), then the image is decoded in full, so a truncated
file is an error (Pillow's ``LOAD_TRUNCATED_IMAGES`` is left off).
"""
from __future__ import annotations

import hashlib
import io
import warnings
from collections.abc import Iterable
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from fastemb.data.pairs import DataError, RowReport, _files, read_rows, sample_kept
from fastemb.data.text import bad_text_reason

FORMATS = ("PNG", "JPEG", "GIF", "WEBP", "BMP")
MAX_BYTES = 20_000_000
MAX_PIXELS = 40_000_000
PNG_END = b"IEND\xaeB`\x82"  # the IEND chunk's type and (fixed) CRC
REASONS = ("empty", "too_many_bytes", "unsupported_format", "corrupt", "truncated", "too_many_pixels")


class ImageError(DataError):
    """An image that cannot be used; ``reason`` is one of ``REASONS``."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


def _looks_like_text(data: bytes) -> bool:
    """SVG, HTML, JSON, ...: a UTF-8 head without NUL bytes."""
    head = data[:1024]
    if b"\0" in head:
        return False
    try:
        head.decode("utf-8")
    except UnicodeDecodeError as err:
        return err.start > len(head) - 4  # a character cut at the end of the head
    return True


def _open(data: bytes, max_bytes: int, max_pixels: int, formats: Iterable[str]) -> Image.Image:
    """The image opened lazily (header read, no pixel decoded), after the byte, format and pixel limits."""
    if not data:
        raise ImageError("empty")
    if len(data) > max_bytes:
        raise ImageError("too_many_bytes", f"{len(data)} bytes > {max_bytes}")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            im = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError as err:
        raise ImageError("too_many_pixels", str(err)) from None
    except UnidentifiedImageError:
        if _looks_like_text(data):
            raise ImageError("unsupported_format", "text (SVG, HTML, ...)") from None
        raise ImageError("corrupt", "not an image Pillow knows") from None
    except (OSError, SyntaxError, ValueError) as err:
        raise ImageError("corrupt", str(err)) from None
    if ("JPEG" if im.format == "MPO" else im.format) not in formats:  # MPO: a camera's JPEG with a second frame
        raise ImageError("unsupported_format", str(im.format))
    if im.width * im.height > max_pixels:
        raise ImageError("too_many_pixels", f"{im.width}x{im.height} > {max_pixels} pixels")
    return im


def _load(im: Image.Image, data: bytes) -> None:
    """Decode every pixel; a truncated or broken stream is an ImageError (so is a PNG cut after its pixel data:
    Pillow does not read past it, so its missing end chunk is looked for)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            im.load()
    except Image.DecompressionBombError as err:
        raise ImageError("too_many_pixels", str(err)) from None
    except OSError as err:
        message = str(err)
        truncated = "truncat" in message.lower() or "broken data stream" in message
        raise ImageError("truncated" if truncated else "corrupt", message) from None
    except (SyntaxError, ValueError, EOFError, MemoryError) as err:
        raise ImageError("corrupt", f"{type(err).__name__}: {err}") from None
    if im.format == "PNG" and PNG_END not in data[-4096:]:
        raise ImageError("truncated", "no IEND chunk")


def to_rgb(im: Image.Image) -> Image.Image:
    """RGB, transparency composited on white."""
    if im.mode == "RGB":
        return im
    has_alpha = im.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in im.info
    if not has_alpha:
        return im.convert("RGB")
    rgba = im.convert("RGBA")
    white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    return Image.alpha_composite(white, rgba).convert("RGB")


def decode_image(data: bytes, *, max_bytes: int = MAX_BYTES, max_pixels: int = MAX_PIXELS,
                 formats: Iterable[str] = FORMATS) -> Image.Image:
    """The RGB image of ``data`` (the first frame of an animation); an ImageError (with its ``reason``) when it
    breaks a limit or cannot be decoded in full."""
    im = _open(data, max_bytes, max_pixels, tuple(formats))
    _load(im, data)
    try:
        return to_rgb(im)
    except (OSError, ValueError) as err:
        raise ImageError("corrupt", f"cannot convert mode {im.mode}: {err}") from None


def check_image(data: bytes, *, max_bytes: int = MAX_BYTES, max_pixels: int = MAX_PIXELS,
                formats: Iterable[str] = FORMATS) -> str | None:
    """Why ``data`` is not a usable image (an ImageError reason), or None. The limits are checked from the header
    first; the pixels are decoded only when those pass (a truncated file is found only by decoding)."""
    try:
        _load(_open(data, max_bytes, max_pixels, tuple(formats)), data)
    except ImageError as err:
        return err.reason
    return None


def _image_text_columns(caption_column: str, image_column: str):
    def check(row: dict) -> str | None:
        missing = [caption_column] if caption_column not in row else []
        if image_column not in row and "path" not in row:
            missing.append(f"{image_column} or path")
        return (f"missing column(s) {missing}; image-text data needs columns {image_column} (bytes) or path, and "
                f"{caption_column} (optional id, concept); found {sorted(row)}") if missing else None
    return check


def _captions(value, report: RowReport) -> list[str] | str:
    """The row's valid captions, or why the row has none (``missing_caption`` / ``caption_type``)."""
    if isinstance(value, str):
        return [value] if bad_text_reason(value) is None else "missing_caption"
    if value is None:
        return "missing_caption"
    if not isinstance(value, (list, tuple)):
        return "caption_type"
    good = [c for c in value if bad_text_reason(c) is None]
    if good:
        report.captions_removed += len(value) - len(good)
        return good
    return "caption_type" if value and not any(isinstance(c, str) for c in value) else "missing_caption"


def _image_bytes(row: dict, image_column: str, folder: Path) -> bytes | str:
    """The row's image bytes, or why there are none (``missing_image`` / ``unreadable_path``)."""
    data = row.get(image_column)
    if isinstance(data, (bytes, bytearray)):
        return bytes(data)
    path = row.get("path")
    if not isinstance(path, str) or not path.strip():
        return "missing_image"
    try:
        return (folder / path).read_bytes()  # an absolute path stays absolute
    except OSError:
        return "unreadable_path"


def _kept_row(row: dict, data: bytes, captions: list[str]) -> dict:
    rid = row.get("id")
    rid = str(rid) if rid is not None and str(rid) else hashlib.sha1(data).hexdigest()[:16]
    concept = row.get("concept")
    return {"id": rid, "image": data, "captions": captions,
            "concept": str(concept) if concept is not None and str(concept) else rid}


def _parquet_files(path: Path) -> list[Path]:
    """``path``, or the parquet files of a folder (a built set's ``stats.json`` beside them is not data)."""
    if not path.is_dir():
        return _files(path)
    files = sorted(path.rglob("*.parquet"))
    if not files:
        raise DataError(f"{path}: folder holds no .parquet files")
    return files


def load_image_text(path: str | Path, *, max_rows: int | None = None, seed: int = 42,
                    caption_column: str = "captions", image_column: str = "image",
                    max_bytes: int = MAX_BYTES, max_pixels: int = MAX_PIXELS,
                    formats: Iterable[str] = FORMATS) -> tuple[list[dict], RowReport]:
    """Read and validate image–caption rows. Returns rows ``{id, image (bytes), captions, concept}`` (a seeded
    sample of ``max_rows`` at most) and the row report; bad rows are skipped and counted by reason."""
    path = Path(path).expanduser()
    report = RowReport()
    kept: list[dict] = []
    check = _image_text_columns(caption_column, image_column)
    for file in _parquet_files(path):
        for row in read_rows(file, report, check):
            captions = _captions(row.get(caption_column), report)
            data = _image_bytes(row, image_column, file.parent) if not isinstance(captions, str) else captions
            reason = data if isinstance(data, str) else check_image(data, max_bytes=max_bytes,
                                                                      max_pixels=max_pixels, formats=formats)
            if reason:
                report.skipped[reason] += 1
                continue
            kept.append(_kept_row(row, data, captions))
    return sample_kept(kept, report, max_rows, seed, f"{path}: no usable image-caption rows")
