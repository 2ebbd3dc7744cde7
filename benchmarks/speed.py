"""Speed and memory harness: seconds per image, ms per step, steps run and peak memory per preset.

    python -m benchmarks.speed --model ../shared/weights/mini-ldm --size 128 --presets fast,balanced \
        --device cpu --concurrent 1,2 --out benchmarks/results/speed-x
    python -m benchmarks.speed --arch sd21 --size 512 --presets fast,balanced --device cuda --dtype bf16 \
        --concurrent 1,4 --out benchmarks/results/speed-sd21-h100

`--arch sd15|sd21` builds the Stable Diffusion 1.5 / 2.1-base architecture from its published config with
RANDOM weights (timing does not depend on weight values), saves it in diffusers layout to a cache folder
and loads it through the production loader (`Restorer.load`). Reports say "random weights".

Two ways to run N jobs at once on one loaded Restorer, both reporting aggregate images/min:
`--concurrent N`: N restorations in N threads (each its own UNet calls; what N workers on one device do);
`--batch N`: N restorations as one batch (`Restorer.restore_many`: shared UNet and decoder calls; what one
worker with UPZIR_MAX_BATCH=N does).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from PIL import Image

from .common import DEFAULT_DATA_ROOT, command_line, fmt, header_md, machine, parse_set, write_json

# --- Stable Diffusion architectures (public configs of runwayml/stable-diffusion-v1-5 and
# stabilityai/stable-diffusion-2-1-base; only sizes and wiring, no weights) -----------------------------
_UNET_COMMON = dict(
    sample_size=64,
    in_channels=4,
    out_channels=4,
    layers_per_block=2,
    block_out_channels=(320, 640, 1280, 1280),
    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    norm_num_groups=32,
    act_fn="silu",
    downsample_padding=1,
    flip_sin_to_cos=True,
    freq_shift=0,
    mid_block_scale_factor=1,
)
ARCHS: dict[str, dict[str, Any]] = {
    "sd15": {
        "unet": {**_UNET_COMMON, "cross_attention_dim": 768, "attention_head_dim": 8},
        "text": dict(
            hidden_size=768,
            intermediate_size=3072,
            num_hidden_layers=12,
            num_attention_heads=12,
            hidden_act="quick_gelu",
            projection_dim=768,
        ),
        "vae_sample_size": 512,
    },
    "sd21": {
        "unet": {
            **_UNET_COMMON,
            "cross_attention_dim": 1024,
            "attention_head_dim": [5, 10, 20, 20],
            "use_linear_projection": True,
        },
        # OpenCLIP ViT-H/14 text tower as diffusers ships it for SD 2.x (23 of 24 layers kept).
        "text": dict(
            hidden_size=1024,
            intermediate_size=4096,
            num_hidden_layers=23,
            num_attention_heads=16,
            hidden_act="gelu",
            projection_dim=512,
        ),
        "vae_sample_size": 512,
    },
}
SD_SCHEDULER = {
    "_class_name": "DDPMScheduler",
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "clip_sample": False,
    "num_train_timesteps": 1000,
    "prediction_type": "epsilon",
    "steps_offset": 1,
    "timestep_spacing": "leading",
    "set_alpha_to_one": False,
}


def build_sd_arch(arch: str, root: Path, seed: int = 0) -> Path:
    """Write the SD `arch` with random (seeded) weights in diffusers layout under root; reuse if complete."""
    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from tiny_models import _write_clip_tokenizer  # byte-level CLIP tokenizer, enough for the empty prompt

    spec = ARCHS[arch]
    root = Path(root)
    marker = root / "BUILT.json"
    if marker.exists():
        return root
    root.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    # Stored as fp16 to halve the disk write; the loader casts to the requested dtype.
    AutoencoderKL(
        in_channels=3,
        out_channels=3,
        latent_channels=4,
        layers_per_block=2,
        norm_num_groups=32,
        block_out_channels=(128, 256, 512, 512),
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        sample_size=spec["vae_sample_size"],
        scaling_factor=0.18215,
    ).to(torch.float16).save_pretrained(root / "vae")
    unet = UNet2DConditionModel(**spec["unet"]).to(torch.float16)
    unet.save_pretrained(root / "unet")
    del unet
    _write_clip_tokenizer(root / "tokenizer")
    tok_cfg = json.loads((root / "tokenizer" / "tokenizer_config.json").read_text())
    tok_cfg["model_max_length"] = 77
    (root / "tokenizer" / "tokenizer_config.json").write_text(json.dumps(tok_cfg))
    n_tok = len(json.loads((root / "tokenizer" / "vocab.json").read_text()))
    CLIPTextModel(
        CLIPTextConfig(
            vocab_size=49408,
            max_position_embeddings=77,
            bos_token_id=n_tok - 2,
            eos_token_id=n_tok - 1,
            pad_token_id=n_tok - 1,
            **spec["text"],
        )
    ).to(torch.float16).save_pretrained(root / "text_encoder")
    (root / "scheduler").mkdir(exist_ok=True)
    (root / "scheduler" / "scheduler_config.json").write_text(json.dumps(SD_SCHEDULER))
    marker.write_text(json.dumps({"arch": arch, "weights": "random", "seed": seed}))
    return root


# --- inputs and memory --------------------------------------------------------------------------------
def test_image(size: int, data_root: Path) -> tuple[Image.Image, str]:
    """A noisy (σ=25) centre crop of kodim01 when the data is there, else seeded noise."""
    from restorer.degradations import degrade
    from restorer.images import centre_crop

    src = data_root / "kodak24" / "kodim01.png"
    if src.exists():
        lq, _ = degrade(centre_crop(Image.open(src), size), "noise25", "kodim01")
        return lq, f"kodim01 centre {size}² + noise25"
    import numpy as np

    arr = (np.random.default_rng(0).random((size, size, 3)) * 255).astype("uint8")
    return Image.fromarray(arr, "RGB"), f"seeded random {size}²"


class RssPeak:
    """Samples this process's resident set size in a thread; peak over the window (CPU runs)."""

    def __init__(self, interval: float = 0.05) -> None:
        import psutil

        self.proc = psutil.Process(os.getpid())
        self.interval = interval
        self.baseline = self.proc.memory_info().rss
        self.peak = self.baseline
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self.proc.memory_info().rss)
            self._stop.wait(self.interval)

    def __enter__(self) -> RssPeak:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.proc.memory_info().rss)


def run_batch(restorer, image: Image.Image, cfg_for_seed, n: int, device: str, batched: bool) -> dict[str, Any]:
    """n restorations, in n threads or as one batch; wall time, per-image figures and peak memory."""
    import torch

    results: list[Any] = [None] * n
    errors: list[BaseException] = []

    def work(i: int) -> None:
        try:
            results[i] = restorer.restore(image, cfg_for_seed(i))
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    def work_batched() -> None:
        outcomes = restorer.restore_many([(image, cfg_for_seed(i)) for i in range(n)], max_batch=n)
        for i, o in enumerate(outcomes):
            if o.error is not None:
                errors.append(o.error)
            results[i] = o.result

    cuda = device.startswith("cuda")
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base_alloc = torch.cuda.memory_allocated()
    ru_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    if batched:
        threads = [threading.Thread(target=work_batched)]
    else:
        threads = [threading.Thread(target=work, args=(i,)) for i in range(n)]
    with RssPeak() as rss:
        t0 = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        if cuda:
            torch.cuda.synchronize()
        wall = time.perf_counter() - t0
    if errors:
        raise errors[0]
    secs = [r.seconds for r in results]
    steps = [r.steps_run for r in results]
    out: dict[str, Any] = {
        "mode": "batch" if batched else "threads",
        "concurrent": n,
        "wall_s": wall,
        "images_per_min": 60.0 * n / wall,
        "seconds_per_image": sum(secs) / n,
        "ms_per_step": 1000.0 * sum(secs) / max(sum(steps), 1),
        # throughput per unit of work: DQR makes jobs run different step counts, so images/min alone misleads
        "ms_per_image_step": 1000.0 * wall / max(sum(steps), 1),
        "steps_run": sum(steps) / n,
        "rounds": sum(r.rounds for r in results) / n,
        "early_exit_rate": sum(r.early_exit for r in results) / n,
        "rss_baseline_mb": rss.baseline / 2**20,
        "rss_peak_mb": rss.peak / 2**20,
        "rss_peak_delta_mb": (rss.peak - rss.baseline) / 2**20,
        "ru_maxrss_delta_mb": (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - ru_before) / 1024.0,
    }
    if cuda:
        out["cuda_peak_mb"] = torch.cuda.max_memory_allocated() / 2**20
        out["cuda_peak_delta_mb"] = (torch.cuda.max_memory_allocated() - base_alloc) / 2**20
    return out


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m benchmarks.speed", description=__doc__.split("\n\n")[0])
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--model", help="diffusers LDM folder or hub id")
    src.add_argument("--arch", choices=sorted(ARCHS), help="Stable Diffusion architecture with random weights")
    p.add_argument(
        "--arch-cache",
        type=Path,
        default=None,
        help="where --arch writes its random-weight model (default: a folder under the temp dir, reused)",
    )
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--presets", default="fast,balanced")
    p.add_argument("--set", dest="set_", default="", help="overrides on every preset: k=v,k=v (e.g. steps=2)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="fp32", choices=["fp32", "fp16", "bf16"])
    p.add_argument("--concurrent", default="1", help="comma-separated thread counts, e.g. 1,2,4")
    p.add_argument("--batch", default="", help="comma-separated batch sizes, e.g. 2,4 (one restore_many each)")
    p.add_argument("--judge", default="piqe")
    p.add_argument("--perceptual", default="off", choices=["auto", "on", "off"])
    p.add_argument("--no-warmup", action="store_true", help="skip the 1-step warm-up restoration")
    p.add_argument("--data-root", type=Path, default=DEFAULT_DATA_ROOT)
    p.add_argument("--out", type=Path, required=True)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from restorer import Restorer, resolve_config

    cmd = command_line() if argv is None else "python -m benchmarks.speed " + " ".join(argv)
    presets = [s.strip() for s in args.presets.split(",") if s.strip()]
    runs = [(int(c), False) for c in args.concurrent.split(",") if c.strip()]
    runs += [(int(c), True) for c in args.batch.split(",") if c.strip()]
    overrides = parse_set(args.set_)
    for pr in presets:  # fail on a bad preset/override before loading anything
        resolve_config(pr, {**overrides, "seed": 0})

    t0 = time.perf_counter()
    if args.arch:
        cache = args.arch_cache or Path(tempfile.gettempdir()) / f"upzir-bench-{args.arch}-random"
        model_path, weights = str(build_sd_arch(args.arch, cache)), "random weights"
        print(
            f"built {args.arch} architecture (random weights) in {cache} ({time.perf_counter() - t0:.0f} s)",
            file=sys.stderr,
        )
    else:
        model_path, weights = args.model, "trained weights (as loaded from --model)"
    t1 = time.perf_counter()
    restorer = Restorer.load(
        model_path, device=args.device, dtype=args.dtype, judge=args.judge, perceptual=args.perceptual
    )
    load_s = time.perf_counter() - t1
    image, image_desc = test_image(args.size, args.data_root)
    if not args.no_warmup:  # first-call costs (allocator, kernels, lazy init) out of the figures
        restorer.restore(image, resolve_config(presets[0], {**overrides, "steps": 1, "checkpoint_every": 1}))

    rows = []
    for pr in presets:
        for n, batched in runs:
            print(f"preset {pr}, {n} {'batched' if batched else 'concurrent'} ...", file=sys.stderr, flush=True)
            r = run_batch(
                restorer, image, lambda i, pr=pr: resolve_config(pr, {**overrides, "seed": i}), n, args.device, batched
            )
            rows.append({"preset": pr, **r})
            print(json.dumps(rows[-1]), file=sys.stderr, flush=True)

    info = machine(args.device)
    meta = {
        "model": args.arch or args.model,
        "weights": weights,
        "size": args.size,
        "dtype": args.dtype,
        "input": image_desc,
        "set": overrides or "none",
        "judge": args.judge,
        "perceptual": args.perceptual,
        "load_s": round(load_s, 2),
        "restorer": restorer.describe(),
        "concurrency_note": "threads: N restorations in N threads; batch: N restorations in one restore_many "
        "(shared UNet and decoder calls); both on one loaded Restorer",
    }
    args.out.mkdir(parents=True, exist_ok=True)
    write_json(args.out / "speed.json", {"machine": info, "command": cmd, **meta, "rows": rows})
    mem_col = "peak CUDA MB" if args.device.startswith("cuda") else "peak RSS Δ MB"
    md = [header_md("Speed benchmark", info, cmd)]
    md += [f"- {k}: {v}" for k, v in meta.items() if k != "restorer"]
    md += [
        "",
        f"| preset | mode | N | s/img | ms/step | ms/image-step | steps | rounds | images/min | {mem_col} |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        mem = r.get("cuda_peak_mb") if args.device.startswith("cuda") else r["rss_peak_delta_mb"]
        md.append(
            f"| {r['preset']} | {r.get('mode', 'threads')} | {r['concurrent']} | {fmt(r['seconds_per_image'], 2)} | "
            f"{fmt(r['ms_per_step'], 0)} | {fmt(r.get('ms_per_image_step'), 0)} | {fmt(r['steps_run'], 1)} | {fmt(r['rounds'], 2)} | "
            f"{fmt(r['images_per_min'], 2)} | {fmt(mem, 0)} |"
        )
    (args.out / "speed.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
