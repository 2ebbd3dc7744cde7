"""Shared fixtures: a dedicated Redis DB, tiny real priors, and real API/worker/redis-server processes.

Nothing here fakes Redis, RQ or HTTP: processes are started with `sys.executable` and talked to over
sockets. Tests flush only their own Redis DB (`UPZIR_TEST_REDIS_URL`, default DB 13).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
TEST_REDIS_URL = os.environ.get("UPZIR_TEST_REDIS_URL", "redis://127.0.0.1:6379/13")

PROCESS_START_TIMEOUT_S = 120.0
"""Generous: a worker imports torch/diffusers and loads a model on 2 shared CPU cores."""


def wait_for(predicate: Callable[[], object], timeout: float, interval: float = 0.05, what: str = "condition"):
    """Poll `predicate` until it returns something truthy; fail the test after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    last_exc: BaseException | None = None
    while time.monotonic() < deadline:
        try:
            value = predicate()
            if value:
                return value
        except Exception as exc:  # keep polling through transient errors, report the last one
            last_exc = exc
        time.sleep(interval)
    raise AssertionError(
        f"timed out after {timeout:g} s waiting for {what}" + (f" (last error: {last_exc!r})" if last_exc else "")
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def redis_url() -> str:
    """URL of the test Redis DB; the session fails early with a clear message when Redis is not running."""
    import redis

    client = redis.Redis.from_url(TEST_REDIS_URL, socket_connect_timeout=2)
    try:
        client.ping()
    except redis.RedisError as exc:
        pytest.fail(
            f"Redis at {TEST_REDIS_URL} is not reachable ({exc}); start redis-server or set UPZIR_TEST_REDIS_URL"
        )
    finally:
        client.close()
    return TEST_REDIS_URL


@pytest.fixture
def redis_client(redis_url: str) -> Iterator[redis.Redis]:  # noqa: F821
    """A client on the test DB, flushed before the test (only that DB)."""
    import redis

    client = redis.Redis.from_url(redis_url)
    client.flushdb()
    yield client
    client.close()


@pytest.fixture(scope="session")
def tiny_ldm_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny unconditional LDM (vae/unet/scheduler folders), built once per session."""
    from tiny_models import make_tiny_uncond_ldm  # tests/ is on sys.path (rootdir conftest)

    return make_tiny_uncond_ldm(tmp_path_factory.mktemp("tiny-ldm"))


class Proc:
    """A child process with its log file; `stop()` ends it (SIGTERM, then SIGKILL) and returns its exit code."""

    def __init__(self, name: str, args: list[str], env: dict[str, str], log_path: Path) -> None:
        self.name, self.args, self.log_path = name, args, log_path
        self._log = open(log_path, "wb")
        self.popen = subprocess.Popen(
            args, env=env, cwd=ROOT, stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True
        )

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def log(self) -> str:
        self._log.flush()
        return self.log_path.read_text(errors="replace")

    def signal(self, sig: int) -> None:
        if self.alive():
            os.kill(self.popen.pid, sig)

    def wait(self, timeout: float) -> int:
        return self.popen.wait(timeout)

    def stop(self, timeout: float = 30.0) -> int | None:
        if self.alive():
            self.signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.signal(signal.SIGKILL)
                self.popen.wait(timeout)
        self._log.close()
        return self.popen.returncode


class Spawner:
    """Starts real processes for a test or module and stops them all at teardown."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.procs: list[Proc] = []

    def env(self, **upzir: object) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("UPZIR_")}
        env.update(
            {"PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
        )
        env.update({f"UPZIR_{k.upper()}": str(v) for k, v in upzir.items()})
        return env

    def start(self, name: str, args: list[str], **upzir: object) -> Proc:
        proc = Proc(name, args, self.env(**upzir), self.tmp / f"{name}-{len(self.procs)}.log")
        self.procs.append(proc)
        return proc

    def api(self, *, port: int | None = None, wait: bool = True, **upzir: object) -> tuple[Proc, str]:
        """uvicorn running `service.app` on `port` (a free one by default); returns (process, base URL), with
        `wait` once /healthz answers."""
        port = port or free_port()
        proc = self.start("api", [sys.executable, "-m", "service", "--host", "127.0.0.1", "--port", str(port)], **upzir)
        base = f"http://127.0.0.1:{port}"
        if wait:
            self.wait_api_ready(proc, base)
        return proc, base

    @staticmethod
    def wait_api_ready(proc: Proc, base: str) -> None:
        """Until the API at `base` answers /healthz; fails if the process exits first."""
        import httpx

        def up() -> bool:
            if not proc.alive():
                raise AssertionError(f"API exited early:\n{proc.log()[-3000:]}")
            return httpx.get(f"{base}/healthz", timeout=1).status_code == 200

        wait_for(up, PROCESS_START_TIMEOUT_S, interval=0.1, what="the API to answer /healthz")

    def worker(self, name: str, *, wait_ready: bool = True, **upzir: object) -> Proc:
        """`python -m worker`; with wait_ready, returns once its ready key is in Redis (model loaded)."""
        proc = self.start(f"worker-{name}", [sys.executable, "-m", "worker", "--name", name], **upzir)
        if wait_ready:
            self.wait_worker_ready(proc, name, str(upzir["redis_url"]), str(upzir.get("key_prefix", "upzir")))
        return proc

    @staticmethod
    def wait_worker_ready(proc: Proc, name: str, redis_url: str, prefix: str = "upzir") -> None:
        """Until the worker's ready key is in Redis (its model is loaded); fails if the process exits first."""
        import redis

        client = redis.Redis.from_url(redis_url)

        def ready() -> bool:
            if not proc.alive():
                raise AssertionError(f"worker {name} exited early:\n{proc.log()[-3000:]}")
            return bool(client.exists(f"{prefix}:worker:{name}"))

        try:
            wait_for(ready, PROCESS_START_TIMEOUT_S, interval=0.2, what=f"worker {name} to load its model")
        finally:
            client.close()

    def redis_server(
        self, port: int | None = None, options: tuple[str, ...] = ("--appendonly", "no")
    ) -> tuple[Proc, int]:
        """A private, throw-away redis-server (never the shared one), for outage tests; `options` are more
        command-line settings (AOF, maxmemory)."""
        exe = shutil.which("redis-server")
        if exe is None:
            pytest.skip("redis-server binary not installed")
        port = port or free_port()
        proc = self.start(f"redis-{port}", [exe, "--port", str(port), "--bind", "127.0.0.1", "--save", "", *options])
        import redis

        client = redis.Redis(port=port, socket_connect_timeout=0.5)
        wait_for(client.ping, 10, what=f"private redis on port {port}")
        client.close()
        return proc, port

    def stop_all(self) -> None:
        for proc in reversed(self.procs):
            proc.stop()


@pytest.fixture
def spawn(tmp_path: Path) -> Iterator[Spawner]:
    spawner = Spawner(tmp_path)
    yield spawner
    spawner.stop_all()


@pytest.fixture(scope="module")
def module_spawn(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Spawner]:
    spawner = Spawner(tmp_path_factory.mktemp("procs"))
    yield spawner
    spawner.stop_all()


def image_bytes(size: tuple[int, int] = (40, 32), fmt: str = "PNG", seed: int = 0) -> bytes:
    """A small noisy RGB image encoded as `fmt` (noise so restorations have something to do)."""
    import io

    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    arr = rng.integers(0, 256, size=(size[1], size[0], 3), dtype=np.uint8)
    out = io.BytesIO()
    Image.fromarray(arr, "RGB").save(out, format=fmt)
    return out.getvalue()


@pytest.fixture
def make_image() -> Callable[..., bytes]:
    return image_bytes


class WebhookReceiver:
    """A real HTTP server on loopback that records every POST (headers, body) and answers 204."""

    def __init__(self) -> None:
        from http.server import BaseHTTPRequestHandler, HTTPServer

        hits: list[tuple[dict[str, str], bytes]] = []

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802
                hits.append((dict(self.headers), self.rfile.read(int(self.headers["Content-Length"]))))
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.hits = hits
        self.server = HTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def signed(self, secret: str) -> list[dict]:
        """Bodies whose signature checks out with `secret`, decoded."""
        from jobs.webhooks import SIGNATURE_HEADER, TIMESTAMP_HEADER, sign

        return [
            json.loads(body)
            for headers, body in self.hits
            if headers.get(SIGNATURE_HEADER) == sign(body, headers.get(TIMESTAMP_HEADER, ""), secret)
        ]


@pytest.fixture
def webhook_receiver() -> Iterator[WebhookReceiver]:
    receiver = WebhookReceiver()
    yield receiver
    receiver.server.shutdown()
