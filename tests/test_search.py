"""hparams_search=optuna: a search for LRMIN/LRMAX around the derived values, reported like a grid sweep."""

import json

from test_train import small_run, wandb_run_files
from wandb_records import read_run


def test_an_optuna_search_of_three_trials_runs_and_the_report_and_wandb_cover_it(run_cli, cifar_root, tmp_path):
    sweep = tmp_path / "search"
    result = run_cli(
        "resnet9.train", "--multirun", "hparams_search=optuna", "hydra.sweeper.n_trials=3",
        *small_run(cifar_root, "epochs=1", "scheduler.peak_epoch=0.5"), f"hydra.sweep.dir={sweep}",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads((sweep / "sweep.json").read_text())["varies"] == ["lr_finder.max_scale", "lr_finder.min_scale"]
    jobs = [json.loads((sweep / str(n) / "metrics.json").read_text()) for n in range(3)]
    assert [job["status"] for job in jobs] == ["completed"] * 3
    finder = json.loads((sweep / "0" / "lr_finder.json").read_text())
    for job in jobs:  # each trial scales the one derived pair by its own two multipliers
        scales = dict(o.split("=") for o in job["overrides"] if o.startswith("lr_finder."))
        assert job["lr_max"] == finder["lr_max"] * float(scales["lr_finder.max_scale"])
        assert job["lr_min"] == finder["lr_min"] * float(scales["lr_finder.min_scale"])
        assert 0.25 <= float(scales["lr_finder.max_scale"]) <= 4 and 0.1 <= float(scales["lr_finder.min_scale"]) <= 10

    rows = json.loads((sweep / "summary.json").read_text())  # one setting per trial
    assert len(rows) == 3 and all(row["n"] == 1 and row["setting"].startswith("lr_finder.max_scale=") for row in rows)
    best = max(job["final_test_acc"] for job in jobs)
    assert f"Best value: {best}" in result.stdout + result.stderr  # optuna maximised what the jobs returned
    runs = [read_run(wandb_run_files(sweep / str(n))[0])["run"] for n in range(3)]
    for run, row in zip(runs, rows, strict=True):  # named after the trial's multipliers, 4 digits each
        max_scale, min_scale = (float(part.split("=")[1]) for part in row["setting"].split())
        assert run.display_name == f"lr_finder.max_scale={max_scale:.4g} lr_finder.min_scale={min_scale:.4g}"
        assert run.run_group.endswith(row["setting"]) and run.job_type == "train"
