"""Comparing a restoration with a reference: full-reference scores, and a side-by-side strip to look at.

Users measure the restorer on their own (degraded, clean) pairs with `upzir restore --reference`; the demo and
the README picture use the same strip. Scores are pyiqa's, with its defaults (PSNR on RGB, SSIM on the Y
channel), the same definitions `benchmarks/quality.py` reports, so a user's figure and ours compare.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import cache
from typing import Any

import numpy as np
import torch
from PIL import Image

from .errors import ImageError
from .images import pil_to_tensor

REFERENCE_METRICS = ("psnr", "ssim")
"""Full-reference scores that need no downloaded weights (they run offline)."""
STRIP_GAP = 4
"""White pixels between the tiles of a strip."""


@cache
def _metric(name: str) -> Any:
    import pyiqa

    return pyiqa.create_metric(name, device="cpu")


def reference_scores(image: Image.Image, reference: Image.Image) -> dict[str, float]:
    """PSNR (dB) and SSIM of `image` against `reference`; they must have the same size."""
    if image.size != reference.size:
        raise ImageError(
            f"reference is {reference.size[0]}×{reference.size[1]}, the image is "
            f"{image.size[0]}×{image.size[1]}: they must have the same size"
        )
    x, y = pil_to_tensor(image.convert("RGB")), pil_to_tensor(reference.convert("RGB"))
    with torch.no_grad():
        return {name: float(_metric(name)(x, y)) for name in REFERENCE_METRICS}


def side_by_side(tiles: Sequence[Image.Image], scale: int = 1) -> Image.Image:
    """Tiles of one height in a row, white gaps between, optionally enlarged (nearest, so pixels stay honest)."""
    if not tiles:
        raise ValueError("side_by_side needs at least one tile")
    height = tiles[0].size[1]
    if any(t.size[1] != height for t in tiles):
        raise ValueError("side_by_side: tiles differ in height")
    arrays = [
        np.pad(np.asarray(t.convert("RGB")), ((0, 0), (0, STRIP_GAP), (0, 0)), constant_values=255) for t in tiles
    ]
    strip = Image.fromarray(np.concatenate(arrays, axis=1)[:, :-STRIP_GAP])
    if scale != 1:
        strip = strip.resize((strip.width * scale, strip.height * scale), Image.Resampling.NEAREST)
    return strip
