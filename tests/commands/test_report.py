import csv
import io
import json
from pathlib import Path

import pytest
from PIL import Image
from test_train import small_run

from resnet9.report import format_table, group_jobs, load_jobs, main, summarize, write_report


def fake_job(folder: Path, overrides: list[str], status: str = "completed", acc: float = 0.0) -> None:
    folder.mkdir(parents=True)
    (folder.parent / "multirun.yaml").touch()  # what Hydra leaves in every sweep's folder
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


def table_rows(table: str) -> dict[str, list[str]]:
    """A Markdown table's body rows as {setting: [the other cells]}."""
    rows = [[cell.strip() for cell in line.strip("|").split("|")] for line in table.splitlines()[2:]]
    return {row[0]: row[1:] for row in rows}


def test_groups_seeds_of_one_setting_into_n_mean_std_and_a_95_percent_interval(tmp_path):
    for job, (seed, acc) in enumerate([(0, 0.90), (1, 0.92), (2, 0.94)]):
        fake_job(tmp_path / str(job), ["optimizer=sgd", f"seed={seed}"], acc=acc)
    fake_job(tmp_path / "3", ["optimizer=adam", "seed=0"], acc=0.80)
    fake_job(tmp_path / "4", ["optimizer=adam", "seed=1"], status="failed")
    rows = {row["setting"]: row for row in summarize(group_jobs(tmp_path, load_jobs(tmp_path)))}
    sgd, adam = rows["optimizer=sgd"], rows["optimizer=adam"]
    assert (sgd["jobs"], sgd["failed"], sgd["n"]) == (3, 0, 3)
    assert sgd["final_test_acc"] == pytest.approx(0.92) and sgd["final_test_acc_std"] == pytest.approx(0.02)
    half = 4.302653 * 0.02 / 3**0.5  # t(0.975, 2 degrees of freedom) x std / sqrt(n)
    assert sgd["final_test_acc_ci95"] == pytest.approx([0.92 - half, 0.92 + half])
    assert (adam["jobs"], adam["failed"], adam["n"]) == (2, 1, 1)
    assert adam["final_test_acc_std"] is None and adam["final_test_acc_ci95"] is None  # one job: no spread
    table = table_rows(format_table(list(rows.values())))
    assert table["optimizer=sgd"][:5] == [
        "3",
        "0",
        "3",
        "92.00 ± 2.00",
        f"{100 * (0.92 - half):.2f} – {100 * (0.92 + half):.2f}",
    ]
    assert table["optimizer=adam"][:5] == ["2", "1", "1", "80.00", "—"]  # a single job shows no ± 0.00


def test_a_setting_whose_jobs_all_failed_still_shows(tmp_path):
    fake_job(tmp_path / "0", ["optimizer.lr=1e9", "epochs=2"], status="failed")
    fake_job(tmp_path / "1", ["optimizer.lr=0.1", "epochs=2"], acc=0.5)
    write_report(tmp_path)
    table = table_rows((tmp_path / "summary.md").read_text().split("\n\n")[2])
    assert table["optimizer.lr=1e9"] == ["1", "1", "0"] + ["—"] * 6  # epochs=2 is common to all: not a setting
    assert table["optimizer.lr=0.1"][:4] == ["1", "0", "1", "50.00"]
    assert Image.open(tmp_path / "test_accuracy.png").size[0] > 500  # drawn with a failed job present


def test_a_pure_seed_sweep_is_one_setting(tmp_path):
    for seed in range(3):
        fake_job(tmp_path / str(seed), ["epochs=2", f"seed={seed}"], acc=0.5 + seed / 100)
    (row,) = summarize(group_jobs(tmp_path, load_jobs(tmp_path)))
    assert row["setting"] == "(all jobs)" and row["jobs"] == 3 and row["final_test_acc"] == pytest.approx(0.51)


def test_report_options_by_metric_and_csv(tmp_path, capsys):
    for job, (lr, width, seed, acc) in enumerate([(0.1, 0.25, 0, 0.5), (0.1, 0.5, 0, 0.7), (0.2, 0.25, 0, 0.6),
                                                  (0.2, 0.5, 0, 0.8), (0.1, 0.25, 1, 0.52)]):  # fmt: skip
        fake_job(tmp_path / str(job), [f"optimizer.lr={lr}", f"model.width={width}", f"seed={seed}"], acc=acc)
    write_report(tmp_path)
    own = (tmp_path / "summary.md").read_text()
    main([str(tmp_path), "--by", "model.width", "--tracker", "none"])  # averaged over the LRs and seeds
    table = table_rows(capsys.readouterr().out)
    assert set(table) == {"model.width=0.25", "model.width=0.5"}
    assert table["model.width=0.25"][:4] == ["3", "0", "3", "54.00 ± 5.29"]
    assert (tmp_path / "summary.md").read_text() == own  # the sweep's own summary stays; the regrouping beside it
    assert "| model.width=0.25 " in (tmp_path / "summary_by_model.width.md").read_text()
    assert (tmp_path / "test_accuracy_by_model.width.png").is_file()
    for key, fragment in (("seed", "--by seed: a setting's seeds are what the report averages over"),
                          ("model.widht", "--by model.widht: no job of this sweep sets it; its jobs set model.width, "
                                          "optimizer.lr")):  # fmt: skip
        with pytest.raises(SystemExit) as exit_status:
            main([str(tmp_path), "--by", key, "--tracker", "none"])
        err = capsys.readouterr().err.strip().splitlines()
        assert exit_status.value.code == 2 and len(err) == 1 and err[0].startswith(f"error: {fragment}")
    main([str(tmp_path), "--metric", "best_test_acc", "--csv", "--tracker", "none"])
    lines = list(csv.reader(io.StringIO(capsys.readouterr().out)))
    assert lines[0][:8] == ["setting", "jobs", "failed", "n", "best_test_acc", "best_test_acc_std",
                            "best_test_acc_ci95_low", "best_test_acc_ci95_high"]  # fmt: skip
    by_setting = {line[0]: dict(zip(lines[0], line, strict=True)) for line in lines[1:]}
    two = by_setting["model.width=0.25 optimizer.lr=0.1"]  # plain numbers for a spreadsheet: best = final + 0.01
    assert (two["jobs"], two["n"]) == ("2", "2") and float(two["best_test_acc"]) == pytest.approx(0.52)
    assert float(two["best_test_acc_std"]) == pytest.approx(0.01 * 2**0.5)
    assert float(two["best_test_acc_ci95_low"]) < 0.52 < float(two["best_test_acc_ci95_high"])
    one = by_setting["model.width=0.5 optimizer.lr=0.1"]
    assert float(one["final_test_acc"]) == pytest.approx(0.7) and one["final_test_acc_std"] == ""  # one job: no spread


@pytest.mark.parametrize("kind", ["single run", "empty", "missing", "single runs"])
def test_report_refuses_a_folder_that_is_not_a_sweep_in_one_line(tmp_path, capsys, kind):
    folder = tmp_path / "folder"
    if kind != "missing":
        folder.mkdir()
    if kind == "single run":
        (folder / "metrics.json").write_text("{}")
    if kind == "single runs":  # outputs/<date>/: runs, each of its own command, never one sweep
        fake_job(folder / "14-00-00", ["optimizer.lr=0.2"], acc=0.5)
        fake_job(folder / "15-00-00", ["optimizer.lr=0.1"], acc=0.4)
        (folder / "multirun.yaml").unlink()
    with pytest.raises(SystemExit) as exit_status:
        main([str(folder)])
    assert exit_status.value.code == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith(f"error: {folder}") and "pass a sweep folder, e.g. multirun/<date>/<time>" in line
    assert ("single run's folder" in line) == (kind == "single run")
    assert not (folder / "summary.md").exists()


def test_a_sweep_counts_every_job_and_ends_with_its_summary_and_a_line_per_failed_job(run_cli, cifar_root, tmp_path):
    """Jobs that fail in training (diverged) after jobs that complete. (A bad value ends the sweep before any job
    trains: tests/training/test_sweeper.py.)"""
    sweep = tmp_path / "sweep"
    result = run_cli(
        "resnet9.train", "--multirun", *small_run(cifar_root, "epochs=1", "scheduler.peak_epoch=0.5", "logger=none"),
        "scheduler.lr_min=0.01", "optimizer.lr=0.1,1e12", "seed=0,1", f"hydra.sweep.dir={sweep}",
    )  # fmt: skip
    assert result.returncode != 0  # Hydra reports the failures once the sweep has run...
    jobs = [json.loads((sweep / str(job) / "metrics.json").read_text()) for job in range(4)]  # ...but every job ran
    assert [job["status"] for job in jobs] == ["completed"] * 2 + ["failed"] * 2
    assert all(job["error"].startswith("training diverged: the loss became") for job in jobs[2:4])
    for job in (0, 1):  # the jobs before the failures ran in full
        assert len(jobs[job]["epochs"]) == 1
        assert all((sweep / str(job) / name).is_file() for name in ("last.pt", "curves.png", "model_summary.txt"))
    rows = {row["setting"]: row for row in json.loads((sweep / "summary.json").read_text())}
    settings = ("optimizer.lr=0.1", "optimizer.lr=1000000000000.0")  # seeds are averaged over
    assert [(rows[s]["jobs"], rows[s]["failed"], rows[s]["n"]) for s in settings] == [(2, 0, 2), (2, 2, 0)]
    assert 0 <= rows["optimizer.lr=0.1"]["final_test_acc"] <= 1
    table = table_rows((sweep / "summary.md").read_text().split("\n\n")[2])
    assert table["optimizer.lr=1000000000000.0"][:3] == ["2", "2", "0"]  # jobs, failed, n
    # The sweep's end, though Hydra re-raised the first failure: the table and one line per failed job
    failed = [line for line in result.stdout.splitlines() if line.startswith("job ")]
    assert failed[0] == f"job 2 (optimizer.lr=1000000000000.0 seed=0): failed: {jobs[2]['error']}"
    assert failed[1] == f"job 3 (optimizer.lr=1000000000000.0 seed=1): failed: {jobs[3]['error']}" and len(failed) == 2
    assert "| optimizer.lr=1000000000000.0 " in result.stdout
    assert Image.open(sweep / "test_accuracy.png").size[0] > 500


def test_a_sweep_over_a_key_added_with_plus_plus_groups_by_its_values(tmp_path):
    (tmp_path / "sweep.json").write_text(json.dumps({"id": "s", "varies": ["label_smoothing", "seed"]}))
    for job, (smoothing, seed) in enumerate([(0.0, 0), (0.0, 1), (0.2, 0), (0.2, 1)]):
        fake_job(tmp_path / str(job), [f"++label_smoothing={smoothing}", f"seed={seed}"], acc=0.5 + smoothing)
    rows = {row["setting"]: row for row in summarize(group_jobs(tmp_path, load_jobs(tmp_path)))}
    assert set(rows) == {"label_smoothing=0.0", "label_smoothing=0.2"}  # not one pool of all four
    assert rows["label_smoothing=0.2"]["final_test_acc"] == pytest.approx(0.7)


def test_a_multirun_into_a_folder_of_another_sweeps_jobs_is_refused_before_any_job(run_cli, cifar_root, tmp_path):
    sweep = tmp_path / "sweep"
    (sweep / "sweep.json").parent.mkdir()
    (sweep / "sweep.json").write_text(json.dumps({"id": "s", "varies": ["seed"], "command": ["seed=0,1"]}))
    fake_job(sweep / "0", ["seed=0"], acc=0.5)
    before = (sweep / "0" / "metrics.json").read_text()
    args = [*small_run(cifar_root, "epochs=1", "logger=none"), f"hydra.sweep.dir={sweep}"]
    result = run_cli("resnet9.train", "--multirun", "seed=0,1,2", *args)
    assert result.returncode == 2
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith(f"error: {sweep} holds the jobs of a sweep with other overrides (seed=0,1); rerun those")
    assert (sweep / "0" / "metrics.json").read_text() == before and not (sweep / "1").exists()
    assert json.loads((sweep / "sweep.json").read_text())["command"] == ["seed=0,1"]


def test_a_signal_between_a_sweeps_jobs_ends_it_with_its_summary_and_how_to_resume(tmp_path, capsys):
    import signal

    from omegaconf import OmegaConf

    from resnet9.report import SweepSummary

    fake_job(tmp_path / "0", ["seed=0"], acc=0.5)
    config = OmegaConf.create({
        "hydra": {"sweep": {"dir": str(tmp_path)}, "overrides": {"task": ["seed=0,1"]}, "sweeper": {}},
        "logger": {"_target_": "resnet9.training.recording.tracking.NullTracker", "_partial_": True},
    })  # fmt: skip
    before = signal.getsignal(signal.SIGTERM)
    summary = SweepSummary()
    summary.on_multirun_start(config)
    handler = signal.getsignal(signal.SIGTERM)
    assert handler == summary.stop_between_jobs  # (a job's own handlers hand back to it when the job ends)
    with pytest.raises(SystemExit) as exit_status:
        handler(signal.SIGTERM, None)  # as if job 0 had ended and job 1 not begun
    assert exit_status.value.code == 128 + signal.SIGTERM
    out, err = capsys.readouterr()
    assert "Sweep summary" in out and (tmp_path / "summary.md").is_file()
    assert (
        err.strip() == f"stopped by signal 15 between jobs; resume the sweep by rerunning the same command with "
        f"hydra.sweep.dir={tmp_path}"
    )
    assert signal.getsignal(signal.SIGTERM) == before


def test_the_interval_of_an_accuracy_stays_within_0_and_100_percent(tmp_path):
    """Two seeds far apart: the t-interval (t = 12.7 for 1 degree of freedom) would reach -73.9 % to 106.5 %."""
    for job, (seed, acc) in enumerate([(0, 0.10), (1, 0.95)]):
        fake_job(tmp_path / str(job), ["optimizer=sgd", f"seed={seed}"], acc=acc)
    (row,) = summarize(group_jobs(tmp_path, load_jobs(tmp_path)))
    half = 12.706205 * row["final_test_acc_std"] / 2**0.5
    assert row["final_test_acc"] - half < 0 and row["final_test_acc"] + half > 1  # what a plain t-interval says
    assert row["final_test_acc_ci95"] == [0.0, 1.0] and row["lr_max_ci95"][0] >= 0
