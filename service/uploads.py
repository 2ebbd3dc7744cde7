"""Upload policy: stream-parse the multipart body under a byte cap, sniff the type, check pixels, decode.

Order matters and is the point of this module: a Content-Length over the cap is refused before a byte is
read; a streamed body is refused the moment it crosses the cap (chunked bodies too); the image type comes
from its magic bytes, as soon as the first bytes arrive; the pixel count comes from the header before any
decoding; only then is the image fully decoded, which catches truncated files.
"""

from __future__ import annotations

import asyncio
import io
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from PIL import Image, UnidentifiedImageError
from pydantic import AnyHttpUrl, BaseModel, ConfigDict, Field, ValidationError
from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.requests import ClientDisconnect, Request

from jobs.settings import Settings

if TYPE_CHECKING:
    from python_multipart.multipart import MultipartCallbacks  # a typing-only TypedDict
from restorer.errors import ImageError
from restorer.images import exif_orientation

FORM_OVERHEAD_BYTES = 64 * 1024
"""Allowed on top of the image cap for multipart headers and the small text fields."""

MAX_FIELD_BYTES = 2048
"""A text field (preset, seed, a webhook URL) is short; longer ones are mistakes or abuse."""

MAX_FIELDS = 32
"""More parts than any form of ours has; bounds parser work on hostile bodies."""

SNIFF_BYTES = 12
"""Enough bytes to tell PNG, JPEG and WebP apart (WebP needs 12: RIFF····WEBP)."""

IMAGE_FIELD = "image"

Kind = Literal["png", "jpeg", "webp"]
PIL_FORMATS: dict[str, str] = {"png": "PNG", "jpeg": "JPEG", "webp": "WEBP"}


class UploadRejected(Exception):
    """A refusal with its HTTP status, a metric reason label, and a message a person can act on."""

    def __init__(self, status: int, reason: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.reason = reason
        self.message = message


class RestoreParams(BaseModel):
    """Optional form fields of POST /restore; anything else is refused (422) rather than ignored."""

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    preset: str | None = Field(None, description="Preset name (paper, balanced, fast); default from settings.")
    seed: int | None = Field(None, ge=0, le=2**32 - 1, description="Same seed, same output.")
    steps: int | None = Field(None, ge=1, le=1000, description="DDIM steps per round.")
    checkpoint_every: int | None = Field(None, ge=1, le=1000, description="DQR checkpoint interval Δ, in steps.")
    max_rounds: int | None = Field(None, ge=1, le=10, description="Cap on DQR re-noise rounds.")
    eta: float | None = Field(None, ge=0, le=1, description="DQR exit threshold on the score gain.")
    dqr: Literal["on", "off"] | None = Field(None, description="off: one round on a fixed schedule.")
    max_pixels: int | None = Field(
        None,
        ge=64 * 64,
        le=4096 * 4096,
        description="Sample at most this many pixels (larger inputs are downscaled, the result is resized back).",
    )
    webhook: AnyHttpUrl | None = Field(None, description="POSTed the final job object when the job ends.")

    def overrides(self) -> dict[str, Any]:
        """Sampler options the caller set (preset and webhook are not sampler options)."""
        return {k: v for k, v in self.model_dump(exclude_none=True).items() if k not in ("preset", "webhook")}


def parse_params(fields: dict[str, str]) -> RestoreParams:
    """Form strings → RestoreParams; empty fields count as absent (HTML forms send them)."""
    values = {k: v for k, v in fields.items() if v.strip() != ""}
    try:
        return RestoreParams(**values)
    except ValidationError as exc:
        parts = []
        for e in exc.errors():
            name = ".".join(str(x) for x in e["loc"]) or "form"
            if e["type"] == "extra_forbidden":
                allowed = ", ".join(n for n in RestoreParams.model_fields)
                parts.append(f"unknown field {name!r} (allowed: {IMAGE_FIELD}, {allowed})")
            else:
                parts.append(f"{name}: {e['msg']} (got {e.get('input')!r})")
        raise UploadRejected(422, "bad_params", "; ".join(parts)) from None


def sniff(head: bytes) -> Kind | None:
    """The image type from its magic bytes, never from the filename or the declared content type."""
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "png"
    if head.startswith(b"\xff\xd8\xff"):
        return "jpeg"
    if len(head) >= 12 and head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "webp"
    return None


@dataclass
class Upload:
    """What POST /restore received, validated up to (not including) decoding."""

    filename: str | None
    data: bytes
    kind: Kind
    fields: dict[str, str] = field(default_factory=dict)


class _Collector:
    """Multipart callbacks: keeps the image (capped, sniffed early) and the text fields (capped)."""

    def __init__(self, max_image_bytes: int) -> None:
        self.max_image_bytes = max_image_bytes
        self.fields: dict[str, str] = {}
        self.image: bytearray | None = None
        self.filename: str | None = None
        self.kind: Kind | None = None
        self.ended = False
        self.parts = 0
        self._header_field = bytearray()
        self._header_value = bytearray()
        self._headers: dict[bytes, bytes] = {}
        self._name: str | None = None
        self._buf = bytearray()
        self._is_image = False

    def callbacks(self) -> MultipartCallbacks:
        return {
            "on_part_begin": self.on_part_begin,
            "on_header_field": lambda d, s, e: self._header_field.extend(d[s:e]),
            "on_header_value": lambda d, s, e: self._header_value.extend(d[s:e]),
            "on_header_end": self.on_header_end,
            "on_headers_finished": self.on_headers_finished,
            "on_part_data": self.on_part_data,
            "on_part_end": self.on_part_end,
            "on_end": self.on_end,
        }

    def on_part_begin(self) -> None:
        self.parts += 1
        if self.parts > MAX_FIELDS:
            raise UploadRejected(422, "bad_form", f"too many form parts (limit {MAX_FIELDS})")
        self._headers, self._name, self._buf, self._is_image = {}, None, bytearray(), False

    def on_header_end(self) -> None:
        self._headers[bytes(self._header_field).lower()] = bytes(self._header_value)
        self._header_field, self._header_value = bytearray(), bytearray()

    def on_headers_finished(self) -> None:
        _, opts = parse_options_header(self._headers.get(b"content-disposition", b""))
        name = opts.get(b"name")
        if name is None:
            raise UploadRejected(422, "bad_form", "a multipart part has no name")
        self._name = name.decode("utf-8", "replace")
        if self._name == IMAGE_FIELD:
            if self.image is not None:
                raise UploadRejected(422, "bad_form", f"send exactly one `{IMAGE_FIELD}` file")
            self._is_image = True
            self.image = bytearray()
            raw = opts.get(b"filename")
            self.filename = raw.decode("utf-8", "replace")[:255] if raw is not None else None
        elif b"filename" in opts:
            raise UploadRejected(
                422, "bad_form", f"unexpected file field {self._name!r}: send the image in the `{IMAGE_FIELD}` field"
            )

    def on_part_data(self, data: bytes, start: int, end: int) -> None:
        if self._is_image:
            assert self.image is not None
            self.image.extend(data[start:end])
            if len(self.image) > self.max_image_bytes:
                raise UploadRejected(
                    413, "too_large", f"the image is larger than the {self.max_image_bytes}-byte limit"
                )
            if self.kind is None and len(self.image) >= SNIFF_BYTES:
                self._sniff()
        else:
            self._buf.extend(data[start:end])
            if len(self._buf) > MAX_FIELD_BYTES:
                raise UploadRejected(
                    413, "too_large", f"form field {self._name!r} is longer than {MAX_FIELD_BYTES} bytes"
                )

    def _sniff(self) -> None:
        assert self.image is not None
        kind = sniff(bytes(self.image[:SNIFF_BYTES]))
        if kind is None:
            raise UploadRejected(
                415,
                "unsupported_type",
                "the file is not a PNG, JPEG or WebP image (checked from its content, not its name)",
            )
        self.kind = kind

    def on_part_end(self) -> None:
        if self._is_image:
            assert self.image is not None
            if not self.image:
                raise UploadRejected(422, "empty", "the image file is empty (0 bytes)")
            if self.kind is None:
                self._sniff()
        elif self._name is not None:
            if self._name in self.fields:
                raise UploadRejected(422, "bad_form", f"field {self._name!r} was sent twice")
            try:
                self.fields[self._name] = self._buf.decode("utf-8")
            except UnicodeDecodeError:
                raise UploadRejected(422, "bad_form", f"field {self._name!r} is not UTF-8 text") from None

    def on_end(self) -> None:
        self.ended = True


async def read_upload(request: Request, settings: Settings) -> Upload:
    """Read POST /restore's body under the caps; raise UploadRejected at the first violation."""
    mime, opts = parse_options_header(request.headers.get("content-type"))
    boundary = opts.get(b"boundary")
    if mime != b"multipart/form-data" or not boundary:
        raise UploadRejected(415, "not_multipart", f"send multipart/form-data with an `{IMAGE_FIELD}` file field")
    body_cap = settings.max_upload_bytes + FORM_OVERHEAD_BYTES
    declared = request.headers.get("content-length")
    if declared is not None:
        try:
            declared_n = int(declared)
        except ValueError:
            raise UploadRejected(400, "bad_form", "Content-Length is not a number") from None
        if declared_n > body_cap:
            raise UploadRejected(
                413,
                "too_large",
                f"the request body ({declared_n} bytes) exceeds the {settings.max_upload_bytes}-byte image limit",
            )
    collector = _Collector(settings.max_upload_bytes)
    try:
        parser = MultipartParser(boundary, collector.callbacks())
    except (MultipartParseError, ValueError) as exc:
        raise UploadRejected(422, "bad_form", f"malformed multipart request: {exc}") from None
    received = 0
    try:
        async for chunk in _timed(request.stream(), settings):
            received += len(chunk)
            if received > body_cap:
                raise UploadRejected(
                    413, "too_large", f"the request body exceeds the {settings.max_upload_bytes}-byte image limit"
                )
            if chunk:
                parser.write(chunk)
        parser.finalize()
    except MultipartParseError as exc:
        raise UploadRejected(422, "bad_form", f"malformed multipart body: {exc}") from None
    except ClientDisconnect:
        raise UploadRejected(400, "disconnected", "the client disconnected before the body was complete") from None
    if not collector.ended:
        raise UploadRejected(422, "bad_form", "the multipart body ended early (no closing boundary)")
    if collector.image is None:
        raise UploadRejected(422, "missing_image", f"no `{IMAGE_FIELD}` file in the form")
    assert collector.kind is not None
    return Upload(collector.filename, bytes(collector.image), collector.kind, collector.fields)


async def _timed(chunks: AsyncIterator[bytes], settings: Settings) -> AsyncIterator[bytes]:
    """The body's chunks, refused (408) when one is slower than the idle timeout or all of them than the total.

    A stalled client otherwise holds its buffer and an upload slot for as long as it likes.
    """
    deadline = time.monotonic() + settings.upload_timeout_s
    iterator = chunks.__aiter__()
    while True:
        left = deadline - time.monotonic()
        wait = min(settings.upload_idle_timeout_s, max(left, 0.0))
        try:
            chunk = await asyncio.wait_for(iterator.__anext__(), timeout=wait)
        except StopAsyncIteration:
            return
        except asyncio.TimeoutError:
            which = (
                f"no data for {settings.upload_idle_timeout_s:g} s (UPZIR_UPLOAD_IDLE_TIMEOUT_S)"
                if left > settings.upload_idle_timeout_s
                else f"longer than {settings.upload_timeout_s:g} s (UPZIR_UPLOAD_TIMEOUT_S)"
            )
            raise UploadRejected(408, "timeout", f"the upload was too slow: {which}; send the body in one go") from None
        yield chunk


class UploadSlots:
    """Bodies this process reads at once (each holds up to a 25 MiB buffer); past the cap an upload waits for a
    slot, reading nothing, and is refused (503) if none frees within `wait_s`."""

    def __init__(self, limit: int, wait_s: float) -> None:
        self.limit, self.wait_s = limit, wait_s
        self._slots = asyncio.Semaphore(limit)

    async def acquire(self) -> None:
        try:
            await asyncio.wait_for(self._slots.acquire(), timeout=self.wait_s)
        except asyncio.TimeoutError:
            raise UploadRejected(
                503,
                "busy",
                f"{self.limit} uploads have been received at once for {self.wait_s:g} s"
                " (UPZIR_MAX_CONCURRENT_UPLOADS); retry shortly",
            ) from None

    def release(self) -> None:
        self._slots.release()


EXIF_QUARTER_TURNS = (5, 6, 7, 8)
"""EXIF orientations that rotate by 90°: the upright image has width and height swapped."""


def inspect_image(data: bytes, kind: Kind, max_pixels: int) -> tuple[int, int]:
    """(width, height) after checking the header's pixel count and fully decoding; 422 otherwise.

    `Image.MAX_IMAGE_PIXELS` is set to our cap at app start, so PIL's own bomb check agrees with ours.
    """
    try:
        img = Image.open(io.BytesIO(data), formats=[PIL_FORMATS[kind]])
    except Image.DecompressionBombError:
        raise UploadRejected(
            422, "too_many_pixels", f"the image header claims more than {max_pixels} pixels (limit)"
        ) from None
    except UnidentifiedImageError:
        raise UploadRejected(
            422, "unreadable", f"the file starts like a {kind.upper()} but its header cannot be read"
        ) from None
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise UploadRejected(422, "unreadable", f"the {kind.upper()} file cannot be read: {exc}") from None
    with img:
        width, height = img.size
        if width <= 0 or height <= 0:
            raise UploadRejected(422, "zero_size", f"the image has no pixels ({width}×{height})")
        if width * height > max_pixels:
            raise UploadRejected(
                422,
                "too_many_pixels",
                f"the image is {width}×{height} = {width * height} pixels; the limit is {max_pixels}",
            )
        try:
            img.load()
        except Exception as exc:  # any decoder failure is the file's fault, never the API's
            raise UploadRejected(422, "unreadable", f"the {kind.upper()} file is truncated or corrupt: {exc}") from None
        try:
            orientation = exif_orientation(img)
        except ImageError as exc:
            raise UploadRejected(422, "unreadable", f"the {kind.upper()} file cannot be read: {exc}") from None
        if orientation in EXIF_QUARTER_TURNS:  # the worker restores it upright
            width, height = height, width
    return width, height
