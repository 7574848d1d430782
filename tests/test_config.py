from pathlib import Path

import pytest

from harness import config
from harness.config import ConfigError

SWEEPS = sorted((Path(__file__).resolve().parent.parent / "sweeps").glob("*.yaml"))


@pytest.mark.parametrize("path", SWEEPS, ids=lambda p: p.name)
def test_every_sweep_file_loads(path):
    cfg = config.load(path)
    assert cfg.search.space, f"{path.name} has no search space"


def test_defaults_load_without_a_file():
    cfg = config.load(None)
    assert cfg.loss.lam == 0 and cfg.method() == "flyp"


def test_override_sets_a_typed_value(tmp_path):
    cfg = config.load(None, ["loss.lam=0.25", "schedule.epochs=3", "data.ood_test=[a, b]"])
    assert cfg.loss.lam == 0.25 and cfg.schedule.epochs == 3 and cfg.data.ood_test == ("a", "b")
    assert cfg.method() == "cma"


def test_unknown_key_is_named_with_allowed_keys():
    with pytest.raises(ConfigError) as err:
        config.load(None, ["loss.lamb=0.1"])
    assert "loss.lamb: unknown key" in str(err.value)
    assert "allowed: name, lam" in str(err.value)


def test_unknown_section_is_named():
    with pytest.raises(ConfigError, match="optimiser: unknown key"):
        config.load(None, ["optimiser.lr=1"])


def test_bad_value_names_key_and_allowed_values():
    with pytest.raises(ConfigError) as err:
        config.load(None, ["loss.name=focal"])
    assert "loss.name" in str(err.value) and "'cma'" in str(err.value) and "'clip'" in str(err.value)
    with pytest.raises(ConfigError, match="optim.lr: Input should be greater than 0"):
        config.load(None, ["optim.lr=-1"])
    with pytest.raises(ConfigError, match="schedule.epochs"):
        config.load(None, ["schedule.epochs=two"])


def test_search_space_keys_must_exist(tmp_path):
    path = tmp_path / "x.yaml"
    path.write_text("search:\n  space:\n    loss.lamda: {grid: [0, 1]}\n")
    with pytest.raises(ConfigError, match="unknown key 'loss.lamda' \\(loss allows: lam, name\\)"):
        config.load(path)


def test_param_space_needs_exactly_one_distribution(tmp_path):
    path = tmp_path / "x.yaml"
    path.write_text("search:\n  space:\n    loss.lam: {grid: [0, 1], uniform: [0, 1]}\n")
    with pytest.raises(ConfigError, match="exactly one of grid"):
        config.load(path)


def test_selection_score_must_be_computed():
    with pytest.raises(ConfigError, match="selection_score"):
        config.load(None, ["eval.scores=[mcm]", "eval.selection_score=neglabel"])


def test_prompt_needs_one_placeholder():
    with pytest.raises(ConfigError, match="eval_prompt must contain exactly one"):
        config.load(None, ["eval.eval_prompt=a photo"])


def test_missing_file_and_bad_yaml(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        config.load(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("loss: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        config.load(bad)
    with pytest.raises(ConfigError, match="dotted.key=value"):
        config.load(None, ["loss.lam"])


def test_fingerprint_ignores_tracking_but_not_science():
    a = config.load(None)
    assert a.fingerprint() == config.load(None, ["tracking.experiment=other"]).fingerprint()
    assert a.fingerprint() != config.load(None, ["loss.lam=0.1"]).fingerprint()


def test_flatten_gives_dotted_scalars():
    flat = config.flatten(config.load(None))
    assert flat["loss.lam"] == 0.0 and flat["model.arch"] == "tiny-vit-32"
    assert all(not isinstance(v, (dict, list)) for v in flat.values())
