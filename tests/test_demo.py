"""harness.orchestration.demo: the plan of `harness demo`, read from the method registry (a new method with demo
entries is in it without editing anything here)."""

import pytest

from harness import config, methods
from harness.orchestration import demo
from harness.orchestration import ray_layer
from harness.results.tracking import Record

BASE = config.load("sweeps/demo.yaml")


def _records(cfg, objective):
    """Finished records of a round's trials, with validation objectives from ``objective(section)``."""
    out = []
    for section in cfg.search.space["method"].grid:
        trial = config.from_dict(config.to_tree(cfg), overrides={"method": section})
        out.append(Record(ray_layer.run_id(trial), trial, {"val_objective": objective(section), "id_accuracy": 0.5},
                          "finished"))
    return out


def test_round_one_runs_every_demo_entry_of_every_method_that_needs_no_other_run():
    first = demo.first_round(BASE)
    grid = first.search.space["method"].grid
    expected = [{"name": m.name, **e} for m in methods.REGISTRY.values() if m.demo_source is None for e in m.demo]
    assert grid == expected and first.seed == BASE.seed and first.search.algorithm == "grid"
    every = {m.name for m in methods.REGISTRY.values() if m.demo and m.demo_source is None}
    assert {s["name"] for s in grid} == every and "zero-shot" not in every  # zero-shot: every sweep's baseline
    for section in grid:  # each entry is a valid method section
        config.from_dict(config.to_tree(first), overrides={"method": section})


def test_later_rounds_seed_the_selected_entries_and_build_on_the_selected_source():
    first = demo.first_round(BASE)
    records = _records(first, lambda s: s.get("lam", 0.0) == 0.01)  # CMA lam 0.01 has the best validation
    rounds = dict(demo.later_rounds(BASE, records))
    seeded = [m for m in methods.REGISTRY.values() if m.demo_seeds > 1]
    for extra in range(1, max(m.demo_seeds for m in seeded)):
        cfg = rounds[f"seed {BASE.seed + extra}"]
        names = [s["name"] for s in cfg.search.space["method"].grid]
        assert cfg.seed == BASE.seed + extra and names == [m.name for m in seeded if extra < m.demo_seeds]
    if "cma" in methods.names():
        cma = [s for s in rounds["seed 1"].search.space["method"].grid if s["name"] == "cma"]
        assert [s["lam"] for s in cma] == [0.01]  # the validation-selected lam, not the first
    chosen = demo.selected(records)
    built = rounds["runs built on selected runs"].search.space["method"].grid
    for m in (m for m in methods.REGISTRY.values() if m.demo_source):
        mine = [s for s in built if s["name"] == m.name]
        assert len(mine) == len(m.demo) and {s["source"] for s in mine} == {chosen[m.demo_source].run_id}


def test_a_method_whose_runs_failed_gets_no_later_round_and_only_narrows_the_plan():
    first = demo.first_round(BASE)
    records = [Record(r.run_id, r.cfg, None, "failed") if r.cfg.method.name == "flyp" else r
               for r in _records(first, lambda s: 0.5)]
    later = dict(demo.later_rounds(BASE, records))
    assert all(s["name"] != "flyp" for cfg in later.values() for s in cfg.search.space["method"].grid)
    assert all(s.get("source") is None for cfg in later.values() for s in cfg.search.space["method"].grid)
    only = demo.first_round(BASE, only=["flyp", "lp"])
    assert [s["name"] for s in only.search.space["method"].grid] == ["flyp", "lp"]
    assert dict(demo.later_rounds(BASE, _records(only, lambda s: 0.5), only=["flyp", "lp"])).keys() == {"seed 1"}
    with pytest.raises(ValueError, match="nothing to run"):
        demo.first_round(BASE, only=["wise-ft"])


@pytest.mark.slow
def test_the_demo_runs_every_method_and_a_short_fine_tune_beats_zero_shot(world, tmp_path):
    """`harness demo` on the small world: every registered method's entries finish, the seeded
    methods have their seeds, the runs built on a source use its selected run, the report opens
    with the answers, and FLYP's ID accuracy is above zero-shot's (Wilson intervals apart)."""
    import ray

    from harness import cli, results
    from harness.report import stats as report_stats
    from harness.report import uncertainty

    out = tmp_path / "demo"
    try:
        code = cli.main(["demo", "--out", str(out), "--set", "data.synthetic_size=small", "--set", "pretrain.epochs=2",
                         "--set", "schedule.warmup_steps=5"])
    finally:
        ray.shutdown()
    assert code == 0
    runs = results.read(out / "results", results.RUNS)
    assert set(runs["status"]) == {"finished"}
    for m in methods.REGISTRY.values():
        mine = runs[runs["method"] == m.name]
        assert len(mine) == (1 if m.name == "zero-shot" else len(m.demo) + m.demo_seeds - 1), m.name
        assert mine["seed"].nunique() == m.demo_seeds
    report = (out / "report.md").read_text()
    assert report.splitlines()[3] == "## The answer, from this run's numbers" and "Did fine-tuning help" in report
    acc = {m: float(r["id_accuracy"]) for m, r in report_stats.select_runs(runs).items()}  # as the report selects
    n = int(results.read(out / "results", results.OOD)["n_id"].iloc[0])
    assert uncertainty.wilson_interval(acc["flyp"], n)[0] > uncertainty.wilson_interval(acc["zero-shot"], n)[1], acc


def test_a_demo_with_nothing_to_run_exits_2_before_any_compute(tmp_path, capsys):
    from harness import cli

    assert cli.main(["demo", "--method", "zero-shot", "--method", "wise-ft", "--out", str(tmp_path / "o")]) == 2
    assert "--method: the demo has nothing to run" in capsys.readouterr().err and not (tmp_path / "o").exists()
