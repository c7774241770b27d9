"""The house rules that keep the code readable, checked on the source itself."""

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "resnet9"
MODULES = {path.stem: ast.parse(path.read_text()) for path in sorted(PACKAGE.glob("*.py"))}

# The ground floor: what each of these may import of ours (nothing above it).
GROUND_FLOOR = {
    "errors": set(),
    "model": set(),
    "data": {"errors"},
    "targets": {"errors"},
    "signals": set(),
    "schema": {"errors", "data", "targets"},
}


def our_imports(tree: ast.Module) -> set[str]:
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("resnet9"):
            found |= {node.module.split(".")[1]} if "." in node.module else {alias.name for alias in node.names}
        elif isinstance(node, ast.Import):
            found |= {alias.name.split(".")[1] for alias in node.names if alias.name.startswith("resnet9.")}
    return found


def test_no_function_is_longer_than_60_lines():
    lengths = {
        f"{name}.{node.name}": node.end_lineno - node.lineno + 1
        for name, tree in MODULES.items()
        for node in ast.walk(tree)
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
    }
    assert {name: n for name, n in lengths.items() if n > 60} == {}


def test_the_ground_floor_imports_nothing_above_it():
    for module, allowed in GROUND_FLOOR.items():
        assert our_imports(MODULES[module]) <= allowed, module


def test_nothing_in_the_package_imports_the_trainer():
    importers = {name for name, tree in MODULES.items() if "train" in our_imports(tree)}
    assert importers == set()


def test_only_signals_py_installs_signal_handlers():
    """One place installs and restores SIGTERM/SIGINT handlers (resnet9/signals.py), so none is left behind."""
    installers = {
        name
        for name, tree in MODULES.items()
        for node in ast.walk(tree)
        if isinstance(node, ast.Call) and ast.unparse(node.func) == "signal.signal"
    }
    assert installers == {"signals"}
