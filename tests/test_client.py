"""RestoreClient: SSE parsing, and typed errors carrying the server's message, against a real API process."""

from __future__ import annotations

import pytest
from conftest import free_port, image_bytes

from service.client import (
    Conflict,
    NotFound,
    PayloadTooLarge,
    QueueFull,
    RestoreClient,
    ServiceUnavailable,
    SSEEvent,
    UnsupportedMediaType,
    ValidationFailed,
    WaitTimeout,
    parse_sse,
)


def test_parse_sse_follows_the_event_stream_rules():
    lines = [
        ": ping - comments are skipped",
        "",
        "id: 1-0",
        "event: status",
        'data: {"status": "queued"}',
        "",
        "event: checkpoint",
        "data: line one",
        "data: line two",
        "",
        "retry: 1000",
        "data:no-space",
        "",
        "event: dangling",
        'data: {"never": "dispatched"}',  # no blank line at the end: not an event
    ]
    assert list(parse_sse(lines)) == [
        SSEEvent("status", {"status": "queued"}, "1-0"),
        SSEEvent("checkpoint", "line one\nline two", "1-0"),
        SSEEvent("message", "no-space", "1-0"),
    ]


@pytest.fixture(scope="module")
def api(module_spawn, redis_url) -> str:
    return module_spawn.api(
        redis_url=redis_url, max_upload_bytes=50_000, max_queue_depth=2, queue_full_retry_after_s=11
    )[1]


def test_submit_get_events_cancel(api, redis_client):
    with RestoreClient(api, timeout=10) as client:
        job = client.submit(image_bytes(), steps=4, checkpoint_every=2, seed=None)
        assert job["status"] == "queued" and job["input"]["params"]["steps"] == 4
        assert client.get(job["id"])["id"] == job["id"]
        assert client.cancel(job["id"])["status"] == "canceled"
        kinds = [ev.event for ev in client.events(job["id"], timeout=10)]
        assert kinds == ["status", "status", "completed"]
        with pytest.raises(Conflict) as conflict:
            client.cancel(job["id"])
        assert conflict.value.status == 409 and "canceled" in conflict.value.message
        with pytest.raises(Conflict):
            client.result(job["id"])


def test_errors_are_typed_and_carry_the_message(api, redis_client, tmp_path):
    path = tmp_path / "photo.png"
    path.write_bytes(b"plain text pretending to be a PNG")
    with RestoreClient(api, timeout=10) as client:
        with pytest.raises(UnsupportedMediaType, match="PNG, JPEG or WebP"):
            client.submit(path)
        with pytest.raises(PayloadTooLarge) as too_large:
            client.submit(b"\x89PNG\r\n\x1a\n" + bytes(60_000))
        assert too_large.value.status == 413
        with pytest.raises(ValidationFailed, match="seed"):
            client.submit(image_bytes(), seed=-3)
        with pytest.raises(NotFound, match="nope"):
            client.get("nope")
        with pytest.raises(NotFound):
            list(client.events("nope"))
        client.submit(image_bytes())
        job = client.submit(image_bytes())
        with pytest.raises(QueueFull) as full:
            client.submit(image_bytes())
        assert full.value.retry_after == 11.0
        with pytest.raises(WaitTimeout):
            client.wait(job["id"], timeout=0.3, poll_interval=0.1)


def test_unreachable_service_is_service_unavailable():
    with RestoreClient(f"http://127.0.0.1:{free_port()}", timeout=2) as client:
        with pytest.raises(ServiceUnavailable):
            client.get("anything")
