import pytest
import torch
from tiny_models import make_tiny_sd

from restorer import ModelLoadError, load_prior


@pytest.fixture(scope="module")
def tiny_sd_dir(tmp_path_factory):
    return make_tiny_sd(tmp_path_factory.mktemp("tiny-sd"))


def test_unconditional_layout_loads_through_the_production_loader(tiny_ldm_dir):
    prior = load_prior(str(tiny_ldm_dir), device="cpu")
    assert prior.cond is None and prior.describe()["unet"] == "UNet2DModel"
    assert prior.vae_factor == 2 and prior.pad_multiple == 4
    x = torch.rand(1, 3, 16, 20)
    z = prior.encode(x)
    assert z.shape == (1, 4, 8, 10)
    assert prior.decode(z).shape == x.shape
    assert prior.predict_noise(z, 500).shape == z.shape


def test_sd_layout_embeds_the_empty_prompt_once(tiny_sd_dir):
    prior = load_prior(str(tiny_sd_dir), device="cpu")
    assert prior.cond is not None and prior.cond.shape == (1, 16, 32)
    assert prior.describe()["conditional"] is True
    z = torch.randn(1, 4, 8, 8)
    assert prior.predict_noise(z, 10).shape == z.shape


def test_timesteps_descend_and_alpha_bar_after_last_is_one(tiny_ldm_dir):
    prior = load_prior(str(tiny_ldm_dir), device="cpu")
    ts = prior.timesteps(10)
    assert len(ts) == 10 and ts == sorted(ts, reverse=True) and ts[0] < 1000
    assert prior.alpha_bar(-1) == 1.0 and 0 < prior.alpha_bar(ts[0]) < prior.alpha_bar(ts[-1]) < 1


def test_bf16_dtype_loads(tiny_ldm_dir):
    prior = load_prior(str(tiny_ldm_dir), device="cpu", dtype="bf16")
    z = prior.encode(torch.rand(1, 3, 8, 8))
    assert prior.decode(z).dtype == torch.float32  # images leave the prior in float32


def test_missing_local_folder_names_what_is_missing(tmp_path):
    (tmp_path / "vae").mkdir()
    with pytest.raises(ModelLoadError, match="unet"):
        load_prior(str(tmp_path), device="cpu")


def test_hub_id_offline_says_how_to_provide_weights(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelLoadError) as err:
        load_prior("someone/not-cached-model", device="cpu")
    msg = str(err.value)
    assert "someone/not-cached-model" in msg and "HF_HOME" in msg and "--model" in msg


def test_bad_dtype_and_unavailable_cuda(tiny_ldm_dir):
    with pytest.raises(ModelLoadError, match="dtype"):
        load_prior(str(tiny_ldm_dir), device="cpu", dtype="fp8")
    if not torch.cuda.is_available():
        with pytest.raises(ModelLoadError, match="CUDA"):
            load_prior(str(tiny_ldm_dir), device="cuda")
