"""The report on a hand-made results directory (suite "mos", two seeds, per-sample scores with keys)."""


import numpy as np
import pandas as pd
import pytest
import torch

from harness import cli, config, report, results
from harness.evaluation import evaluate
from harness.report import build
from harness.report import stats as report_stats
from harness.report import uncertainty

SETS = ("iNaturalist", "SUN", "Places", "Textures")
# method -> (method section, epochs, how far OoD scores sit below ID: larger = better separation)
METHODS = {"zero-shot": ({"name": "zero-shot"}, 0, 0.6), "flyp": ({"name": "flyp"}, 2, 1.0),
           "cma": ({"name": "cma", "lam": 0.1}, 2, 1.6)}


def _scores(seed: int, shift: float) -> tuple[dict, dict]:
    rng = np.random.default_rng(seed)
    keys = {"id_test": [f"id-{i:03d}" for i in range(80)], **{d: [f"{d}-{i:03d}" for i in range(60)] for d in SETS}}
    scores = {}
    for d, k in keys.items():
        centre = 0.0 if d == "id_test" else -shift
        base = rng.normal(centre, 1.0, len(k))
        scores[d] = {"mcm": torch.tensor(base), "neglabel": torch.tensor(base + rng.normal(0, 0.5, len(k))),
                     "msp": torch.tensor(-base)}  # a classifier-logit score pointing the wrong way
    return keys, scores


def _record(out, method: str, seed: int) -> str:
    section, epochs, shift = METHODS[method]
    cfg = config.load(None, {"name": "mos-test", "seed": seed, "data.source": "shards", "data.ood_test": list(SETS),
                             "schedule.epochs": epochs, "method": section})
    run_id = f"{cfg.name}-{cfg.method()}-{cfg.fingerprint()}"
    keys, scores = _scores(seed * 10 + len(method), shift)
    run_dir = out / "runs" / run_id
    run_dir.mkdir(parents=True)
    torch.save({"keys": keys, "scores": scores}, run_dir / "scores.pt")
    summary = {"id_accuracy": 0.7 + 0.05 * epochs, "val_objective": 0.5 + shift / 10 + seed / 100,
               "val_id_accuracy": 0.7, "val_auroc": 0.8, "train_s": 60.0 * epochs, "eval_s": 5.0,
               "wall_s": 60.0 * epochs + 10, "device": "cpu", "world_size": 1,
               "ood": evaluate.ood_table(scores["id_test"], {d: scores[d] for d in SETS}),
               "gap": {"centroid_distance": 0.5 - shift / 10, "pair_cosine": 0.3 + shift / 10},
               "epochs": [{"epoch": e, "train_ce_img": 2.0 / e, "train_ce_txt": 2.1 / e, "val_id_accuracy": 0.7,
                           "val_auroc": 0.8} for e in range(1, epochs + 1)]}
    results.record_run(out / "results", run_id, "mos-test-sweep", cfg, summary, run_dir=run_dir)
    return run_id


@pytest.fixture(scope="module")
def mos_out(tmp_path_factory):
    out = tmp_path_factory.mktemp("mos")
    for method, seeds in (("zero-shot", (0,)), ("flyp", (0, 1)), ("cma", (0, 1))):
        for seed in seeds:
            _record(out, method, seed)
    return out


@pytest.fixture(scope="module")
def written(mos_out):
    md = report.write(mos_out / "results", mos_out / "report.md", n_boot=200, run_sections=mos_out / "runs")
    return md.read_text()


def test_main_table_intervals_are_the_bootstrap_of_the_recorded_samples(mos_out, written):
    tables = report_stats.load([mos_out])
    cma = report_stats.select_runs(tables.runs)["cma"]
    id_scores, ood_sets = report_stats.score_arrays(tables.samples, cma, "neglabel")
    assert len(id_scores) == 80 and sorted(ood_sets) == sorted(SETS)
    found = uncertainty.bootstrap(id_scores.to_numpy(), {k: v.to_numpy() for k, v in ood_sets.items()}, 200)
    iv = found["avg"]["auroc"]
    assert f"{100 * iv.estimate:.2f} [{100 * iv.low:.1f}, {100 * iv.high:.1f}]" in written
    assert "| CMA | neglabel |" in written and "| FLYP | mcm |" in written


def test_paired_section_paper_and_seed_spread(mos_out, written):
    assert "## Is the difference real? (paired bootstrap)" in written
    assert "| CMA − FLYP | neglabel | avg |" in written and "**CMA vs zero-shot, mcm" in written
    assert "80 / 240 |" in written  # all samples paired across the four OoD sets
    assert "## The paper beside us" in written and "| CMA | neglabel | avg |" in written
    assert "19.93 / 95.13" in written  # the paper's CMA + NegLabel MOS average
    assert "| CMA | 0.1 | 2 |" in written and "±" in written  # two seeds: mean ± std
    assert "Projection skipped" in written  # these run directories hold no embeddings


def test_report_is_deterministic_and_sections_exist(mos_out, written, tmp_path):
    again = report.write(mos_out / "results", tmp_path / "report.md", n_boot=200).read_text()
    # only the "Generated" line and the results path differ (relative beside the report, else as given)
    assert "Read `results`:" in written and f"Read `{mos_out / 'results'}`:" in again
    assert [l for l in again.splitlines()[2:] if not l.startswith("Read `")] == \
        [l for l in written.splitlines()[2:] if not l.startswith("Read `")]
    assert written.splitlines()[3] == "## The answer, from this run's numbers"  # the report opens with it
    assert "- **Is CMA − FLYP resolved (neglabel, average over OoD sets)?** ΔAUROC" in written
    assert sum("Generated" in line for line in written.splitlines()) == 1
    for png in ("lambda", "scores", "roc", "training"):
        assert (tmp_path / f"report-{png}.png").read_bytes() == (mos_out / f"report-{png}.png").read_bytes()
    sections = sorted(mos_out.glob("runs/*/report.md"))
    assert len(sections) == 5
    assert "| neglabel | Textures |" in sections[0].read_text()


def test_filters_keep_only_what_is_asked(mos_out, tmp_path):
    md = report.write(mos_out / "results", tmp_path / "r.md", n_boot=50,
                      filters=report_stats.Filters(methods=("cma",), scores=("neglabel",))).read_text()
    main = md.split("## Is the difference real?")[0]
    assert "| CMA | neglabel |" in main and "| FLYP |" not in main and "| mcm |" not in main
    with pytest.raises(report_stats.NothingToReport):
        report.write(mos_out / "results", tmp_path / "r.md", filters=report_stats.Filters(tags=("nope",)))


def test_several_directories_and_old_tables(mos_out, tmp_path):
    old = tmp_path / "old"
    (old / "results").mkdir(parents=True)
    for table in results.TABLES:  # one file per table, as schema 1 wrote them (no key, suite, device)
        dropped = {results.SAMPLES: ["key"], results.RUNS: ["suite", "device"]}.get(table, [])
        results.read(mos_out / "results", table).drop(columns=dropped).to_parquet(old / "results" / f"{table}.parquet")
    tables = report_stats.load([mos_out, old])
    assert len(tables.runs) == 10 and tables.runs["run_id"].is_unique  # same ids: prefixed by directory
    assert set(tables.runs["suite"]) == {"mos"}  # derived from config_json for the old table
    assert cli.main(["report", str(mos_out), str(old), "--output", str(tmp_path / "both.md"), "--n-boot", "20"]) == 0
    assert "## The paper beside us" in (tmp_path / "both.md").read_text()
    assert cli.main(["report", str(mos_out), str(old)]) == 2  # several directories need --output
    assert cli.main(["report", str(mos_out), "--output", str(tmp_path / "x.md"), "--suite", "synthetic"]) == 2


def test_accelerator_hours_count_gpus_only():
    cfg = '{"resources": {"num_workers": 2, "gpus_per_worker": 1.0, "use_gpu": true}}'
    gpu = pd.Series({"config_json": cfg, "device": "cuda"})
    assert report_stats.accelerators(gpu) == 2.0
    assert report_stats.accelerators(gpu.copy().replace({"cuda": "cpu"})) == 0.0  # ran on CPU after all
    assert report_stats.accelerators(pd.Series({"config_json": cfg, "device": None})) == 2.0  # old row: config
    runs = pd.DataFrame([{"run_id": "a", "sweep": "s", "method": "cma", "device": "cuda", "config_json": cfg,
                          "wall_s": 1800.0, "train_s": 1500.0, "eval_s": 300.0}])
    per_run, per_sweep = report_stats.cost(runs)
    assert per_run["accelerator_h"].iloc[0] == 1.0 and per_sweep["accelerator_h"].iloc[0] == 1.0


def test_every_score_is_shown_below_chance_flagged_directions_worded_and_lam_named(mos_out, written):
    tables = report_stats.load([mos_out])
    chosen = report_stats.select_runs(tables.runs)
    assert "## Every other computed score" in written and "| method | msp FPR95↓ / AUROC↑ |" in written
    assert written.count(" ⚠ |") == 3  # msp below chance for each of the three methods
    assert "⚠ **msp is below chance**" in written
    assert f"**Selected: CMA is λ = {chosen['cma']['lam']:g}**" in written
    assert "(λ 0.1 seed 0: 0.660, λ 0.1 seed 1: 0.670)" in written  # two seeds of one λ: each named
    assert "**FLYP vs zero-shot, neglabel" in written
    diffs = report_stats.paired_differences(tables, chosen, ["mcm"], 200)
    row = diffs[(diffs["a"] == "cma") & (diffs["b"] == "zero-shot") & (diffs["dataset"] == "avg")
                & (diffs["metric"] == "auroc")].iloc[0]
    assert row["low"] > 0  # CMA's OoD scores sit further below ID: a resolved gain
    assert (f"AUROC: CMA is {100 * row['estimate']:.2f} pp better than zero-shot "
            f"[{100 * row['low']:.2f}, {100 * row['high']:.2f}]") in written


def test_other_scores_are_bootstrapped_for_the_selected_runs_only(mos_out, written):
    # msp is shown only in the table of every other score, for the selected runs: the others' run
    # sections have the shown scores' intervals (mcm, neglabel), not msp's (a bootstrap each).
    tables = report_stats.load([mos_out])
    selected = {r["run_id"] for r in report_stats.select_runs(tables.runs).values()}
    ci = build._intervals(tables, ["mcm", "neglabel"], 50)
    for run_id in tables.runs["run_id"]:
        have = set(ci.loc[ci["run_id"] == run_id, "score"])
        assert have == ({"mcm", "neglabel", "msp"} if run_id in selected else {"mcm", "neglabel"}), run_id
    assert len(selected) < len(tables.runs)
    other = next(r for r in tables.runs["run_id"] if r not in selected)
    section = (mos_out / "runs" / other / "report.md").read_text()
    assert "| mcm |" in section and "| msp |" not in section
