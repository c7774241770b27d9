"""What a sweep leaves and how it is read: jobs without a record, Hydra's records read as data, the summary after
every job, an Optuna sweep's study.md, and each job's W&B identity and checkpoint artifact."""

import json
import types
from pathlib import Path

import optuna
import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from hydra.core.utils import JobReturn, JobStatus
from hydra.types import RunMode
from omegaconf import OmegaConf, open_dict
from test_report import fake_job
from wandb.proto import wandb_internal_pb2
from wandb_records import _payloads, read_finished_run

import resnet9.train as trainer
from resnet9 import report
from resnet9.training.engine.state import RunRecord
from resnet9.training.recording.listeners import TrackerLog
from resnet9.training.sweeps import search, sweep

CONF = Path(__file__).resolve().parents[2] / "conf"


def test_a_job_folder_with_hydras_record_but_no_metrics_json_counts_as_no_record(tmp_path):
    fake_job(tmp_path / "0", ["seed=0"], acc=0.5)
    killed = tmp_path / "1" / ".hydra"  # a job killed before it wrote anything of its own
    killed.mkdir(parents=True)
    (killed / "overrides.yaml").write_text("- seed=1\n")
    jobs = report.load_jobs(tmp_path)
    assert [(job["job"], job["status"]) for job in jobs] == [("0", "completed"), ("1", "no record")]
    assert jobs[1]["overrides"] == ["seed=1"] and "no metrics.json" in jobs[1]["error"]
    (row,) = report.summarize(report.group_jobs(tmp_path, jobs))
    assert (row["jobs"], row["failed"], row["n"]) == (2, 1, 1)


@pytest.mark.parametrize(
    "content",
    [
        "!!python/object/apply:os.system ['touch MARKER']\n",  # YAML that would run code if loaded unsafely
        "- !!python/object/apply:os.system ['touch MARKER']\n- seed=1\n",
        "{seed: 1}\n",  # not a list
        "- seed=1\n- [1, 2]\n- 3\n",  # items that are not overrides
        "- 'unclosed\n",  # not YAML
    ],
)
def test_hydras_overrides_yaml_is_read_as_data_and_checked(tmp_path, content):
    marker = tmp_path / "ran"
    folder = tmp_path / "sweep" / "0" / ".hydra"
    folder.mkdir(parents=True)
    (folder / "overrides.yaml").write_text(content.replace("MARKER", str(marker)))
    (job,) = report.load_jobs(tmp_path / "sweep")
    assert job["overrides"] in ([], ["seed=1"]) and job["status"] == "no record"
    assert not marker.exists()


def test_the_summary_is_rewritten_after_each_job(tmp_path):
    summary, config = report.SweepSummary(), OmegaConf.create({"hydra": {"mode": "MULTIRUN", "sweep": {}}})
    config.hydra.mode, config.hydra.sweep.dir = RunMode.MULTIRUN, str(tmp_path)
    counts = []
    for job, (status, acc) in enumerate([("completed", 0.5), ("failed", 0.0), ("completed", 0.7)]):
        fake_job(tmp_path / str(job), [f"seed={job}"], status=status, acc=acc)
        summary.on_job_end(config, JobReturn(status=JobStatus.COMPLETED if status == "completed" else JobStatus.FAILED))
        (row,) = json.loads((tmp_path / "summary.json").read_text())
        counts.append((row["jobs"], row["failed"], row["final_test_acc"]))
        assert f"| {job + 1}" in (tmp_path / "summary.md").read_text()
    assert counts == [(1, 0, 0.5), (2, 1, 0.5), (3, 1, pytest.approx(0.6))]


def test_the_report_command_writes_an_optuna_sweeps_study_md(tmp_path, capsys):
    url = search.storage_url(None, tmp_path)
    study = optuna.create_study(study_name="lr_range", storage=search.open_storage(url), direction="maximize")
    study.optimize(lambda trial: trial.suggest_float("lr_finder.max_scale", 0.25, 4.0, log=True), n_trials=2)
    for trial in study.trials:
        fake_job(tmp_path / str(trial.number), [f"lr_finder.max_scale={trial.params['lr_finder.max_scale']}"], acc=0.5)
    (tmp_path / sweep.FILE).write_text(
        json.dumps({"id": "sweep-x", "varies": ["lr_finder.max_scale"], "study": {"storage": url, "name": "lr_range"}})
    )
    report.main([str(tmp_path), "--tracker", "none"])
    study_md = (tmp_path / "study.md").read_text()
    assert study_md == search.describe_study(url, "lr_range") and study_md in capsys.readouterr().out
    assert f"best: trial {study.best_trial.number}" in study_md and study_md.count("| complete |") == 2


@pytest.fixture
def sweep_job(tmp_path):
    """Hydra's record of job 3 of a sweep over lr_finder.scale and seed, for the job's own code to read."""
    sweep_dir = tmp_path / "multirun" / "2026-01-01" / "10-00-00"
    sweep_dir.mkdir(parents=True)
    described = {"id": "sweep-2026-01-01_10-00-00", "varies": ["lr_finder.scale", "seed"]}
    (sweep_dir / sweep.FILE).write_text(json.dumps(described))

    def job(*overrides: str):
        with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
            cfg = compose(config_name="config", overrides=["lr_finder.scale=0.5", "seed=1", *overrides],
                          return_hydra_config=True)  # fmt: skip
        with open_dict(cfg):
            cfg.hydra.mode, cfg.hydra.sweep.dir, cfg.hydra.job.num = RunMode.MULTIRUN, str(sweep_dir), 3
        HydraConfig.instance().set_config(cfg)
        return OmegaConf.masked_copy(cfg, [key for key in cfg if key != "hydra"])  # what the job's task is given

    yield job
    HydraConfig.instance().cfg = None


def tracked_job(cfg, out_dir: Path) -> Path:
    """The job's W&B run as its listener starts and ends it, with a last.pt in the folder: its run file."""
    out_dir.mkdir()
    listeners = trainer._recording_listeners(cfg, out_dir, torch.device("cpu"), None)
    (tracker_log,) = [listener for listener in listeners if isinstance(listener, TrackerLog)]
    record = RunRecord(lr_min=0.01, lr_max=0.1, lr_source="config", final_test_acc=0.5, best_test_acc=0.5, best_epoch=1,
                       train_time_s=1.0, parameters=10)  # fmt: skip
    state = types.SimpleNamespace(record=record)
    tracker_log.on_run_start(state)
    torch.save({"weights": torch.zeros(3)}, out_dir / "last.pt")
    tracker_log.on_run_end(state, "completed")
    (run_file,) = out_dir.glob("wandb/offline-run-*/run-*.wandb")
    return run_file


def artifacts(run_file: Path) -> list[tuple[str, list[str]]]:
    """The run's artifact records, each as (type, its files), once W&B has written the whole run."""
    read_finished_run(run_file)
    found = []
    for payload in _payloads(run_file.read_bytes()):
        record = wandb_internal_pb2.Record()
        record.ParseFromString(payload)
        if record.WhichOneof("record_type") == "artifact":
            found.append((record.artifact.type, [entry.path for entry in record.artifact.manifest.contents]))
    return found


def test_a_sweep_jobs_w_and_b_config_names_its_sweep_and_setting_and_logger_group_overrides_its_group(
    sweep_job, tmp_path, monkeypatch
):
    monkeypatch.setenv("WANDB_SILENT", "true")
    plain = read_finished_run(tracked_job(sweep_job(), tmp_path / "plain"))
    assert plain["config"]["sweep"] == {"id": "sweep-2026-01-01_10-00-00", "setting": "lr_finder.scale=0.5"}
    assert plain["run"].run_group == "sweep-2026-01-01_10-00-00: lr_finder.scale=0.5"
    grouped = read_finished_run(tracked_job(sweep_job("logger.group=mine"), tmp_path / "grouped"))
    assert grouped["run"].run_group == "mine" and grouped["config"]["sweep"] == plain["config"]["sweep"]


def test_log_checkpoint_stores_last_pt_as_a_model_artifact_and_only_then(sweep_job, tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_SILENT", "true")
    assert artifacts(tracked_job(sweep_job("logger.log_checkpoint=true"), tmp_path / "on")) == [("model", ["last.pt"])]
    assert artifacts(tracked_job(sweep_job(), tmp_path / "off")) == []
