import pytest
import torch

from benchmarks.common import DEFAULT_WEIGHTS_ROOT
from restorer.errors import JudgeUnavailableError
from restorer.judge import load_judge

NIQE_PARAMS = DEFAULT_WEIGHTS_ROOT / "niqe_matlab_release/modelparameters.mat"


def test_piqe_is_normalised_higher_better_in_unit_range():
    judge = load_judge("piqe")
    assert judge.lower_better and (judge.low, judge.high) == (0.0, 100.0)
    assert judge.normalise(0.0) == 1.0 and judge.normalise(100.0) == 0.0 and judge.normalise(250.0) == 0.0
    assert judge.normalise(float("nan")) == 0.0
    gen = torch.Generator().manual_seed(0)
    coarse = torch.rand(1, 3, 48, 48, generator=gen)  # textured: PIQE rates flat areas badly
    smooth = torch.nn.functional.interpolate(coarse, size=(96, 96), mode="bilinear", align_corners=False)
    noisy = (smooth + 0.3 * torch.randn(1, 3, 96, 96, generator=gen)).clamp(0, 1)
    s_smooth, _ = judge.score(smooth)
    s_noisy, raw = judge.score(noisy)
    assert 0.0 <= s_noisy < s_smooth <= 1.0 and raw > 0


def test_arniqa_without_weights_is_reported_and_auto_falls_back(monkeypatch):
    try:
        load_judge("arniqa")
    except JudgeUnavailableError as exc:
        assert "arniqa" in str(exc)
        assert load_judge("auto").name == "piqe"
    else:  # weights cached on this machine: auto must pick the paper's judge
        assert load_judge("auto").name == "arniqa"


@pytest.mark.parametrize("spec", ["psnr", "no-such-metric"])
def test_non_nr_or_unknown_judge_is_refused(spec):
    with pytest.raises(JudgeUnavailableError):
        load_judge(spec)


@pytest.mark.skipif(not NIQE_PARAMS.exists(), reason="../shared/weights (NIQE parameters) not present")
def test_niqe_with_local_parameters_loads_and_scores():
    judge = load_judge(f"niqe@{NIQE_PARAMS}")
    score, raw = judge.score(torch.rand(1, 3, 128, 128, generator=torch.Generator().manual_seed(1)))
    assert judge.lower_better and 0.0 <= score <= 1.0 and raw > 0
