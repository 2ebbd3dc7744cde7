"""Image I/O and geometry: load any RGB image, pad for the prior, downscale large inputs, restore the size.

Pillow does the decoding and resizing; tensors inside the library are (1, 3, H, W) float32 in [0, 1].
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps, UnidentifiedImageError

from .errors import ImageError

EXIF_ORIENTATION_TAG = 0x0112
WIDE_GREY_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I", "F")
"""Single-channel modes deeper than 8 bits (16-bit PNG/TIFF grey, 32-bit int, float)."""

MIN_CANVAS_SIDE = 32
"""Tiny inputs are padded up to this: the patch discriminator (three stride-2 convs) needs ≥ 8 px and the
PIQE judge works on 16-px blocks."""

RESAMPLE = Image.Resampling.LANCZOS
"""Down/up-scaling filter for inputs over max_pixels (sharp, few artefacts)."""


def load_image(path: str | Path) -> Image.Image:
    """Open and fully decode an image file as RGB; ImageError with a one-line reason otherwise."""
    p = Path(path)
    if not p.exists():
        raise ImageError(f"{p}: no such file")
    if not p.is_file():
        raise ImageError(f"{p}: not a file")
    try:
        with Image.open(p) as img:
            img.load()
            return to_rgb(img)
    except (UnidentifiedImageError, OSError, SyntaxError, Image.DecompressionBombError) as exc:
        raise ImageError(f"{p}: not a readable image ({exc})") from None


EXIF_ERRORS = (SyntaxError, ValueError, TypeError, KeyError, IndexError, OSError, struct.error)
"""What Pillow raises on a malformed EXIF block (it parses it as a TIFF)."""


def exif_orientation(img: Image.Image) -> int | None:
    """The EXIF orientation tag (1–8) or None; ImageError when the EXIF block is malformed."""
    try:
        return img.getexif().get(EXIF_ORIENTATION_TAG)
    except EXIF_ERRORS as exc:
        raise ImageError(f"the image's EXIF block is malformed ({exc})") from None


def upright(img: Image.Image) -> Image.Image:
    """Apply the EXIF orientation (phone photos store pixels sideways): results come back as people see them."""
    exif_orientation(img)  # a malformed block is the file's fault: a clear ImageError, not a crash below
    return ImageOps.exif_transpose(img)


def to_rgb(img: Image.Image) -> Image.Image:
    """Any mode → RGB (alpha composited on white, palette expanded, 16-bit and float grey scaled to 8 bits);
    rejects empty images."""
    if img.width == 0 or img.height == 0:
        raise ImageError("image has zero width or height")
    if img.mode in WIDE_GREY_MODES:
        # Pillow's convert() clips these to 0–255 (a 16-bit PNG turns white): scale the full range instead
        arr = np.asarray(img, dtype=np.float64)
        if img.mode == "F":
            full = 1.0 if arr.max() <= 1.0 else 255.0  # float data in [0, 1] or on the 8-bit scale
        else:
            full = 65535.0 if img.mode.startswith("I;16") or arr.max() > 255 else 255.0
        grey = np.clip(np.round(arr / full * 255.0), 0, 255).astype(np.uint8)
        return Image.fromarray(grey, "L").convert("RGB")
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        img = img.convert("RGBA")
        bg = Image.new("RGBA", img.size, (255, 255, 255, 255))
        return Image.alpha_composite(bg, img).convert("RGB")
    return img.convert("RGB")


def centre_crop(img: Image.Image, size: int) -> Image.Image:
    """The centre `size`² square (RGB); an image shorter than `size` is first scaled up (bicubic) to cover it."""
    img = to_rgb(img)
    w, h = img.size
    if min(w, h) < size:
        s = size / min(w, h)
        img = img.resize((max(size, round(w * s)), max(size, round(h * s))), Image.Resampling.BICUBIC)
        w, h = img.size
    left, top = (w - size) // 2, (h - size) // 2
    return img.crop((left, top, left + size, top + size))


def pil_to_tensor(img: Image.Image) -> torch.Tensor:
    arr = np.asarray(to_rgb(img), dtype=np.float32) / 255.0
    return torch.from_numpy(arr.copy()).permute(2, 0, 1).unsqueeze(0)


def tensor_to_pil(x: torch.Tensor) -> Image.Image:
    arr = (x.detach().float().clamp(0, 1)[0].permute(1, 2, 0).cpu().numpy() * 255.0).round().astype(np.uint8)
    return Image.fromarray(arr, mode="RGB")


@dataclass(frozen=True)
class Geometry:
    """How an input maps to the sampled canvas and back."""

    input_size: tuple[int, int]  # (w, h) of the user's image
    sampled_size: tuple[int, int]  # (w, h) after an optional downscale, before padding
    padded_size: tuple[int, int]  # (w, h) the prior sees: multiples of the pad multiple

    def crop(self, x: torch.Tensor) -> torch.Tensor:
        w, h = self.sampled_size
        return x[..., :h, :w]


def plan_geometry(size: tuple[int, int], max_pixels: int, multiple: int) -> Geometry:
    """Downscale (keeping aspect) when w·h > max_pixels, then pad each side up to a multiple."""
    w, h = size
    if w * h > max_pixels:
        scale = math.sqrt(max_pixels / (w * h))
        w, h = max(1, int(w * scale)), max(1, int(h * scale))
    side = lambda n: math.ceil(max(n, MIN_CANVAS_SIDE) / multiple) * multiple  # noqa: E731
    pw, ph = side(w), side(h)
    return Geometry(size, (w, h), (pw, ph))


def prepare(img: Image.Image, geom: Geometry) -> torch.Tensor:
    """PIL → (1,3,H,W) on the padded canvas: resized if planned, then reflect-padded right and bottom."""
    img = to_rgb(img)
    if img.size != geom.sampled_size:
        img = img.resize(geom.sampled_size, RESAMPLE)
    x = pil_to_tensor(img)
    pad_w = geom.padded_size[0] - geom.sampled_size[0]
    pad_h = geom.padded_size[1] - geom.sampled_size[1]
    if pad_w or pad_h:
        # reflect needs pad < size; tiny inputs fall back to edge replication
        mode = "reflect" if pad_w < x.shape[-1] and pad_h < x.shape[-2] else "replicate"
        x = F.pad(x, (0, pad_w, 0, pad_h), mode=mode)
    return x


def finish(x: torch.Tensor, geom: Geometry) -> Image.Image:
    """Canvas (padded, or already cropped) → PIL at exactly the input size."""
    img = tensor_to_pil(geom.crop(x))
    if img.size != geom.input_size:
        img = img.resize(geom.input_size, RESAMPLE)
    return img
