import io

import numpy as np
import pytest
from PIL import Image

from restorer import ImageError
from restorer.images import finish, load_image, plan_geometry, prepare, to_rgb, upright


def test_geometry_pads_to_multiple_and_downscales_large_inputs():
    g = plan_geometry((45, 37), max_pixels=10_000, multiple=8)
    assert g.sampled_size == (45, 37) and g.padded_size == (48, 40)
    assert plan_geometry((3, 5), max_pixels=10_000, multiple=8).padded_size == (32, 32)  # tiny: padded up
    g = plan_geometry((400, 300), max_pixels=30_000, multiple=32)
    w, h = g.sampled_size
    assert w * h <= 30_000 and abs(w / h - 4 / 3) < 0.02 and g.padded_size[0] % 32 == 0


@pytest.mark.parametrize("size", [(1, 1), (3, 7), (45, 37), (64, 64)])
def test_prepare_and_finish_round_trip_any_size(size):
    img = Image.new("RGB", size, (10, 200, 30))
    g = plan_geometry(size, max_pixels=4096, multiple=16)
    x = prepare(img, g)
    assert (x.shape[-1], x.shape[-2]) == g.padded_size
    out = finish(x, g)
    assert out.size == size and out.getpixel((0, 0)) == (10, 200, 30)


def test_alpha_is_composited_on_white_and_modes_become_rgb():
    rgba = Image.new("RGBA", (4, 4), (0, 0, 0, 0))
    assert to_rgb(rgba).getpixel((0, 0)) == (255, 255, 255)
    assert to_rgb(Image.new("L", (4, 4), 7)).mode == "RGB"


def test_load_image_errors_are_one_line(tmp_path):
    with pytest.raises(ImageError, match="no such file"):
        load_image(tmp_path / "missing.png")
    with pytest.raises(ImageError, match="not a file"):
        load_image(tmp_path)
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    with pytest.raises(ImageError, match="not a readable image"):
        load_image(bad)
    good = tmp_path / "good.png"
    import numpy as np

    Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 40, 3), dtype=np.uint8)).save(good)
    truncated = tmp_path / "truncated.png"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(ImageError):
        load_image(truncated)


@pytest.mark.parametrize("bits", ["I;16", "I", "F"])
def test_deep_grey_images_are_scaled_not_clipped(bits):
    """A 16-bit (or float) grey ramp becomes the same ramp in 8 bits, not a white sheet (Pillow clips)."""
    ramp = np.linspace(0.0, 1.0, 64 * 16).reshape(16, 64)
    if bits == "F":
        img = Image.fromarray(ramp.astype(np.float32), "F")
    else:
        img = Image.fromarray((ramp * 65535).astype(np.uint16 if bits == "I;16" else np.int32))
        assert img.mode == bits
    out = np.asarray(to_rgb(img), dtype=np.float64) / 255
    assert out.shape == (16, 64, 3)
    assert np.abs(out[..., 0] - ramp).max() < 1 / 255 + 1e-9


def test_a_malformed_exif_block_is_an_image_error():
    buf = io.BytesIO()
    Image.new("RGB", (8, 8)).save(buf, format="PNG", exif=b"not a TIFF header" * 3)
    with Image.open(io.BytesIO(buf.getvalue())) as img:
        img.load()
        with pytest.raises(ImageError, match="EXIF block is malformed"):
            upright(img)


def test_cmyk_palette_alpha_grey_alpha_and_animated_inputs():
    """Every mode a user may send becomes RGB; transparency goes on white; an animation gives its first frame."""
    assert np.asarray(to_rgb(Image.new("CMYK", (4, 4), (0, 255, 255, 0)))).tolist()[0][0] == [255, 0, 0]
    pa = Image.new("P", (4, 4))
    pa.putpalette([0, 0, 255] * 256)
    pa.info["transparency"] = 0  # index 0 is transparent: on white
    assert np.asarray(to_rgb(pa)).tolist()[0][0] == [255, 255, 255]
    assert np.asarray(to_rgb(Image.new("LA", (4, 4), (0, 255)))).tolist()[0][0] == [0, 0, 0]
    assert np.asarray(to_rgb(Image.new("LA", (4, 4), (0, 0)))).tolist()[0][0] == [255, 255, 255]
    buf = io.BytesIO()
    frames = [Image.new("RGB", (6, 4), c) for c in ((200, 0, 0), (0, 200, 0))]
    frames[0].save(buf, format="PNG", save_all=True, append_images=frames[1:])
    with Image.open(io.BytesIO(buf.getvalue())) as anim:
        assert getattr(anim, "n_frames", 1) == 2
        anim.load()
        assert np.asarray(to_rgb(anim)).tolist()[0][0] == [200, 0, 0]
