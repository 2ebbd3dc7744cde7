"""The whole sampler end to end on tiny real priors (both folder layouts), through the production loader."""

import numpy as np
import pytest
from restorer_helpers import random_image, rising_judge, scripted_judge
from tiny_models import make_tiny_sd

from restorer import Decision, RestoreCanceled, Restorer, resolve_config
from restorer.images import tensor_to_pil
from restorer.judge import load_judge
from restorer.prior import load_prior

FAST = {"steps": 8, "checkpoint_every": 2, "judge": "auto", "dqr": "on"}


@pytest.fixture(scope="module")
def tiny_sd_dir(tmp_path_factory):
    return make_tiny_sd(tmp_path_factory.mktemp("tiny-sd-sampler"))


@pytest.fixture(scope="module")
def prior(tiny_ldm_dir):
    return load_prior(str(tiny_ldm_dir), device="cpu")


@pytest.fixture(scope="module")
def piqe():
    return load_judge("piqe")


def restorer_with(prior, judge):
    return Restorer(prior, judge, perceptual=None)


@pytest.mark.parametrize("layout", ["uncond", "sd"])
def test_runs_and_emits_checkpoints_in_both_layouts(layout, tiny_ldm_dir, tiny_sd_dir):
    model = tiny_ldm_dir if layout == "uncond" else tiny_sd_dir
    r = Restorer.load(str(model), device="cpu", judge="piqe", perceptual="off")
    seen, steps = [], []
    result = r.restore(
        random_image(36, 28),
        resolve_config("fast", {**FAST, "dqr": "off"}),
        on_checkpoint=seen.append,
        on_step=steps.append,
    )
    assert result.image.size == (36, 28) and result.image.mode == "RGB"
    assert [c.step for c in seen] == [2, 4, 6, 8] and result.steps_run == 8 == len(steps)
    assert all(set(c.to_dict()) >= {"round", "step", "t", "score", "decision", "elapsed_s"} for c in seen)
    assert all(0.0 <= c.score <= 1.0 for c in seen) and seen[-1].decision is Decision.DONE
    assert seen[0].estimate.shape == (1, 3, 28, 36)
    assert result.judge == "piqe" and result.terms["pse"] is False and not result.early_exit
    report = result.report()
    assert report["steps_run"] == 8 and len(report["checkpoints"]) == 4


def test_renoises_while_improving_up_to_the_round_cap(prior):
    r = restorer_with(prior, rising_judge())
    cfg = resolve_config("fast", {**FAST, "max_rounds": 3, "renoise_strength": 0.5, "min_guided_intervals": 0})
    result = r.restore(random_image(20, 20), cfg)
    decisions = [c.decision for c in result.checkpoints]
    assert result.rounds == 3 and decisions.count(Decision.RENOISE) == 2 and decisions[-1] is Decision.DONE
    later_rounds = [c for c in result.checkpoints if c.round > 1]
    assert later_rounds and all(c.t <= 500 for c in later_rounds)  # re-noised to half strength
    per_round = {rnd: max(c.step for c in result.checkpoints if c.round == rnd) for rnd in (1, 2, 3)}
    assert per_round[1] == 8 and per_round[2] == per_round[3] < 8  # later rounds run the remaining steps
    assert result.steps_run == sum(per_round.values())


def test_exits_early_when_the_score_stops_rising(prior):
    r = restorer_with(prior, scripted_judge([0.2, 0.5, 0.5, 0.5, 0.5]))
    cfg = resolve_config("fast", {**FAST, "steps": 10, "min_guided_intervals": 0})
    result = r.restore(random_image(20, 20), cfg)
    assert result.early_exit and result.steps_run == 6 and result.rounds == 1
    assert [c.decision for c in result.checkpoints] == [Decision.CONTINUE, Decision.REFINE, Decision.EXIT]


def test_cancel_stops_at_the_next_step(prior, piqe):
    r = restorer_with(prior, piqe)
    calls = {"n": 0}

    def cancel_after_three() -> bool:
        calls["n"] += 1
        return calls["n"] > 3

    with pytest.raises(RestoreCanceled) as err:
        r.restore(random_image(20, 20), resolve_config("fast", FAST), should_cancel=cancel_after_three)
    assert err.value.steps_run == 3


def test_same_seed_same_output_other_seed_differs(prior, piqe):
    r = restorer_with(prior, piqe)
    img = random_image(24, 20, seed=5)
    run = lambda seed: np.asarray(r.restore(img, resolve_config("fast", {**FAST, "seed": seed})).image)  # noqa: E731
    a, b, c = run(1), run(1), run(2)
    assert np.array_equal(a, b) and not np.array_equal(a, c)


@pytest.mark.parametrize("size", [(1, 1), (5, 3), (33, 17), (70, 50)])
def test_odd_sizes_and_downscaled_inputs_come_back_at_their_own_size(prior, piqe, size):
    r = restorer_with(prior, piqe)
    cfg = resolve_config("fast", {**FAST, "steps": 2, "checkpoint_every": 2, "max_pixels": 64 * 64})
    result = r.restore(random_image(*size), cfg)
    assert result.image.size == size
    if size == (70, 50):
        assert result.sampled_size[0] * result.sampled_size[1] <= 64 * 64


@pytest.mark.parametrize(
    "ablation",
    [
        {"pcdm": "resblock"},
        {"degloss": "l1"},
        {"pcdm_init": "random"},
        {"degloss_direction": "symmetric", "ggd_center": True},
    ],
)
def test_ablations_run(prior, piqe, ablation):
    result = restorer_with(prior, piqe).restore(random_image(16, 16), resolve_config("fast", {**FAST, **ablation}))
    assert result.config | ablation == result.config and result.image.size == (16, 16)


def test_guidance_pulls_towards_the_input(prior, piqe):
    """With κ=0 the sampler ignores x_lq; with guidance the output must be closer to it."""
    img = random_image(16, 16, seed=3)
    x = np.asarray(img, dtype=np.float32)
    dist = {}
    for kappa in (0.0, 30.0):  # detail off: the sampled estimate itself, not the pixel-space step
        cfg = resolve_config("fast", {**FAST, "kappa": kappa, "dqr": "off", "guidance_start_t": 1000, "detail": "off"})
        out = np.asarray(restorer_with(prior, piqe).restore(img, cfg).image, dtype=np.float32)
        dist[kappa] = float(((out - x) ** 2).mean())
    assert dist[30.0] < dist[0.0]


def test_detail_step_gives_back_what_the_estimate_lacks(prior, piqe):
    """On a well-exposed input the final pixel-space step moves the output toward the input."""
    img = random_image(16, 16, seed=4)
    x = np.asarray(img, dtype=np.float32)
    dist = {}
    for detail in ("off", "wiener", "wavelet"):
        cfg = resolve_config("fast", {**FAST, "dqr": "off", "detail": detail})
        out = np.asarray(restorer_with(prior, piqe).restore(img, cfg).image, dtype=np.float32)
        dist[detail] = float(((out - x) ** 2).mean())
    assert dist["wiener"] < dist["off"] and dist["wavelet"] < dist["off"]


def test_rgba_and_greyscale_inputs(prior, piqe):
    from PIL import Image

    r = restorer_with(prior, piqe)
    for img in (Image.new("RGBA", (12, 10), (5, 5, 5, 128)), Image.new("L", (12, 10), 80)):
        assert r.restore(img, resolve_config("fast", FAST)).image.size == (12, 10)


def test_result_is_the_chosen_checkpoint_never_an_unguided_one(prior):
    """The first checkpoints come before guidance acts (unconditional samples): even when the judge loves them,
    the returned image and its reported score come from a guided checkpoint."""
    judge = scripted_judge([0.99, 0.99, 0.3, 0.5, 0.7, 0.71])
    cfg = resolve_config(
        "fast", {**FAST, "steps": 12, "checkpoint_every": 2, "min_guided_intervals": 1, "dqr": "on", "detail": "off"}
    )
    result = restorer_with(prior, judge).restore(random_image(20, 20), cfg)
    assert result.final_score < 0.99
    chosen = [c for c in result.checkpoints if c.score == result.final_score]
    assert chosen and chosen[0].step > 4
    np.testing.assert_array_equal(np.asarray(result.image), np.asarray(tensor_to_pil(chosen[0].estimate)))


def test_exif_orientation_is_applied_so_results_come_back_upright(prior, piqe):
    import io

    from PIL import Image

    buf = io.BytesIO()
    exif = Image.Exif()
    exif[0x0112] = 6  # pixels stored sideways
    Image.new("RGB", (40, 24), (90, 120, 30)).save(buf, format="JPEG", exif=exif)
    result = restorer_with(prior, piqe).restore(Image.open(buf), resolve_config("fast", {**FAST, "steps": 2}))
    assert result.image.size == (24, 40) and result.input_size == (24, 40)
