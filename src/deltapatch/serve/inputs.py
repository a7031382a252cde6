"""Untrusted HTTP input → checked values, or an :class:`HTTPFail` with the status that fits.

Every size is bounded before it is allocated: the body is read in chunks and refused past its
limit (413) whatever ``Content-Length`` claims; decoding is :func:`deltapatch.data.images.decode_image`
with the server's pixel limit: it reads the pixel count from the header before any pixel is
decoded (413) and refuses PIL bombs and formats outside a small allow-list (415).
"""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass

from starlette.datastructures import UploadFile
from starlette.requests import Request
from torch import Tensor

from ..data.images import ImageTooLarge, NotAnImage, decode_image
from ..data.sets import to_image_tensor
from ..errors import DataError
from ..model import BASE
from ..preprocess import Preprocess

MAX_TOP_K = 1000
MAX_FANOUT = 256


class HTTPFail(Exception):
    """Answered as ``{"error": message}`` with ``status`` (and ``headers``)."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.headers = status, message, headers or {}


@dataclass(frozen=True)
class Limits:
    """What one request may cost. Defaults suit photos; raise them for scans."""

    max_request_bytes: int = 16 << 20
    max_upload_bytes: int = 512 << 20
    max_image_pixels: int = 40_000_000
    max_images: int = 256
    """Images in one Open Inference Protocol request (its batch dimension)."""


@dataclass(frozen=True)
class PredictInput:
    image: bytes
    names: tuple[str, ...]
    fanout: bool
    top_k: int
    return_logits: bool
    return_lambdas: bool = False


async def read_body(request: Request, limit: int) -> bytes:
    """The whole body, at most ``limit`` bytes (413 otherwise); parsers then read it from memory."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise HTTPFail(413, f"request body of {declared} bytes is over the limit of {limit}")
    chunks, n = [], 0
    async for chunk in request.stream():
        n += len(chunk)
        if n > limit:
            raise HTTPFail(413, f"request body is over the limit of {limit} bytes")
        chunks.append(chunk)
    body = b"".join(chunks)
    request._body = body  # noqa: SLF001  (Starlette's form parser reads the cached body)
    return body


def media_type(request: Request) -> str:
    return request.headers.get("content-type", "").split(";")[0].strip().lower()


async def predict_input(request: Request, limits: Limits) -> PredictInput:
    """A predict request, JSON or multipart; 400 / 413 / 415 on bad input."""
    kind = media_type(request)
    if kind not in ("application/json", "multipart/form-data"):
        raise HTTPFail(415, f"send application/json or multipart/form-data, not '{kind or 'none'}'")
    await read_body(request, limits.max_request_bytes)
    if kind == "application/json":
        try:
            fields = json.loads(request._body)  # noqa: SLF001
        except (UnicodeDecodeError, ValueError, RecursionError):
            raise HTTPFail(400, "the body is not valid JSON") from None
        if not isinstance(fields, dict):
            raise HTTPFail(400, "the body must be a JSON object")
        image = _b64(fields.get("image"))
    else:
        form = await request.form(max_files=1, max_fields=300, max_part_size=1 << 20)
        upload = form.get("image")
        if not isinstance(upload, UploadFile):
            raise HTTPFail(400, "multipart predict needs a file field 'image'")
        image = await upload.read()
        fields = {k: v for k, v in form.multi_items() if k != "patches" and isinstance(v, str)}
        many = [v for k, v in form.multi_items() if k == "patches" and isinstance(v, str)]
        if many:
            fields["patches"] = _form_list(many)
    names, fanout = _names(fields)
    return PredictInput(image, names, fanout, _top_k(fields.get("top_k", 5)),
                        _flag(fields.get("return_logits", False)),
                        _flag(fields.get("return_lambdas", False)))


def _b64(value: object) -> bytes:
    if not isinstance(value, str) or not value:
        raise HTTPFail(400, "'image' must be the base64 text of a PNG or JPEG file")
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise HTTPFail(400, "'image' is not valid base64") from None


def _form_list(values: list[str]) -> list[str]:
    """Repeated ``patches`` fields, one comma-separated field, or one JSON list."""
    if len(values) == 1:
        text = values[0].strip()
        if text.startswith("["):
            try:
                return json.loads(text)
            except (ValueError, RecursionError):
                raise HTTPFail(400, "'patches' is not a valid JSON list") from None
        return [v.strip() for v in text.split(",") if v.strip()]
    return values


def _names(fields: dict) -> tuple[tuple[str, ...], bool]:
    patch, patches = fields.get("patch"), fields.get("patches")
    if patch is not None and patches is not None:
        raise HTTPFail(400, "give 'patch' (one task) or 'patches' (fan-out), not both")
    if patches is not None:
        if (not isinstance(patches, list) or not patches or len(patches) > MAX_FANOUT
                or not all(isinstance(p, str) and p for p in patches)):
            raise HTTPFail(400, f"'patches' must be a list of 1..{MAX_FANOUT} task names")
        return tuple(dict.fromkeys(patches)), True
    if patch is None:
        return (BASE,), False
    if not isinstance(patch, str) or not patch:
        raise HTTPFail(400, "'patch' must be a task name (or \"__base__\")")
    return (patch,), False


def _top_k(value: object) -> int:
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_TOP_K:
        raise HTTPFail(400, f"'top_k' must be an integer in 1..{MAX_TOP_K}")
    return value


def _flag(value: object) -> bool:
    if isinstance(value, str):
        return value.strip().lower() in ("1", "true", "yes")
    return value is True


def image_tensor(data: bytes, pre: Preprocess, limits: Limits) -> Tensor:
    """Image file bytes → one uint8 (3, S, S) tensor, as ``deltapatch predict`` makes it (the
    batcher normalizes a batch of them on the model's device)."""
    try:
        pixels = decode_image(data, "upload", limits.max_image_pixels)
    except ImageTooLarge as err:
        raise HTTPFail(413, str(err)) from None
    except NotAnImage:
        raise HTTPFail(415, "the image is not a readable PNG, JPEG, BMP, GIF, TIFF, WebP or "
                            "PPM file") from None
    except DataError as err:  # readable header, undecodable or degenerate pixels
        raise HTTPFail(422, str(err)) from None
    return to_image_tensor(pixels[None], pre.size)[0]
