"""Reading an image request: JSON (base64) or a multipart upload, checked field by field, decoded once.

Only the body's bytes are read on the event loop (refused with a 413 as soon as they pass the size limit,
on Content-Length and again while they stream in). Everything that costs CPU in proportion to the upload
(JSON parsing, multipart parsing, base64, the image decode) is one call, `read_image`, that the app runs in
its decoding threads. The image is decoded exactly once, by `tlrepro.data.images.decode_image` (the path
`tlrepro predict` and the study evaluations use), which refuses too many pixels from the header alone; an
image with a side under serve.min_image_side pixels is refused (422) from its header too, as `predict` does.

Every field is checked: an unknown query, JSON or form field is a 400 naming it, never silently ignored;
`model` may come in the body or as ?model=, not as two different names.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import re
from dataclasses import dataclass
from typing import Any

import numpy as np
from starlette.requests import Request

from tlrepro.serve.schemas import JSON_EXAMPLE, ApiError

MULTIPART_OVERHEAD = 64 * 1024  # boundaries, part headers and the `model` field around the file
JSON_OVERHEAD = 8 * 1024  # the JSON around the base64 string
IMAGE_FIELDS = ("image", "model")  # a JSON body's fields
FORM_FIELDS = ("file", "model")  # a multipart body's fields
MAX_PARTS = 8
JSON_MODEL = re.compile(rb'"model"\s*:\s*"([A-Za-z0-9_./-]{1,200})"')  # a plain `model` field, as clients send it


@dataclass
class Upload:
    """A decoded request: the model asked for (None: the default), the resized image and its phash bits."""

    model: str | None
    array: np.ndarray
    bits: np.ndarray  # the perceptual hashes data.images.decode_image gives


def media_kind(request: Request) -> str:
    """`json` or `multipart` from the Content-Type; 415 for anything else."""
    media = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if media == "application/json" or media.endswith("+json"):
        return "json"
    if media == "multipart/form-data":
        return "multipart"
    raise ApiError(415, f"unsupported content type `{media[:80] or 'none'}`: send {JSON_EXAMPLE} as "
                        f"application/json, or upload the image as multipart/form-data in field `file`.")


def check_query(request: Request, allowed: tuple[str, ...] = ()) -> dict[str, str]:
    """The query fields, each given once and each one of `allowed`; a 400 naming any other."""
    query = request.query_params
    unknown = sorted({key for key in query if key not in allowed})
    if unknown:
        takes = f"it takes only {', '.join(f'`{a}`' for a in allowed)}" if allowed else "it takes none"
        raise ApiError(400, f"unknown query field(s) {', '.join(f'`{u[:40]}`' for u in unknown)} on "
                            f"{request.url.path[:100]}: {takes}.")
    repeated = sorted({key for key in query if len(query.getlist(key)) > 1})
    if repeated:
        raise ApiError(400, f"query field `{repeated[0]}` is given more than once: give it once.")
    return dict(query)


def _too_large(size: int, limit: int, what: str = "upload") -> ApiError:
    return ApiError(413, f"{what} too large: {size / 1e6:.1f} MB, the limit is {limit / 1e6:g} MB "
                         f"(serve.max_upload_mb): send a smaller image, e.g. a JPEG of the region of interest.",
                    reader=f"The image is too large ({size / 1e6:.1f} MB; at most {limit / 1e6:g} MB): send a smaller "
                           f"image, e.g. a JPEG of the region of interest.")


def body_cap(kind: str, limit: int) -> int:
    """The most bytes a body of this kind may have for an image of at most `limit` bytes."""
    return math.ceil(limit * 4 / 3) + JSON_OVERHEAD if kind == "json" else limit + MULTIPART_OVERHEAD


async def read_body(request: Request, cap: int, limit: int) -> bytes:
    """The raw body, refused (413) as soon as it is known to exceed `cap` bytes: first on Content-Length,
    then while it streams in (a missing or lying Content-Length changes nothing)."""
    declared = request.headers.get("content-length")
    if declared is not None:
        try:
            length = int(declared)
        except ValueError:
            raise ApiError(400, f"Content-Length `{declared[:40]}` is not a number: send a valid request.") from None
        if length > cap:
            raise _too_large(length, limit)
    chunks, total = [], 0
    async for chunk in request.stream():
        total += len(chunk)
        if total > cap:
            raise _too_large(total, limit)
        chunks.append(chunk)
    return b"".join(chunks)


def model_hint(kind: str, body: bytes, query_model: str | None) -> tuple[bool, str | None]:
    """(True, the model named: None for the default) when the body's raw bytes tell it for certain, without
    parsing them (no `model` field at all, or one plain `model` string: base64 has no quotes); else (False,
    None). On the event loop, so that a request its model's queue would refuse anyway is refused before it
    takes a decoding thread; everything is checked again after the parse."""
    if kind == "json":
        mentions = body.count(b'"model"')
        if not mentions:
            return True, query_model
        found = JSON_MODEL.search(body) if mentions == 1 else None
        named = found[1].decode() if found else None
        return (True, named) if named and query_model in (None, named) else (False, None)
    return (True, query_model) if b'name="model"' not in body else (False, None)


def base64_image(value: str, limit: int) -> bytes:
    text = value.strip()
    if text.startswith("data:") and "," in text:  # a data: URL, as browsers make them
        text = text.split(",", 1)[1]
    text = "".join(text.split())
    if not text:
        raise ApiError(400, "`image` is empty: put the image file's bytes, base64-encoded, in `image`.")
    estimate = len(text) * 3 // 4 - text[-2:].count("=")
    if estimate > limit:  # refused before decoding
        raise _too_large(estimate, limit, "image")
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ApiError(400, f"`image` is not valid base64 ({exc}): encode the image file's bytes with standard "
                            f"base64 (RFC 4648), e.g. `base64 -w0 image.jpg`.") from None


def _unknown_fields(names: list[str], allowed: tuple[str, ...], where: str) -> None:
    unknown = [n for n in dict.fromkeys(names) if n not in allowed]
    if unknown:
        raise ApiError(400, f"unknown {where} field(s) {', '.join(f'`{n[:40]}`' for n in unknown)}: the {where} "
                            f"takes {' and '.join(f'`{a}`' for a in allowed)}.")


def parse_json(body: bytes, limit: int) -> tuple[bytes, str | None]:
    """(image bytes, model or None) from a JSON body."""
    if not body.strip():
        raise ApiError(400, f"the request body is empty: send {JSON_EXAMPLE}.")
    try:
        payload = json.loads(body)
    except UnicodeDecodeError:
        raise ApiError(400, f"the request body is not UTF-8 text, so not JSON: send {JSON_EXAMPLE}, or upload "
                            f"the file as multipart/form-data (field `file`).") from None
    except json.JSONDecodeError as exc:
        raise ApiError(400, f"the request body is not valid JSON ({exc.msg} at line {exc.lineno}, column "
                            f"{exc.colno}): send {JSON_EXAMPLE}.") from None
    if not isinstance(payload, dict):
        raise ApiError(422, f"the JSON body must be an object, not {type(payload).__name__}: send {JSON_EXAMPLE}.")
    _unknown_fields(list(payload), IMAGE_FIELDS, "JSON body")
    if "image" not in payload:
        raise ApiError(422, f"the JSON body has no `image` field: send {JSON_EXAMPLE}.")
    image, model = payload["image"], payload.get("model")
    if not isinstance(image, str):
        raise ApiError(422, f"`image` must be a base64 string, not {type(image).__name__}: send {JSON_EXAMPLE}.")
    if model is not None and not isinstance(model, str):
        raise ApiError(422, f"`model` must be a string naming <study>/<row>, not {type(model).__name__}.")
    return base64_image(image, limit), model or None


def parse_multipart(content_type: str, body: bytes, limit: int) -> tuple[bytes, str | None]:
    """(image bytes, model or None) from a multipart/form-data body, with python-multipart's parser."""
    from python_multipart.exceptions import FormParserError
    from python_multipart.multipart import FormParser, parse_options_header

    parts: list[tuple[str, Any]] = []

    def keep(part: Any) -> None:
        if len(parts) >= MAX_PARTS:
            raise ApiError(400, f"the upload has more than {MAX_PARTS} parts: send field `file` (and `model`).")
        parts.append(((part.field_name or b"").decode("utf-8", "replace"), part))

    _, options = parse_options_header(content_type)
    try:
        parser = FormParser("multipart/form-data", keep, keep, boundary=options.get(b"boundary"),
                            config={"MAX_MEMORY_FILE_SIZE": limit + 1})
        parser.write(body)
        parser.finalize()
    except FormParserError as exc:
        raise ApiError(400, f"malformed multipart/form-data body ({' '.join(str(exc).split())[:120]}): upload the "
                            f"image as form field `file`, e.g. `curl -F file=@image.jpg ...`.") from None
    _unknown_fields([name for name, _ in parts], FORM_FIELDS, "form")
    fields: dict[str, Any] = {}
    for name, part in parts:
        if name in fields:
            raise ApiError(400, f"form field `{name}` is given more than once: give it once.")
        fields[name] = part
    upload, model = fields.get("file"), fields.get("model")
    if upload is None:
        raise ApiError(422, "the upload has no field `file`: send the image as form field `file`, "
                            "e.g. `curl -F file=@image.jpg -F model=<study>/<row> ...`.")
    if not hasattr(upload, "file_object"):
        raise ApiError(422, "field `file` must be a file upload, not a text field: "
                            "e.g. `curl -F file=@image.jpg ...` (mind the @).")
    if model is not None and hasattr(model, "file_object"):
        raise ApiError(422, "field `model` must be text naming <study>/<row>, not a file.")
    upload.file_object.seek(0)
    data = upload.file_object.read()
    upload.close()
    return data, (model.value.decode("utf-8", "replace") if model is not None and model.value else None)


def decode_upload(data: bytes, size: int, max_pixels: int, prepare: Any = None, min_side: int = 1
                  ) -> tuple[np.ndarray, np.ndarray]:
    """(uint8 image resized for the model, its perceptual hashes): one decode, by the project's one decoding
    path, with the card's steps before the model (`prepare`, e.g. stain normalization); an image with a side
    under `min_side` pixels is refused from its header, as `tlrepro predict` refuses it."""
    from tlrepro.modeling.predict import decode_checked

    array, bits, ok, reason = decode_checked(data, size, prepare, max_pixels, min_side)
    if ok:
        return array, bits
    text = reason.decode()
    if text.startswith("too small"):
        shown = text.split(":")[0].removeprefix("too small ")
        raise ApiError(422, f"image {text}.", reader=f"The image is too small to be labelled {shown}: it needs at "
                                                     f"least {min_side} pixels on each side. Send the original image, "
                                                     f"not a thumbnail.")
    if text.startswith("too large"):
        raise ApiError(413, f"image {text}: more pixels than serve.max_pixels ({max_pixels:,}); resize it first "
                            f"(a small file claiming this many pixels is a decompression bomb).",
                       reader="The image has too many pixels: resize it first.")
    if text.startswith("unsupported"):
        raise ApiError(415, f"{text}.")
    if text.startswith(("not an image", "empty")):
        raise ApiError(400, f"{text}: send a PNG or JPEG file.")
    raise ApiError(400, f"the image cannot be used: {text}; send a valid PNG or JPEG file.")


def read_image(kind: str, content_type: str, body: bytes, query_model: str | None, admit: Any, limit: int,
               max_pixels: int, min_side: int = 1) -> Upload:
    """The whole CPU-bound part of reading a request (run off the event loop): parse the body, check its
    fields, look the model up (`admit(name)`: its input size and steps, or a 404 for an unknown model and a 503 for a
    full queue, before the image is decoded), decode the image."""
    data, body_model = parse_json(body, limit) if kind == "json" else parse_multipart(content_type, body, limit)
    if query_model is not None and body_model is not None and query_model != body_model:
        raise ApiError(400, f"`model` is given twice, differently (`{query_model[:100]}` in the query, "
                            f"`{body_model[:100]}` in the body): give it once.")
    model = body_model or query_model or None
    size, prepare = admit(model)
    if not data:
        raise ApiError(400, "the image is empty (0 bytes): send the image file's bytes.")
    if len(data) > limit:
        raise _too_large(len(data), limit, "image")
    array, bits = decode_upload(data, size, max_pixels, prepare, min_side)
    return Upload(model, array, bits)

