"""End to end: API and worker as separate real processes on the tiny prior (CPU), real Redis.

One API + one worker serve the whole module (a worker start costs seconds of torch import and model load);
the last test shuts that worker down with SIGTERM.
"""

from __future__ import annotations

import io
import json
import signal
import time

import httpx
import pytest
import redis
from conftest import free_port, image_bytes, wait_for
from PIL import Image

from service.client import RestoreClient

pytestmark = pytest.mark.slow

JOB_TIMEOUT_S = 120.0
"""Upper bound for a tiny job on 2 busy CPU cores; polls stop as soon as the job ends."""

FAST = {"steps": 4, "checkpoint_every": 2, "max_rounds": 1, "seed": 1}
"""A job of a few seconds that still has two DQR checkpoints."""

SLOW = {"steps": 500, "checkpoint_every": 250, "dqr": "off", "seed": 2}
"""A job that would run for minutes: only ever canceled or interrupted."""


class Stack:
    def __init__(self, api: str, worker, worker_metrics: str) -> None:
        self.api, self.worker, self.worker_metrics = api, worker, worker_metrics
        self.client = RestoreClient(api, timeout=15)

    def status(self, job_id: str) -> dict:
        return self.client.get(job_id)

    def running(self, job_id: str, min_step: int = 1) -> bool:
        """True once the job has run `min_step` steps; fails fast if it ended instead."""
        job = self.status(job_id)
        if job["status"] in ("succeeded", "failed", "canceled"):
            raise AssertionError(f"job ended before it could be observed running: {job}")
        return job["status"] == "processing" and (job["progress"]["step"] or 0) >= min_step


@pytest.fixture(scope="module")
def stack(module_spawn, redis_url, tiny_ldm_dir):
    import redis

    redis.Redis.from_url(redis_url).flushdb()
    metrics_port = free_port()
    env = dict(
        redis_url=redis_url,
        model=tiny_ldm_dir,
        device="cpu",
        judge="piqe",
        heartbeat_s=0.5,
        worker_lost_after_s=5,
        reaper_interval_s=0.5,
        webhook_allow_networks="127.0.0.1/32",
        webhook_secret=WEBHOOK_SECRET,
    )  # the receiver is local
    _, api = module_spawn.api(**env)
    worker = module_spawn.worker("e2e", worker_metrics_port=metrics_port, **env)
    s = Stack(api, worker, f"http://127.0.0.1:{metrics_port}/metrics")
    yield s
    s.client.close()


def sample(text: str, name: str, **labels: str) -> float:
    want = {f'{k}="{v}"' for k, v in labels.items()}
    total = 0.0
    for line in text.splitlines():
        if line.startswith("#") or not line.startswith(name):
            continue
        key, _, value = line.rpartition(" ")
        metric, _, rest = key.partition("{")
        if metric == name and want <= set(rest.rstrip("}").split(",")) - {""}:
            total += float(value)
    return total


WEBHOOK_SECRET = "e2e-webhook-secret"


def _wait_running(stack: Stack, job_id: str) -> None:
    deadline = time.monotonic() + JOB_TIMEOUT_S
    while not stack.running(job_id):
        assert time.monotonic() < deadline, f"job {job_id} did not start running within {JOB_TIMEOUT_S} s"
        time.sleep(0.05)


def test_round_trip_with_events_result_metrics_and_webhook(stack, webhook_receiver):
    assert httpx.get(f"{stack.api}/readyz").json()["workers"] == 1
    job = stack.client.submit(image_bytes((40, 32)), filename="noisy.png", webhook=webhook_receiver.url, **FAST)

    live = list(stack.client.events(job["id"], timeout=JOB_TIMEOUT_S))
    kinds = [e.event for e in live]
    assert kinds[:2] == ["status", "status"] and kinds[-2:] == ["status", "completed"]
    assert [e.data["status"] for e in live if e.event == "status"] == ["queued", "processing", "succeeded"]
    checkpoints = [e.data for e in live if e.event == "checkpoint"]
    assert len(checkpoints) == 2 and [c["index"] for c in checkpoints] == [0, 1]
    assert {"round", "step", "total_steps", "score", "decision", "preview_url"} <= set(checkpoints[0])

    done = stack.client.wait(job["id"], timeout=JOB_TIMEOUT_S)
    assert live[-1].data == done
    assert done["status"] == "succeeded" and done["error"] is None
    assert done["started_at"] and done["completed_at"] and isinstance(done["early_exit"], bool)
    assert done["metrics"]["steps_run"] == 4 and done["metrics"]["rounds"] == 1
    assert done["metrics"]["queue_wait_s"] >= 0 and done["metrics"]["run_s"] > 0
    assert done["progress"]["checkpoints"] == [{k: v for k, v in c.items() if k != "at"} for c in checkpoints]
    assert done["progress"]["last_score"] is not None

    # A late subscriber gets the same story, replayed.
    replay = list(stack.client.events(job["id"], timeout=10))
    assert [(e.id, e.event) for e in replay] == [(e.id, e.event) for e in live]

    png = Image.open(io.BytesIO(stack.client.result(job["id"])))
    assert png.format == "PNG" and png.size == (40, 32)
    for fmt, pil_name in (("webp", "WEBP"), ("jpeg", "JPEG")):
        img = Image.open(io.BytesIO(stack.client.result(job["id"], format=fmt)))
        assert img.format == pil_name and img.size == (40, 32)
    preview = httpx.get(f"{stack.api}{checkpoints[1]['preview_url']}")
    assert preview.headers["content-type"] == "image/png"
    assert max(Image.open(io.BytesIO(preview.content)).size) <= 256

    hooked = wait_for(lambda: webhook_receiver.signed(WEBHOOK_SECRET), timeout=10, what="the signed webhook")
    assert hooked[0]["id"] == job["id"] and hooked[0]["status"] == "succeeded"

    api_metrics = httpx.get(f"{stack.api}/metrics").text
    assert sample(api_metrics, "restore_jobs_submitted_total") >= 1
    assert sample(api_metrics, "restore_http_request_duration_seconds_count", route="/restore") >= 1
    assert sample(api_metrics, "restore_http_request_duration_seconds_bucket", route="/jobs/{job_id}") >= 1
    wm = httpx.get(stack.worker_metrics).text
    assert sample(wm, "restore_jobs_completed_total", outcome="succeeded") == 1
    assert sample(wm, "restore_job_duration_seconds_count", outcome="succeeded") == 1
    assert sample(wm, "restore_job_duration_seconds_bucket", outcome="succeeded", le="900.0") == 1
    assert sample(wm, "restore_job_queue_wait_seconds_count") == 1
    assert sample(wm, "restore_dqr_decisions_total") == 2
    assert sample(wm, "restore_sampler_steps_sum") == 4
    assert sample(wm, "restore_quality_score_count") == 1
    assert sample(wm, "restore_model_load_seconds") > 0
    assert sample(wm, "restore_worker_busy") == 0
    assert "restore_gpu_memory_peak_bytes" in wm
    assert job["id"] not in api_metrics + wm


def test_the_demo_degrades_restores_and_writes_the_strip(stack, tmp_path, capsys):
    """`./run.sh --demo` without the shell: a clean photo in, degraded | restored | original out, scores printed."""
    from service import demo

    photo, out = tmp_path / "photo.png", tmp_path / "out"
    photo.write_bytes(image_bytes((40, 30), seed=4))
    fields = [f"{k}={v}" for k, v in FAST.items()]
    argv = [str(photo), "--url", stack.api, "--crop", "24", "--out", str(out)] + [
        a for f in fields for a in ("--set", f)
    ]
    assert demo.main(argv) == 0
    printed = capsys.readouterr().out
    assert "PSNR" in printed and "SSIM" in printed and "succeeded" in printed
    strip = Image.open(out / "photo-before-after.png")
    gap = demo.STRIP_SCALE * 4
    assert strip.size == (3 * 24 * demo.STRIP_SCALE + 2 * gap, 24 * demo.STRIP_SCALE)
    assert Image.open(out / "photo-restored.png").size == Image.open(out / "photo-degraded.png").size == (24, 24)

    # an already-degraded photo: sent as it is, no reference, so no strip and no scores
    assert (
        demo.main(
            [
                str(photo),
                "--url",
                stack.api,
                "--degrade",
                "none",
                "--crop",
                "0",
                "--out",
                str(tmp_path / "raw"),
                *[a for f in fields for a in ("--set", f)],
            ]
        )
        == 0
    )
    assert Image.open(tmp_path / "raw" / "photo-restored.png").size == (40, 30)
    assert not (tmp_path / "raw" / "photo-before-after.png").exists()


def test_the_demo_says_why_when_it_cannot_run(tmp_path):
    from service import demo

    photo = tmp_path / "photo.png"
    photo.write_bytes(image_bytes((20, 20)))
    with pytest.raises(SystemExit, match="no such file"):
        demo.main([str(tmp_path / "missing.png"), "--url", "http://127.0.0.1:9"])
    with pytest.raises(SystemExit, match="cannot reach the service"):
        demo.main([str(photo), "--url", f"http://127.0.0.1:{free_port()}", "--out", str(tmp_path / "o")])
    with pytest.raises(SystemExit, match="crop"):
        demo.main([str(photo), "--url", "http://127.0.0.1:9", "--crop", "-3"])


def test_cancel_a_running_job_stops_it_at_the_next_step(stack):
    job = stack.client.submit(image_bytes((64, 64)), **SLOW)
    _wait_running(stack, job["id"])
    asked = stack.client.cancel(job["id"])
    assert asked["status"] == "processing"  # cooperative: the worker ends it
    final = wait_for(
        lambda: (j := stack.status(job["id"]))["status"] in ("canceled", "failed", "succeeded") and j,
        timeout=30,
        what="the running job to stop",
    )
    assert final["status"] == "canceled", final
    assert "canceled by request" in final["error"]
    assert final["metrics"]["steps_run"] < SLOW["steps"]
    events = list(stack.client.events(job["id"], timeout=10))
    assert events[-1].event == "completed" and events[-1].data["status"] == "canceled"
    wm = httpx.get(stack.worker_metrics).text
    assert sample(wm, "restore_jobs_completed_total", outcome="canceled") == 1

    # The worker is fine and takes the next job.
    nxt = stack.client.submit(image_bytes((32, 32), seed=3), **FAST)
    assert stack.client.wait(nxt["id"], timeout=JOB_TIMEOUT_S)["status"] == "succeeded"


def test_jobs_queued_behind_a_running_one_join_its_batch(stack, redis_url):
    """The running job hosts a batch: same-size jobs submitted meanwhile join between steps instead of waiting."""
    host = stack.client.submit(image_bytes((48, 48), seed=5), steps=40, checkpoint_every=20, dqr="off", seed=5)
    _wait_running(stack, host["id"])
    # the heartbeat publishes the jobs the worker holds, so the reaper can tell a lost job from a running one
    registry = redis.Redis.from_url(redis_url)
    wait_for(
        lambda: host["id"] in json.loads(registry.get("upzir:worker:e2e"))["jobs"],
        timeout=5,
        what="the worker's heartbeat to list its running job",
    )
    registry.close()
    joiners = [stack.client.submit(image_bytes((48, 48), seed=s), **{**FAST, "seed": s}) for s in (6, 7)]
    done = [stack.client.wait(j["id"], timeout=JOB_TIMEOUT_S) for j in joiners]
    assert all(j["status"] == "succeeded" for j in done), done
    host_now = stack.status(host["id"])
    assert host_now["status"] == "processing" or host_now["completed_at"] > max(j["completed_at"] for j in done)
    assert stack.worker.log().count("joined the batch") >= 2
    assert stack.client.wait(host["id"], timeout=JOB_TIMEOUT_S)["status"] == "succeeded"


def test_sigterm_lets_the_running_job_finish_then_exits(stack):
    job = stack.client.submit(image_bytes((32, 32), seed=4), steps=24, checkpoint_every=12, dqr="off", seed=4)
    _wait_running(stack, job["id"])
    stack.worker.signal(signal.SIGTERM)
    # a job that could join the running batch (same canvas) after shutdown began is left for another worker
    late = stack.client.submit(image_bytes((32, 32), seed=5), steps=24, checkpoint_every=12, dqr="off", seed=5)
    assert stack.client.wait(job["id"], timeout=JOB_TIMEOUT_S)["status"] == "succeeded"
    assert stack.status(late["id"])["status"] == "queued"
    assert stack.worker.wait(timeout=30) == 0
    wait_for(
        lambda: httpx.get(f"{stack.api}/readyz").json()["accepting_work"] is False,
        timeout=10,
        what="worker availability to drop with the last worker",
    )
    assert httpx.get(f"{stack.api}/readyz").status_code == 200  # the pod stays ready: results can be fetched
    assert stack.client.result(job["id"])[:8] == b"\x89PNG\r\n\x1a\n"
