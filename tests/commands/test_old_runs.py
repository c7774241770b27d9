"""Files written by earlier resnet9 code keep working: evaluate, predict and report read them with the numbers
they were made with; a resume of one is refused in one line that names the version that wrote it; a file of a
newer format than this code knows is one line.

tests/fixtures/old_runs/<label>/ holds a run and a 2-job sweep that the code of each earlier format wrote itself
(its README: commits, commands, settings). They trained on the synthetic stand-in of conftest.py (seed 0), which
`synthetic_root` rebuilds bit for bit, so their numbers are checked wherever the suite runs.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import REPO
from hydra import compose, initialize_config_dir
from PIL import Image

from resnet9 import predict, report
from resnet9.core.errors import UsageError
from resnet9.evaluate import evaluate_checkpoint

FIXTURES = REPO / "tests" / "fixtures" / "old_runs"
LABELS = sorted(path.name for path in FIXTURES.iterdir() if path.is_dir())


def test_a_fixture_is_kept_for_every_earlier_format():
    assert {"v0.1.0-281767c", "v0.1.0-83efac8", "v0.1.0-1c38cba", "v0.1.0-2a50546", "v0.2.0-aa70458"} <= set(LABELS)


def evaluation(checkpoint: Path, data_root: Path, out: Path, *overrides: str) -> dict:
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = compose(config_name="evaluate", overrides=[f"checkpoint={checkpoint}", f"data.root={data_root}",
                                                         "device=cpu", *overrides])  # fmt: skip
    return evaluate_checkpoint(cfg, out)


@pytest.mark.parametrize("label", LABELS)
def test_evaluate_gives_the_old_runs_own_accuracy(label, synthetic_root, tmp_path):
    run = FIXTURES / label / "run"
    recorded = json.loads((run / "metrics.json").read_text())
    results = evaluation(run / "last.pt", synthetic_root, tmp_path)
    assert results["n_test"] == recorded["n_test"] == 500
    assert results["test_acc"] == recorded["final_test_acc"] and results["epoch"] == recorded["config"]["epochs"]
    assert (tmp_path / "evaluation.json").is_file() and (tmp_path / "confusion_matrix.png").is_file()


@pytest.mark.parametrize("label", LABELS)
def test_predict_classifies_with_an_old_checkpoint(label, tmp_path, capsys):
    image = tmp_path / "red.png"
    Image.fromarray(np.full((32, 32, 3), (230, 25, 75), np.uint8)).save(image)
    code = predict.main(["--checkpoint", str(FIXTURES / label / "run" / "last.pt"), "--json", "--device", "cpu",
                         str(image)])  # fmt: skip
    (row,) = json.loads(capsys.readouterr().out)
    assert code == 0 and set(row["probabilities"]) == set(report_classes(label))
    assert sum(row["probabilities"].values()) == pytest.approx(1.0, abs=1e-4)


def report_classes(label: str) -> list[str]:
    from resnet9.data.datasets import CLASSES

    return json.loads((FIXTURES / label / "run" / "metrics.json").read_text()).get("classes", list(CLASSES))


@pytest.mark.parametrize("label", LABELS)
def test_report_summarises_an_old_sweep_as_its_own_code_did(label, tmp_path, capsys):
    sweep = shutil.copytree(FIXTURES / label / "sweep", tmp_path / "sweep")
    old_summary = json.loads((sweep / "summary.json").read_text())
    report.main([str(sweep), "--tracker", "none"])
    assert "(all jobs)" in capsys.readouterr().out
    (row,) = json.loads((sweep / "summary.json").read_text())
    (old,) = old_summary
    accuracies = [json.loads((sweep / job / "metrics.json").read_text())["final_test_acc"] for job in ("0", "1")]
    assert row["jobs"] == old["jobs"] == 2 and row["failed"] == old["failed"] == 0
    assert row["final_test_acc"] == pytest.approx(old["final_test_acc"]) and row["final_test_acc"] == pytest.approx(
        np.mean(accuracies)
    )
    assert row["final_test_acc_std"] == pytest.approx(old["final_test_acc_std"])


@pytest.mark.parametrize("label", LABELS)
def test_resuming_an_old_run_is_one_line_naming_its_version_and_touches_nothing(
    label, run_cli, synthetic_root, tmp_path
):
    run = shutil.copytree(FIXTURES / label / "run", tmp_path / "run")
    before = {path: path.read_bytes() for path in run.rglob("*") if path.is_file() and path.name != "train.log"}
    overrides = [
        line.removeprefix("- ").strip() for line in (run / ".hydra" / "overrides.yaml").read_text().splitlines()
    ]
    overrides = [o for o in overrides if not o.startswith(("data.root=", "hydra."))]
    result = run_cli("resnet9.train", *overrides, f"data.root={synthetic_root}", f"hydra.run.dir={run}")
    assert result.returncode == 2, result.stderr[-2000:]
    (line,) = result.stderr.strip().splitlines()
    version = label[1:].split("-")[0]
    written_by = "a resnet9 before 0.2" if version == "0.1.0" else f"resnet9 {version}"  # (0.2.0 records its own)
    assert f"it was written by {written_by}, and this is resnet9 " in line and "evaluate it" in line, line
    assert {path: path.read_bytes() for path in before} == before


def test_a_checkpoint_or_metrics_of_a_newer_format_is_one_line_saying_to_upgrade(synthetic_root, tmp_path, capsys):
    newest = FIXTURES / LABELS[-1]
    checkpoint = torch.load(newest / "run" / "last.pt", weights_only=True)
    torch.save({**checkpoint, "format": 99, "version": "9.0.0"}, tmp_path / "last.pt")
    with pytest.raises(UsageError) as err:
        evaluation(tmp_path / "last.pt", synthetic_root, tmp_path / "out")
    assert "written by resnet9 9.0.0 (checkpoint format 99" in str(err.value) and "upgrade resnet9" in str(err.value)
    assert "\n" not in str(err.value)

    sweep = shutil.copytree(newest / "sweep", tmp_path / "sweep")
    record = json.loads((sweep / "1" / "metrics.json").read_text())
    (sweep / "1" / "metrics.json").write_text(json.dumps({**record, "format": 99}))
    jobs = {job["job"]: job for job in report.load_jobs(sweep)}
    assert jobs["0"]["status"] == "completed" and jobs["1"]["status"] == "unreadable"
    assert "written by a newer resnet9 (metrics format 99" in jobs["1"]["error"] and "\n" not in jobs["1"]["error"]
