"""`harness --help` is for users: what the harness does and its commands, not a module docstring."""

import pytest

from harness import cli, cli_data, cli_parser


def test_help_lists_every_command_and_no_module_docstring(capsys):
    with pytest.raises(SystemExit) as done:
        cli.main(["--help"])
    assert done.value.code == 0
    shown = capsys.readouterr().out
    assert "Command line: parse" not in shown and "out-of-distribution detection" in shown
    assert cli.build_parser is cli_parser.build_parser  # the grammar lives in cli_parser
    parser = cli.build_parser()
    commands = next(a for a in parser._actions if a.dest == "command").choices
    assert {"train", "sweep", "demo", "report", "bench", "sync-mlflow", "shards", "negatives"} <= set(commands)
    for name in commands:
        assert name in shown
    # one handler per command: the dispatch table covers the grammar, train / sweep / demo apart
    assert set(commands) == set(cli.COMMANDS) | set(cli.RUNS)
    assert (cli.COMMANDS["shards"], cli.COMMANDS["negatives"], cli.COMMANDS["cache"]) == (
        cli_data.shards, cli_data.negatives, cli_data.cache)



def test_help_imports_neither_torch_nor_ray():
    # `harness --help` answers at once: the parser needs no registry
    import subprocess
    import sys

    code = ("import sys\nfrom harness import cli\ntry:\n    cli.main(['--help'])\nexcept SystemExit:\n    pass\n"
            "print(sorted(m for m in ('torch', 'ray', 'open_clip', 'mlflow', 'pandas') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip().splitlines()[-1] == "[]", done.stdout[-500:]


@pytest.mark.parametrize("argv", [["methods"], ["scores"],
                                  ["train", "sweeps/demo.yaml", "--set", "method.name=flyp", "--set", "method.lam=0.5"]],
                         ids=["methods", "scores", "bad-config"])
def test_listings_and_config_checks_import_no_model_library(argv):
    # Listing the registries or refusing a config runs no method or score: it imports neither torch
    # (>1 s here; the registries name it through harness.lazy) nor open_clip (~3 s), Ray, MLflow or pandas.
    import subprocess
    import sys
    from pathlib import Path

    code = (f"import sys\nfrom harness import cli\nrc = cli.main({argv!r})\n"
            "print(rc, sorted(m for m in ('torch', 'numpy', 'ray', 'open_clip', 'mlflow', 'pandas') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                          cwd=Path(__file__).resolve().parent.parent)
    rc, imported = done.stdout.strip().splitlines()[-1].split(" ", 1)
    assert imported == "[]", done.stdout[-500:]
    assert rc == ("2" if argv[0] == "train" else "0"), done.stdout[-500:] + done.stderr[-500:]


def test_lazy_torch_imports_on_first_use_and_is_the_real_module():
    import subprocess
    import sys

    code = ("import sys\nfrom harness.lazy import torch\nbefore = 'torch' in sys.modules\n"
            "t = torch.ones(2)\nimport torch as real\n"
            "print(before, 'torch' in sys.modules, isinstance(t, real.Tensor), torch.nn.functional is real.nn.functional)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.split() == ["False", "True", "True", "True"], done.stdout + done.stderr[-500:]
