"""Issue 12's hardening rows against a real API process and real Redis: tokens and job ownership, webhook
SSRF and signatures, the queue's byte cap, event-stream caps, slow and concurrent uploads.

Each row has a test that fails on the code before it: no auth, webhooks to loopback/metadata accepted and
POSTed unsigned, an unbounded queue in bytes, unbounded streams, stalled uploads held forever.
"""

from __future__ import annotations

import io
import json
import logging
import socket
import time

import httpx
import numpy as np
import pytest
from conftest import image_bytes, wait_for
from PIL import Image

from jobs import webhooks
from jobs.settings import Settings
from service.client import NotFound, RestoreClient, Unauthorized

ALPHA, BETA = "tok-alpha-0123456789", "tok-beta-9876543210"
SECRET = "hook-secret"
IDLE_S = 1.0
STREAMS_PER_JOB, STREAMS = 1, 2
MAX_STREAM_S = 2.0
QUEUE_BYTES = 1024 * 1024  # the smallest cap the settings allow
SLOT_WAIT_S = 0.3


@pytest.fixture(scope="module")
def api(module_spawn, redis_url) -> str:
    _, base = module_spawn.api(
        redis_url=redis_url,
        api_tokens=f"{ALPHA},{BETA}",
        webhook_secret=SECRET,
        webhook_allow_networks="",  # only public addresses: every local receiver must be refused
        sse_max_streams=STREAMS,
        sse_max_streams_per_job=STREAMS_PER_JOB,
        sse_max_duration_s=MAX_STREAM_S,
        sse_block_ms=200,
        upload_idle_timeout_s=IDLE_S,
        upload_timeout_s=4 * IDLE_S,
        max_concurrent_uploads=1,
        upload_slot_wait_s=SLOT_WAIT_S,
        max_queue_bytes=QUEUE_BYTES,
    )
    return base


def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def submit(base: str, token: str | None = ALPHA, image: bytes | None = None, **fields) -> httpx.Response:
    files = {"image": ("in.png", image if image is not None else image_bytes(), "image/png")}
    return httpx.post(
        f"{base}/restore",
        files=files,
        data={"preset": "fast", **fields},
        headers=auth(token) if token else None,
        timeout=10,
    )


def noise_png(side: int, seed: int) -> bytes:
    """A PNG that does not compress: its size is about 3 × side² bytes."""
    arr = np.random.default_rng(seed).integers(0, 256, (side, side, 3), dtype=np.uint8)
    out = io.BytesIO()
    Image.fromarray(arr).save(out, format="PNG", compress_level=0)
    return out.getvalue()


# --- tokens and ownership -----------------------------------------------------------------------------


def test_every_job_route_needs_a_token(api, redis_client):
    job_id = submit(api).json()["id"]
    calls = [
        ("POST", "/restore"),
        ("GET", f"/jobs/{job_id}"),
        ("GET", f"/jobs/{job_id}/events"),
        ("GET", f"/jobs/{job_id}/result"),
        ("GET", f"/jobs/{job_id}/checkpoints/0/preview"),
        ("POST", f"/jobs/{job_id}/cancel"),
    ]
    for method, path in calls:
        for headers in (None, auth("wrong"), {"Authorization": f"Basic {ALPHA}"}, {"Authorization": "Bearer"}):
            r = httpx.request(method, f"{api}{path}", headers=headers, timeout=10)
            assert r.status_code == 401, (method, path, headers, r.text)
            assert r.headers["WWW-Authenticate"].startswith("Bearer")
    for path in ("/healthz", "/readyz", "/metrics", "/"):  # probes, scrapers and the page stay open
        assert httpx.get(f"{api}{path}", timeout=10).status_code == 200, path


def test_another_tokens_job_looks_unknown(api, redis_client):
    job_id = submit(api, ALPHA).json()["id"]
    assert httpx.get(f"{api}/jobs/{job_id}", headers=auth(ALPHA)).json()["id"] == job_id
    unknown = httpx.get(f"{api}/jobs/{'0' * 32}", headers=auth(BETA)).json()["detail"]
    for method, path in [
        ("GET", f"/jobs/{job_id}"),
        ("GET", f"/jobs/{job_id}/events"),
        ("GET", f"/jobs/{job_id}/result"),
        ("GET", f"/jobs/{job_id}/checkpoints/0/preview"),
        ("POST", f"/jobs/{job_id}/cancel"),
    ]:
        r = httpx.request(method, f"{api}{path}", headers=auth(BETA), timeout=10)
        assert r.status_code == 404, (method, path, r.text)
        assert r.json()["detail"] == unknown.replace("0" * 32, job_id)  # the same words as an unknown id
    assert httpx.get(f"{api}/jobs/{job_id}", headers=auth(ALPHA)).json()["status"] == "queued"  # not canceled
    owner = redis_client.hget(f"upzir:job:{job_id}", "owner").decode()
    assert owner and ALPHA not in owner  # a fingerprint is stored, never the token


def test_idempotency_keys_are_per_token(api, redis_client):
    first = submit(api, ALPHA, image=image_bytes(seed=1))
    again = httpx.post(
        f"{api}/restore",
        files={"image": ("in.png", image_bytes(seed=1), "image/png")},
        data={"preset": "fast"},
        headers={**auth(BETA), "Idempotency-Key": "k"},
    )
    mine = httpx.post(
        f"{api}/restore",
        files={"image": ("in.png", image_bytes(seed=1), "image/png")},
        data={"preset": "fast"},
        headers={**auth(ALPHA), "Idempotency-Key": "k"},
    )
    assert first.status_code == again.status_code == mine.status_code == 202
    assert again.json()["id"] != mine.json()["id"]  # beta's key never replays alpha's job


def test_client_sends_its_token(api, redis_client):
    with RestoreClient(api, token=BETA, timeout=10) as client:
        job = client.submit(image_bytes(), preset="fast")
        assert client.get(job["id"])["id"] == job["id"]
    with RestoreClient(api, token=ALPHA, timeout=10) as other, pytest.raises(NotFound):
        other.get(job["id"])
    with RestoreClient(api, timeout=10) as anonymous, pytest.raises(Unauthorized):
        anonymous.get(job["id"])


# --- webhooks -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:9/hook",  # loopback
        "http://localhost/hook",  # a name for loopback
        "http://169.254.169.254/latest/meta-data/",  # cloud metadata (link-local)
        "http://[fd00:ec2::254]/latest/meta-data/",  # AWS metadata over IPv6 (unique local)
        "http://10.1.2.3/hook",
        "http://192.168.0.10/hook",
        "http://172.16.0.1/hook",  # private
        "http://100.64.0.1/hook",  # carrier-grade NAT (shared)
        "http://[::1]/hook",
        "http://[::ffff:127.0.0.1]/hook",  # IPv6 loopback, IPv4-mapped loopback
        "http://0.0.0.0/hook",  # unspecified
        "http://no-such-host.invalid/hook",  # does not resolve
    ],
)
def test_webhooks_to_internal_addresses_are_refused_at_submit(api, redis_client, url):
    r = submit(api, webhook=url)
    assert r.status_code == 422, r.text
    assert "webhook" in r.json()["detail"]
    assert redis_client.llen("rq:queue:restore") == 0


def test_delivery_checks_the_address_again_at_connect(webhook_receiver):
    """A name that passed at submit may resolve to loopback later (DNS rebinding): nothing is sent."""
    job = {"id": "j1", "status": "succeeded"}
    port = webhook_receiver.port
    assert webhooks.deliver(f"http://localhost:{port}/hook", job, Settings(webhook_attempts=1)) is False
    assert webhooks.deliver(webhook_receiver.url, job, Settings(webhook_attempts=1)) is False
    assert webhook_receiver.hits == []
    allowed = Settings(webhook_allow_networks="127.0.0.0/8", webhook_secret=SECRET, webhook_attempts=1)
    assert webhooks.deliver(f"http://localhost:{port}/hook?x=1", job, allowed) is True  # operator's exception
    [(headers, body)] = webhook_receiver.hits
    assert json.loads(body) == job and headers["Host"] == f"localhost:{port}"
    assert headers[webhooks.SIGNATURE_HEADER] == webhooks.sign(body, headers[webhooks.TIMESTAMP_HEADER], SECRET)
    assert headers[webhooks.SIGNATURE_HEADER] != webhooks.sign(body, headers[webhooks.TIMESTAMP_HEADER], "other")


def test_canceling_a_queued_job_notifies_its_webhook(module_spawn, redis_url, redis_client, webhook_receiver):
    _, local = module_spawn.api(
        redis_url=redis_url, webhook_allow_networks="127.0.0.1/32", webhook_secret=SECRET, api_reaper=False
    )
    job_id = submit(local, None, webhook=webhook_receiver.url).json()["id"]
    assert httpx.post(f"{local}/jobs/{job_id}/cancel").json()["status"] == "canceled"
    [hook] = wait_for(lambda: webhook_receiver.signed(SECRET), timeout=10, what="the signed cancel webhook")
    assert hook["id"] == job_id and hook["status"] == "canceled"


# --- the queue's byte cap -------------------------------------------------------------------------------


def test_queue_is_capped_in_bytes_too(api, redis_client):
    big = [noise_png(300, seed) for seed in range(3)]  # ~270 KB each: three fit, the fourth would not
    assert all(submit(api, image=b).status_code == 202 for b in big)
    r = submit(api, image=noise_png(300, 9))
    assert r.status_code == 429 and r.headers["Retry-After"]
    assert "MiB of uploads waiting" in r.json()["detail"]
    assert redis_client.llen("rq:queue:restore") == 3
    metrics = httpx.get(f"{api}/metrics").text
    assert 'restore_upload_rejected_total{reason="queue_full"}' in metrics
    queued = float(next(line.split()[-1] for line in metrics.splitlines() if line.startswith("restore_queue_bytes")))
    assert queued == sum(len(b) for b in big)


# --- event streams --------------------------------------------------------------------------------------


def open_stream(api: str, job_id: str, client: httpx.Client):
    ctx = client.stream("GET", f"{api}/jobs/{job_id}/events", headers=auth(ALPHA), timeout=10)
    response = ctx.__enter__()
    return ctx, response


def test_streams_are_capped_before_the_response_starts(api, redis_client):
    jobs = [submit(api).json()["id"] for _ in range(3)]
    with httpx.Client() as client:
        first_ctx, first = open_stream(api, jobs[0], client)
        assert first.status_code == 200
        same = httpx.get(f"{api}/jobs/{jobs[0]}/events", headers=auth(ALPHA), timeout=10)
        assert same.status_code == 429 and same.headers["Retry-After"]  # a plain JSON refusal, not a cut stream
        assert "UPZIR_SSE_MAX_STREAMS_PER_JOB" in same.json()["detail"]
        second_ctx, second = open_stream(api, jobs[1], client)
        assert second.status_code == 200
        full = httpx.get(f"{api}/jobs/{jobs[2]}/events", headers=auth(ALPHA), timeout=10)
        assert full.status_code == 503 and "UPZIR_SSE_MAX_STREAMS" in full.json()["detail"]
        first_ctx.__exit__(None, None, None)
        second_ctx.__exit__(None, None, None)
    # closed streams give their slots back
    wait_for(lambda: _stream_status(api, jobs[2]) == 200, timeout=10, what="stream slots to be released")


def _stream_status(api: str, job_id: str) -> int:
    with httpx.stream("GET", f"{api}/jobs/{job_id}/events", headers=auth(ALPHA), timeout=10) as r:
        return r.status_code


def test_a_stream_ends_after_its_maximum_duration(api, redis_client):
    job_id = submit(api).json()["id"]
    t0 = time.monotonic()
    with httpx.stream("GET", f"{api}/jobs/{job_id}/events", headers=auth(ALPHA), timeout=10) as r:
        lines = [line for line in r.iter_lines()]
    took = time.monotonic() - t0
    assert MAX_STREAM_S - 0.5 <= took <= MAX_STREAM_S + 3, took
    assert "event: status" in lines and "event: completed" not in lines  # the client resumes with Last-Event-ID


# --- uploads ----------------------------------------------------------------------------------------------


def stalled_upload(api: str, declared: int = 5_000_000) -> socket.socket:
    """Headers and the first bytes of a big multipart body, then nothing."""
    host, port = api.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)))
    boundary = "b0undary"
    head = (
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="a.png"\r\n'
            "Content-Type: image/png\r\n\r\n"
        ).encode()
        + b"\x89PNG\r\n\x1a\n"
        + b"\0" * 1000
    )
    sock.sendall(
        (
            f"POST /restore HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {ALPHA}\r\n"
            f"Content-Type: multipart/form-data; boundary={boundary}\r\nContent-Length: {declared}\r\n\r\n"
        ).encode()
        + head
    )
    return sock


def read_status(sock: socket.socket, timeout: float) -> int:
    sock.settimeout(timeout)
    data = sock.recv(4096)
    return int(data.split(b" ", 2)[1])


def test_a_stalled_upload_is_refused_and_frees_its_slot(api, redis_client):
    sock = stalled_upload(api)
    t0 = time.monotonic()
    try:
        # while it holds the only upload slot, another upload waits SLOT_WAIT_S for it, then is refused
        busy = submit(api)
        assert busy.status_code == 503 and busy.headers["Retry-After"]
        assert busy.elapsed.total_seconds() >= SLOT_WAIT_S
        assert "UPZIR_MAX_CONCURRENT_UPLOADS" in busy.json()["detail"]
        assert read_status(sock, timeout=IDLE_S + 5) == 408
        assert time.monotonic() - t0 < IDLE_S + 3
    finally:
        sock.close()
    assert submit(api).status_code == 202  # the slot is free again
    metrics = httpx.get(f"{api}/metrics").text
    assert 'restore_upload_rejected_total{reason="timeout"}' in metrics
    assert 'restore_upload_rejected_total{reason="busy"}' in metrics


def test_a_trickling_upload_hits_the_total_deadline(api, redis_client):
    sock = stalled_upload(api)
    t0 = time.monotonic()
    try:
        status = None
        while status is None and time.monotonic() - t0 < 10 * IDLE_S:
            try:
                sock.sendall(b"\0" * 100)  # a byte now and then: never idle, never done
            except OSError:
                break
            sock.settimeout(IDLE_S / 2)
            try:
                data = sock.recv(4096)
                status = int(data.split(b" ", 2)[1]) if data else None
            except TimeoutError:
                pass
        assert status == 408
        assert time.monotonic() - t0 < 4 * IDLE_S + 3
    finally:
        sock.close()


# --- settings ---------------------------------------------------------------------------------------------


def test_secret_settings_treat_empty_as_unset_and_check_networks():
    assert Settings(api_tokens="").tokens == [] and Settings(webhook_secret=" ").webhook_secret is None
    assert Settings(api_tokens=" a , b ,").tokens == ["a", "b"]
    assert "tok-secret-1" not in repr(Settings(api_tokens="tok-secret-1"))  # secrets never print
    with pytest.raises(ValueError, match="not-a-network"):
        Settings(webhook_allow_networks="10.0.0.0/8,not-a-network")


def test_an_open_api_beyond_loopback_warns_at_start(caplog):
    from service.app import warn_if_open

    with caplog.at_level(logging.WARNING, logger="upzir.api"):
        warn_if_open(Settings(host="127.0.0.1", webhook_secret="s"))
        assert caplog.records == []
        warn_if_open(Settings(host="0.0.0.0"))
    messages = " ".join(r.getMessage() for r in caplog.records)
    assert "UPZIR_API_TOKENS is not set" in messages and "UPZIR_WEBHOOK_SECRET is not set" in messages
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="upzir.api"):
        warn_if_open(Settings(host="0.0.0.0", api_tokens="t", webhook_secret="s"))
    assert caplog.records == []


def test_a_burst_of_uploads_waits_for_slots_instead_of_failing(module_spawn, redis_url, redis_client):
    """Two slots, 24 concurrent small uploads: they take turns (each reads in milliseconds), none is refused."""
    from concurrent.futures import ThreadPoolExecutor

    _, base = module_spawn.api(redis_url=redis_url, max_concurrent_uploads=2, upload_slot_wait_s=60, api_reaper=False)
    with ThreadPoolExecutor(24) as pool:
        statuses = list(pool.map(lambda i: submit(base, None, image=image_bytes(seed=i)).status_code, range(24)))
    assert statuses == [202] * 24
