"""Installable and conventional: a wheel that holds the configs and the commands, commands that work from any
folder, Hydra's tab completion, the project's own --help, and a user's own config folder."""

import configparser
import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import hydra
import pytest
from conftest import REPO

import resnet9

COMMANDS = {"resnet9-train", "resnet9-lr-find", "resnet9-evaluate", "resnet9-predict", "resnet9-report",
            "resnet9-summary"}  # fmt: skip
BIN = Path(sys.executable).parent  # the console scripts of the environment running the tests


def source_tree(dest: Path) -> Path:
    """The files git knows (committed or not ignored), as a fresh clone has them, links kept as links."""
    listed = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=REPO,
                            capture_output=True, text=True, check=True).stdout.split()  # fmt: skip
    for name in listed:
        source, target = REPO / name, dest / name
        if not source.exists() and not source.is_symlink():  # deleted in the working tree
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        if source.is_symlink():
            target.symlink_to(os.readlink(source))
        else:
            shutil.copy2(source, target)
    return dest


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """A wheel built from the tree, offline (setuptools from the environment), outside the repository."""
    tmp = tmp_path_factory.mktemp("wheel")
    tree = source_tree(tmp / "tree")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                    str(tmp / "dist"), str(tree)], check=True, capture_output=True)  # fmt: skip
    (built,) = (tmp / "dist").glob("resnet9-*.whl")
    return built


def test_the_wheel_holds_the_configs_and_every_command(wheel):
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        entry_points = next(name for name in names if name.endswith(".dist-info/entry_points.txt"))
        scripts = configparser.ConfigParser()
        scripts.read_string(archive.read(entry_points).decode())
    configs = {name.removeprefix("resnet9/conf/") for name in names if name.startswith("resnet9/conf/")} - {
        "__init__.py"
    }
    in_tree = {str(path.relative_to(REPO / "conf")) for path in (REPO / "conf").rglob("*.yaml")}
    assert configs == in_tree and "experiment/quick_cpu.yaml" in configs
    assert set(scripts["console_scripts"]) == COMMANDS
    assert "hydra_plugins/resnet9_sweeper/compose_once.py" in names  # the default sweeper (hparams_search=grid)


def test_an_installed_command_composes_its_config_from_an_empty_folder(wheel, tmp_path):
    """`pip install .` (not editable): the package alone, unpacked as pip would, run from an empty folder."""
    site = tmp_path / "site"
    with zipfile.ZipFile(wheel) as archive:
        archive.extractall(site)
    empty = tmp_path / "empty"
    empty.mkdir()
    program = (f"import sys; sys.path.insert(0, {str(site)!r}); import resnet9.cli as cli; print('from', cli.__file__);"
               " sys.argv = ['resnet9-train', '--cfg', 'job', 'epochs=3']; cli.train()")  # fmt: skip
    result = subprocess.run([sys.executable, "-c", program], cwd=empty, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert f"from {site}/resnet9/cli.py" in result.stdout  # the installed copy, not the source tree
    assert "epochs: 3" in result.stdout and "batch_size: 512" in result.stdout
    assert list(empty.iterdir()) == []  # printing the config writes nothing


def test_the_console_commands_answer_help_and_tab_completion(tmp_path):
    help_text = subprocess.run([BIN / "resnet9-train", "--help"], cwd=tmp_path, capture_output=True, text=True)
    assert help_text.returncode == 0, help_text.stderr[-2000:]
    for fragment in ("resnet9-train: train the mission's ResNet-9", "experiment: mission, page, quick_cpu",
                     "debug: fast_dev_run, overfit_batch", "epochs=24 batch_size=512", "resnet9-report"):  # fmt: skip
        assert fragment in help_text.stdout, fragment
    line = "resnet9-train experiment=qu"
    env = {**os.environ, "COMP_LINE": line, "COMP_POINT": str(len(line))}
    completion = subprocess.run([BIN / "resnet9-train", "-sc", "query=bash"], cwd=tmp_path, env=env,
                                capture_output=True, text=True)  # fmt: skip
    assert completion.returncode == 0 and completion.stdout.split() == ["experiment=quick_cpu"], completion
    install = subprocess.run([BIN / "resnet9-train", "-sc", "install=bash"], capture_output=True, text=True)
    assert install.stdout.rstrip().endswith("-F hydra_bash_completion resnet9-train")
    report_help = subprocess.run([BIN / "resnet9-report", "--help"], capture_output=True, text=True)
    assert report_help.returncode == 0 and "sweep folder" in report_help.stdout
    for command, first_line in (("resnet9-lr-find", "resnet9-lr-find: the LR range test alone"),
                                ("resnet9-summary", "resnet9-summary: the model of the composed")):  # fmt: skip
        own_help = subprocess.run([BIN / command, "--help"], cwd=tmp_path, capture_output=True, text=True)
        assert own_help.returncode == 0 and own_help.stdout.startswith(first_line), own_help.stdout[:300]


def test_a_users_own_config_folder_joins_the_search_path(tmp_path):
    mine = tmp_path / "myconf" / "experiment"
    mine.mkdir(parents=True)
    (mine / "wide.yaml").write_text("# @package _global_\nmodel:\n  width: 2.0\nepochs: 7\n")
    result = subprocess.run([BIN / "resnet9-train", "--config-dir", str(tmp_path / "myconf"), "experiment=wide",
                             "--cfg", "job"], cwd=tmp_path, capture_output=True, text=True)  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    assert "width: 2.0" in result.stdout and "epochs: 7" in result.stdout


def test_every_command_prints_the_version_that_pyproject_and_the_changelog_give(wheel):
    """One version: resnet9/__init__.py's, which the wheel's metadata, `--version` of every command (console
    script and `python -m`) and the newest heading of CHANGELOG.md all say."""
    assert wheel.name.startswith(f"resnet9-{resnet9.__version__}-")
    newest = re.search(r"^## \[?(\d+\.\d+\.\d+)\]?", (REPO / "CHANGELOG.md").read_text(), re.MULTILINE)
    assert newest is not None and newest.group(1) == resnet9.__version__
    expected = f"resnet9 {resnet9.__version__} (Hydra {hydra.__version__})"
    for command in sorted(COMMANDS):
        module = command.removeprefix("resnet9-").replace("-", "_")
        for argv in ([BIN / command, "--version"], [sys.executable, "-m", f"resnet9.{module}", "--version"]):
            answer = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=60)
            assert (answer.returncode, answer.stdout.strip()) == (0, expected), (argv, answer.stderr[-500:])


def test_python_dash_m_answers_help_from_the_configs_without_importing_torch():
    """`python -m resnet9.train --help` (the mission's own command) is answered before torch is imported."""
    program = ("import runpy, sys; sys.argv = ['resnet9.train', '--help']\ntry:\n"
               "    runpy.run_module('resnet9.train', run_name='__main__')\nexcept SystemExit:\n    pass\n"
               "print('torch imported:', 'torch' in sys.modules)")  # fmt: skip
    result = subprocess.run([sys.executable, "-c", program], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "resnet9-train: train the mission's ResNet-9" in result.stdout
    assert result.stdout.rstrip().endswith("torch imported: False")
