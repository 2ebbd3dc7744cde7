import pytest

from restorer import PRESETS, ConfigError, RestoreConfig, parse_overrides, resolve_config


def test_default_preset_is_balanced_and_paper_is_faithful():
    assert resolve_config() == resolve_config("balanced")
    paper = resolve_config("paper")
    assert (paper.steps, paper.checkpoint_every) == (1000, 100)
    assert paper.dqr == "on" and paper.degloss == "ggd" and paper.pcdm == "pcdm"


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_every_preset_validates(name):
    cfg = resolve_config(name)
    assert cfg.checkpoint_every <= cfg.steps


def test_overrides_win_and_are_typed():
    cfg = resolve_config("fast", parse_overrides(["steps=12", "kappa=2.5e3", "dqr=off", "clamp_percentile=none"]))
    assert cfg.steps == 12 and cfg.kappa == 2500.0 and cfg.dqr == "off" and cfg.clamp_percentile is None


@pytest.mark.parametrize(
    "preset, overrides, message",
    [
        ("nope", {}, "unknown preset"),
        ("fast", {"bogus": 1}, "unknown option"),
        ("fast", {"steps": 0}, "steps"),
        ("fast", {"steps": 4, "checkpoint_every": 5}, "checkpoint_every"),
        ("fast", {"dqr": "maybe"}, "dqr"),
        ("fast", {"eta": -1}, "eta"),
    ],
)
def test_bad_config_is_a_config_error(preset, overrides, message):
    with pytest.raises(ConfigError, match=message):
        resolve_config(preset, overrides)


@pytest.mark.parametrize("pair", ["novalue", "=3", "unknown_key=1"])
def test_bad_override_syntax(pair):
    with pytest.raises(ConfigError):
        parse_overrides([pair])


def test_config_serialises_round_trip():
    cfg = resolve_config("balanced", {"seed": 7})
    assert RestoreConfig.model_validate(cfg.model_dump()) == cfg
