"""Restoration quality on the real mini-ldm prior (skips when ../shared is absent). Slow: ~1–2 min.

The default preset, blind (no task label), on Kodak 128² centre crops with the benchmark's seeded degradations:
noise and low light + noise are restored clearly above the input, and a clean photo comes back no worse than
the prior's own autoencoder reconstruction of it ("do no harm").
"""

import pytest
import torch
from PIL import Image

from benchmarks.common import DEFAULT_DATA_ROOT, DEFAULT_WEIGHTS_ROOT
from restorer import Restorer, resolve_config
from restorer.degradations import degrade
from restorer.images import centre_crop, pil_to_tensor

MINI_LDM = DEFAULT_WEIGHTS_ROOT / "mini-ldm"  # UPZIR_WEIGHTS_ROOT / UPZIR_DATA_ROOT move them
KODAK = DEFAULT_DATA_ROOT / "kodak24"
CROP = 128
MIN_GAIN_DB = 2.0
"""'Clearly above the degraded input' (issue #11's bar); measured gains are ~4–6 dB."""
HARM_MARGIN_DB = 1.5
"""A clean input may come back at most this far below the autoencoder's reconstruction of it."""

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not (MINI_LDM / "unet").is_dir() or not KODAK.is_dir(),
        reason="../shared/weights/mini-ldm or ../shared/data/kodak24 not present",
    ),
]


@pytest.fixture(scope="module")
def restorer():
    return Restorer.load(str(MINI_LDM), device="cpu", judge="piqe", perceptual="off")


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(10 * torch.log10(1 / ((a - b) ** 2).mean()))


def crop(name: str) -> Image.Image:
    return centre_crop(Image.open(KODAK / f"{name}.png"), CROP)


@pytest.mark.parametrize(
    ("name", "kind"),
    [("kodim05", "noise25"), ("kodim23", "noise25"), ("kodim05", "lowlight+noise"), ("kodim05", "haze")],
)
def test_default_preset_restores_blind(restorer, name, kind):
    clean = crop(name)
    degraded, _ = degrade(clean, kind, name)
    out = pil_to_tensor(restorer.restore(degraded, resolve_config()).image)
    x, y = pil_to_tensor(clean), pil_to_tensor(degraded)
    print(f"{name} {kind}: {psnr(y, x):.2f} dB -> {psnr(out, x):.2f} dB")
    assert psnr(out, x) > psnr(y, x) + MIN_GAIN_DB


def test_a_clean_photo_comes_back_close_to_itself(restorer):
    clean = crop("kodim23")
    x = pil_to_tensor(clean)
    out = pil_to_tensor(restorer.restore(clean, resolve_config()).image)
    with torch.no_grad():
        ae = restorer.prior.decode(restorer.prior.encode(x)).clamp(0, 1)
    print(f"kodim23 clean: autoencoder {psnr(ae, x):.2f} dB, restorer {psnr(out, x):.2f} dB")
    assert psnr(out, x) > psnr(ae, x) - HARM_MARGIN_DB
