import torch

from restorer.pcdm import PCDM, ResBlockDegrader, build_degrader, build_discriminator, count_params


def test_shapes_and_discriminator_patches():
    phi = build_degrader("pcdm", latent_channels=4, width=16, seed=0)
    x = torch.rand(1, 3, 32, 40)
    y = phi(x, torch.rand(8))
    assert y.shape == x.shape
    d = build_discriminator(16, seed=0)(x)
    assert d.shape == (1, 1, 4, 5) and ((d > 0) & (d < 1)).all()


def test_f3_starts_as_identity_in_both_inits():
    for init in ("identity", "random"):
        phi = PCDM(4, 16, init=init)
        assert torch.equal(phi.f3.weight.view(3, 3), torch.eye(3)) and not phi.f3.bias.any()


def test_identity_init_is_the_identity_map_and_random_is_not():
    x, g = torch.rand(1, 3, 24, 24), torch.rand(8)
    assert torch.allclose(PCDM(4, 16, init="identity")(x, g), x, atol=1e-6)
    assert not torch.allclose(PCDM(4, 16, init="random")(x, g), x, atol=1e-2)


def test_ggd_input_modulates_the_output_once_trained():
    phi = PCDM(4, 16, init="random")
    x = torch.rand(1, 3, 16, 16)
    assert not torch.allclose(phi(x, torch.zeros(8)), phi(x, torch.ones(8)))


def test_reinitialised_per_image_and_seeded():
    a, b = build_degrader("pcdm", 4, 16, seed=3), build_degrader("pcdm", 4, 16, seed=3)
    for pa, pb in zip(a.parameters(), b.parameters()):
        assert torch.equal(pa, pb)
    c = build_degrader("pcdm", 4, 16, seed=4)
    assert any(not torch.equal(pa, pc) for pa, pc in zip(a.parameters(), c.parameters()))
    # seeding does not disturb the caller's global RNG stream
    torch.manual_seed(0)
    before = torch.rand(1)
    torch.manual_seed(0)
    build_degrader("pcdm", 4, 16, seed=9)
    assert torch.equal(torch.rand(1), before)


def test_resblock_ablation_has_about_pcdm_parameter_count_and_ignores_ggd():
    pcdm = PCDM(4, 64)
    res = build_degrader("resblock", 4, 64, seed=0)
    assert isinstance(res, ResBlockDegrader)
    assert abs(count_params(res) - count_params(pcdm)) / count_params(pcdm) < 0.01
    x = torch.rand(1, 3, 16, 16)
    assert torch.equal(res(x, torch.zeros(8)), res(x, torch.ones(8)))
