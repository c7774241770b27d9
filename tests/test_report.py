import json
from pathlib import Path

import pytest
from PIL import Image
from test_train import small_run

from resnet9.report import format_table, summarize, write_report


def fake_job(folder: Path, overrides: list[str], status: str = "completed", acc: float = 0.0) -> None:
    folder.mkdir(parents=True)
    metrics = {"overrides": overrides, "status": status}
    if status == "completed":
        metrics |= {
            "final_test_acc": acc,
            "best_test_acc": acc + 0.01,
            "train_time_s": 10.0,
            "lr_min": 0.04,
            "lr_max": 0.4,
            "epochs": [{"epoch": 1, "test_acc": acc / 2}, {"epoch": 2, "test_acc": acc}],
        }
    (folder / "metrics.json").write_text(json.dumps(metrics))


def test_groups_seeds_of_one_setting_into_mean_and_std(tmp_path):
    for job, (seed, acc) in enumerate([(0, 0.90), (1, 0.92), (2, 0.94)]):
        fake_job(tmp_path / str(job), ["optimizer=sgd", f"seed={seed}"], acc=acc)
    fake_job(tmp_path / "3", ["optimizer=adam", "seed=0"], acc=0.80)
    fake_job(tmp_path / "4", ["optimizer=adam", "seed=1"], status="failed")
    rows = {row["setting"]: row for row in summarize(tmp_path)}
    sgd, adam = rows["optimizer=sgd"], rows["optimizer=adam"]
    assert (sgd["jobs"], sgd["failed"]) == (3, 0)
    assert sgd["final_test_acc"] == pytest.approx(0.92) and sgd["final_test_acc_std"] == pytest.approx(0.02)
    assert (adam["jobs"], adam["failed"]) == (2, 1) and adam["final_test_acc_std"] == 0.0
    table = format_table(list(rows.values()))
    assert "| optimizer=sgd | 3 | 0 | 92.00 ± 2.00 | 93.00 ± 2.00 | 0.04 | 0.4 | 10.0 ± 0.0 |" in table


def test_a_setting_whose_jobs_all_failed_still_shows(tmp_path):
    fake_job(tmp_path / "0", ["optimizer.lr=1e9", "epochs=2"], status="failed")
    fake_job(tmp_path / "1", ["optimizer.lr=0.1", "epochs=2"], acc=0.5)
    write_report(tmp_path)
    summary = (tmp_path / "summary.md").read_text()
    assert "| optimizer.lr=1e9 | 1 | 1 | — | — | — | — | — |" in summary  # epochs=2 is common to all: not a setting
    assert "| optimizer.lr=0.1 | 1 | 0 | 50.00 ± 0.00 |" in summary
    assert Image.open(tmp_path / "test_accuracy.png").size[0] > 500  # drawn with a failed job present


def test_a_pure_seed_sweep_is_one_setting(tmp_path):
    for seed in range(3):
        fake_job(tmp_path / str(seed), ["epochs=2", f"seed={seed}"], acc=0.5 + seed / 100)
    (row,) = summarize(tmp_path)
    assert row["setting"] == "(all jobs)" and row["jobs"] == 3 and row["final_test_acc"] == pytest.approx(0.51)


def test_seed_sweep_ends_with_a_summary_that_marks_the_failed_setting(run_cli, cifar_root, tmp_path):
    sweep = tmp_path / "sweep"
    result = run_cli(
        "resnet9.train", "--multirun", *small_run(cifar_root, "epochs=1", "scheduler.peak_epoch=0.5", "logger=none"),
        "scheduler.lr_min=0.01", "optimizer.lr=0.1,1e12", "seed=0,1", f"hydra.sweep.dir={sweep}",
    )  # fmt: skip
    assert result.returncode != 0  # Hydra reports the diverged jobs once the sweep has run...
    assert len(list(sweep.glob("*/metrics.json"))) == 4  # ...but every job ran
    rows = {row["setting"]: row for row in json.loads((sweep / "summary.json").read_text())}
    assert set(rows) == {"optimizer.lr=0.1", "optimizer.lr=1000000000000.0"}  # only what was swept, not seed
    good, bad = rows["optimizer.lr=0.1"], rows["optimizer.lr=1000000000000.0"]
    assert (good["jobs"], good["failed"]) == (2, 0) and 0 <= good["final_test_acc"] <= 1
    assert (bad["jobs"], bad["failed"]) == (2, 2)


def test_a_failing_middle_job_leaves_the_other_jobs_complete_and_the_summary_marks_it(run_cli, cifar_root, tmp_path):
    sweep = tmp_path / "sweep"
    result = run_cli(
        "resnet9.train", "--multirun", *small_run(cifar_root, "epochs=1", "scheduler.peak_epoch=0.5", "logger=none"),
        "scheduler.lr_min=0.01", "optimizer.lr=0.1,1e12,0.2", f"hydra.sweep.dir={sweep}",
    )  # fmt: skip
    assert result.returncode != 0  # Hydra reports the failed job once the sweep has run
    jobs = [json.loads((sweep / str(job) / "metrics.json").read_text()) for job in range(3)]
    assert [job["status"] for job in jobs] == ["completed", "failed", "completed"]
    assert "training loss became" in jobs[1]["error"]
    for job in (0, 2):  # the job after the failure ran in full too
        assert len(jobs[job]["epochs"]) == 1
        assert all((sweep / str(job) / name).is_file() for name in ("last.pt", "curves.png", "model_summary.txt"))
    rows = {row["setting"]: row for row in json.loads((sweep / "summary.json").read_text())}
    assert [(rows[s]["jobs"], rows[s]["failed"]) for s in ("optimizer.lr=0.1", "optimizer.lr=1000000000000.0",
                                                          "optimizer.lr=0.2")] == [(1, 0), (1, 1), (1, 0)]  # fmt: skip
    lines = (sweep / "summary.md").read_text().splitlines()
    assert any(line.startswith("| optimizer.lr=1000000000000.0 | 1 | 1 |") for line in lines)  # jobs, failed
