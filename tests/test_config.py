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
    assert cfg.method.name == "flyp" and cfg.method() == "flyp"


def test_override_sets_a_typed_value(tmp_path):
    cfg = config.load(None, ["method.name=cma", "method.lam=0.25", "schedule.epochs=3", "data.ood_test=[a, b]"])
    assert cfg.method.lam == 0.25 and cfg.schedule.epochs == 3 and cfg.data.ood_test == ("a", "b")
    assert cfg.method() == "cma"


def test_unknown_key_is_named_with_allowed_keys():
    with pytest.raises(ConfigError) as err:
        config.load(None, ["method.name=cma", "method.lamb=0.1"])
    assert "method.lamb: method cma takes no parameter 'lamb' (cma takes: name, lam)" in str(err.value)
    with pytest.raises(ConfigError) as err:
        config.load(None, ["optim.lrr=0.1"])
    assert "optim.lrr: unknown key" in str(err.value) and "allowed: lr, weight_decay" in str(err.value)


def test_a_parameter_of_another_method_is_refused():
    """The silent mismatch of the old loss section (clip loss trained with lam 0.5, recorded as cma)."""
    with pytest.raises(ConfigError) as err:
        config.load(None, ["method.name=flyp", "method.lam=0.5"])
    assert "method.lam" in str(err.value) and "flyp takes no parameter 'lam'" in str(err.value)


def test_another_method_name_starts_from_its_own_defaults(tmp_path):
    path = tmp_path / "cma.yaml"
    path.write_text("method: {name: cma, lam: 0.5}\n")
    assert config.load(path, ["method.name=flyp"]).method.model_dump() == {"name": "flyp", "templates": "single"}
    assert config.load(path, ["method.name=cma"]).method.lam == 0.5  # the same name keeps the file's values
    assert config.load(path, ["method.name=locoop", "method.lam=0.3"]).method.lam == 0.3
    with pytest.raises(ConfigError, match="lam"):
        config.load(path, ["method.name=flyp", "method.lam=0.5"])
    # a searched method.name too: the file's lam belongs to cma alone
    searched = config.load(path, ["search.space={method.name: {grid: [zero-shot, flyp, cma]}}"])
    assert searched.method.lam == 0.5


def test_unknown_method_lists_the_registered_ones():
    from harness import methods

    with pytest.raises(ConfigError) as err:
        config.load(None, ["method.name=clip"])
    assert "unknown method 'clip'" in str(err.value)
    assert all(name in str(err.value) for name in methods.names())


def test_the_old_loss_section_says_what_to_write(tmp_path):
    path = tmp_path / "old.yaml"
    path.write_text("loss:\n  name: cma\n  lam: 0.1\n")
    with pytest.raises(ConfigError) as err:
        config.load(path)
    assert "the loss: section is gone" in str(err.value) and "method: {name: cma, lam: 0.1}" in str(err.value)
    with pytest.raises(ConfigError, match="--set method.name=flyp"):
        config.load(None, ["loss.lam=0"])


def test_search_space_over_methods_is_checked_per_method(tmp_path):
    ok = config.load(None, ["search.space={method.name: {grid: [zero-shot, flyp, lp]}}"])
    assert ok.search.space["method.name"].grid == ["zero-shot", "flyp", "lp"]
    sections = config.load(None, ["search.space={method: {grid: [{name: flyp}, {name: cma, lam: 0.1}]}}"])
    assert sections.search.space["method"].grid[1] == {"name": "cma", "lam": 0.1}
    with pytest.raises(ConfigError, match="method flyp takes no parameter 'lam'"):
        config.load(None, ["search.space={method.name: {grid: [cma, flyp]}, method.lam: {grid: [0.1]}}"])
    with pytest.raises(ConfigError, match="unknown method 'clip'"):
        config.load(None, ["search.space={method.name: {grid: [flyp, clip]}}"])
    with pytest.raises(ConfigError, match="method.lam"):
        config.load(None, ["method.name=cma", "search.space={method.lam: {grid: [0.1, -1]}}"])


def test_non_training_methods_share_one_run_id_whatever_the_schedule():
    a = config.load(None, ["method.name=zero-shot", "schedule.epochs=3"])
    assert a.fingerprint() == config.load(None, ["method.name=zero-shot", "optim.lr=1"]).fingerprint()
    assert a.fingerprint() != config.load(None, ["schedule.epochs=3"]).fingerprint()


def test_lp_ft_needs_an_ft_stage():
    with pytest.raises(ConfigError, match="method.lp_epochs \\(2\\) must be less than schedule.epochs \\(2\\)"):
        config.load(None, ["method.name=lp-ft", "method.lp_epochs=2", "schedule.epochs=2"])
    assert config.load(None, ["method.name=lp-ft", "schedule.epochs=0"]).method.lp_epochs == 1


def test_unknown_section_is_named():
    with pytest.raises(ConfigError, match="optimiser: unknown key"):
        config.load(None, ["optimiser.lr=1"])


def test_bad_value_names_key_and_allowed_values():
    with pytest.raises(ConfigError) as err:
        config.load(None, ["model.precision=fp8"])
    assert "model.precision" in str(err.value) and "'fp32'" in str(err.value) and "'bf16'" in str(err.value)
    with pytest.raises(ConfigError, match="optim.lr: Input should be greater than 0"):
        config.load(None, ["optim.lr=-1"])
    with pytest.raises(ConfigError, match="schedule.epochs"):
        config.load(None, ["schedule.epochs=two"])


def test_search_space_keys_must_exist(tmp_path):
    path = tmp_path / "x.yaml"
    path.write_text("search:\n  space:\n    optim.lrr: {grid: [0, 1]}\n")
    with pytest.raises(ConfigError, match="unknown key 'optim.lrr' \\(optim allows: beta1, beta2"):
        config.load(path)


def test_param_space_needs_exactly_one_distribution(tmp_path):
    path = tmp_path / "x.yaml"
    path.write_text("search:\n  space:\n    optim.lr: {grid: [0, 1], uniform: [0, 1]}\n")
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
    bad.write_text("method: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        config.load(bad)
    with pytest.raises(ConfigError, match="dotted.key=value"):
        config.load(None, ["method.lam"])


def test_fingerprint_ignores_tracking_but_not_science():
    a = config.load(None)
    assert a.fingerprint() == config.load(None, ["tracking.experiment=other"]).fingerprint()
    assert a.fingerprint() != config.load(None, ["method.name=cma", "method.lam=0.1"]).fingerprint()


def test_flatten_gives_dotted_scalars():
    flat = config.flatten(config.load(None))
    assert flat["method.name"] == "flyp" and flat["method.templates"] == "single" and flat["model.arch"] == "tiny-vit-32"
    assert config.flatten(config.load(None, ["method.name=cma", "method.lam=0.1"]))["method.lam"] == 0.1
    assert all(not isinstance(v, (dict, list)) for v in flat.values())


def test_dotted_keeps_empty_mappings_and_whole_keys_as_one_value():
    tree = {"a": {"b": 1, "c": {"d": [2]}}, "e": {}, "search": {"space": {"x": {"grid": [1]}}, "n": 3}}
    assert config.dotted(tree) == {"a.b": 1, "a.c.d": [2], "e": {}, "search.space.x.grid": [1], "search.n": 3}
    assert config.dotted(tree, whole=("search.space",))["search.space"] == {"x": {"grid": [1]}}


def test_eval_scores_all_is_every_registered_score():
    from harness.scores import SCORE_SPECS

    cfg = config.load(None, ["eval.scores=all"])
    assert cfg.eval.scores == tuple(sorted(SCORE_SPECS)) and "odin" in cfg.eval.scores
    assert config.from_dict(config.to_tree(cfg)).eval.scores == cfg.eval.scores  # recorded as the names


def test_config_re_exports_its_input_and_view_modules():
    # harness.config is the one name to import: the --set / --space parsing (config_input) and the
    # views of a Config (config_views) live apart but answer under harness.config too.
    from harness import config_input, config_views

    for name in ("ConfigError", "SPACE_FORMS", "parse_override", "parse_space", "apply_space", "apply_overrides"):
        assert getattr(config, name) is getattr(config_input, name)
    for name in ("to_tree", "to_yaml", "dotted", "flatten", "LABEL_KEYS", "is_searched", "searched_values",
                 "run_label"):
        assert getattr(config, name) is getattr(config_views, name)
    with pytest.raises(ConfigError, match="unknown key"):
        config.load(None, ["optim.bogus=1"])
