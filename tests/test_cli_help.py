"""`harness --help` is for users: what the harness does and its commands, not a module docstring."""

import pytest

from harness import cli


def test_help_lists_every_command_and_no_module_docstring(capsys):
    with pytest.raises(SystemExit) as done:
        cli.main(["--help"])
    assert done.value.code == 0
    shown = capsys.readouterr().out
    assert "Command line: parse" not in shown and "out-of-distribution detection" in shown
    parser = cli.build_parser()
    commands = next(a for a in parser._actions if a.dest == "command").choices
    assert {"train", "sweep", "demo", "report", "bench", "sync-mlflow", "shards", "negatives"} <= set(commands)
    for name in commands:
        assert name in shown


def test_ray_noise_is_explained_once_and_dropped_with_its_traceback():
    from harness import ray_layer

    explained = set()
    lines = ["[cma lam=0.1] epoch 1/2 loss 1.0", "Failed to query Ray Train Controller actor state. State API ...",
             "PreemptionWatcher poll failed", "Traceback (most recent call last):", '  File "x.py", line 1',
             "ray.exceptions.GetTimeoutError: Get timed out: some object(s) not ready.",
             "[cma lam=0.1] epoch 2/2 loss 0.9"]
    kept, notes = ray_layer.without_ray_noise(lines, explained)
    assert kept == ["[cma lam=0.1] epoch 1/2 loss 1.0", "[cma lam=0.1] epoch 2/2 loss 0.9"]
    assert len(notes) == 2 and "dashboard" in notes[0]
    again, more = ray_layer.without_ray_noise(lines[1:2], explained)
    assert again == [] and more == []  # once only
