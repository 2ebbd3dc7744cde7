"""Worker lifecycle with real processes: model-load failure, SIGKILL mid-job, SIGTERM with shutdown=cancel."""

from __future__ import annotations

import signal
import subprocess
import sys
import time

import pytest
from conftest import image_bytes, wait_for

from jobs.settings import Settings
from service.client import RestoreClient

pytestmark = pytest.mark.slow

JOB_TIMEOUT_S = 120.0
FAST = {"steps": 4, "checkpoint_every": 2, "max_rounds": 1, "seed": 1}
SLOW = {"steps": 500, "checkpoint_every": 250, "dqr": "off", "seed": 2}
TERMINAL = ("succeeded", "failed", "canceled")


def wait_running(client: RestoreClient, job_id: str) -> None:
    def running() -> bool:
        job = client.get(job_id)
        assert job["status"] not in TERMINAL, f"job ended before it was seen running: {job}"
        return job["status"] == "processing" and (job["progress"]["step"] or 0) >= 1

    wait_for(running, JOB_TIMEOUT_S, what=f"job {job_id} to run")


def wait_terminal(client: RestoreClient, job_id: str, timeout: float) -> dict:
    return wait_for(lambda: (j := client.get(job_id))["status"] in TERMINAL and j, timeout, what=f"job {job_id} to end")


def test_model_load_failure_exits_nonzero_with_one_clear_line(spawn, redis_client, redis_url, tmp_path):
    missing = tmp_path / "no-such-model"
    env = spawn.env(redis_url=redis_url, device="cpu", judge="piqe", worker_metrics_port=0)
    proc = subprocess.run(
        [sys.executable, "-m", "worker", "--model", str(missing), "--name", "broken"],
        env=env,
        capture_output=True,
        timeout=300,
    )
    assert proc.returncode == 3, proc.stderr.decode()[-2000:]
    ours = [line for line in proc.stderr.decode().splitlines() if line.startswith("upzir worker:")]
    assert len(ours) == 1 and "cannot load model" in ours[0] and str(missing) in ours[0]
    assert not redis_client.exists("upzir:worker:broken")  # never announced itself ready


def test_sigkilled_worker_job_fails_within_the_bound_and_a_new_worker_takes_over(
    spawn, redis_client, redis_url, tiny_ldm_dir
):
    env = dict(
        redis_url=redis_url,
        model=str(tiny_ldm_dir),
        device="cpu",
        judge="piqe",
        heartbeat_s=0.5,
        worker_lost_after_s=2,
        reaper_interval_s=0.5,
        worker_metrics_port=0,
    )
    bound = Settings(**env).worker_lost_bound_s
    _, api = spawn.api(**env)
    doomed = spawn.worker("doomed", **env)
    with RestoreClient(api, timeout=15) as client:
        slow = client.submit(image_bytes((64, 64)), **SLOW)
        wait_running(client, slow["id"])
        nxt = client.submit(image_bytes((32, 32), seed=7), **FAST)

        doomed.signal(signal.SIGKILL)
        killed = time.monotonic()
        doomed.wait(timeout=10)
        final = wait_terminal(client, slow["id"], timeout=bound + 10)
        took = time.monotonic() - killed
        assert final["status"] == "failed"
        assert "doomed" in final["error"] and "heartbeats" in final["error"]
        assert took <= bound + 1.5, f"reaped after {took:.1f} s; bound is {bound} s"
        events = list(client.events(slow["id"], timeout=10))
        assert events[-1].event == "completed" and events[-1].data["status"] == "failed"
        assert client.get(nxt["id"])["status"] == "queued"  # accepted jobs are never lost

        successor = spawn.worker("successor", shutdown="cancel", **env)
        assert client.wait(nxt["id"], timeout=JOB_TIMEOUT_S)["status"] == "succeeded"

        # SIGTERM with UPZIR_SHUTDOWN=cancel: the running job is canceled at its next step, the worker exits 0.
        last = client.submit(image_bytes((64, 64), seed=8), **SLOW)
        wait_running(client, last["id"])
        successor.signal(signal.SIGTERM)
        ended = wait_terminal(client, last["id"], timeout=30)
        assert ended["status"] == "canceled" and "shut down" in ended["error"]
        assert successor.wait(timeout=30) == 0
