"""DQR decisions on scripted score sequences (no model)."""

from restorer.dqr import DQRPolicy
from restorer.events import Decision as D


def run(policy, scores, round_end_at=None, guided=10, rnd=1):
    out = []
    for i, s in enumerate(scores):
        end = round_end_at is not None and i == round_end_at
        out.append(policy.decide(s, round_end=end, round=rnd, guided_steps=guided))
    return out


def test_first_checkpoint_continues_then_refines_while_rising():
    assert run(DQRPolicy(eta=0.01), [0.1, 0.2, 0.3]) == [D.CONTINUE, D.REFINE, D.REFINE]


def test_exit_when_gain_below_eta_and_best_is_kept():
    p = DQRPolicy(eta=0.01)
    assert run(p, [0.1, 0.5, 0.505]) == [D.CONTINUE, D.REFINE, D.EXIT]
    assert p.best_index == 2 and p.best_score == 0.505
    p = DQRPolicy(eta=0.01)
    assert run(p, [0.1, 0.5, 0.3]) == [D.CONTINUE, D.REFINE, D.EXIT]
    assert p.best_index == 1  # a drop exits with the best estimate so far, not the last


def test_renoise_at_round_end_while_improving_until_round_cap():
    p = DQRPolicy(eta=0.01, max_rounds=2)
    assert run(p, [0.1, 0.2], round_end_at=1, rnd=1) == [D.CONTINUE, D.RENOISE]
    p.new_round()
    assert run(p, [0.3, 0.4], round_end_at=1, rnd=2) == [D.CONTINUE, D.DONE]  # cap reached


def test_no_exit_before_guidance_has_acted_and_unguided_estimates_never_win():
    p = DQRPolicy(eta=0.01, min_guided_steps=10)
    # unguided checkpoints (blurry unconditional samples) score high, then guided ones lower
    assert p.decide(0.9, round_end=False, round=1, guided_steps=0) is D.CONTINUE
    assert p.decide(0.9, round_end=False, round=1, guided_steps=5) is D.CONTINUE
    assert p.decide(0.4, round_end=False, round=1, guided_steps=10) is D.CONTINUE
    assert p.decide(0.6, round_end=False, round=1, guided_steps=20) is D.REFINE
    assert p.decide(0.6, round_end=False, round=1, guided_steps=30) is D.EXIT
    assert p.best_index == 3


def test_dqr_off_never_exits_or_renoises():
    p = DQRPolicy(enabled=False)
    assert run(p, [0.1, 0.1, 0.9, 0.9], round_end_at=3) == [D.CONTINUE, D.CONTINUE, D.CONTINUE, D.DONE]


def test_lower_is_better_metric_is_normalised_before_decisions():
    from restorer_helpers import scripted_judge

    judge = scripted_judge([0.8, 0.4, 0.39], lower_better=True)
    import torch

    scores = [judge.score(torch.zeros(1, 3, 8, 8))[0] for _ in range(3)]
    assert scores[0] < scores[1] < scores[2]  # falling raw values = rising quality
    assert run(DQRPolicy(eta=0.05), scores) == [D.CONTINUE, D.REFINE, D.EXIT]
