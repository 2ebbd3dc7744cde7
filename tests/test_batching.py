"""Several restorations in one batch (shared UNet and decoder calls) give each job its solo result.

Batching is how one GPU worker serves many jobs; these tests pin down that batch members never change each
other's output, that runs can join between steps, and that a failure or cancel ends only its own job.
"""

import numpy as np
import pytest
import torch
from restorer_helpers import random_image

from restorer import RestoreCanceled, Restorer, resolve_config
from restorer.judge import load_judge
from restorer.prior import load_prior
from restorer.sampler import BatchSampler

FAST = {"steps": 8, "checkpoint_every": 2, "min_guided_intervals": 1, "dqr": "on"}
# one level of 8-bit rounding: batched and solo convolutions may sum in a different order
PIXEL_TOLERANCE = 1


@pytest.fixture(scope="module")
def restorer(tiny_ldm_dir):
    return Restorer(load_prior(str(tiny_ldm_dir), device="cpu"), load_judge("piqe"), perceptual=None)


def pixels(result) -> np.ndarray:
    return np.asarray(result.image, dtype=np.int16)


def assert_same(a, b) -> None:
    assert a.image.size == b.image.size and a.steps_run == b.steps_run and a.rounds == b.rounds
    assert np.abs(pixels(a) - pixels(b)).max() <= PIXEL_TOLERANCE
    assert [c.decision for c in a.checkpoints] == [c.decision for c in b.checkpoints]


JOBS = [
    (random_image(24, 24, seed=1), {**FAST, "seed": 1}),
    (random_image(24, 24, seed=2), {**FAST, "seed": 2, "steps": 6, "dqr": "off"}),  # other length, DQR off
    (random_image(20, 24, seed=3), {**FAST, "seed": 3, "kappa": 8000.0}),  # other shape: a group of its own
    (random_image(24, 24, seed=4), {**FAST, "seed": 4, "pcdm_fused": True}),  # φ trained from the shared backward
]


def test_batched_jobs_match_their_solo_runs(restorer):
    solo = [restorer.restore(img, resolve_config("fast", cfg)) for img, cfg in JOBS]
    batched = restorer.restore_many([(img, resolve_config("fast", cfg)) for img, cfg in JOBS])
    for s, b in zip(solo, batched):
        assert b.error is None
        assert_same(s, b.result)


def test_a_run_joining_mid_batch_gets_its_solo_result(restorer):
    """Continuous batching: B joins after A has run three steps; neither notices."""
    (img_a, cfg_a), (img_b, cfg_b) = JOBS[0], JOBS[1]
    solo_a = restorer.restore(img_a, resolve_config("fast", cfg_a))
    solo_b = restorer.restore(img_b, resolve_config("fast", cfg_b))
    a = restorer.prepare(img_a, resolve_config("fast", cfg_a))
    b = restorer.prepare(img_b, resolve_config("fast", cfg_b))
    batch = restorer.batch(max_batch=4)
    batch.add(a.run)
    for _ in range(3):
        assert batch.step() == []
    batch.add(b.run)
    assert batch.active == 2
    ended = []
    while batch.active:
        ended += batch.step()
    assert sorted(map(id, ended)) == sorted(map(id, (a.run, b.run)))
    assert_same(solo_a, a.result())
    assert_same(solo_b, b.result())


def test_cancel_and_failure_end_only_their_own_job(restorer):
    (img_a, cfg_a), (img_b, cfg_b), (img_c, cfg_c) = JOBS[0], JOBS[0], JOBS[0]
    solo = restorer.restore(img_a, resolve_config("fast", cfg_a))
    calls = {"n": 0}

    def cancel_after_two() -> bool:
        calls["n"] += 1
        return calls["n"] > 2

    def broken_callback(checkpoint) -> None:
        raise RuntimeError("progress store unavailable")

    canceled = restorer.prepare(img_a, resolve_config("fast", cfg_a), should_cancel=cancel_after_two)
    failing = restorer.prepare(img_b, resolve_config("fast", cfg_b), on_checkpoint=broken_callback)
    healthy = restorer.prepare(img_c, resolve_config("fast", cfg_c))
    batch = restorer.batch(max_batch=3)
    for p in (canceled, failing, healthy):
        batch.add(p.run)
    batch.run_until_done()
    with pytest.raises(RestoreCanceled) as err:
        canceled.result()
    assert err.value.steps_run == 2
    with pytest.raises(RuntimeError, match="progress store unavailable"):
        failing.result()
    assert_same(solo, healthy.result())


def test_a_bad_job_in_restore_many_is_its_own_outcome(restorer):
    outcomes = restorer.restore_many(
        [
            (random_image(16, 16), resolve_config("fast", {**FAST, "perceptual": "on"})),  # no VGG loaded
            (random_image(16, 16), resolve_config("fast", FAST)),
        ]
    )
    assert outcomes[0].result is None and "perceptual=on" in str(outcomes[0].error)
    assert outcomes[1].error is None and outcomes[1].unwrap().image.size == (16, 16)


def test_max_batch_splits_groups_without_changing_results(restorer):
    jobs = [(random_image(16, 16, seed=s), resolve_config("fast", {**FAST, "seed": s})) for s in range(3)]
    whole = restorer.restore_many(jobs)
    split = restorer.restore_many(jobs, max_batch=2)
    for w, s in zip(whole, split):
        assert_same(w.unwrap(), s.unwrap())


def test_per_sample_timesteps_match_separate_unet_calls(restorer):
    prior = restorer.prior
    z = torch.randn(2, prior.latent_channels, 4, 4, generator=torch.Generator().manual_seed(0))
    together = prior.predict_noise(z, [900, 100])
    apart = torch.cat([prior.predict_noise(z[:1], 900), prior.predict_noise(z[1:], 100)])
    assert torch.allclose(together, apart, atol=1e-5)


def test_max_batch_must_be_positive(restorer):
    with pytest.raises(ValueError, match="max_batch"):
        BatchSampler(restorer.prior, max_batch=0)


def test_fused_pcdm_trains_phi_from_the_guidance_backward(restorer):
    img, cfg = JOBS[3]
    prepared = restorer.prepare(img, resolve_config("fast", cfg))
    before = [p.detach().clone() for p in prepared.guidance.phi_params]
    batch = restorer.batch(1)
    batch.add(prepared.run)
    batch.run_until_done()
    after = prepared.guidance.phi_params
    assert any(not torch.equal(b, a) for b, a in zip(before, after))
    assert all(p.grad is None for p in after)  # gradients are consumed, never left to accumulate
    unfused = restorer.restore(img, resolve_config("fast", {**cfg, "pcdm_fused": False}))
    assert prepared.result().image.size == unfused.image.size
