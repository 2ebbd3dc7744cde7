"""`upzir` command line: `restore` runs the library on one image, `degrade` makes a test input from a clean
photo (the benchmark's seeded degradations); `worker`/`serve` start the service parts.

Every failure a user can cause (bad path, unreadable image, unknown option, missing weights) ends in one
line on stderr and a non-zero exit, never a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import os
import sys
from pathlib import Path

from .errors import RestorerError

EXIT_USAGE = 2
EXIT_FAILURE = 1
EXIT_CANCELED = 130
OUTPUT_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff"}

SUBCOMMANDS = {
    "worker": ("worker.main", "run a queue worker (loads the prior once, runs jobs in-process)"),
    "serve": ("service.app", "run the REST API (uvicorn)"),
}
"""Service entry points live in their own packages; dispatched lazily so the library stays web-free."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, not argparse's usage dump
        print(f"upzir: error: {message}", file=sys.stderr)
        raise SystemExit(EXIT_USAGE)


def _restore_parser(sub: argparse._SubParsersAction) -> None:
    from .config import DEFAULT_PRESET, PRESETS
    from .prior import DEFAULT_MODEL

    p = sub.add_parser("restore", help="restore one image", description="Restore one image with UP-ZeroIR.")
    p.add_argument("input", type=Path, help="input image (PNG, JPEG, WebP, ...)")
    p.add_argument("-o", "--output", type=Path, required=True, help="where to write the restored image")
    p.add_argument(
        "--model",
        default=os.environ.get("UPZIR_MODEL", DEFAULT_MODEL),
        help="diffusers LDM folder or hub id (env UPZIR_MODEL; default: %(default)s)",
    )
    p.add_argument("--preset", default=DEFAULT_PRESET, choices=sorted(PRESETS))
    p.add_argument("--steps", type=int, help="DDIM steps per round (overrides the preset)")
    p.add_argument("--seed", type=int, help="random seed (same seed, same output on one device)")
    p.add_argument("--device", default=os.environ.get("UPZIR_DEVICE", "auto"), help="cuda, cpu or auto")
    p.add_argument("--dtype", default=os.environ.get("UPZIR_DTYPE", "fp32"), choices=["fp32", "bf16", "fp16"])
    p.add_argument("--judge", help="DQR judge: auto, piqe, arniqa, niqe@PATH (overrides the preset)")
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override any sampler option, e.g. --set kappa=2000 --set dqr=off",
    )
    p.add_argument("--report", type=Path, help="write a JSON report (steps, rounds, checkpoints, seconds)")
    p.add_argument(
        "--reference",
        type=Path,
        help="a clean version of the input (same size): PSNR/SSIM of input and output against it",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def _degrade_parser(sub: argparse._SubParsersAction) -> None:
    from .degradations import DEGRADATIONS

    p = sub.add_parser(
        "degrade",
        help="degrade a clean photo (to try the restorer on)",
        description="Apply one of the benchmark's seeded degradations to a clean photo.",
    )
    p.add_argument("input", type=Path, help="a clean image (PNG, JPEG, WebP, ...)")
    p.add_argument("-o", "--output", type=Path, required=True, help="where to write the degraded image")
    p.add_argument("--kind", required=True, choices=list(DEGRADATIONS), help="which degradation")
    p.add_argument("--seed", type=int, default=0, help="with the file name, fixes the noise, gamma, haze...")
    p.add_argument("--crop", type=int, help="first take the centre N×N square (the benchmarks use 128)")
    p.add_argument("--clean-output", type=Path, help="also write the (cropped) clean image, for --reference")


def _check_output(path: Path) -> None:
    if path.suffix.lower() not in OUTPUT_SUFFIXES:
        raise RestorerError(f"{path}: unknown output format (use .png, .jpg or .webp)")
    if not path.parent.exists():
        raise RestorerError(f"{path.parent}: output folder does not exist")


def _run_degrade(args: argparse.Namespace) -> int:
    from .degradations import degrade
    from .images import centre_crop, load_image

    for path in (args.output, args.clean_output):
        if path is not None:
            _check_output(path)
    if args.crop is not None and args.crop < 8:
        raise RestorerError(f"--crop {args.crop}: use at least 8 pixels")
    clean = load_image(args.input).convert("RGB")
    if args.crop is not None:
        clean = centre_crop(clean, args.crop)
    degraded, clean = degrade(clean, args.kind, args.input.stem, args.seed)
    degraded.save(args.output)
    if args.clean_output is not None:
        clean.save(args.clean_output)
    print(f"{args.output}: {args.kind}, {clean.size[0]}×{clean.size[1]}", file=sys.stderr)
    return 0


def _run_restore(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from .config import parse_overrides, resolve_config
    from .images import load_image
    from .pipeline import Restorer

    overrides = parse_overrides(args.overrides)
    for key in ("steps", "seed", "judge"):
        if getattr(args, key) is not None:
            overrides[key] = getattr(args, key)
    cfg = resolve_config(args.preset, overrides)
    image = load_image(args.input)
    _check_output(args.output)
    reference = load_image(args.reference) if args.reference else None
    if reference is not None and reference.size != image.size:
        raise RestorerError(
            f"--reference {args.reference} is {reference.size[0]}×{reference.size[1]}, the input is "
            f"{image.size[0]}×{image.size[1]}: they must have the same size"
        )

    restorer = Restorer.load(
        args.model, device=args.device, dtype=args.dtype, judge=cfg.judge, perceptual=cfg.perceptual
    )
    bar = tqdm(total=cfg.steps, disable=args.quiet, unit="step", desc="round 1")
    last = {"score": None}

    def on_step(ev) -> None:
        if ev.step == 1:
            bar.reset(total=ev.total_steps)
            bar.set_description(f"round {ev.round}")
        bar.update(1)

    def on_checkpoint(cp) -> None:
        last["score"] = cp.score
        bar.set_postfix(step=cp.steps_run, score=f"{cp.score:.3f}", dqr=cp.decision.value)

    result = restorer.restore(image, cfg, on_step=on_step, on_checkpoint=on_checkpoint)
    bar.close()
    result.image.save(args.output)
    report = {"input": str(args.input), "output": str(args.output), **restorer.describe(), **result.report()}
    if reference is not None:
        from .compare import reference_scores

        report["reference"] = {
            "path": str(args.reference),
            "input": reference_scores(image, reference),
            "output": reference_scores(result.image, reference),
        }
    if args.report:
        args.report.write_text(json.dumps(report, indent=2))
    if not args.quiet:
        print(
            f"{args.output}: {result.steps_run} steps, {result.rounds} round(s), "
            f"early exit {'yes' if result.early_exit else 'no'}, score {result.final_score:.3f} "
            f"({result.judge}), {result.seconds:.1f} s",
            file=sys.stderr,
        )
        if reference is not None:
            before, after = report["reference"]["input"], report["reference"]["output"]
            print(
                f"against {args.reference}: PSNR {before['psnr']:.2f} → {after['psnr']:.2f} dB, "
                f"SSIM {before['ssim']:.3f} → {after['ssim']:.3f}",
                file=sys.stderr,
            )
    return 0


QUIET_LOGGERS = ("bitsandbytes",)
"""Pulled in by diffusers via pyiqa; warns at import about an optional CPU kernel we never use."""


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR)
    if argv and argv[0] in SUBCOMMANDS:
        module = importlib.import_module(SUBCOMMANDS[argv[0]][0])
        return int(module.main(argv[1:]) or 0)

    parser = _Parser(prog="upzir", description="UP-ZeroIR zero-shot image restoration.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    _restore_parser(sub)
    _degrade_parser(sub)
    for name, (_, help_text) in SUBCOMMANDS.items():
        sub.add_parser(name, help=help_text, add_help=False)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="upzir: %(levelname)s: %(message)s")
    try:
        return _run_degrade(args) if args.command == "degrade" else _run_restore(args)
    except KeyboardInterrupt:
        print("upzir: interrupted", file=sys.stderr)
        return EXIT_CANCELED
    except RestorerError as exc:
        print(f"upzir: error: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    except OSError as exc:  # e.g. output not writable
        print(f"upzir: error: {exc}", file=sys.stderr)
        return EXIT_FAILURE


if __name__ == "__main__":
    raise SystemExit(main())
