"""Every module of harness/ is imported by some test file: a new module without tests fails here."""

import ast
import functools
import pkgutil
import subprocess
import sys
import textwrap
from pathlib import Path

import harness

TESTS = Path(__file__).parent


def harness_modules() -> set[str]:
    """Every module (not package) under harness/, by dotted name."""
    return {info.name for info in pkgutil.walk_packages(harness.__path__, "harness.") if not info.ispkg}


def imported_by(path: Path) -> set[str]:
    """The harness modules a test file imports (``from harness import x``, ``from harness.x import y``,
    ``import harness.x``; at any depth of the file, also in the code strings it runs in a subprocess)."""
    return _imports(ast.parse(path.read_text(), str(path)))


def _imports(tree: ast.AST) -> set[str]:
    names = set()
    for node in ast.walk(tree):
        code = node.value if isinstance(node, ast.Constant) and isinstance(node.value, str) else ""
        if "import harness" in code or "from harness" in code:
            try:
                names |= _imports(ast.parse(textwrap.dedent(code)))
            except SyntaxError:
                pass
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names |= {f"{node.module}.{alias.name}" for alias in node.names}
    return {name for name in names if name.startswith("harness.")}


@functools.cache
def loaded_with(package: str) -> frozenset[str]:
    """The modules that importing ``package`` imports, in a fresh interpreter (not this one, where
    what earlier tests happened to import would decide)."""
    code = f"import sys, {package}\nprint(' '.join(sys.modules))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return frozenset(done.stdout.split())


def loaded_by_package(module: str, tested: set[str]) -> bool:
    """A plugin module (a method, a score) that its package imports to register it, where a test
    imports the package: the tests reach it by iterating the package's registry."""
    package = module.rpartition(".")[0]
    return package in tested and package != "harness" and module in loaded_with(package)


def test_every_harness_module_is_imported_by_a_test_file():
    tested = set().union(*(imported_by(path) for path in TESTS.glob("test_*.py")))
    missing = sorted(m for m in harness_modules() - tested if not loaded_by_package(m, tested))
    assert not missing, f"modules no test file imports (give each a tests/test_<name>.py): {', '.join(missing)}"


def test_the_check_sees_modules_and_imports():
    assert {"harness.results.tables", "harness.data.pipeline", "harness.bench.table"} <= harness_modules()
    assert "harness.results" in imported_by(Path(__file__).with_name("test_results.py"))
