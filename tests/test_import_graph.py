"""The package's folders import downwards only: the foundation (config, models, losses, metrics,
methods, scores, data, ...) < evaluation < train < results < report < orchestration < the
applications (cli, entry, bench). A module that imports a higher layer, even inside a function,
fails here with the line to move."""

import ast
from pathlib import Path

import pytest

HARNESS = Path(__file__).parents[1] / "harness"

# top-level name under harness/ -> layer; every other module or package is the foundation (0)
LAYERS = {"evaluation": 1, "train": 2, "results": 3, "report": 4, "orchestration": 5,
          "cli": 6, "cli_data": 6, "cli_parser": 6, "entry": 6, "bench": 6}


def layer(module: str) -> int:
    parts = module.split(".")
    return LAYERS.get(parts[1], 0) if len(parts) > 1 else 0


def module_name(path: Path, root: Path) -> str:
    return ".".join(path.relative_to(root.parent).with_suffix("").parts).removesuffix(".__init__")


def imported(tree: ast.AST) -> list[tuple[str, int]]:
    """(harness module, line) of every import in ``tree``, at any depth."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").startswith("harness"):
            names = [f"harness.{a.name}" for a in node.names] if node.module == "harness" else [node.module]
            found += [(name, node.lineno) for name in names]
        elif isinstance(node, ast.Import):
            found += [(a.name, node.lineno) for a in node.names if a.name.startswith("harness")]
    return found


def upward_imports(root: Path = HARNESS) -> list[str]:
    bad = []
    for path in sorted(root.rglob("*.py")):
        here = module_name(path, root)
        for target, line in imported(ast.parse(path.read_text(), str(path))):
            if layer(target) > layer(here):
                bad.append(f"{path.relative_to(root.parent)}:{line}: {here} (layer {layer(here)}) imports "
                           f"{target} (layer {layer(target)})")
    return bad


def test_no_module_imports_a_higher_layer():
    bad = upward_imports()
    assert not bad, "imports upwards:\n" + "\n".join(bad)


def test_every_subpackage_has_a_layer():
    # a new folder under harness/ must be placed in LAYERS (or be deliberately foundation)
    foundation = {"methods", "scores", "data", "model_configs"}
    folders = {p.name for p in HARNESS.iterdir() if p.is_dir() and not p.name.startswith(("_", "."))}
    assert folders - foundation - set(LAYERS) == set()


@pytest.mark.parametrize("source, expected", [
    ("from harness.orchestration import ray_layer\n", 1),
    ("def f():\n    from harness.report import stats\n", 1),
    ("from harness import results, config\n", 1),
    ("from harness import config, metrics\nfrom harness.data import shards\n", 0),
])
def test_the_check_sees_an_upward_import(tmp_path, source, expected):
    root = tmp_path / "harness"
    (root / "evaluation").mkdir(parents=True)
    (root / "evaluation" / "thing.py").write_text(source)
    assert len(upward_imports(root)) == expected
