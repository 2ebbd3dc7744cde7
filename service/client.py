"""Python client for the restoration API (httpx), with typed errors that carry the server's message.

with RestoreClient("http://localhost:8000", token=os.environ.get("UPZIR_API_TOKEN")) as c:
    job = c.submit("photo.jpg", preset="fast", seed=1)
    for ev in c.events(job["id"]):
        print(ev.event, ev.data)
    png = c.result(c.wait(job["id"], timeout=600)["id"])
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

DEFAULT_TIMEOUT_S = 30.0
"""Per-request timeout: an upload of the largest allowed image on a slow link, not a job's run time."""

POLL_INTERVAL_S = 0.5
"""wait(): first pause between polls; doubles up to POLL_INTERVAL_MAX_S."""

POLL_INTERVAL_MAX_S = 5.0

TERMINAL = frozenset({"succeeded", "failed", "canceled"})


class ClientError(Exception):
    """Base: `status` is the HTTP status (None for transport failures), `message` the server's detail."""

    def __init__(self, message: str, status: int | None = None, response: httpx.Response | None = None) -> None:
        super().__init__(f"{status}: {message}" if status else message)
        self.message = message
        self.status = status
        self.response = response


class PayloadTooLarge(ClientError):
    pass


class UnsupportedMediaType(ClientError):
    pass


class ValidationFailed(ClientError):
    pass


class Unauthorized(ClientError):
    """401: the service requires a bearer token (UPZIR_API_TOKENS) and this one is missing or wrong."""


class NotFound(ClientError):
    pass


class Conflict(ClientError):
    pass


class _RetryAfter(ClientError):
    @property
    def retry_after(self) -> float | None:
        value = self.response.headers.get("Retry-After") if self.response is not None else None
        try:
            return float(value) if value is not None else None
        except ValueError:
            return None


class QueueFull(_RetryAfter):
    pass


class ServiceUnavailable(_RetryAfter):
    pass


class JobFailed(ClientError):
    """wait() ended on `failed` or `canceled`; `job` is the final job object."""

    def __init__(self, job: dict[str, Any]) -> None:
        super().__init__(f"job {job.get('id')} {job.get('status')}: {job.get('error')}")
        self.job = job


class WaitTimeout(ClientError):
    pass


_BY_STATUS: dict[int, type[ClientError]] = {
    401: Unauthorized,
    404: NotFound,
    409: Conflict,
    413: PayloadTooLarge,
    415: UnsupportedMediaType,
    422: ValidationFailed,
    429: QueueFull,
    503: ServiceUnavailable,
}


@dataclass(frozen=True)
class SSEEvent:
    event: str
    data: Any  # parsed JSON when the data is JSON, else the raw string
    id: str | None = None


def parse_sse(lines: Iterable[str]) -> Iterator[SSEEvent]:
    """Minimal SSE parser (WHATWG event-stream rules for event/data/id; comments and retry ignored)."""
    event, last_id = "", None
    data: list[str] = []
    for raw in lines:
        line = raw.rstrip("\r\n")
        if line == "":
            if data:
                text = "\n".join(data)
                try:
                    payload: Any = json.loads(text)
                except ValueError:
                    payload = text
                yield SSEEvent(event or "message", payload, last_id)
            event, data = "", []
            continue
        if line.startswith(":"):
            continue
        name, _, value = line.partition(":")
        value = value[1:] if value.startswith(" ") else value
        if name == "event":
            event = value
        elif name == "data":
            data.append(value)
        elif name == "id" and "\0" not in value:
            last_id = value
    # a stream that ends without a blank line does not dispatch its last event (spec behaviour)


class RestoreClient:
    """Thin, typed wrapper over the HTTP API; one httpx.Client (connection pooling) per instance."""

    def __init__(
        self, base_url: str, timeout: float = DEFAULT_TIMEOUT_S, token: str | None = None, **client_kwargs: Any
    ) -> None:
        """`token`: the bearer token when the service sets UPZIR_API_TOKENS (sent with every request)."""
        headers = dict(client_kwargs.pop("headers", None) or {})
        if token:
            headers["Authorization"] = f"Bearer {token}"
        self._http = httpx.Client(base_url=base_url, timeout=timeout, headers=headers, **client_kwargs)

    def __enter__(self) -> RestoreClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    # --- plumbing ---------------------------------------------------------------------------------

    @staticmethod
    def _raise_for(response: httpx.Response) -> None:
        if response.is_success:
            return
        try:
            detail = response.json().get("detail", response.text)
        except ValueError:
            detail = response.text
        if not isinstance(detail, str):
            detail = json.dumps(detail)
        cls = _BY_STATUS.get(response.status_code, ClientError)
        raise cls(detail, response.status_code, response)

    def _request(self, method: str, url: str, **kwargs: Any) -> httpx.Response:
        try:
            response = self._http.request(method, url, **kwargs)
        except httpx.TransportError as exc:
            raise ServiceUnavailable(f"cannot reach the service: {exc}") from exc
        self._raise_for(response)
        return response

    # --- API --------------------------------------------------------------------------------------

    def submit(
        self,
        image: str | Path | bytes,
        *,
        filename: str | None = None,
        idempotency_key: str | None = None,
        **params: Any,
    ) -> dict[str, Any]:
        """Upload an image (path or bytes) with optional fields (preset, seed, steps, ...); returns the job."""
        if isinstance(image, bytes):
            data, name = image, filename or "image"
        else:
            path = Path(image)
            data, name = path.read_bytes(), filename or path.name
        fields = {k: str(v) for k, v in params.items() if v is not None}
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else None
        response = self._request(
            "POST",
            "/restore",
            files={"image": (name, data, "application/octet-stream")},
            data=fields,
            headers=headers,
        )
        return response.json()

    def get(self, job_id: str) -> dict[str, Any]:
        return self._request("GET", f"/jobs/{job_id}").json()

    def wait(self, job_id: str, timeout: float, poll_interval: float = POLL_INTERVAL_S) -> dict[str, Any]:
        """Poll until the job ends; returns it when it succeeded, raises JobFailed otherwise."""
        deadline = time.monotonic() + timeout
        pause = poll_interval
        while True:
            job = self.get(job_id)
            if job["status"] in TERMINAL:
                if job["status"] != "succeeded":
                    raise JobFailed(job)
                return job
            left = deadline - time.monotonic()
            if left <= 0:
                raise WaitTimeout(f"job {job_id} still {job['status']} after {timeout} s")
            time.sleep(min(pause, left))
            pause = min(pause * 2, POLL_INTERVAL_MAX_S)

    def result(self, job_id: str, format: str = "png") -> bytes:
        return self._request("GET", f"/jobs/{job_id}/result", params={"format": format}).content

    def cancel(self, job_id: str) -> dict[str, Any]:
        return self._request("POST", f"/jobs/{job_id}/cancel").json()

    def preview(self, job_id: str, n: int) -> bytes:
        return self._request("GET", f"/jobs/{job_id}/checkpoints/{n}/preview").content

    def events(self, job_id: str, last_event_id: str | None = None, timeout: float | None = None) -> Iterator[SSEEvent]:
        """Server-sent events of a job (replayed, then live) until `completed`; `timeout` bounds silence."""
        headers = {"Accept": "text/event-stream"}
        if last_event_id:
            headers["Last-Event-ID"] = last_event_id
        try:
            with self._http.stream(
                "GET", f"/jobs/{job_id}/events", headers=headers, timeout=httpx.Timeout(timeout, connect=5.0)
            ) as response:
                if not response.is_success:
                    response.read()
                    self._raise_for(response)
                for ev in parse_sse(response.iter_lines()):
                    yield ev
                    if ev.event == "completed":
                        return
        except httpx.TransportError as exc:
            raise ServiceUnavailable(f"event stream broke: {exc}") from exc
