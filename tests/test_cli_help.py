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

