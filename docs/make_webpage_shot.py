"""Make the README's web-page picture: a real job on a real degraded photo, through the running service.

    ./run.sh --model ../shared/weights/mini-ldm &          # the service, as a user starts it
    python docs/make_webpage_shot.py --out docs/webpage.png

The page is driven in headless Chromium (Playwright + Debian's /usr/bin/chromium, as tests/test_webpage.py
does): it uploads a centre crop of a Kodak photo degraded by `restorer.degradations` (default low light +
noise), picks the service's default preset, waits for the job to finish, sets the before/after slider to the middle and
takes a full-page screenshot (score curve, previews at each checkpoint, slider).
"""

from __future__ import annotations

import argparse
import io
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.common import DEFAULT_DATA_ROOT  # noqa: E402
from restorer.degradations import DEGRADATIONS, degrade  # noqa: E402
from restorer.images import centre_crop, load_image  # noqa: E402

CHROMIUM = os.environ.get("UPZIR_CHROMIUM", "/usr/bin/chromium")
VIEWPORT = {"width": 1100, "height": 900}
JOB_TIMEOUT_MS = 600_000
"""A default-preset job at 192² with the mini prior takes well under a minute on 2 cores; generous anyway."""
SLIDER_AT = "50"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--url", default="http://127.0.0.1:8000")
    p.add_argument("--image", type=Path, default=DEFAULT_DATA_ROOT / "kodak24" / "kodim23.png")
    p.add_argument("--degrade", default="lowlight+noise", choices=list(DEGRADATIONS))
    p.add_argument("--crop", type=int, default=192)
    p.add_argument("--preset", default="balanced", help="the preset to pick on the page (the service default)")
    p.add_argument("--out", type=Path, default=Path("docs/webpage.png"))
    args = p.parse_args()

    from playwright.sync_api import sync_playwright

    degraded, _ = degrade(centre_crop(load_image(args.image), args.crop), args.degrade, args.image.stem)
    buf = io.BytesIO()
    degraded.save(buf, format="PNG")
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=["--headless=new", "--no-sandbox"])
        page = browser.new_page(viewport=VIEWPORT)
        page.goto(f"{args.url}/")
        page.set_input_files(
            "#file",
            files=[
                {"name": f"{args.image.stem}-{args.degrade}.png", "mimeType": "image/png", "buffer": buf.getvalue()}
            ],
        )
        page.check(f"input[name=preset][value={args.preset}]")
        page.click("#submit")
        page.wait_for_selector("#result:not([hidden])", timeout=JOB_TIMEOUT_MS)
        page.wait_for_function(
            "() => ['before', 'after'].every(id => { const i = document.getElementById(id);"
            " return i.complete && i.naturalWidth > 0; })"
        )
        page.fill("#slider", SLIDER_AT)
        page.dispatch_event("#slider", "input")
        page.screenshot(path=str(args.out), full_page=True)
        print(f"{args.out}: job {page.get_attribute('#job', 'data-job-id')} {page.inner_text('#status')}")
        browser.close()


if __name__ == "__main__":
    main()
