"""The house rules that keep the code readable, checked on the source itself."""

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "resnet9"
# Every module by its dotted name under resnet9: "train", "training.build", "core.errors", ...
MODULES = {
    ".".join(path.relative_to(PACKAGE).with_suffix("").parts): ast.parse(path.read_text())
    for path in sorted(PACKAGE.rglob("*.py"))
    if path.name != "__init__.py"
}
PACKAGES = {".".join(path.parent.relative_to(PACKAGE).parts) for path in PACKAGE.rglob("__init__.py")} - {""}
COMMANDS = {"train", "lr_find", "evaluate", "predict", "report", "summary", "cli"}  # python -m resnet9.<command>

# The floors, bottom up: what each folder's modules may import of resnet9 (nothing above their own floor).
FLOORS = {
    "core": {"core"},
    "models": set(),
    "data": {"core", "data"},
    "analysis": {"core", "data", "models", "analysis"},
    "training": {"core", "data", "models", "analysis", "training"},
}


def our_imports(tree: ast.Module) -> set[str]:
    """The resnet9 modules a module imports, by dotted name ("core.errors"; a package's own name for
    `from resnet9.core import files` -> "core.files")."""
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("resnet9"):
            package = ".".join(node.module.split(".")[1:])
            for alias in node.names:  # a module of the package by its name, else a name from the module itself
                module = f"{package}.{alias.name}".lstrip(".")
                if module in MODULES or module in PACKAGES:
                    found.add(module)
                elif package:
                    found.add(package)
                # (`from resnet9 import __version__`: the package's own root, beneath every floor)
        elif isinstance(node, ast.Import):
            found |= {alias.name.removeprefix("resnet9.") for alias in node.names if alias.name.startswith("resnet9.")}
    return found


def test_no_function_is_longer_than_60_lines():
    lengths = {
        f"{name}.{node.name}": node.end_lineno - node.lineno + 1
        for name, tree in MODULES.items()
        for node in ast.walk(tree)
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
    }
    assert {name: n for name, n in lengths.items() if n > 60} == {}


def test_each_floor_imports_nothing_above_it():
    for name, tree in MODULES.items():
        floor = name.split(".")[0]
        if floor in FLOORS:
            above = {imported for imported in our_imports(tree) if imported.split(".")[0] not in FLOORS[floor]}
            assert above == set(), name


# training/'s rooms, bottom up: what each sub-package's modules may import of training/ (nothing above its own).
# config: the schema and targets; engine: building a run and its loop and state; lr: the range test and the rules;
# sweeps: what a sweep and a search are; recording: the listeners, tracker and callbacks, on top.
ROOMS = {
    "config": {"config"},
    "engine": {"config", "engine"},
    "lr": {"config", "engine", "lr"},
    "sweeps": {"config", "engine", "sweeps"},
    "recording": {"config", "engine", "lr", "sweeps", "recording"},
}


def test_each_room_of_training_imports_nothing_above_it():
    upward = {}
    for name, tree in MODULES.items():
        if name.startswith("training."):
            room = name.split(".")[1]
            imported = {i.split(".")[1] for i in our_imports(tree) if i.startswith("training.") and i.count(".") >= 1}
            if imported - ROOMS[room]:
                upward[name] = sorted(imported - ROOMS[room])
    assert upward == {}


def test_training_is_its_rooms_with_nothing_beside_them():
    assert {name.split(".")[1] for name in MODULES if name.startswith("training.")} == set(ROOMS)
    assert [name for name in MODULES if name.startswith("training.") and name.count(".") == 1] == []
    assert {p.split(".")[1] for p in PACKAGES if p.startswith("training.")} == set(ROOMS)


def test_the_folders_are_the_floors_and_the_top_holds_the_commands_alone():
    assert {name.split(".")[0] for name in MODULES if "." in name} == set(FLOORS)
    assert {name for name in MODULES if "." not in name} == COMMANDS


def import_circles() -> list[list[str]]:
    """Every set of modules that import each other round a circle (type-hint imports included): the strongly
    connected components of the import graph with more than one module, or a module importing itself."""
    graph = {
        name: {imported for imported in our_imports(tree) if imported in MODULES} for name, tree in MODULES.items()
    }
    order, low, stack, circles = {}, {}, [], []

    def visit(module: str) -> None:  # Tarjan's algorithm
        order[module] = low[module] = len(order)
        stack.append(module)
        for imported in graph[module]:
            if imported not in order:
                visit(imported)
                low[module] = min(low[module], low[imported])
            elif imported in stack:
                low[module] = min(low[module], order[imported])
        if low[module] == order[module]:
            circle = stack[stack.index(module) :]
            del stack[stack.index(module) :]
            if len(circle) > 1 or module in graph[module]:
                circles.append(sorted(circle))

    for module in sorted(graph):
        if module not in order:
            visit(module)
    return circles


def test_no_modules_import_each_other_round_a_circle():
    assert import_circles() == []


def test_nothing_in_the_package_imports_the_trainer():
    importers = {name for name, tree in MODULES.items() if "train" in our_imports(tree)}
    assert importers == set()


def test_only_signals_py_installs_signal_handlers():
    """One place installs and restores SIGTERM/SIGINT handlers (resnet9/core/signals.py), so none is left behind."""
    installers = {
        name
        for name, tree in MODULES.items()
        for node in ast.walk(tree)
        if isinstance(node, ast.Call) and ast.unparse(node.func) == "signal.signal"
    }
    assert installers == {"core.signals"}


WRITES = {"write_text", "write_bytes", "savefig", "torch.save", "json.dump", "pickle.dump", "np.save", "to_csv"}


def writes_outside_files_py() -> set[str]:
    """Every call in the package that writes a file by itself, or opens one for writing: "module:line call"."""
    found = set()
    for name, tree in MODULES.items():
        for node in ast.walk(tree):
            if not isinstance(node, ast.Call) or name == "core.files":
                continue
            called = ast.unparse(node.func)
            if called.startswith("files."):  # resnet9.core.files itself
                continue
            mode = next((ast.unparse(a) for a in node.args[1:2]), "") + " ".join(ast.unparse(k) for k in node.keywords)
            opens_to_write = called in {"open", "Path.open"} or called.endswith(".open")
            if (
                called in WRITES
                or called.split(".")[-1] in WRITES
                or (opens_to_write and any(c in mode for c in "wax"))
            ):
                found.add(f"{name}:{node.lineno} {called}")
    return found


def test_every_file_the_package_writes_goes_through_core_files():
    """core/files.py writes atomically (a temporary file, synced, then renamed): no other module writes by itself,
    so no reader ever meets a half-written file. (train.log is appended by logging's FileHandler.)"""
    assert writes_outside_files_py() == set()


def test_every_module_imports_first_without_an_import_cycle():
    """A launcher's worker (submitit, joblib) may import any module first, e.g. unpickling a listener: each one,
    imported first in a fresh interpreter, must not meet a partly initialised module."""
    import subprocess
    import sys

    names = [".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts) for path in sorted(PACKAGE.rglob("*.py"))]
    script = (
        "import importlib, sys\n"
        "failed = []\n"
        "for name in sys.argv[1:]:\n"
        "    for loaded in [m for m in sys.modules if m == 'resnet9' or m.startswith('resnet9.')]:\n"
        "        del sys.modules[loaded]\n"
        "    try:\n"
        "        importlib.import_module(name)\n"
        "    except ImportError as err:\n"
        "        failed.append(f'{name}: {err}')\n"
        "print('\\n'.join(failed))\n"
    )
    result = subprocess.run([sys.executable, "-c", script, *names], capture_output=True, text=True, timeout=300,
                            cwd=PACKAGE.parent)  # fmt: skip
    assert result.returncode == 0 and result.stdout.strip() == "", result.stdout + result.stderr[-2000:]
