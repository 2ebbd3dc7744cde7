"""The web page at `/`, driven in a real headless Chromium against real API + worker processes (tiny prior).

Playwright for Python drives Debian's `/usr/bin/chromium` (no `playwright install`). Without either, the
tests skip with the reason, except under CI=true, where they fail: CI must install both.
Screenshots go to $UPZIR_SCREENSHOT_DIR (default /tmp/upzir-webpage) for a person to look at.
A second API process on the same Redis and worker runs with bearer tokens (UPZIR_API_TOKENS) and streams cut
short (UPZIR_SSE_MAX_DURATION_S), so the page must send its token everywhere and resume its event stream.
"""

from __future__ import annotations

import io
import os
import re
import shutil
from pathlib import Path

import httpx
import pytest
from PIL import Image, ImageDraw

pytestmark = pytest.mark.slow

CHROMIUM = os.environ.get("UPZIR_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
    "--disable-sync",
]
SHOTS = Path(os.environ.get("UPZIR_SCREENSHOT_DIR", "/tmp/upzir-webpage"))
JOB_TIMEOUT_MS = 120_000
"""Upper bound for a tiny job on 2 busy CPU cores; waits end as soon as the page shows the result."""

ADVANCED = {"steps": "12", "checkpoint_every": "3", "max_rounds": "2", "seed": "1"}
"""On top of preset=fast: a job of a few seconds on the tiny prior with several checkpoints."""

TOKEN, OTHER_TOKEN = "tok-1", "tok-2"
SSE_MAX_DURATION_S = 0.3
"""The token API ends every event stream this soon: a job outlasts several, so the page must reconnect."""
NEED_TOKEN = "This service requires an API token: enter it above."
BAD_TOKEN = "The API token was not accepted: check the one entered above."


def _missing(reason: str) -> None:
    if os.environ.get("CI") == "true":
        pytest.fail(f"{reason} (CI=true: the CI image must provide it)")
    pytest.skip(reason)


@pytest.fixture(scope="module")
def browser():
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _missing("playwright (python) is not installed: pip install playwright")
    if not (os.path.exists(CHROMIUM) or shutil.which(CHROMIUM)):
        _missing(f"no Chromium at {CHROMIUM}: apt-get install chromium (or set UPZIR_CHROMIUM)")
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield b
        b.close()


@pytest.fixture(scope="module")
def service_env(redis_url, tiny_ldm_dir) -> dict:
    return dict(redis_url=redis_url, model=tiny_ldm_dir, device="cpu", judge="piqe", preset="fast")


@pytest.fixture(scope="module")
def api(browser, module_spawn, redis_url, service_env) -> str:
    import redis

    redis.Redis.from_url(redis_url).flushdb()
    _, base = module_spawn.api(**service_env)
    module_spawn.worker("web", **service_env)
    return base


@pytest.fixture(scope="module")
def token_api(api, module_spawn, service_env) -> str:
    """The same service behind bearer tokens, with short event streams; `api`'s worker runs its jobs."""
    _, base = module_spawn.api(
        api_tokens=f"{TOKEN},{OTHER_TOKEN}", sse_max_duration_s=SSE_MAX_DURATION_S, **service_env
    )
    return base


@pytest.fixture
def page(browser):
    ctx = browser.new_context(viewport={"width": 1100, "height": 900})
    pg = ctx.new_page()
    errors: list[str] = []
    pg.on("pageerror", lambda exc: errors.append(str(exc)))
    yield pg
    ctx.close()
    assert not errors, f"JavaScript errors on the page: {errors}"


def scene_png(size: tuple[int, int] = (64, 48)) -> bytes:
    """A small picture with shapes and noise (something a person can recognise in the comparison)."""
    import numpy as np

    w, h = size
    img = Image.new("RGB", size)
    px = np.zeros((h, w, 3), dtype=np.float32)
    px[..., 0] = np.linspace(40, 200, w)[None, :]
    px[..., 1] = np.linspace(90, 180, h)[:, None]
    px[..., 2] = 210
    img = Image.fromarray(px.astype(np.uint8), "RGB")
    d = ImageDraw.Draw(img)
    d.ellipse((8, 10, 30, 32), fill=(240, 200, 40))
    d.rectangle((36, 18, 58, 42), fill=(30, 120, 60))
    noisy = np.asarray(img, dtype=np.float32) + np.random.default_rng(0).normal(0, 25, (h, w, 3))
    out = io.BytesIO()
    Image.fromarray(noisy.clip(0, 255).astype(np.uint8), "RGB").save(out, format="PNG")
    return out.getvalue()


def _loaded(page, selector: str) -> bool:
    return page.eval_on_selector(selector, "img => img.complete && img.naturalWidth > 0")


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def _start_job(page, base: str, token: str | None = None) -> None:
    page.goto(f"{base}/")
    if token is not None:
        page.fill("#token", token)
    page.set_input_files("#file", files=[{"name": "scene.png", "mimeType": "image/png", "buffer": scene_png()}])
    page.check("input[name=preset][value=fast]")
    page.click("details summary")
    for name, value in ADVANCED.items():
        page.fill(f"input[name={name}]", value)
    page.click("#submit")


def _follow_to_the_end(page, shot: str) -> str:
    """Waits through the live view (checkpoints, chart, preview) to the comparison; returns the job id."""
    page.wait_for_selector("#job:not([hidden])")
    page.wait_for_selector("#checkpoints tbody tr", timeout=JOB_TIMEOUT_MS)
    page.wait_for_selector("#chart .point", timeout=5_000)
    page.wait_for_function(
        "() => { const i = document.getElementById('preview'); return !i.hidden && i.complete && i.naturalWidth > 0; }",
        timeout=10_000,
    )
    page.screenshot(path=str(SHOTS / f"{shot}-live.png"), full_page=True)
    page.wait_for_selector("#result:not([hidden])", timeout=JOB_TIMEOUT_MS)
    page.wait_for_function(
        "() => ['before', 'after'].every(id => { const i = document.getElementById(id);"
        " return i.complete && i.naturalWidth > 0; })",
        timeout=10_000,
    )
    assert page.inner_text("#status") == "succeeded" and page.is_hidden("#cancel")
    return page.get_attribute("#job", "data-job-id")


def _check_checkpoints(page, job: dict) -> None:
    n = len(job["progress"]["checkpoints"])
    assert n >= 2
    assert page.locator("#checkpoints tbody tr").count() == n
    assert page.locator("#chart .point").count() == n
    decisions = [c["decision"] for c in job["progress"]["checkpoints"]]
    assert [page.get_attribute(f"#chart .point[data-index='{i}']", "class") for i in range(n)] == [
        f"point d-{d}" for d in decisions
    ]
    assert all(_loaded(page, f"#checkpoints tbody tr:nth-child({i + 1}) img") for i in range(n))
    assert "round" in page.inner_text("#position") and "step" in page.inner_text("#position")
    # previews and the result are fetched (with the token, when there is one) and shown as object URLs
    for selector in ("#preview", "#after", "#checkpoints tbody tr:first-child img"):
        assert page.get_attribute(selector, "src").startswith("blob:"), selector


def _check_download(page, job: dict, result: bytes) -> None:
    """The link saves the fetched PNG itself (an object URL with a file name), the same bytes the API serves."""
    assert page.get_attribute("#download", "href").startswith("blob:")
    assert page.get_attribute("#download", "data-url") == job["urls"]["result"]
    with page.expect_download() as info:
        page.click("#download")
    download = info.value
    assert download.suggested_filename == f"{job['id']}.png"
    assert Path(download.path()).read_bytes() == result
    assert Image.open(io.BytesIO(result)).size == (64, 48)


def test_page_is_served_with_its_assets(api):
    index = httpx.get(f"{api}/")
    assert index.status_code == 200 and index.headers["content-type"].startswith("text/html")
    assert 'id="file"' in index.text and "/static/app.js" in index.text
    for asset, kind in (("app.js", "javascript"), ("style.css", "text/css")):
        r = httpx.get(f"{api}/static/{asset}")
        assert r.status_code == 200 and kind in r.headers["content-type"], asset
    assert "/" not in httpx.get(f"{api}/openapi.json").json()["paths"]  # the page is not part of the API


def test_upload_follow_checkpoints_compare_and_download(api, page):
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.goto(f"{api}/")
    assert page.is_disabled("#submit")
    assert page.get_attribute("#token", "type") == "password" and page.input_value("#token") == ""
    _start_job(page, api)

    # live: status, checkpoint rows and chart points, a preview of the current estimate;
    # the end: before/after comparison and a download link
    job_id = _follow_to_the_end(page, "plain")
    job = httpx.get(f"{api}/jobs/{job_id}").json()
    assert job["status"] == "succeeded" and job["input"]["params"]["preset"] == "fast"
    assert job["input"]["params"]["steps"] == 12
    _check_checkpoints(page, job)

    page.fill("#slider", "30")
    page.dispatch_event("#slider", "input")
    assert "30%" in page.eval_on_selector("#after", "i => i.style.clipPath")

    result = httpx.get(f"{api}{job['urls']['result']}")
    assert result.status_code == 200 and result.headers["content-type"] == "image/png"
    _check_download(page, job, result.content)
    page.screenshot(path=str(SHOTS / "done.png"), full_page=True)
    assert page.is_hidden("#error")


def test_non_image_shows_the_api_message(api, page):
    SHOTS.mkdir(parents=True, exist_ok=True)
    fake = b"this is plain text pretending to be a PNG\n" * 4
    expected = httpx.post(f"{api}/restore", files={"image": ("fake.png", fake, "image/png")})
    assert expected.status_code == 415
    page.goto(f"{api}/")
    page.set_input_files("#file", files=[{"name": "fake.png", "mimeType": "image/png", "buffer": fake}])
    page.click("#submit")
    page.wait_for_selector("#error:not([hidden])", timeout=10_000)
    assert page.inner_text("#error") == expected.json()["detail"]
    assert page.get_attribute("#error", "data-status") == "415"
    assert page.is_hidden("#job")
    page.screenshot(path=str(SHOTS / "error.png"), full_page=True)


def test_drag_and_drop_picks_the_file(api, page):
    page.goto(f"{api}/")
    page.evaluate("""() => {
        const dt = new DataTransfer();
        dt.items.add(new File([new Uint8Array([137, 80, 78, 71])], 'dropped.png', {type: 'image/png'}));
        const drop = document.getElementById('drop');
        drop.dispatchEvent(new DragEvent('dragover', {dataTransfer: dt, bubbles: true, cancelable: true}));
        drop.dispatchEvent(new DragEvent('drop', {dataTransfer: dt, bubbles: true, cancelable: true}));
    }""")
    assert page.eval_on_selector("#file", "i => i.files.length && i.files[0].name") == "dropped.png"
    assert "dropped.png" in page.inner_text("#drop") and page.is_enabled("#submit")


def test_without_a_token_the_page_asks_for_one(token_api, page):
    SHOTS.mkdir(parents=True, exist_ok=True)
    refused = httpx.post(f"{token_api}/restore", files={"image": ("scene.png", scene_png(), "image/png")})
    assert refused.status_code == 401 and refused.headers["www-authenticate"].startswith("Bearer")
    _start_job(page, token_api)
    page.wait_for_selector("#error:not([hidden])", timeout=10_000)
    assert page.inner_text("#error") == NEED_TOKEN
    assert page.get_attribute("#error", "data-status") == "401"
    assert page.is_hidden("#job") and "needed" in page.get_attribute("#token-box", "class")
    page.screenshot(path=str(SHOTS / "token-needed.png"), full_page=True)

    page.fill("#token", "not-a-token")
    page.click("#submit")
    page.wait_for_function(f"() => document.getElementById('error').textContent === {BAD_TOKEN!r}", timeout=10_000)
    assert page.get_attribute("#error", "data-status") == "401" and page.is_hidden("#job")


def test_with_the_token_a_restoration_runs_end_to_end(token_api, page):
    SHOTS.mkdir(parents=True, exist_ok=True)
    requests = []
    page.on("request", lambda r: requests.append(r) if r.url.startswith(token_api) else None)
    _start_job(page, token_api, token=TOKEN)
    job_id = _follow_to_the_end(page, "token")
    assert page.is_hidden("#error")

    job = httpx.get(f"{token_api}/jobs/{job_id}", headers=_bearer(TOKEN)).json()
    assert job["status"] == "succeeded" and job["input"]["params"]["steps"] == 12
    assert httpx.get(f"{token_api}/jobs/{job_id}").status_code == 401
    assert httpx.get(f"{token_api}/jobs/{job_id}", headers=_bearer(OTHER_TOKEN)).status_code == 404
    _check_checkpoints(page, job)
    result = httpx.get(f"{token_api}{job['urls']['result']}", headers=_bearer(TOKEN))
    assert result.status_code == 200 and result.headers["content-type"] == "image/png"
    _check_download(page, job, result.content)
    page.screenshot(path=str(SHOTS / "token-done.png"), full_page=True)

    # every API call carried the token; the page and its assets needed none
    api_calls = [r for r in requests if re.search(r"/(restore|jobs/)", r.url)]
    assert {r.url.split("?")[0].removeprefix(token_api) for r in api_calls} >= {
        "/restore",
        f"/jobs/{job_id}",
        f"/jobs/{job_id}/events",
        f"/jobs/{job_id}/result",
        f"/jobs/{job_id}/checkpoints/0/preview",
    }
    assert all(r.all_headers().get("authorization") == f"Bearer {TOKEN}" for r in api_calls)
    # streams end after SSE_MAX_DURATION_S: the page reopened its stream where it had stopped
    streams = [r.all_headers() for r in api_calls if r.url.endswith("/events")]
    assert len(streams) >= 2 and "last-event-id" not in streams[0]
    assert any("last-event-id" in h for h in streams[1:])

    # the token is remembered in this browser
    page.reload()
    assert page.input_value("#token") == TOKEN


def test_the_event_stream_alone_keeps_the_page_current(token_api, page):
    """With polling of GET /jobs/{id} blocked, the fetch-based SSE reader (resuming its cut streams with
    Last-Event-ID) brings every checkpoint and the end."""
    blocked = []
    page.route(re.compile(r"/jobs/[^/?]+(\?.*)?$"), lambda route: (blocked.append(route.request.url), route.abort()))
    _start_job(page, token_api, token=TOKEN)
    job_id = _follow_to_the_end(page, "sse")
    assert blocked, "the page did not poll"
    job = httpx.get(f"{token_api}/jobs/{job_id}", headers=_bearer(TOKEN)).json()
    _check_checkpoints(page, job)
    assert page.is_hidden("#error")
