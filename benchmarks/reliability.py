"""Reliability figures of the service, measured on real processes: bad inputs, injected faults, load.

Nothing is faked. The script starts a real API (`python -m service`), real workers (`python -m worker`, on a
tiny random-weight diffusion prior built on the CPU by `tests/tiny_models.py`) and real `redis-server`
processes, talks to them over sockets, and stops every process it started (try/finally), even on failure.

1. **Bad inputs** — a few hundred bad requests of named kinds to `POST /restore` (and to the job routes) on
   an API with bearer tokens on: not multipart, types sniffed from the bytes, empty/truncated files, seeded
   byte mutations of valid PNG/JPEG/WebP files, decompression-bomb headers, bodies over the byte cap
   (Content-Length and chunked), bad forms and parameters, too many checkpoints, webhooks to internal
   addresses, missing/wrong tokens, bad job ids, a stalled upload. Per kind: the statuses seen, the expected
   ones, the share answered with one of them. A mutant that still decodes (PIL opens and loads it here) may
   be accepted (202): it is counted as "accepted (still a valid image)", not as an error; a 202 for a file
   PIL cannot decode is counted wrong. Total 5xx must be 0.
2. **Faults** — per scenario: jobs submitted, jobs lost (not in a terminal status, or gone, within
   `JOB_DEADLINE_S` of the fault; must be 0) and the longest time from the fault to a job's terminal
   status. Job states are read straight from the Redis hashes (`upzir:job:{id}`) every `POLL_S`, so API
   outages do not blind the measurement. Scenarios: worker SIGKILL mid-job (`UPZIR_ON_WORKER_LOST=fail`
   and `=requeue`), a ticket popped from `rq:queue:restore` by a "worker" that never started it, Redis
   restarts with AOF (down 1 s, and three times 4 s — longer than the heartbeat bound), a Redis at its
   `maxmemory` (noeviction), an API killed mid-upload with a retried Idempotency-Key, and SIGTERM to a
   worker with jobs queued (`UPZIR_SHUTDOWN=finish`). "As expected" is judged per scenario; the exit status
   is non-zero only when a part could not run to the end.
3. **Load** — N concurrent submissions (asyncio + httpx) to an API with `UPZIR_MAX_QUEUE_DEPTH=100` and no
   worker, with the default upload slots and with one slot per request: statuses, 202 and 429 counts,
   whether the 429s start only at the cap (the smallest queue depth a 429 names), p50/p99 latency.

The shared Redis (127.0.0.1:6379) is used only as DB 15 (flushed before and after); the fault scenarios run
on private `redis-server`s on free ports. Helpers come from `tests/` (Spawner, tiny model, mutation corpus,
stalled-upload socket): that folder is put on `sys.path` below, nothing there is edited.

    python -m benchmarks.reliability --out benchmarks/results/reliability
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import random
import shutil
import signal
import socket
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from benchmarks.common import REPO_ROOT, command_line, fmt, header_md, machine, write_json

# The fixtures' helpers (real-process Spawner, tiny prior, fuzz corpus) live in tests/; import them from there.
sys.path.insert(0, str(REPO_ROOT / "tests"))

from conftest import Proc, Spawner, free_port, image_bytes  # noqa: E402
from test_hardening import ALPHA, BETA, noise_png, read_status, stalled_upload  # noqa: E402
from test_service_api import _mutations, png_with_header  # noqa: E402
from tiny_models import make_tiny_uncond_ldm  # noqa: E402

SHARED_REDIS_URL = "redis://127.0.0.1:6379/15"
"""DB 15 of the shared Redis: ours alone (the test suite uses 13), flushed before and after."""

TERMINAL = frozenset({"succeeded", "failed", "canceled"})
PREFIX = "upzir"
QUEUE_KEY = "rq:queue:restore"

POLL_S = 0.05
"""Job-state polling period: 50 ms resolution on every fault-to-terminal figure."""

JOB_DEADLINE_S = 150.0
"""Generous deadline after a fault for every job to end: a tiny job takes seconds, a worker start ~30 s on
2 shared cores; a job still not terminal after this is counted lost."""

START_TIMEOUT_S = 180.0
"""Worker start (torch import + model load) while other workers and tests share the 2 cores."""

FAST_ENV: dict[str, Any] = {
    "heartbeat_s": 0.5,
    "worker_lost_after_s": 3,
    "reaper_interval_s": 0.5,
    "redis_timeout_s": 1,
    "worker_metrics_port": 0,
    "device": "cpu",
    "judge": "piqe",
}
"""Short heartbeats so a dead worker is noticed in 3.5 s (lost_after + reaper interval), not 35 s; the judge
is PIQE (no weights to download); no worker metrics port (several workers share the machine)."""

QUICK: dict[str, Any] = {"preset": "fast", "steps": 4, "checkpoint_every": 4, "dqr": "off", "seed": 1}
"""Under a second on a warm worker (tiny prior, 32×32: ~40-100 ms a step on these 2 cores)."""

MEDIUM: dict[str, Any] = {"preset": "fast", "steps": 60, "checkpoint_every": 30, "dqr": "off", "seed": 2}
"""~3-10 s (more while another worker loads): long enough to be caught `processing` and to outlast a
fault, then it finishes."""

SPANNING: dict[str, Any] = {"preset": "fast", "dqr": "off", "seed": 4}
"""The Redis-restart job: its steps are set from the measured step rate so that it runs ~SPAN_S, i.e. is
still running when Redis comes back (a job that ends during the outage tests nothing)."""

SPAN_S = 10.0
"""Work of the Redis-restart job, in seconds: the longest outage (4 s) plus time to run on after it."""

DEFAULT_STEP_RATE = 10.0
"""Steps per second assumed when none could be measured (tiny prior, 32×32, 2 busy cores: 5-25)."""

LONG: dict[str, Any] = {"preset": "fast", "steps": 1000, "checkpoint_every": 500, "dqr": "off", "seed": 3}
"""A minute or more of work: only ever killed."""

BOUND_SLACK_S = 0.2
"""Measurement slack on the reaper's bound: the watcher's poll period (twice) and signal delivery."""

REDIS_DOWN_S = (1.0, 4.0, 4.0, 4.0)
"""How long Redis stays down in each restart run: 1 s is a quick restart (shorter than worker_lost_after_s =
3 s); 4 s is longer, so the heartbeat keys expire during the outage — the hard case, run three times because
its outcome depends on a race (does a reaper or the worker's next heartbeat reach the restarted Redis first)."""

SIDE, OTHER_SIDE = 32, 48
"""Running jobs use 32×32 images, jobs meant to stay queued 48×48: a different canvas cannot join the
running job's batch (workers batch same-canvas jobs), so "queued" stays queued."""

UPLOAD_CAP = 200_000
"""Byte cap of the bad-input API: oversize bodies are cheap to send."""

PIXEL_CAP = 1_000_000
"""Pixel cap of the bad-input API (1 MP): a 1001×1000 header is just over it."""

IDLE_S = 1.0
"""Upload idle timeout of the bad-input API: a stalled upload is refused (408) after 1 s, not 10 s."""

FUZZ_DEFAULT = 210
"""Seeded mutants: 35 of each of the 6 base files (PNG/JPEG/WebP, with and without EXIF), ~10 s to send."""

LOAD_DEFAULT = 200
"""Concurrent submissions: twice the queue cap, so half must be refused (429)."""

LOAD_QUEUE_CAP = 100
"""UPZIR_MAX_QUEUE_DEPTH of the load API (its default)."""

OOM_MAXMEMORY = "4mb"
"""Private Redis for the OOM scenario: ~1 MB is Redis itself, the rest fills with ~10-15 uploads."""

OOM_UPLOAD_SIDE = 256
"""Noise PNG of 256² (~197 KB, incompressible); sampled at 64² (`max_pixels=4096`) to stay cheap."""

OOM_HOLD_S = 15.0
"""How long Redis stays full before the operator's relief (`CONFIG SET maxmemory 0`)."""


# --- small helpers --------------------------------------------------------------------------------------


def pct(values: list[float], q: float) -> float | None:
    """q-th percentile (nearest rank), None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * len(ordered) + 0.5) - 1))]


def multipart(parts: Iterable[tuple[str, str | None, bytes]], boundary: str = "relbound", close: bool = True) -> bytes:
    """A multipart/form-data body from (name, filename or None, payload) parts, built by hand so it can be
    malformed on purpose (duplicate parts, non-UTF-8 fields, no closing boundary)."""
    out = bytearray()
    for name, filename, payload in parts:
        disp = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename is not None else "")
        out += f"--{boundary}\r\nContent-Disposition: {disp}\r\n".encode()
        if filename is not None:
            out += b"Content-Type: application/octet-stream\r\n"
        out += b"\r\n" + payload + b"\r\n"
    if close:
        out += f"--{boundary}--\r\n".encode()
    return bytes(out)


def multipart_headers(boundary: str = "relbound", token: str | None = ALPHA) -> dict[str, str]:
    headers = {"Content-Type": f"multipart/form-data; boundary={boundary}"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    return headers


def decodes(data: bytes) -> bool:
    """Independent oracle for accepted mutants: does PIL open and fully load it?"""
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as img:
            img.load()
        return True
    except Exception:
        return False


def jpeg_bomb(side: int = 60_000) -> bytes:
    """A small valid JPEG whose SOF0 header is patched to claim side×side pixels."""
    data = bytearray(image_bytes((16, 16), fmt="JPEG"))
    sof = data.find(b"\xff\xc0")
    data[sof + 5 : sof + 9] = side.to_bytes(2, "big") + side.to_bytes(2, "big")
    return bytes(data)


def raw_http(base: str, head: bytes, body: Iterable[bytes] = (), timeout: float = 10.0) -> int:
    """Send a hand-written request over a socket (Content-Length lies, chunked bodies); the status code."""
    host, port = base.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=timeout) as sock:
        sock.sendall(head)
        for chunk in body:
            try:
                sock.sendall(chunk)
            except OSError:  # the server answered and closed early: read its answer
                break
        data = sock.recv(4096)
    return int(data.split(b" ", 2)[1])


def submit(
    base: str,
    side: int = SIDE,
    img_seed: int = 0,
    headers: dict[str, str] | None = None,
    image: bytes | None = None,
    **fields: Any,
) -> httpx.Response:
    """POST /restore with a noise image (`side`², `img_seed`) or `image`, and form `fields`."""
    files = {"image": ("in.png", image if image is not None else image_bytes((side, side), seed=img_seed), "image/png")}
    return httpx.post(
        f"{base}/restore", files=files, data={k: str(v) for k, v in fields.items()}, headers=headers, timeout=30
    )


def submit_job(base: str, side: int = SIDE, img_seed: int = 0, **fields: Any) -> str:
    r = submit(base, side, img_seed, **fields)
    if r.status_code != 202:
        raise RuntimeError(f"submission refused: {r.status_code} {r.text[:300]}")
    return r.json()["id"]


def job_fields(client: redis.Redis, job_id: str, *names: str) -> list[str | None]:
    values = client.hmget(f"{PREFIX}:job:{job_id}", list(names))
    return [v.decode() if v is not None else None for v in values]


def wait_running(client: redis.Redis, job_id: str) -> None:
    """Until the job is `processing` with a step done and its worker's heartbeat lists it (fails fast if it
    ended instead): a fault injected after this hits a job that everyone agrees is running."""

    def running() -> bool:
        status, step, worker = job_fields(client, job_id, "status", "step", "worker")
        if status in TERMINAL:
            raise RuntimeError(f"job {job_id} ended ({status}) before it was seen running")
        if status != "processing" or int(step or 0) < 1:
            return False
        beat = client.get(f"{PREFIX}:worker:{worker}")
        return beat is not None and job_id in json.loads(beat).get("jobs", [])

    deadline = time.monotonic() + START_TIMEOUT_S  # not conftest.wait_for: it would poll on past the RuntimeError
    while not running():
        if time.monotonic() > deadline:
            raise RuntimeError(f"job {job_id} was not seen running within {START_TIMEOUT_S:g} s")
        time.sleep(POLL_S)


def step_rate(client: redis.Redis, job_id: str) -> float | None:
    """Steps per second of a finished job, over its whole run (its first steps, unguided, are cheaper)."""
    run_s, steps = job_fields(client, job_id, "run_s", "steps_run")
    return round(int(steps) / float(run_s), 2) if run_s and steps and float(run_s) > 0 else None


# --- job tracking -----------------------------------------------------------------------------------------


@dataclass
class Track:
    """What the watcher saw of one job: when it was re-queued (attempt went up) and when it ended."""

    job_id: str
    attempt: int | None = None
    status: str | None = None
    worker: str | None = None
    requeued_at: float | None = None
    ended_at: float | None = None
    error: str | None = None


class Watcher(threading.Thread):
    """Polls job hashes in Redis every POLL_S from its own thread (Redis errors — a restart — are waited out)."""

    def __init__(self, redis_port: int, ids: Iterable[str]) -> None:
        super().__init__(daemon=True)
        # no retries: a poll during an outage fails at once instead of returning post-outage data late
        self.client = redis.Redis(
            port=redis_port, socket_timeout=1, socket_connect_timeout=1, retry=Retry(NoBackoff(), 0)
        )
        self.tracks = {job_id: Track(job_id) for job_id in ids}
        self._stop_event = threading.Event()
        self.lock = threading.Lock()

    def add(self, job_id: str) -> None:
        with self.lock:
            self.tracks.setdefault(job_id, Track(job_id))

    def poll(self) -> None:
        with self.lock:
            tracks = list(self.tracks.values())
        pipe = self.client.pipeline(transaction=False)
        for t in tracks:
            pipe.hmget(f"{PREFIX}:job:{t.job_id}", ["status", "attempt", "worker", "error"])
        rows = pipe.execute()
        now = time.monotonic()  # after the answer: what it says was true by now
        for t, (status, attempt, worker, error) in zip(tracks, rows):
            if status is None:
                t.status = None  # unknown or gone
                continue
            t.status = status.decode()
            att = int(attempt or 1)
            if t.attempt is not None and att > t.attempt and t.requeued_at is None:
                t.requeued_at = now
            t.attempt = att if t.attempt is None else max(t.attempt, att)
            t.worker = worker.decode() if worker else t.worker
            t.error = error.decode() if error else None
            if t.status in TERMINAL and t.ended_at is None:
                t.ended_at = now

    def run(self) -> None:
        while not self._stop_event.is_set():
            try:
                self.poll()
            except redis.RedisError:
                pass
            self._stop_event.wait(POLL_S)

    def ended(self, ids: Iterable[str] | None = None) -> bool:
        with self.lock:
            chosen = [self.tracks[i] for i in ids] if ids is not None else list(self.tracks.values())
        return all(t.ended_at is not None for t in chosen)

    def finish(self, deadline: float, ids: Iterable[str] | None = None) -> dict[str, Track]:
        """Wait (until monotonic `deadline`) for the jobs to end, stop polling, return what was seen."""
        wanted = list(ids) if ids is not None else None
        while time.monotonic() < deadline and not self.ended(wanted):
            time.sleep(POLL_S)
        self._stop_event.set()
        self.join(5)
        self.client.close()
        return self.tracks


@dataclass
class FaultResult:
    scenario: str
    submitted: int
    lost: int
    max_fault_to_terminal_s: float | None
    expectation: str
    ok: bool
    outcomes: dict[str, int]
    details: dict[str, Any] = field(default_factory=dict)


def summarise(
    scenario: str, tracks: dict[str, Track], fault_at: float, expectation: str, ok: bool, **details: Any
) -> FaultResult:
    lost = sum(1 for t in tracks.values() if t.ended_at is None or t.status is None)
    ends = [t.ended_at - fault_at for t in tracks.values() if t.ended_at is not None]
    outcomes = Counter(t.status or "gone" for t in tracks.values())
    return FaultResult(
        scenario,
        len(tracks),
        lost,
        round(max(ends), 2) if ends else None,
        expectation,
        ok and lost == 0,
        dict(outcomes),
        details,
    )


# --- 1. bad inputs ----------------------------------------------------------------------------------------


@dataclass
class KindResult:
    kind: str
    route: str
    expected: list[int]
    statuses: Counter = field(default_factory=Counter)
    right: int = 0
    accepted_valid: int = 0
    wrong: list[str] = field(default_factory=list)

    @property
    def count(self) -> int:
        return sum(self.statuses.values())

    def row(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "route": self.route,
            "count": self.count,
            "statuses": {str(k): v for k, v in sorted(self.statuses.items(), key=lambda kv: str(kv[0]))},
            "expected": self.expected,
            "right_4xx": self.right,
            "accepted_still_valid": self.accepted_valid,
            "wrong": len(self.wrong),
            "share_ok": round((self.right + self.accepted_valid) / max(self.count, 1), 4),
            "wrong_examples": self.wrong[:5],
        }


Probe = tuple[str, Callable[[], int], bytes | None]
"""(label, send → status code, image bytes when a 202 is acceptable if they decode)."""


class BadInputs:
    """Sends every probe of every kind and tallies the answers."""

    def __init__(self, base: str) -> None:
        self.base = base
        self.http = httpx.Client(base_url=base, timeout=30, headers={"Authorization": f"Bearer {ALPHA}"})
        self.kinds: list[KindResult] = []

    def post_image(
        self,
        image: bytes,
        filename: str = "in.png",
        ctype: str = "image/png",
        data: dict[str, str] | None = None,
        headers: dict[str, str] | None = None,
    ) -> int:
        files = {"image": (filename, image, ctype)}
        return self.http.post("/restore", files=files, data=data or {}, headers=headers).status_code

    def post_raw(self, body: bytes, headers: dict[str, str]) -> int:
        return self.http.post("/restore", content=body, headers=headers).status_code

    def form(self, parts: list[tuple[str, str | None, bytes]], close: bool = True) -> int:
        """A hand-built multipart body (see `multipart`), with the token."""
        return self.post_raw(multipart(parts, close=close), multipart_headers())

    def socket_post(self, extra_headers: str, body: Iterable[bytes] = ()) -> int:
        """A hand-written POST /restore over a socket (for Content-Length lies and chunked bodies)."""
        head = (
            f"POST /restore HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer {ALPHA}\r\n"
            f"Content-Type: multipart/form-data; boundary={RAW_BOUNDARY}\r\n{extra_headers}\r\n"
        )
        return raw_http(self.base, head.encode(), body)

    def post_as(self, image: bytes, headers: dict[str, str]) -> int:
        """POST /restore with exactly `headers` (no default token)."""
        files = {"image": ("a.png", image, "image/png")}
        return httpx.post(f"{self.base}/restore", files=files, headers=headers, timeout=10).status_code

    def call(self, method: str, path: str, headers: dict[str, str] | None = None) -> int:
        """Any route, with exactly `headers` (no default token)."""
        return httpx.request(method, f"{self.base}{path}", headers=headers, timeout=10).status_code

    def run(self, kind: str, route: str, expected: set[int], probes: Iterable[Probe]) -> None:
        result = KindResult(kind, route, sorted(expected))
        for label, send, image in probes:
            try:
                status: int | str = send()
            except (httpx.HTTPError, OSError, ValueError, IndexError) as exc:
                status = f"error:{type(exc).__name__}"
            result.statuses[status] += 1
            if status in expected:
                result.right += 1
            elif status == 202 and image is not None and decodes(image):
                result.accepted_valid += 1
            else:
                result.wrong.append(f"{label} → {status}")
        self.kinds.append(result)

    def close(self) -> None:
        self.http.close()


RAW_BOUNDARY = "capboundary"


def _truncations() -> list[tuple[str, bytes]]:
    out = []
    for fmt_name in ("PNG", "JPEG", "WEBP"):
        data = image_bytes((40, 40), fmt=fmt_name, seed=3)
        for frac in (0.1, 0.25, 0.5, 0.75, 0.9, 0.98):
            out.append((f"{fmt_name} cut at {frac:.0%}", data[: max(12, int(len(data) * frac))]))
        out.append((f"{fmt_name} magic only", data[:12]))
    return out


def _chunked_over_cap() -> list[bytes]:
    """A chunked body that crosses the cap; the terminating 0-chunk is never sent."""
    part_head = (
        f'--{RAW_BOUNDARY}\r\nContent-Disposition: form-data; name="image"; filename="a.png"\r\n'
        "Content-Type: image/png\r\n\r\n"
    ).encode() + b"\x89PNG\r\n\x1a\n"
    chunk = b"\0" * 16_384
    return [f"{len(part_head):x}\r\n".encode() + part_head + b"\r\n"] + [
        f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n"
    ] * (UPLOAD_CAP // len(chunk) + 6)


def _file_probes(b: BadInputs, fuzz: int, png: bytes) -> None:
    """What the upload is: not a form, not an image, empty, truncated, mutated, a bomb."""
    b.run(
        "not multipart",
        "POST /restore",
        {415},
        [
            ("raw PNG body", lambda: b.post_raw(png, {"Content-Type": "image/png"}), None),
            ("JSON body", lambda: b.post_raw(b'{"image": "x"}', {"Content-Type": "application/json"}), None),
            (
                "urlencoded form",
                lambda: b.post_raw(b"image=abc", {"Content-Type": "application/x-www-form-urlencoded"}),
                None,
            ),
            ("no content type", lambda: b.post_raw(png, {}), None),
            ("multipart without boundary", lambda: b.post_raw(png, {"Content-Type": "multipart/form-data"}), None),
        ],
    )
    not_images = {
        "text": b"just some text, certainly not pixels",
        "GIF": image_bytes(fmt="GIF"),
        "BMP": image_bytes(fmt="BMP"),
        "TIFF": image_bytes(fmt="TIFF"),
        "PDF": b"%PDF-1.7\n%\xe2\xe3" * 8,
        "ZIP": b"PK\x03\x04" + b"\0" * 60,
        "random bytes": random.Random(0).randbytes(512),
    }
    b.run(
        "type sniffed from the bytes",
        "POST /restore",
        {415},
        [(name, partial(b.post_image, data, "looks-fine.png"), None) for name, data in not_images.items()],
    )
    b.run("empty file", "POST /restore", {422}, [("0 bytes", lambda: b.post_image(b""), None)])
    b.run(
        "truncated image",
        "POST /restore",
        {422},
        [(label, partial(b.post_image, d, "t.bin", "application/octet-stream"), d) for label, d in _truncations()],
    )
    b.run(
        f"mutated image (seeded, {fuzz})",
        "POST /restore",
        {415, 422},
        [
            (f"mutant {i} ({f})", partial(b.post_image, d, f"x.{f.lower()}", "application/octet-stream"), d)
            for i, (f, d) in enumerate(_mutations(fuzz, seed=7))
        ],
    )
    b.run(
        "decompression-bomb header / over the pixel cap",
        "POST /restore",
        {422},
        [
            ("PNG IHDR 100000²", lambda: b.post_image(png_with_header(100_000, 100_000)), None),
            ("PNG IHDR 65535²", lambda: b.post_image(png_with_header(65_535, 65_535)), None),
            ("PNG IHDR 1001×1000 (just over the cap)", lambda: b.post_image(png_with_header(1001, 1000)), None),
            ("PNG IHDR 0×16", lambda: b.post_image(png_with_header(0, 16)), None),
            ("JPEG SOF 60000²", lambda: b.post_image(jpeg_bomb(), "b.jpg"), None),
        ],
    )


def _form_probes(b: BadInputs, png: bytes) -> None:
    """How the body is sent and what the form says: sizes, structure, fields, parameters, webhooks."""
    image = ("image", "a.png", png)
    b.run(
        "body over the byte cap",
        "POST /restore",
        {413},
        [
            ("Content-Length 10× the cap", lambda: b.socket_post(f"Content-Length: {UPLOAD_CAP * 10}\r\n"), None),
            ("Content-Length 1 GB", lambda: b.socket_post("Content-Length: 1000000000\r\n"), None),
            (
                "chunked, no length, past the cap",
                lambda: b.socket_post("Transfer-Encoding: chunked\r\n", _chunked_over_cap()),
                None,
            ),
            (
                "ordinary client, image 1 byte over",
                lambda: b.post_image(b"\x89PNG\r\n\x1a\n" + b"\0" * UPLOAD_CAP),
                None,
            ),
            ("form field over 2048 bytes", lambda: b.post_image(png, data={"preset": "x" * 3000}), None),
        ],
    )
    many: list[tuple[str, str | None, bytes]] = [image] + [(f"f{i}", None, b"1") for i in range(40)]
    b.run(
        "too many form parts",
        "POST /restore",
        {422},
        [("41 parts", lambda: b.form(many), None), ("205 parts", lambda: b.form(many * 5), None)],
    )
    b.run(
        "bad form structure",
        "POST /restore",
        {400, 422},
        [
            ("no image field", lambda: b.form([("picture", "a.png", png)]), None),
            ("two image files", lambda: b.form([image, ("image", "b.png", png)]), None),
            ("field sent twice", lambda: b.form([image, ("seed", None, b"1"), ("seed", None, b"2")]), None),
            ("non-UTF-8 field", lambda: b.form([image, ("preset", None, b"\xff\xfe")]), None),
            ("no closing boundary", lambda: b.form([image], close=False), None),
            ("body is not multipart", lambda: b.post_raw(b"hello" * 50, multipart_headers()), None),
            (
                "part without a name",
                lambda: b.post_raw(
                    b"--relbound\r\nContent-Disposition: form-data\r\n\r\nx\r\n--relbound--\r\n", multipart_headers()
                ),
                None,
            ),
            ("Content-Length not a number", lambda: b.socket_post("Content-Length: abc\r\n"), None),
            ("Idempotency-Key of 300 chars", lambda: b.post_image(png, headers={"Idempotency-Key": "k" * 300}), None),
        ],
    )
    unknown = (("stepz", "3"), ("Steps", "4"), ("lambda_deg", "0"), ("model", "other"))
    b.run(
        "unknown form field",
        "POST /restore",
        {422},
        [(f"{n}={v!r}", partial(b.post_image, png, data={n: v}), None) for n, v in unknown]
        + [("extra file field", lambda: b.form([image, ("mask", "m.png", png)]), None)],
    )
    bad_params = [
        {"seed": "-1"},
        {"seed": str(2**32)},
        {"seed": "abc"},
        {"seed": "1.5"},
        {"steps": "0"},
        {"steps": "1001"},
        {"steps": "many"},
        {"checkpoint_every": "0"},
        {"max_rounds": "0"},
        {"max_rounds": "11"},
        {"eta": "2"},
        {"eta": "-0.1"},
        {"eta": "nan"},
        {"eta": "inf"},
        {"dqr": "maybe"},
        {"preset": "turbo"},
        {"max_pixels": "10"},
        {"max_pixels": str(2**40)},
        {"steps": "4", "checkpoint_every": "9"},
        {"webhook": "not a url"},
        {"webhook": "ftp://example.com/hook"},
        {"webhook": "javascript:alert(1)"},
    ]
    b.run(
        "bad parameter values",
        "POST /restore",
        {422},
        [(str(p), partial(b.post_image, png, data=p), None) for p in bad_params],
    )
    too_many = (
        {"steps": "1000", "checkpoint_every": "1", "max_rounds": "10", "dqr": "on"},
        {"steps": "1000", "checkpoint_every": "1", "dqr": "off"},
        {"preset": "paper", "checkpoint_every": "2"},
    )
    b.run(
        "too many checkpoints",
        "POST /restore",
        {422},
        [(str(p), partial(b.post_image, png, data=p), None) for p in too_many],
    )
    hooks = [
        "http://127.0.0.1:9/hook",
        "http://localhost/hook",
        "http://169.254.169.254/latest/meta-data/",
        "http://10.0.0.1/hook",
        "http://192.168.1.10/hook",
        "http://172.16.0.1/hook",
        "http://100.64.0.1/hook",
        "http://[::1]/hook",
        "http://[::ffff:127.0.0.1]/hook",
        "http://[fd00:ec2::254]/",
        "http://0.0.0.0/hook",
        "http://2130706433/hook",
        "http://no-such-host.invalid/hook",
    ]
    b.run(
        "webhook to an internal address",
        "POST /restore",
        {422},
        [(url, partial(b.post_image, png, data={"webhook": url}), None) for url in hooks],
    )


def _route_probes(b: BadInputs, png: bytes, job: str) -> None:
    """Who asks and for what: tokens, job ids (`job` is a real job of ALPHA's), routes, a stalled body."""
    mine, other = {"Authorization": f"Bearer {ALPHA}"}, {"Authorization": f"Bearer {BETA}"}
    auth: list[Probe] = []
    for label, hdrs in (
        ("no token", {}),
        ("wrong token", {"Authorization": "Bearer nope"}),
        ("Basic scheme", {"Authorization": f"Basic {ALPHA}"}),
        ("empty Bearer", {"Authorization": "Bearer"}),
    ):
        auth.append((f"POST /restore, {label}", partial(b.post_as, png, hdrs), None))
        for method, path in (
            ("GET", f"/jobs/{job}"),
            ("GET", f"/jobs/{job}/result"),
            ("GET", f"/jobs/{job}/events"),
            ("POST", f"/jobs/{job}/cancel"),
        ):
            auth.append((f"{method} {path}, {label}", partial(b.call, method, path, hdrs), None))
    b.run("missing or wrong bearer token", "/restore, /jobs/*", {401}, auth)
    ids = [
        ("GET", "/jobs/nope", mine),
        ("GET", "/jobs/" + "a" * 65, mine),
        ("GET", "/jobs/bad.id", mine),
        ("GET", "/jobs/%20", mine),
        ("GET", "/jobs/a%2Fb", mine),
        ("GET", "/jobs/nope/result", mine),
        ("GET", "/jobs/nope/events", mine),
        ("POST", "/jobs/nope/cancel", mine),
        ("GET", "/jobs/nope/checkpoints/0/preview", mine),
        ("GET", f"/jobs/{job}/checkpoints/-1/preview", mine),
        ("GET", f"/jobs/{job}/checkpoints/x/preview", mine),
        ("GET", f"/jobs/{job}/checkpoints/100001/preview", mine),
        ("GET", f"/jobs/{job}/result?format=gif", mine),
        ("GET", f"/jobs/{job}", other),
        ("POST", f"/jobs/{job}/cancel", other),
        ("GET", f"/jobs/{job}/result", other),
    ]
    b.run(
        "bad job ids / another token's job",
        "/jobs/*",
        {404, 422},
        [(f"{m} {p}{' (other token)' if h is other else ''}", partial(b.call, m, p, h), None) for m, p, h in ids],
    )
    b.run(
        "unknown route or method",
        "*",
        {404, 405},
        [
            ("GET /restore", lambda: b.http.get("/restore").status_code, None),
            ("DELETE /jobs/{id}", lambda: b.http.delete(f"/jobs/{job}").status_code, None),
            ("GET /admin", lambda: b.http.get("/admin").status_code, None),
            ("PUT /restore", lambda: b.http.put("/restore", content=png).status_code, None),
        ],
    )
    b.run("stalled upload", "POST /restore", {408}, [(f"stall #{i}", lambda: _stalled(b.base), None) for i in range(2)])


def run_bad_inputs(spawner: Spawner, fuzz: int) -> dict[str, Any]:
    """Bad requests of named kinds against an API with tokens on; see the module docstring."""
    redis.Redis.from_url(SHARED_REDIS_URL).flushdb()
    _, base = spawner.api(
        redis_url=SHARED_REDIS_URL,
        api_tokens=f"{ALPHA},{BETA}",
        max_upload_bytes=UPLOAD_CAP,
        max_pixels=PIXEL_CAP,
        upload_idle_timeout_s=IDLE_S,
        upload_timeout_s=4 * IDLE_S,
        max_queue_depth=100_000,
        api_reaper=False,
    )
    b = BadInputs(base)
    png = image_bytes((SIDE, SIDE))
    try:
        _file_probes(b, fuzz, png)
        _form_probes(b, png)
        setup = b.http.post("/restore", files={"image": ("a.png", image_bytes((SIDE, SIDE), seed=99), "image/png")})
        if setup.status_code != 202:
            raise RuntimeError(f"a valid upload was refused: {setup.status_code} {setup.text[:200]}")
        _route_probes(b, png, setup.json()["id"])
        ok_after = b.post_image(image_bytes((SIDE, SIDE), seed=5))  # the API still takes a good upload
    finally:
        b.close()
    rows = [k.row() for k in b.kinds]
    statuses: Counter = Counter()
    for k in b.kinds:
        statuses.update(k.statuses)
    return {
        "total": sum(r["count"] for r in rows),
        "total_5xx": sum(v for s, v in statuses.items() if isinstance(s, int) and s >= 500),
        "transport_errors": sum(v for s, v in statuses.items() if isinstance(s, str)),
        "accepted_still_valid": sum(r["accepted_still_valid"] for r in rows),
        "wrong": sum(r["wrong"] for r in rows),
        "good_upload_after": ok_after,
        "kinds": rows,
    }


def _stalled(base: str) -> int:
    sock = stalled_upload(base, declared=100_000)  # headers + 1 kB of a declared 100 kB body, then silence
    try:
        return read_status(sock, timeout=IDLE_S + 10)
    finally:
        sock.close()


# --- 3. load ----------------------------------------------------------------------------------------------


def run_load(spawner: Spawner, n: int, label: str, **env: Any) -> dict[str, Any]:
    """n concurrent submissions to an API capped at LOAD_QUEUE_CAP queued jobs, no worker (`env`: more settings)."""
    client = redis.Redis.from_url(SHARED_REDIS_URL)
    client.flushdb()
    proc, base = spawner.api(redis_url=SHARED_REDIS_URL, max_queue_depth=LOAD_QUEUE_CAP, api_reaper=False, **env)
    image = image_bytes((SIDE, SIDE))
    t0 = time.perf_counter()
    answers = asyncio.run(_load(base, n, image))
    wall = time.perf_counter() - t0
    depth = int(client.llen(QUEUE_KEY))
    client.flushdb()
    client.close()
    proc.stop()
    codes = Counter(a[0] for a in answers)
    lat = [a[1] for a in answers]
    full_depths = [int(a[2].split("(")[1].split(" ")[0]) for a in answers if a[0] == 429 and "queue is full (" in a[2]]
    return {
        "config": label,
        "concurrency": n,
        "queue_cap": LOAD_QUEUE_CAP,
        "wall_s": round(wall, 2),
        "statuses": {str(k): v for k, v in sorted(codes.items(), key=lambda kv: str(kv[0]))},
        "accepted_202": codes.get(202, 0),
        "refused_429": codes.get(429, 0),
        "other_errors": sum(v for k, v in codes.items() if k not in (202, 429)),
        "other_error_details": sorted({f"{a[0]}: {a[2][:160]}" for a in answers if a[0] not in (202, 429)})[:5],
        "queue_depth_after": depth,
        "min_depth_reported_in_429": min(full_depths) if full_depths else None,
        "latency_p50_s": round(pct(lat, 50) or 0, 3),
        "latency_p99_s": round(pct(lat, 99) or 0, 3),
        "latency_max_s": round(max(lat), 3),
        "latency_p50_by_status_s": {
            str(c): round(pct([a[1] for a in answers if a[0] == c], 50) or 0, 3) for c in codes
        },
    }


async def _load(base: str, n: int, image: bytes) -> list[tuple[int | str, float, str]]:
    limits = httpx.Limits(max_connections=n, max_keepalive_connections=n)
    async with httpx.AsyncClient(base_url=base, timeout=120, limits=limits) as client:
        go = asyncio.Event()

        async def one() -> tuple[int | str, float, str]:
            await go.wait()
            t0 = time.perf_counter()
            try:
                r = await client.post(
                    "/restore",
                    files={"image": ("in.png", image, "image/png")},
                    data={k: str(v) for k, v in QUICK.items()},
                )
                detail = r.json().get("detail", "") if r.status_code != 202 else ""
                return r.status_code, time.perf_counter() - t0, str(detail)
            except httpx.HTTPError as exc:
                return f"error:{type(exc).__name__}", time.perf_counter() - t0, repr(exc)

        tasks = [asyncio.create_task(one()) for _ in range(n)]
        await asyncio.sleep(0.1)  # every task is waiting on the event: they start together
        go.set()
        return list(await asyncio.gather(*tasks))


# --- 2. faults --------------------------------------------------------------------------------------------


@dataclass
class Stack:
    """A private redis-server with its API and workers, all with the same `UPZIR_*` settings."""

    name: str
    port: int
    env: dict[str, Any]
    redis_args: tuple[str, ...]
    redis_proc: Proc | None = None
    api_proc: Proc | None = None
    api: str = ""
    workers: dict[str, Proc] = field(default_factory=dict)
    step_rate: float = DEFAULT_STEP_RATE  # steps/s of a whole finished job, measured in an earlier scenario

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def client(self) -> redis.Redis:
        return redis.Redis(port=self.port, socket_timeout=2)


def start_stack(
    spawner: Spawner, name: str, model: Path, workers: list[str], redis_args: tuple[str, ...] = (), **env: Any
) -> Stack:
    """Start Redis, then the API and the workers without waiting for them (they load in the background)."""
    stack = Stack(name, free_port(), {}, redis_args)
    stack.env = {**FAST_ENV, "model": str(model), "redis_url": stack.url, **env}
    stack.redis_proc, _ = spawner.redis_server(stack.port, redis_args)
    stack.api_proc, stack.api = spawner.api(wait=False, **stack.env)
    for w in workers:
        stack.workers[w] = spawner.worker(w, wait_ready=False, **stack.env)
    return stack


def wait_stack(stack: Stack) -> None:
    assert stack.api_proc is not None
    Spawner.wait_api_ready(stack.api_proc, stack.api)
    for name, proc in stack.workers.items():
        Spawner.wait_worker_ready(proc, name, stack.url, PREFIX)


def scenario_kill_fail(stack: Stack) -> FaultResult:
    """SIGKILL the worker while its job runs, default UPZIR_ON_WORKER_LOST=fail: failed within the bound."""
    r = stack.client()
    job = submit_job(stack.api, **LONG)
    wait_running(r, job)
    victim = job_fields(r, job, "worker")[0] or ""
    watcher = Watcher(stack.port, [job])
    watcher.start()
    stack.workers[victim].signal(signal.SIGKILL)
    fault = time.monotonic()
    tracks = watcher.finish(fault + JOB_DEADLINE_S)
    bound = FAST_ENV["worker_lost_after_s"] + FAST_ENV["reaper_interval_s"]
    t = tracks[job]
    took = t.ended_at - fault if t.ended_at else None
    ok = t.status == "failed" and took is not None and took <= bound + BOUND_SLACK_S
    return summarise(
        "worker SIGKILL mid-job, on_worker_lost=fail",
        tracks,
        fault,
        f"failed within lost_after + reaper interval = {bound:g} s",
        ok,
        bound_s=bound,
        killed=victim,
        error=t.error,
    )


def scenario_kill_requeue(stack: Stack) -> tuple[FaultResult, str]:
    """SIGKILL the worker running a job, UPZIR_ON_WORKER_LOST=requeue: another worker finishes it."""
    r = stack.client()
    job = submit_job(stack.api, **MEDIUM)
    wait_running(r, job)
    victim = job_fields(r, job, "worker")[0] or ""
    survivor = next(w for w in stack.workers if w != victim)
    watcher = Watcher(stack.port, [job])
    watcher.start()
    stack.workers[victim].signal(signal.SIGKILL)
    fault = time.monotonic()
    tracks = watcher.finish(fault + JOB_DEADLINE_S)
    t = tracks[job]
    ok = t.status == "succeeded" and t.worker == survivor and t.attempt == 2
    res = summarise(
        "worker SIGKILL mid-job, on_worker_lost=requeue",
        tracks,
        fault,
        "re-queued within 3.5 s, then succeeded on the other worker",
        ok,
        killed=victim,
        finished_by=t.worker,
        attempt=t.attempt,
        fault_to_requeued_s=round(t.requeued_at - fault, 2) if t.requeued_at else None,
        steps_per_s=step_rate(r, job),
    )
    return res, survivor


def scenario_orphan_ticket(stack: Stack) -> FaultResult:
    """A worker took the RQ ticket and died before starting the job: simulated by LPOP of the ticket."""
    r = stack.client()
    busy = submit_job(stack.api, **MEDIUM)  # keeps the only worker busy, so nobody else takes the next ticket
    wait_running(r, busy)
    orphan = submit_job(stack.api, side=OTHER_SIDE, img_seed=11, **QUICK)  # another canvas: cannot join busy's batch
    watcher = Watcher(stack.port, [orphan])
    watcher.start()
    popped = r.lpop(QUEUE_KEY)
    fault = time.monotonic()
    popped_s = popped.decode() if popped else None
    tracks = watcher.finish(fault + JOB_DEADLINE_S)
    t = tracks[orphan]
    ok = popped_s == f"{orphan}-1" and t.status == "succeeded" and t.attempt == 2
    return summarise(
        "RQ ticket taken, job never started (LPOP)",
        tracks,
        fault,
        "the reaper re-queues it (≤ 3.5 s), a worker finishes it",
        ok,
        popped=popped_s,
        fault_to_requeued_s=round(t.requeued_at - fault, 2) if t.requeued_at else None,
        note="fault→terminal includes the rest of the job the worker was busy with",
    )


def scenario_api_restart(spawner: Spawner, stack: Stack) -> FaultResult:
    """Kill the API while a client streams a big upload; restart it; the client retries with its key."""
    r = stack.client()
    before = _job_count(r)
    port = free_port()
    proc, base = spawner.api(port=port, **stack.env)
    big = noise_png(512, seed=21)  # ~786 kB
    fields = {**QUICK, "max_pixels": "4096"}
    boundary = "restartbound"
    body = multipart([("image", "big.png", big)] + [(k, None, str(v).encode()) for k, v in fields.items()], boundary)
    headers = {**multipart_headers(boundary, token=None), "Idempotency-Key": "reliability-restart-1"}
    halfway = threading.Event()
    first: dict[str, Any] = {}

    def trickle() -> Iterable[bytes]:
        step = 16_384
        for i in range(0, len(body), step):
            if i >= len(body) // 3:
                halfway.set()
            yield body[i : i + step]
            time.sleep(0.02)

    def upload() -> None:
        try:
            first["status"] = httpx.post(f"{base}/restore", content=trickle(), headers=headers, timeout=30).status_code
        except httpx.HTTPError as exc:
            first["error"] = type(exc).__name__

    thread = threading.Thread(target=upload, daemon=True)
    thread.start()
    halfway.wait(30)
    proc.signal(signal.SIGKILL)
    fault = time.monotonic()
    thread.join(30)
    proc.wait(10)
    created_by_killed = _job_count(r) - before
    proc2, _ = spawner.api(port=port, **stack.env)  # the same port: the client's URL is unchanged
    retry = httpx.post(f"{base}/restore", content=body, headers=headers, timeout=30)
    again = httpx.post(f"{base}/restore", content=body, headers=headers, timeout=30)
    job = retry.json().get("id") if retry.status_code == 202 else None
    jobs_made = _job_count(r) - before
    watcher = Watcher(stack.port, [job] if job else [])
    watcher.start()
    tracks = watcher.finish(fault + JOB_DEADLINE_S)
    proc2.stop()
    same = again.status_code == 202 and again.json().get("id") == job
    ok = first.get("status") is None and retry.status_code == 202 and same and jobs_made == 1
    return summarise(
        "API killed mid-upload, retried with the same Idempotency-Key",
        tracks,
        fault,
        "exactly one job, the replay returns it",
        ok,
        first_attempt=first,
        jobs_created_by_killed_upload=created_by_killed,
        retry_status=retry.status_code,
        replay_status=again.status_code,
        replay_same_job=same,
        replay_header=again.headers.get("Idempotent-Replayed"),
        jobs_created=jobs_made,
        upload_bytes=len(body),
    )


def _job_count(r: redis.Redis) -> int:
    return sum(1 for k in r.scan_iter(f"{PREFIX}:job:*", count=1000) if k.count(b":") == 2)


def scenario_sigterm(spawner: Spawner, stack: Stack, worker: str) -> FaultResult:
    """SIGTERM (UPZIR_SHUTDOWN=finish) to a worker running a job with two queued behind it."""
    r = stack.client()
    running = submit_job(stack.api, **MEDIUM)
    wait_running(r, running)
    queued = [submit_job(stack.api, side=OTHER_SIDE, img_seed=30 + i, **QUICK) for i in range(2)]
    watcher = Watcher(stack.port, [running, *queued])
    watcher.start()
    stack.workers[worker].signal(signal.SIGTERM)
    fault = time.monotonic()
    rc = stack.workers[worker].wait(JOB_DEADLINE_S)
    exited_s = time.monotonic() - fault
    at_exit = {j: job_fields(r, j, "status")[0] for j in queued}
    running_at_exit = job_fields(r, running, "status")[0]
    successor = "b3"  # started only now, so that nothing but the stopping worker could have taken the queue
    stack.workers[successor] = spawner.worker(successor, wait_ready=False, **stack.env)
    tracks = watcher.finish(fault + JOB_DEADLINE_S)
    ok = (
        rc == 0
        and running_at_exit == "succeeded"
        and all(s == "queued" for s in at_exit.values())
        and all(tracks[j].status == "succeeded" and tracks[j].worker == successor for j in queued)
    )
    return summarise(
        "worker SIGTERM with a queue, shutdown=finish",
        tracks,
        fault,
        "running job succeeds, exit 0, queued stay queued, the next worker runs them",
        ok,
        exit_code=rc,
        exit_after_s=round(exited_s, 2),
        running_job_at_exit=running_at_exit,
        queued_at_exit=list(at_exit.values()),
        queued_finished_by=[tracks[j].worker for j in queued],
        note="fault→terminal includes the second worker's start (torch import, model load)",
    )


def scenario_redis_restart(spawner: Spawner, stack: Stack, down_s: float, run: int) -> FaultResult:
    """Stop Redis (SIGTERM: AOF flushed) while one job runs and three wait; `down_s` later start it again on
    the same port and dir."""
    r = stack.client()
    steps = min(1000, max(20, round(stack.step_rate * SPAN_S)))
    running = submit_job(stack.api, **SPANNING, steps=steps, checkpoint_every=steps)
    wait_running(r, running)
    queued = [submit_job(stack.api, side=OTHER_SIDE, img_seed=40 + i, **QUICK) for i in range(3)]
    r.close()
    watcher = Watcher(stack.port, [running, *queued])
    watcher.start()
    assert stack.redis_proc is not None
    fault = time.monotonic()
    down_rc = stack.redis_proc.stop(timeout=30)
    time.sleep(max(0.0, down_s - (time.monotonic() - fault)))
    stack.redis_proc, _ = spawner.redis_server(stack.port, stack.redis_args)
    outage = time.monotonic() - fault
    tracks = watcher.finish(fault + JOB_DEADLINE_S)
    ok = all(t.status == "succeeded" for t in tracks.values())
    return summarise(
        f"Redis restart #{run} (AOF), down {down_s:g} s, 1 running + 3 queued",
        tracks,
        fault,
        "every job ends (none lost); the worker stays alive, so each succeeds",
        ok,
        redis_exit_code=down_rc,
        outage_s=round(outage, 2),
        running_job_steps=steps,
        running_job=f"{tracks[running].status} (attempt {tracks[running].attempt})",
        jobs=[
            f"{t.job_id[:8]} {t.status} after {fmt(t.ended_at - fault if t.ended_at else None)} s"
            for t in tracks.values()
        ],
        errors={t.job_id[:8]: t.error for t in tracks.values() if t.status != "succeeded"},
        api_alive=bool(stack.api_proc and stack.api_proc.alive()),
        workers_alive=[n for n, p in stack.workers.items() if p.alive()],
    )


def scenario_oom(stack: Stack) -> FaultResult:
    """Fill a Redis with maxmemory + noeviction with uploads: 503 (+Retry-After) or 429, never 500; then relief."""
    r = stack.client()
    upload = noise_png(OOM_UPLOAD_SIDE, seed=50)
    codes: Counter = Counter()
    retry_after: Counter = Counter()
    accepted: list[str] = []
    refused_in_a_row = 0
    first_refusal: float | None = None
    used_at_refusal: float | None = None
    for i in range(80):
        resp = submit(stack.api, image=upload, **{**QUICK, "seed": i, "max_pixels": 4096})
        codes[resp.status_code] += 1
        if resp.status_code == 202:
            accepted.append(resp.json()["id"])
            refused_in_a_row = 0
            continue
        retry_after[f"{resp.status_code}:{'yes' if resp.headers.get('Retry-After') else 'no'}"] += 1
        if first_refusal is None:
            first_refusal = time.monotonic()
            used_at_refusal = r.info("memory")["used_memory"] / 2**20
        refused_in_a_row += 1
        if refused_in_a_row >= 10:
            break
    fault = first_refusal or time.monotonic()
    watcher = Watcher(stack.port, accepted)
    watcher.start()
    probes = {"GET /readyz": httpx.get(f"{stack.api}/readyz", timeout=10).status_code}
    if accepted:
        probes["GET /jobs/{id}"] = httpx.get(f"{stack.api}/jobs/{accepted[0]}", timeout=10).status_code
    hold_until = fault + OOM_HOLD_S
    while time.monotonic() < hold_until and not watcher.ended():
        time.sleep(POLL_S)
    with watcher.lock:
        ended_full = sum(1 for t in watcher.tracks.values() if t.ended_at is not None)
    used_mb = r.info("memory")["used_memory"] / 2**20
    r.config_set("maxmemory", 0)  # the operator's relief: room again
    relief = time.monotonic()
    tracks = watcher.finish(relief + JOB_DEADLINE_S)
    after = submit(stack.api, **QUICK)
    ok = (
        codes.get(500, 0) == 0
        and all(c in (202, 429, 503) for c in codes)
        and (codes.get(503, 0) + codes.get(429, 0)) > 0
    )
    return summarise(
        "Redis full (maxmemory, noeviction)",
        tracks,
        fault,
        "503 + Retry-After (or 429), never 500; accepted jobs end",
        ok,
        maxmemory=OOM_MAXMEMORY,
        submissions={str(k): v for k, v in codes.items()},
        refusals_with_retry_after=dict(retry_after),
        probes_while_full=probes,
        used_memory_mb_at_first_refusal=round(used_at_refusal or 0, 2),
        used_memory_mb_end_of_hold=round(used_mb, 2),
        held_full_s=OOM_HOLD_S,
        ended_while_full=ended_full,
        ended_after_relief=sum(1 for t in tracks.values() if t.ended_at) - ended_full,
        relief_to_last_terminal_s=round(
            max((t.ended_at - relief for t in tracks.values() if t.ended_at), default=0.0), 2
        ),
        errors=sorted({(t.error or "")[:120] for t in tracks.values() if t.status != "succeeded"}),
        submit_after_relief=after.status_code,
    )


def run_faults(spawner: Spawner, stacks: dict[str, Stack], failures: list[str]) -> list[FaultResult]:
    """Every scenario in turn; one that breaks is listed in `failures` and the next still runs."""
    for stack in stacks.values():
        wait_stack(stack)
    results: list[FaultResult | None] = []

    def guarded(name: str, run: Callable[[], Any]) -> Any:
        try:
            return run()
        except Exception as exc:  # reported in the summary, never hidden
            failures.append(f"fault scenario {name}: {type(exc).__name__}: {exc}")
            import traceback

            traceback.print_exc()
            return None

    a, b = stacks["fail"], stacks["requeue"]
    results.append(guarded("kill (fail)", lambda: scenario_kill_fail(a)))
    requeue = guarded("kill (requeue)", lambda: scenario_kill_requeue(b))
    results.append(requeue[0] if requeue else None)
    if requeue and requeue[0].details.get("steps_per_s"):
        a.step_rate = requeue[0].details["steps_per_s"]  # same model, same machine: sizes the Redis-restart job
    results.append(guarded("orphan ticket", lambda: scenario_orphan_ticket(b)))
    results.append(guarded("API restart", lambda: scenario_api_restart(spawner, b)))
    survivor = requeue[1] if requeue else next(n for n, p in b.workers.items() if p.alive())
    results.append(guarded("SIGTERM", lambda: scenario_sigterm(spawner, b, survivor)))
    for run, down_s in enumerate(REDIS_DOWN_S, start=1):
        results.append(guarded(f"Redis restart #{run}", partial(scenario_redis_restart, spawner, a, down_s, run)))
    results.append(guarded("Redis OOM", lambda: scenario_oom(stacks["oom"])))
    return [r for r in results if r is not None]


def start_fault_stacks(spawner: Spawner, model: Path, tmp: Path) -> dict[str, Stack]:
    """Private Redis servers, APIs and workers for the fault scenarios; workers load while other parts run."""
    if shutil.which("redis-server") is None:
        raise SystemExit("redis-server is not installed; the fault scenarios need private Redis servers")
    aof = tmp / "aof"
    aof.mkdir(exist_ok=True)
    return {  # default settings (on_worker_lost=fail) with AOF: the kill, then the Redis restart on the survivor
        "fail": start_stack(spawner, "fail", model, ["a1", "a2"], ("--appendonly", "yes", "--dir", str(aof))),
        "requeue": start_stack(spawner, "requeue", model, ["b1", "b2"], on_worker_lost="requeue"),
        "oom": start_stack(
            spawner, "oom", model, ["d1"], ("--maxmemory", OOM_MAXMEMORY, "--maxmemory-policy", "noeviction")
        ),
    }


# --- report -----------------------------------------------------------------------------------------------


def render_md(summary: dict[str, Any]) -> str:
    lines = [
        header_md("Reliability figures", summary["machine"], summary["command"]),
        f"Code: {summary.get('code', 'n/a')}. Total wall time: {summary['wall_s']:.0f} s. Processes: real API, "
        "workers (tiny prior, CPU), redis-server; nothing faked.",
        "",
    ]
    bad = summary.get("bad_inputs")
    if bad:
        lines += [
            "## Bad inputs",
            "",
            f"{bad['total']} requests, **{bad['total_5xx']} answered 5xx**, {bad['transport_errors']} transport "
            f"errors, {bad['accepted_still_valid']} mutants accepted because they still decode, "
            f"{bad['wrong']} answered outside the expected statuses. A good upload afterwards: "
            f"{bad['good_upload_after']}.",
            "",
            "| kind | route | n | statuses seen | expected | right 4xx | accepted (still valid) | wrong | share ok |",
            "|---|---|---:|---|---|---:|---:|---:|---:|",
        ]
        for k in bad["kinds"]:
            seen = ", ".join(f"{s}×{n}" for s, n in k["statuses"].items())
            lines.append(
                f"| {k['kind']} | {k['route']} | {k['count']} | {seen} | "
                f"{'/'.join(map(str, k['expected']))} | {k['right_4xx']} | {k['accepted_still_valid']} | "
                f"{k['wrong']} | {k['share_ok']:.0%} |"
            )
        wrong = [f"- {k['kind']}: {e}" for k in bad["kinds"] for e in k["wrong_examples"]]
        if wrong:
            lines += ["", "Answered outside the expected statuses:", *wrong]
        lines.append("")
    faults = summary.get("faults")
    if faults:
        lines += [
            "## Faults injected",
            "",
            "| scenario | jobs | lost | longest fault → terminal (s) | expected | outcomes | as expected |",
            "|---|---:|---:|---:|---|---|---|",
        ]
        for f in faults:
            outcomes = ", ".join(f"{k} {v}" for k, v in f["outcomes"].items())
            lines.append(
                f"| {f['scenario']} | {f['submitted']} | {f['lost']} | {fmt(f['max_fault_to_terminal_s'])} | "
                f"{f['expectation']} | {outcomes} | {'yes' if f['ok'] else '**no**'} |"
            )
        lines += ["", "Details:", ""]
        for f in faults:
            detail = "; ".join(f"{k}={v}" for k, v in f["details"].items())
            lines.append(f"- {f['scenario']}: {detail}")
        lines.append("")
    loads = summary.get("load")
    if loads:
        lines += [
            "## Load",
            "",
            f"{loads[0]['concurrency']} concurrent `POST /restore` (32² PNG) on loopback, `UPZIR_MAX_QUEUE_DEPTH="
            f"{loads[0]['queue_cap']}`, no worker.",
            "",
            "| API settings | 202 | 429 | other | queue depth after | smallest depth named in a 429 | p50 (s) |"
            " p99 (s) | max (s) | wall (s) |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for load in loads:
            lines.append(
                f"| {load['config']} | {load['accepted_202']} | {load['refused_429']} | "
                f"{load['other_errors']} | "
                f"{load['queue_depth_after']} | {fmt(load['min_depth_reported_in_429'])} | "
                f"{load['latency_p50_s']} | {load['latency_p99_s']} | {load['latency_max_s']} | "
                f"{load['wall_s']} |"
            )
        lines.append("")
        for load in loads:
            if load["other_error_details"]:
                lines += [f"Other answers ({load['config']}): " + "; ".join(load["other_error_details"]), ""]
    if summary.get("failures"):
        lines += ["## Parts that did not run to the end", "", *[f"- {x}" for x in summary["failures"]], ""]
    return "\n".join(lines)


def stop_everything(spawner: Spawner) -> None:
    """Workers are killed (nothing of theirs is kept), then the rest get SIGTERM; each by its own pid."""
    for proc in spawner.procs:
        if proc.name.startswith("worker-") and proc.alive():
            proc.signal(signal.SIGKILL)
    spawner.stop_all()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.reliability", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="folder for summary.json and summary.md")
    parser.add_argument("--fuzz", type=int, default=FUZZ_DEFAULT, help="seeded mutants of valid images to send")
    parser.add_argument("--concurrency", type=int, default=LOAD_DEFAULT, help="concurrent submissions in the load part")
    parser.add_argument("--only", default="load,bad,faults", help="comma-separated parts to run")
    parser.add_argument("--keep-tmp", action="store_true", help="keep the temp folder (process logs, tiny model)")
    args = parser.parse_args(argv)
    parts = set(args.only.split(","))
    t_start = time.monotonic()
    try:
        redis.Redis.from_url(SHARED_REDIS_URL, socket_connect_timeout=2).ping()
    except redis.RedisError as exc:
        raise SystemExit(f"the shared Redis ({SHARED_REDIS_URL}) is not reachable: {exc}") from None
    tmp = Path(tempfile.mkdtemp(prefix="upzir-reliability-"))
    spawner = Spawner(tmp)
    summary: dict[str, Any] = {
        "machine": machine("cpu"),
        "command": command_line(),
        "code": code_version(),
        "failures": [],
        "settings": {
            **FAST_ENV,
            "quick_job": QUICK,
            "medium_job": MEDIUM,
            "spanning_job": {**SPANNING, "work_s": SPAN_S},
            "long_job": LONG,
            "job_deadline_s": JOB_DEADLINE_S,
            "redis_down_s": REDIS_DOWN_S,
            "oom_maxmemory": OOM_MAXMEMORY,
            "oom_upload_side": OOM_UPLOAD_SIDE,
            "oom_hold_s": OOM_HOLD_S,
            "upload_cap": UPLOAD_CAP,
            "pixel_cap": PIXEL_CAP,
            "upload_idle_timeout_s": IDLE_S,
        },
    }
    try:
        model = make_tiny_uncond_ldm(tmp / "tiny-ldm") if "faults" in parts else None
        if "load" in parts:
            _part(
                summary,
                "load",
                lambda: [
                    run_load(spawner, args.concurrency, f"defaults ({_upload_slots()})"),
                    run_load(
                        spawner,
                        args.concurrency,
                        f"UPZIR_MAX_CONCURRENT_UPLOADS={args.concurrency}",
                        max_concurrent_uploads=args.concurrency,
                    ),
                ],
            )
        stacks: dict[str, Stack] = {}
        if model is not None:
            stacks = start_fault_stacks(spawner, model, tmp)  # workers load while the bad inputs run
        if "bad" in parts:
            _part(summary, "bad_inputs", lambda: run_bad_inputs(spawner, args.fuzz))
        if model is not None:
            _part(summary, "faults", lambda: [asdict(f) for f in run_faults(spawner, stacks, summary["failures"])])
    finally:
        stop_everything(spawner)
        shared = redis.Redis.from_url(SHARED_REDIS_URL)
        shared.flushdb()
        shared.close()
        if args.keep_tmp or summary["failures"]:
            print(f"process logs kept in {tmp}", file=sys.stderr)
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    summary["wall_s"] = round(time.monotonic() - t_start, 1)
    args.out.mkdir(parents=True, exist_ok=True)
    write_json(args.out / "summary.json", summary)
    md = render_md(summary)
    (args.out / "summary.md").write_text(md)
    print(md)
    return 1 if summary["failures"] else 0


def code_version() -> str:
    """The commit the processes ran, and whether the service's own folders had uncommitted changes."""
    import subprocess

    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=REPO_ROOT, capture_output=True, text=True).stdout.strip()

    dirty = git("status", "--porcelain", "--", "service", "worker", "jobs", "restorer")
    return git("rev-parse", "--short", "HEAD") + (
        " + uncommitted changes in service/worker/jobs/restorer" if dirty else ""
    )


def _upload_slots() -> str:
    """The API's default upload-slot settings, as the label of the default load run."""
    from jobs.settings import Settings

    names = [n for n in ("max_concurrent_uploads", "upload_slot_wait_s") if n in Settings.model_fields]
    return ", ".join(f"UPZIR_{n.upper()}={Settings.model_fields[n].default}" for n in names)


def _part(summary: dict[str, Any], name: str, run: Callable[[], Any]) -> None:
    """Run one part; a part that breaks is recorded (with its error) and the others still run."""
    try:
        summary[name] = run()
    except Exception as exc:  # report, never hide: the summary lists it
        summary["failures"].append(f"{name}: {type(exc).__name__}: {exc}")
        import traceback

        traceback.print_exc()


if __name__ == "__main__":
    sys.exit(main())
