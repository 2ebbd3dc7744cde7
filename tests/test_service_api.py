"""The HTTP API against a real uvicorn process and real Redis, with no worker: uploads, errors, queueing.

Jobs stay `queued` here (nobody consumes the queue), which is exactly what queue-position, cancel-while-
queued, idempotency and queue-full need.
"""

from __future__ import annotations

import io
import json
import socket
import struct
import threading
import time
import zlib

import httpx
import pytest
from conftest import image_bytes
from PIL import Image

CAP = 200_000
"""Upload cap of this module's API (small, so oversize bodies are cheap to send)."""

MAX_PIXELS = 1_000_000
QUEUE_CAP = 3
RETRY_AFTER = 7
QUEUE_KEY = "rq:queue:restore"


@pytest.fixture(scope="module")
def api(module_spawn, redis_url) -> str:
    _, base = module_spawn.api(
        redis_url=redis_url,
        max_upload_bytes=CAP,
        max_pixels=MAX_PIXELS,
        max_queue_depth=QUEUE_CAP,
        queue_full_retry_after_s=RETRY_AFTER,
    )
    return base


def submit(
    base: str,
    image: bytes | None = None,
    filename: str = "in.png",
    ctype: str = "image/png",
    data: dict | None = None,
    headers: dict | None = None,
) -> httpx.Response:
    files = {"image": (filename, image if image is not None else image_bytes(), ctype)}
    return httpx.post(f"{base}/restore", files=files, data=data or {}, headers=headers, timeout=10)


def png_with_header(width: int, height: int) -> bytes:
    """A syntactically valid PNG whose IHDR claims width×height (with a tiny IDAT): a bomb's header."""

    def chunk(tag: bytes, payload: bytes) -> bytes:
        return struct.pack(">I", len(payload)) + tag + payload + struct.pack(">I", zlib.crc32(tag + payload))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 16)) + chunk(b"IEND", b"")


def scrape(base: str) -> str:
    return httpx.get(f"{base}/metrics", timeout=5).text


def sample(text: str, name: str, **labels: str) -> float:
    """Value of one Prometheus sample (0 when absent)."""
    want = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    for line in text.splitlines():
        if line.startswith("#"):
            continue
        key, _, value = line.rpartition(" ")
        if "{" in key:
            metric, _, rest = key.partition("{")
            got = ",".join(sorted(rest.rstrip("}").split(",")))
        else:
            metric, got = key, ""
        if metric == name and got == want:
            return float(value)
    return 0.0


# --- probes and docs --------------------------------------------------------------------------------


def test_health_readiness_and_docs_without_worker(api, redis_client):
    assert httpx.get(f"{api}/healthz").json() == {"status": "ok"}
    ready = httpx.get(f"{api}/readyz")
    # readiness is the pod's: with Redis up it serves reads and queues jobs, worker or not
    assert ready.status_code == 200
    assert ready.json() == {"status": "ok", "redis": "ok", "workers": 0, "accepting_work": False}
    metrics = httpx.get(f"{api}/metrics").text
    assert "restore_workers_ready 0.0" in metrics  # worker availability is its own signal
    assert httpx.get(f"{api}/docs").status_code == 200
    spec = httpx.get(f"{api}/openapi.json").json()
    body = spec["paths"]["/restore"]["post"]["requestBody"]["content"]["multipart/form-data"]["schema"]
    assert {"image", "preset", "seed", "steps", "max_rounds", "webhook"} <= set(body["properties"])
    for path in (
        "/jobs/{job_id}",
        "/jobs/{job_id}/events",
        "/jobs/{job_id}/result",
        "/jobs/{job_id}/cancel",
        "/jobs/{job_id}/checkpoints/{n}/preview",
        "/healthz",
        "/readyz",
        "/metrics",
    ):
        assert path in spec["paths"], path


# --- accepted submissions ---------------------------------------------------------------------------


def test_submit_answers_202_with_the_job_object(api, redis_client):
    r = submit(
        api, image_bytes((40, 32)), filename="cat.png", data={"seed": "1", "steps": "4", "checkpoint_every": "2"}
    )
    assert r.status_code == 202, r.text
    job = r.json()
    assert r.headers["Location"] == f"/jobs/{job['id']}"
    assert set(job) == {
        "id",
        "status",
        "created_at",
        "started_at",
        "completed_at",
        "input",
        "progress",
        "queue_position",
        "early_exit",
        "metrics",
        "error",
        "urls",
    }
    assert job["status"] == "queued" and job["queue_position"] == 0
    assert job["input"] == {
        "filename": "cat.png",
        "width": 40,
        "height": 32,
        "params": {"preset": "balanced", "seed": 1, "steps": 4, "checkpoint_every": 2},
    }
    assert set(job["progress"]) == {"round", "step", "total_steps", "last_score", "checkpoints"}
    assert set(job["metrics"]) == {"queue_wait_s", "run_s", "steps_run", "rounds"}
    assert job["urls"] == {
        "get": f"/jobs/{job['id']}",
        "events": f"/jobs/{job['id']}/events",
        "result": f"/jobs/{job['id']}/result",
        "cancel": f"/jobs/{job['id']}/cancel",
    }
    second = submit(api).json()
    assert second["queue_position"] == 1
    assert httpx.get(f"{api}/jobs/{job['id']}").json()["id"] == job["id"]
    assert redis_client.llen(QUEUE_KEY) == 2


def test_a_sideways_phone_photo_is_recorded_at_its_upright_size(api, redis_client):
    img, out = Image.new("RGB", (40, 24), (90, 120, 30)), io.BytesIO()
    exif = Image.Exif()
    exif[0x0112] = 6  # stored sideways: shown rotated by 90°
    img.save(out, format="JPEG", exif=exif)
    r = submit(api, out.getvalue(), filename="phone.jpg")
    assert r.status_code == 202, r.text
    assert (r.json()["input"]["width"], r.json()["input"]["height"]) == (24, 40)


def test_type_is_sniffed_from_bytes_not_name_or_header(api, redis_client):
    jpeg_named_png = submit(api, image_bytes(fmt="JPEG"), filename="photo.png", ctype="image/png")
    assert jpeg_named_png.status_code == 202, jpeg_named_png.text
    webp_named_txt = submit(api, image_bytes(fmt="WEBP"), filename="notes.txt", ctype="text/plain")
    assert webp_named_txt.status_code == 202, webp_named_txt.text

    for payload in (b"this is not an image at all, just text", image_bytes(fmt="GIF"), image_bytes(fmt="BMP")):
        r = submit(api, payload, filename="looks-fine.png", ctype="image/png")
        assert r.status_code == 415, r.text
        assert "PNG, JPEG or WebP" in r.json()["detail"]

    raw = httpx.post(f"{api}/restore", content=image_bytes(), headers={"Content-Type": "image/png"})
    assert raw.status_code == 415 and "multipart/form-data" in raw.json()["detail"]
    assert redis_client.llen(QUEUE_KEY) == 2


def _truncated_png() -> bytes:
    data = image_bytes((64, 64))
    return data[: len(data) // 2]


def _big_but_small_file() -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (1100, 1000)).save(out, format="PNG")  # 1.1 MP of black: a few KB
    return out.getvalue()


def _png_with_broken_exif() -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (16, 16), (10, 20, 30)).save(out, format="PNG", exif=b"not a TIFF header" * 3)
    return out.getvalue()


@pytest.mark.parametrize(
    ("payload", "words"),
    [
        (_truncated_png(), "truncated"),
        (_png_with_broken_exif(), "EXIF block is malformed"),
        (b"", "empty"),
        (png_with_header(0, 16), "cannot be read"),  # zero-size: PIL refuses a 0-wide IHDR
        (png_with_header(100_000, 100_000), "pixels"),  # header claims 10^10 pixels: never decoded
        (_big_but_small_file(), "pixels"),
        (b"\x89PNG\r\n\x1a\n" + b"garbage" * 10, "cannot be read"),
    ],
    ids=[
        "truncated",
        "broken-exif",
        "zero-bytes",
        "zero-width",
        "header-bomb",
        "over-pixel-cap",
        "garbage-after-magic",
    ],
)
def test_unreadable_or_oversized_images_are_422(api, redis_client, payload, words):
    started = time.monotonic()
    r = submit(api, payload)
    assert r.status_code == 422, r.text
    assert words in r.json()["detail"]
    assert time.monotonic() - started < 5  # the bomb is refused from its header, not decoded
    assert redis_client.llen(QUEUE_KEY) == 0


def test_oversized_bodies_are_refused_while_streaming(api, redis_client):
    before = sample(scrape(api), "restore_upload_rejected_total", reason="too_large")
    boundary = "upzirtestboundary"
    part_head = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="a.png"\r\n'
        "Content-Type: image/png\r\n\r\n"
    ).encode() + b"\x89PNG\r\n\x1a\n"

    # 1. Declared Content-Length over the cap: refused before a single body byte is sent.
    with socket.create_connection(("127.0.0.1", int(api.rsplit(":", 1)[1])), timeout=5) as s:
        s.sendall(
            (
                f"POST /restore HTTP/1.1\r\nHost: t\r\nContent-Type: multipart/form-data; boundary={boundary}"
                f"\r\nContent-Length: {CAP * 10}\r\n\r\n"
            ).encode()
        )
        reply = s.recv(4096)
    assert reply.startswith(b"HTTP/1.1 413"), reply[:200]

    # 2. Chunked, no Content-Length: refused once the cap is crossed, while the body is still open.
    with socket.create_connection(("127.0.0.1", int(api.rsplit(":", 1)[1])), timeout=5) as s:
        s.sendall(
            (
                f"POST /restore HTTP/1.1\r\nHost: t\r\nContent-Type: multipart/form-data; boundary={boundary}"
                "\r\nTransfer-Encoding: chunked\r\n\r\n"
            ).encode()
        )
        chunk = b"\0" * 16384
        s.sendall(f"{len(part_head):x}\r\n".encode() + part_head + b"\r\n")
        for _ in range(CAP // len(chunk) + 2):  # just over the cap; the terminating 0-chunk is never sent
            s.sendall(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n")
        reply = s.recv(4096)
    assert reply.startswith(b"HTTP/1.1 413"), reply[:200]

    # 3. An ordinary client with a too-big image gets the 413 and its message.
    r = submit(api, b"\x89PNG\r\n\x1a\n" + b"\0" * (CAP + 1))
    assert r.status_code == 413 and str(CAP) in r.json()["detail"]

    after = sample(scrape(api), "restore_upload_rejected_total", reason="too_large")
    assert after - before == 3
    assert redis_client.llen(QUEUE_KEY) == 0


@pytest.mark.parametrize(
    ("fields", "words"),
    [
        ({"seed": "-1"}, "seed"),
        ({"steps": "many"}, "steps"),
        ({"stepz": "3"}, "unknown field 'stepz'"),
        ({"preset": "turbo"}, "unknown preset 'turbo'"),
        ({"steps": "4", "checkpoint_every": "9"}, "checkpoint_every"),  # restorer's ConfigError → 422
        ({"webhook": "not a url"}, "webhook"),
        ({"dqr": "maybe"}, "dqr"),
        ({"max_rounds": "0"}, "max_rounds"),
        ({"steps": "1000", "checkpoint_every": "1", "max_rounds": "10", "dqr": "on"}, "10000 checkpoints"),
    ],
)
def test_bad_parameters_are_422_with_a_readable_message(api, redis_client, fields, words):
    r = submit(api, data=fields)
    assert r.status_code == 422, r.text
    assert isinstance(r.json()["detail"], str) and words in r.json()["detail"]
    assert redis_client.llen(QUEUE_KEY) == 0


def test_missing_image_field_is_422(api, redis_client):
    r = httpx.post(f"{api}/restore", files={"picture": ("a.png", image_bytes(), "image/png")})
    assert r.status_code == 422 and "image" in r.json()["detail"]


# --- reading jobs -----------------------------------------------------------------------------------


def test_unknown_jobs_are_404_and_unfinished_results_409(api, redis_client):
    for method, path in [
        ("GET", "/jobs/nope"),
        ("GET", "/jobs/nope/result"),
        ("POST", "/jobs/nope/cancel"),
        ("GET", "/jobs/nope/events"),
        ("GET", "/jobs/nope/checkpoints/0/preview"),
    ]:
        r = httpx.request(method, f"{api}{path}")
        assert r.status_code == 404, (path, r.text)
        assert "nope" in r.json()["detail"]
    job = submit(api).json()
    r = httpx.get(f"{api}/jobs/{job['id']}/result")
    assert r.status_code == 409 and "queued" in r.json()["detail"]
    assert httpx.get(f"{api}/jobs/{job['id']}/result", params={"format": "gif"}).status_code == 422
    assert httpx.get(f"{api}/jobs/{job['id']}/checkpoints/0/preview").status_code == 404


def test_cancel_a_queued_job(api, redis_client):
    a, b = submit(api).json(), submit(api).json()
    r = httpx.post(f"{api}/jobs/{a['id']}/cancel")
    assert r.status_code == 200, r.text
    canceled = r.json()
    assert canceled["status"] == "canceled" and canceled["completed_at"] and "canceled" in canceled["error"]
    assert redis_client.llen(QUEUE_KEY) == 1
    assert httpx.get(f"{api}/jobs/{b['id']}").json()["queue_position"] == 0
    again = httpx.post(f"{api}/jobs/{a['id']}/cancel")
    assert again.status_code == 409 and "canceled" in again.json()["detail"]

    # A late subscriber gets the whole story replayed, and the stream ends after `completed`.
    with httpx.stream("GET", f"{api}/jobs/{a['id']}/events", timeout=10) as stream:
        assert stream.headers["content-type"].startswith("text/event-stream")
        text = stream.read().decode()
    events = [line.split(":", 1)[1].strip() for line in text.splitlines() if line.startswith("event:")]
    assert events == ["status", "status", "completed"]
    final = json.loads([line for line in text.splitlines() if line.startswith("data:")][-1][5:])
    assert final["id"] == a["id"] and final["status"] == "canceled"
    first_id = [line for line in text.splitlines() if line.startswith("id:")][0].split(":", 1)[1].strip()
    resumed = httpx.get(f"{api}/jobs/{a['id']}/events", headers={"Last-Event-ID": first_id}, timeout=10).text
    assert [line for line in resumed.splitlines() if line.startswith("event:")] == ["event: status", "event: completed"]

    # Nothing it left behind lives forever.
    for key in redis_client.scan_iter(f"upzir:job:{a['id']}*"):
        assert 0 < redis_client.ttl(key) <= 24 * 3600, key
    assert not redis_client.exists(f"upzir:job:{a['id']}:input")


def test_idempotency_key_returns_the_same_job_and_enqueues_once(api, redis_client):
    before = sample(scrape(api), "restore_jobs_submitted_total")
    image = image_bytes(seed=5)
    first = submit(api, image, data={"seed": "2"}, headers={"Idempotency-Key": "order-42"})
    again = submit(api, image, data={"seed": "2"}, headers={"Idempotency-Key": "order-42"})
    assert first.status_code == again.status_code == 202
    assert first.json()["id"] == again.json()["id"]
    assert again.headers["Idempotent-Replayed"] == "true"
    assert redis_client.llen(QUEUE_KEY) == 1
    assert sample(scrape(api), "restore_jobs_submitted_total") - before == 1

    other = submit(api, image, data={"seed": "3"}, headers={"Idempotency-Key": "order-42"})
    assert other.status_code == 422 and "Idempotency-Key" in other.json()["detail"]

    # Concurrent twins: one job, one enqueue, however the race falls.
    results: list[httpx.Response] = []

    def twin() -> None:
        results.append(submit(api, image, data={"seed": "2"}, headers={"Idempotency-Key": "order-43"}))

    threads = [threading.Thread(target=twin) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert {r.status_code for r in results} <= {202, 409}
    ids = {r.json()["id"] for r in results if r.status_code == 202}
    assert len(ids) == 1
    assert redis_client.llen(QUEUE_KEY) == 2


def test_queue_full_is_429_with_retry_after(api, redis_client):
    jobs = [submit(api) for _ in range(QUEUE_CAP)]
    assert all(r.status_code == 202 for r in jobs)
    before = sample(scrape(api), "restore_upload_rejected_total", reason="queue_full")
    full = submit(api)
    assert full.status_code == 429
    assert full.headers["Retry-After"] == str(RETRY_AFTER)
    assert "queue is full" in full.json()["detail"]
    assert sample(scrape(api), "restore_upload_rejected_total", reason="queue_full") - before == 1
    assert sample(scrape(api), "restore_queue_depth") == QUEUE_CAP
    httpx.post(f"{api}/jobs/{jobs[0].json()['id']}/cancel")
    assert submit(api).status_code == 202


def test_http_metrics_use_route_templates_never_ids(api, redis_client):
    job = submit(api).json()
    httpx.get(f"{api}/jobs/{job['id']}")
    httpx.get(f"{api}/jobs/definitely-not-a-job")
    httpx.get(f"{api}/no/such/route")
    text = scrape(api)
    assert job["id"] not in text and "definitely-not-a-job" not in text
    assert (
        sample(text, "restore_http_request_duration_seconds_count", route="/jobs/{job_id}", method="GET", status="200")
        >= 1
    )
    assert (
        sample(text, "restore_http_request_duration_seconds_count", route="/jobs/{job_id}", method="GET", status="404")
        >= 1
    )
    assert (
        sample(text, "restore_http_request_duration_seconds_count", route="/restore", method="POST", status="202") >= 1
    )
    assert (
        sample(text, "restore_http_request_duration_seconds_count", route="unmatched", method="GET", status="404") >= 1
    )


def _mutations(n: int, seed: int = 0) -> list[tuple[str, bytes]]:
    """Seeded mutants of small valid PNG/JPEG/WebP files: flipped bytes, cut tails, spliced junk, with EXIF."""
    import random

    rng = random.Random(seed)
    bases = []
    for fmt in ("PNG", "JPEG", "WEBP"):
        out = io.BytesIO()
        Image.new("RGB", (24, 16), (120, 60, 30)).save(out, format=fmt, exif=Image.Exif())
        bases.append((fmt, out.getvalue()))
        bases.append((fmt, image_bytes((20, 20), fmt=fmt, seed=1)))
    mutants = []
    for i in range(n):
        fmt, data = bases[i % len(bases)]
        b = bytearray(data)
        kind = rng.choice(("flip", "cut", "splice"))
        if kind == "flip":
            for _ in range(rng.randint(1, 8)):
                pos = rng.randrange(8, len(b))  # keep the magic bytes: past the sniffer, into the decoder
                b[pos] = rng.randrange(256)
        elif kind == "cut":
            b = b[: rng.randrange(8, len(b))]
        else:
            pos = rng.randrange(8, len(b))
            b[pos:pos] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 64)))
        mutants.append((fmt, bytes(b)))
    return mutants


def test_mutated_uploads_never_crash_the_api(api, redis_client):
    """300 corrupted images: each is accepted (202) or refused with a 4xx and a reason, never a 5xx."""
    statuses: dict[int, int] = {}
    with httpx.Client(base_url=api, timeout=30) as client:
        for fmt, data in _mutations(300):
            r = client.post("/restore", files={"image": (f"x.{fmt.lower()}", data, "application/octet-stream")})
            statuses[r.status_code] = statuses.get(r.status_code, 0) + 1
            assert r.status_code < 500, (fmt, r.status_code, r.text)
            if r.status_code == 202:
                redis_client.flushdb()  # keep the queue empty so every mutant reaches the decoder, not the cap
            else:
                assert r.json()["detail"]
    assert set(statuses) <= {202, 415, 422}, statuses
    assert statuses.get(422, 0) > 0  # the corpus does reach the decoder's error paths
