"""harness.suites, harness.entry check-suite and the paper's protocol configs (sweeps/imagenet-*.yaml)."""

import json
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path

import pandas as pd
import pytest

from harness import config, entry, paper, suites
from harness.data.shards import Manifest

REPO = Path(__file__).resolve().parent.parent


def test_suites_hold_the_benchmarks_counts():
    mos, openood = suites.get("mos"), suites.get("openood-v1.5")
    assert mos.id_test == openood.id_test == ("imagenet-val", 50_000)
    assert dict(mos.ood_test) == {"iNaturalist": 10_000, "SUN": 10_000, "Places": 10_000, "Textures": 5_640}
    assert dict(openood.ood_test) == {"SSB-hard": 49_000, "NINCO": 5_879, "iNaturalist": 10_000,
                                      "Textures-openood": 5_160, "OpenImage-O": 15_869}
    # The directory names are what paper.suite_of recognises, and the averages are the paper's.
    for suite in (mos, openood):
        assert paper.suite_of("shards", [name for name, _ in suite.ood_test]) == suite.name
        assert suite.averages() is paper.AVERAGES[suite.name]
    with pytest.raises(suites.SuiteError, match="unknown suite 'mos2'"):
        suites.get("mos2")


def fake_root(tmp_path: Path, name: str, counts: dict[str, int] | None = None) -> Path:
    """Manifests only (check_counts reads nothing else): one per dataset of the suite."""
    suite = suites.get(name)
    for dataset, expected in (suite.id_test, *suite.ood_test):
        n = (counts or {}).get(dataset, expected)
        if n is None:
            continue
        kind = "id" if dataset == suite.id_test[0] else "ood"
        manifest = Manifest(name=dataset, kind=kind, num_samples=n, shards=[f"{dataset}-000000.tar"],
                            shard_samples=[n], classnames=["a"] if kind == "id" else [])
        (tmp_path / dataset).mkdir()
        (tmp_path / dataset / "manifest.json").write_text(json.dumps(asdict(manifest)))
    return tmp_path


def test_check_counts_accepts_a_matching_root(tmp_path):
    assert suites.check_counts("openood-v1.5", fake_root(tmp_path, "openood-v1.5")) == []


def test_check_counts_names_dataset_expected_and_found(tmp_path):
    root = fake_root(tmp_path, "mos", {"Textures": 5_160, "SUN": None})  # OpenOOD's Textures; SUN missing
    with pytest.raises(suites.SuiteError) as err:
        suites.check_counts("mos", root)
    assert "Textures: expected 5640 samples for suite mos, found 5160" in str(err.value)
    assert "SUN:" in str(err.value) and "iNaturalist" not in str(err.value)
    # The escape turns a count mismatch into a warning; a missing dataset stays an error.
    with pytest.raises(suites.SuiteError, match="SUN:"):
        suites.check_counts("mos", root, allow_mismatch=True)
    (root / "SUN").mkdir()
    (root / "SUN" / "manifest.json").write_text((root / "Places" / "manifest.json").read_text())
    assert suites.check_counts("mos", root, allow_mismatch=True) == [
        f"Textures: expected 5640 samples for suite mos, found 5160 in {root / 'Textures'}"]


def test_entry_check_suite_exit_codes(tmp_path, capsys):
    root = fake_root(tmp_path, "mos", {"Places": 9_999})
    assert entry.main(["check-suite", "mos", str(root)]) == 2
    assert "Places: expected 10000 samples for suite mos, found 9999" in capsys.readouterr().err
    assert entry.main(["check-suite", "mos", str(root), "--allow-count-mismatch"]) == 0
    assert "holds suite mos" in capsys.readouterr().out


def test_entry_runs_as_a_file_like_ray_submit():
    """`ray submit cluster.yaml harness/entry.py -- ...` runs the file with the installed harness."""
    ok = subprocess.run([sys.executable, str(REPO / "harness" / "entry.py"), "--help"],
                        capture_output=True, text=True, timeout=60)
    assert ok.returncode == 0 and "sweep" in ok.stdout
    bad = subprocess.run([sys.executable, "-m", "harness.entry", "sweeep", "x.yaml"],
                         capture_output=True, text=True, timeout=60, cwd=REPO)
    assert bad.returncode == 2 and "invalid choice: 'sweeep'" in bad.stderr


@pytest.mark.slow
@pytest.mark.skipif(Path("/tmp/ray/ray_current_cluster").exists(), reason="a Ray cluster runs here: auto would join it")
def test_entry_joins_the_running_cluster(tmp_path, capsys):
    # train/sweep get --address auto; with no cluster running preflight says so (exit 2, before any compute).
    code = entry.main(["train", str(REPO / "sweeps" / "demo.yaml"), "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert code == 2 and "--address auto: no running Ray cluster found" in err, err


@pytest.mark.parametrize("name,method,lam", [("flyp", "flyp", None), ("cma", "cma", 0.001), ("lambda", "cma", 0.001)])
def test_paper_protocol_configs(name, method, lam):
    cfg = config.load(REPO / "sweeps" / f"imagenet-{name}.yaml")
    assert cfg.method() == method and getattr(cfg.method, "lam", None) == lam
    assert (cfg.model.arch, cfg.model.pretrained) == ("ViT-B-16", "openai")
    assert (cfg.optim.lr, cfg.optim.weight_decay) == (1e-5, 0.1)
    assert (cfg.schedule.warmup_steps, cfg.schedule.epochs) == (500, 10)
    assert cfg.data.batch_size * cfg.resources.num_workers * cfg.schedule.accumulation == 512
    assert (cfg.eval.train_prompt, cfg.eval.eval_prompt) == ("a photo of a {}", "The nice {}")
    assert cfg.data.source == "shards" and cfg.resources.use_gpu
    # Evaluated on both suites: as written MOS, with the suite's overrides OpenOOD v1.5.
    assert paper.suite_of(cfg.data.source, cfg.data.ood_test) == "mos"
    other = config.load(REPO / "sweeps" / f"imagenet-{name}.yaml", suites.get("openood-v1.5").overrides())
    assert paper.suite_of(other.data.source, other.data.ood_test) == "openood-v1.5"
    if name == "lambda":
        grid = cfg.search.space["method"].grid
        assert {"name": "flyp"} in grid and {"name": "cma", "lam": 0.001} in grid


def test_report_compares_openood_by_suite_directory_names():
    """Our OpenOOD directory names (Textures-openood) meet the paper's columns and averages."""
    values = {"SSB-hard": (0.6, 0.8), "NINCO": (0.5, 0.9), "iNaturalist": (0.02, 0.99),
              "Textures-openood": (0.3, 0.93), "OpenImage-O": (0.15, 0.96)}
    ours = pd.DataFrame([{"method": "cma", "score": "neglabel", "dataset": d, "fpr95": f, "auroc": a}
                         for d, (f, a) in values.items()])
    found = paper.comparison("openood-v1.5", ours).set_index("dataset")
    assert found.loc["Textures", "paper_fpr95"] == 29.55
    assert found.loc["far avg", "ours_fpr95"] == pytest.approx(100 * (0.02 + 0.3 + 0.15) / 3)
    assert found.loc["near avg", "d_auroc"] == pytest.approx(100 * 0.85 - 84.46)
