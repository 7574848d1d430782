"""harness.results.outdir: an --out directory belongs to one experiment definition; another is refused
with what differs (exit 2 from the CLI, before any compute) unless --append keeps both, labelled."""

import pytest
import yaml

from harness import cli, config
from harness.results import outdir


def test_the_same_definition_and_points_of_its_space_are_welcome(tmp_path):
    cfg = config.load("sweeps/demo.yaml")
    assert outdir.claim(tmp_path, cfg) == ""
    assert outdir.claim(tmp_path, cfg) == ""
    # `harness train --set method.name=cma --set method.lam=0.1` of a sweep over method is one of its points
    assert outdir.claim(tmp_path, config.load("sweeps/demo.yaml", ["method.name=cma", "method.lam=0.1"])) == ""
    # resources and tracking do not change which experiment it is
    assert outdir.claim(tmp_path, config.load("sweeps/demo.yaml", ["resources.num_workers=2",
                                                                   "tracking.experiment=x"])) == ""


def test_another_definition_is_refused_with_what_differs_and_kept_with_append(tmp_path):
    outdir.claim(tmp_path, config.load("sweeps/demo.yaml"))
    other = config.load("sweeps/demo.yaml", ["optim.lr=5e-4", "search.space={optim.weight_decay: {grid: [0.0, 0.5]}}"])
    with pytest.raises(outdir.OutDirTaken) as err:
        outdir.claim(tmp_path, other)
    message = str(err.value)
    assert "optim.lr: 0.0002 there, 0.0005 in this config" in message
    assert "search.space: " in message and "new --out" in message and "--append" in message
    assert outdir.claim(tmp_path, other, append=True) == "d2"
    assert outdir.claim(tmp_path, other) == "d2"  # known now: no --append needed again


def test_the_cli_refuses_a_copied_sweep_file_before_any_compute(tmp_path, capsys):
    out = tmp_path / "out"
    outdir.claim(out, config.load("sweeps/demo.yaml"))
    copy = yaml.safe_load(open("sweeps/demo.yaml"))
    copy["optim"]["lr"] = 5e-4  # kept `name: demo`
    path = tmp_path / "copy.yaml"
    path.write_text(yaml.safe_dump(copy))
    assert cli.main(["sweep", str(path), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "optim.lr: 0.0002 there, 0.0005 in this config" in err and "Traceback" not in err
