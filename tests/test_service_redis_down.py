"""Redis outage on a private redis-server: the API answers 503 + Retry-After, and API and worker recover
when Redis is back, without restarting either process. The shared Redis on 6379 is never touched."""

from __future__ import annotations

import httpx
import pytest
from conftest import image_bytes, wait_for

from service.client import RestoreClient, ServiceUnavailable

pytestmark = pytest.mark.slow

JOB_TIMEOUT_S = 120.0
FAST = {"steps": 4, "checkpoint_every": 2, "max_rounds": 1, "seed": 1}
RETRY_AFTER = 4


def test_redis_outage_is_503_with_retry_after_then_recovers(spawn, tiny_ldm_dir):
    redis_proc, port = spawn.redis_server()
    env = dict(
        redis_url=f"redis://127.0.0.1:{port}/0",
        model=tiny_ldm_dir,
        device="cpu",
        judge="piqe",
        heartbeat_s=0.5,
        worker_lost_after_s=3,
        reaper_interval_s=0.5,
        worker_metrics_port=0,
        unavailable_retry_after_s=RETRY_AFTER,
        redis_timeout_s=1,
    )
    api_proc, api = spawn.api(**env)
    worker = spawn.worker("survivor", **env)
    with RestoreClient(api, timeout=15) as client:
        before = client.submit(image_bytes(), **FAST)
        assert client.wait(before["id"], timeout=JOB_TIMEOUT_S)["status"] == "succeeded"

        redis_proc.stop()
        r = httpx.post(f"{api}/restore", files={"image": ("a.png", image_bytes(), "image/png")}, timeout=15)
        assert r.status_code == 503, r.text
        assert r.headers["Retry-After"] == str(RETRY_AFTER) and "Redis" in r.json()["detail"]
        for path in (
            f"/jobs/{before['id']}",
            f"/jobs/{before['id']}/result",
            f"/jobs/{before['id']}/events",
            "/readyz",
        ):
            down = httpx.get(f"{api}{path}", timeout=15)
            assert down.status_code == 503 and down.headers["Retry-After"] == str(RETRY_AFTER), path
        assert httpx.get(f"{api}/healthz").status_code == 200
        assert httpx.get(f"{api}/metrics").status_code == 200
        with pytest.raises(ServiceUnavailable) as unavailable:
            client.submit(image_bytes())
        assert unavailable.value.retry_after == RETRY_AFTER
        wait_for(
            lambda: "could not connect to Redis" in worker.log(), timeout=30, what="the worker to notice the outage"
        )

        spawn.redis_server(port)  # Redis is back (empty: this one has no persistence)
        job = wait_for(
            lambda: (
                (
                    r := httpx.post(
                        f"{api}/restore",
                        data={k: str(v) for k, v in FAST.items()},
                        files={"image": ("a.png", image_bytes(), "image/png")},
                        timeout=15,
                    )
                ).status_code
                == 202
                and r.json()
            ),
            timeout=30,
            what="the API to accept jobs again",
        )
        assert client.wait(job["id"], timeout=JOB_TIMEOUT_S)["status"] == "succeeded"
        wait_for(lambda: httpx.get(f"{api}/readyz").status_code == 200, timeout=10, what="readiness")
    assert api_proc.alive() and worker.alive()  # nobody was restarted


def test_a_full_redis_is_503_with_retry_after_not_500(spawn):
    """Redis at its maxmemory with noeviction refuses writes (OOM): the API says so with 503 + Retry-After."""
    import redis

    redis_proc, port = spawn.redis_server()
    _, api = spawn.api(
        redis_url=f"redis://127.0.0.1:{port}/0", unavailable_retry_after_s=RETRY_AFTER, redis_timeout_s=1
    )
    r = redis.Redis(port=port)
    r.config_set("maxmemory-policy", "noeviction")
    r.config_set("maxmemory", 1)  # below what Redis already uses: every write is refused
    resp = httpx.post(f"{api}/restore", files={"image": ("a.png", image_bytes(), "image/png")}, timeout=15)
    assert resp.status_code == 503, resp.text
    assert resp.headers["Retry-After"] == str(RETRY_AFTER) and "full" in resp.json()["detail"]
    r.config_set("maxmemory", 0)  # room again: the same request is accepted
    ok = httpx.post(f"{api}/restore", files={"image": ("a.png", image_bytes(), "image/png")}, timeout=15)
    assert ok.status_code == 202, ok.text
