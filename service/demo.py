"""The README's demo, through the running API: degrade a crop of a clean photo, restore it, show all three.

    python -m service.demo ../shared/data/kodak24/kodim23.png --url http://127.0.0.1:8000

Writes `out/<name>-degraded.png`, `out/<name>-restored.png` and `out/<name>-before-after.png`
(degraded | restored | original) and prints PSNR/SSIM of the degraded and the restored crop against the
original. `--degrade none` sends the photo as it is (no reference, no scores): for a photo that is already
degraded. `./run.sh --demo IMAGE` calls this once the service is ready.
"""

from __future__ import annotations

import argparse
import io
import os
import sys
from pathlib import Path

from PIL import Image

from restorer.compare import reference_scores, side_by_side
from restorer.degradations import DEGRADATIONS, degrade
from restorer.errors import RestorerError
from restorer.images import centre_crop, load_image

from .client import ClientError, RestoreClient

DEFAULT_DEGRADATION = "lowlight+noise"
"""A dark, noisy shot: the compound case the method is for, and one a gamma curve alone does not fix."""
DEFAULT_CROP = 128
"""The size the project measures at; with the mini prior on 2 CPU cores one job takes well under a minute."""
MIN_CROP = 8
STRIP_SCALE = 2
"""The before/after strip is enlarged (nearest) so a 128² crop can be looked at."""
WAIT_TIMEOUT_S = 3600.0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m service.demo", description=__doc__.split("\n\n")[0])
    p.add_argument("image", type=Path, help="a clean photo")
    p.add_argument("--url", default="http://127.0.0.1:8000", help="the running API")
    p.add_argument(
        "--token",
        default=os.environ.get("UPZIR_API_TOKEN"),
        help="bearer token when the API sets UPZIR_API_TOKENS (default: $UPZIR_API_TOKEN)",
    )
    p.add_argument(
        "--degrade",
        default=DEFAULT_DEGRADATION,
        choices=[*DEGRADATIONS, "none"],
        help="what to do to the photo first (none: send it as it is)",
    )
    p.add_argument("--crop", type=int, default=DEFAULT_CROP, help="centre crop side in pixels (0: whole photo)")
    p.add_argument("--out", type=Path, default=Path("out"))
    p.add_argument(
        "--set",
        dest="fields",
        action="append",
        default=[],
        metavar="FIELD=VALUE",
        help="a POST /restore form field, e.g. --set preset=fast",
    )
    return p


def run(args: argparse.Namespace) -> int:
    fields = dict(f.split("=", 1) for f in args.fields if "=" in f)
    if len(fields) != len(args.fields):
        raise SystemExit("demo: --set takes FIELD=VALUE")
    if args.crop < 0 or 0 < args.crop < MIN_CROP:
        raise SystemExit(f"demo: --crop {args.crop}: use 0 (whole photo) or at least {MIN_CROP} pixels")
    try:
        photo = load_image(args.image)
    except RestorerError as exc:
        raise SystemExit(f"demo: {exc}") from None
    clean = centre_crop(photo, args.crop) if args.crop else photo
    name = args.image.stem
    if args.degrade == "none":
        sent, reference = clean, None
    else:
        sent, reference = degrade(clean, args.degrade, name)[0], clean
    args.out.mkdir(parents=True, exist_ok=True)
    sent_path = args.out / f"{name}-degraded.png"
    sent.save(sent_path)

    client = RestoreClient(args.url, token=args.token)
    try:
        job = client.submit(sent_path, **fields)
        print(f"submitted job {job['id']} ({args.degrade}, {sent.size[0]}×{sent.size[1]})")
        for ev in client.events(job["id"]):
            if ev.event == "checkpoint":
                d = ev.data
                print(
                    f"  round {d.get('round')} step {d.get('step')}/{d.get('total_steps')} t={d.get('t')} "
                    f"score {d.get('score', 0):.3f} → {d.get('decision')}"
                )
            elif ev.event in ("status", "completed"):
                print(f"  {ev.event}: {ev.data.get('status') if isinstance(ev.data, dict) else ev.data}")
        done = client.wait(job["id"], timeout=WAIT_TIMEOUT_S)
        if done["status"] != "succeeded":
            raise SystemExit(f"demo: job {job['id']} {done['status']}: {done.get('error')}")
        restored = Image.open(io.BytesIO(client.result(job["id"]))).convert("RGB")
    except ClientError as exc:  # refused (4xx/5xx) or not reachable
        raise SystemExit(f"demo: {exc}") from None
    finally:
        client.close()

    restored_path = args.out / f"{name}-restored.png"
    restored.save(restored_path)
    m = done["metrics"]
    print(
        f"{done['status']}: {restored_path} ({m['steps_run']} steps, {m['rounds']} round(s), "
        f"early exit {done['early_exit']}, {m['run_s']:.1f} s)"
    )
    if reference is None:
        return 0
    strip_path = args.out / f"{name}-before-after.png"
    side_by_side([sent, restored, reference], scale=STRIP_SCALE).save(strip_path)
    before, after = reference_scores(sent, reference), reference_scores(restored, reference)
    print(
        f"{strip_path}: degraded | restored | original — PSNR {before['psnr']:.2f} → {after['psnr']:.2f} dB, "
        f"SSIM {before['ssim']:.3f} → {after['ssim']:.3f}"
    )
    return 0


def main(argv: list[str] | None = None) -> int:
    return run(build_parser().parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
