import json
import os
import subprocess
import sys

import pytest
import torch
from conftest import REPO
from hydra import compose, initialize_config_dir
from PIL import Image

from resnet9.core.errors import UsageError
from resnet9.evaluate import evaluate_checkpoint
from resnet9.training.engine import build


def test_evaluate_reproduces_the_runs_accuracy_and_writes_its_figures(run_cli, trained_run, tmp_path):
    # The run trained on the CPU in fp32; device=auto would evaluate on a GPU in bf16 where one is present, and
    # the exact equality below holds for the same device and precision only.
    result = run_cli(
        "resnet9.evaluate", f"checkpoint={trained_run / 'last.pt'}", "device=cpu", f"hydra.run.dir={tmp_path}"
    )
    assert result.returncode == 0, result.stderr[-2000:]
    metrics = json.loads((trained_run / "metrics.json").read_text())
    evaluation = json.loads((tmp_path / "evaluation.json").read_text())
    assert evaluation["test_acc"] == metrics["final_test_acc"]
    assert evaluation["n_test"] == 300 and 0 <= evaluation["test_acc_flip_tta"] <= 1
    confusion = evaluation["confusion_matrix"]
    assert sum(map(sum, confusion)) == 300
    assert sum(confusion[c][c] for c in range(10)) == round(evaluation["test_acc"] * 300)
    per_class = evaluation["per_class_acc"]
    assert list(per_class) == evaluation["classes"] and len(per_class) == 10
    assert sum(per_class.values()) / 10 == pytest.approx(evaluation["test_acc"])  # balanced subset: 30 per class
    for png in ("confusion_matrix.png", "misclassified.png", "gradcam.png"):
        assert Image.open(tmp_path / png).size[0] > 500
    assert f"test accuracy {100 * evaluation['test_acc']:.2f}%" in result.stdout


def test_missing_checkpoint_is_one_line(run_cli, tmp_path):
    result = run_cli("resnet9.evaluate", f"checkpoint={tmp_path}/nope.pt", f"hydra.run.dir={tmp_path}/out")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"error: checkpoint not found: {tmp_path}/nope.pt; pass checkpoint=<run folder>/last.pt as written by "
        "resnet9.train"
    ]


def test_a_run_folder_names_its_last_pt(trained_run):
    model, checkpoint = build.trained_model(trained_run, torch.device("cpu"))
    saved = torch.load(trained_run / "last.pt", weights_only=True)
    assert checkpoint["config"] == saved["config"]
    assert all(torch.equal(model.state_dict()[name], weights) for name, weights in saved["model"].items())


def test_corrupt_or_foreign_checkpoints_are_one_line(trained_run, tmp_path):
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a checkpoint at all")
    other_width = tmp_path / "other_width.pt"
    checkpoint = torch.load(trained_run / "last.pt", weights_only=True)
    checkpoint["config"]["model"]["width"] = 0.25  # weights of width 0.125 claiming another width
    torch.save(checkpoint, other_width)
    crafted = tmp_path / "crafted.pt"  # a checkpoint whose config names what to build: nothing is built from it
    checkpoint = torch.load(trained_run / "last.pt", weights_only=True)
    checkpoint["config"]["augment"]["_target_"] = "shutil.rmtree"
    torch.save(checkpoint, crafted)
    cases = ((garbage, "is not a readable checkpoint"), (other_width, "do not fit the model"),
             (crafted, "(augment._target_=shutil.rmtree is named neither by resnet9 nor by your config"))  # fmt: skip
    for path, fragment in cases:  # in this process, as the command calls it (its one-line exit is tested above)
        with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
            cfg = compose(config_name="evaluate", overrides=[f"checkpoint={path}"])
        with pytest.raises(UsageError) as err:
            evaluate_checkpoint(cfg, tmp_path / "out")
        message = str(err.value)
        assert message.startswith(str(path)) and fragment in message and "\n" not in message, message
    assert not (tmp_path / "out").exists()  # nothing was written


DRIFTING = '''
import numpy as np
from resnet9.data.datasets import ImageData

COLOURS = np.array([[230, 25, 75], [60, 180, 75], [0, 130, 200], [245, 130, 48]], dtype=np.int16)


def images(labels):
    noise = np.random.randint(-90, 91, size=(len(labels), 32, 32, 3))
    return np.clip(COLOURS[labels][:, None, None, :] + noise, 0, 255).astype(np.uint8)


def drifting(root, download=True, limit_train=None, limit_test=None):
    """A user's data set whose test split depends on its arguments and on the random state the training split
    leaves: called otherwise than the run called it, it gives other test images."""
    train_labels = np.random.randint(0, 4, size=limit_train or 640)
    train = images(train_labels)
    pool = np.random.randint(0, 4, size=2000)
    keep = np.random.permutation(2000)[(limit_train or 0) % 97 :][: limit_test or 400]
    test_labels = pool[keep]
    return ImageData(train, train_labels, images(test_labels), test_labels, classes=("a", "b", "c", "d"))
'''


@pytest.mark.slow  # (make test-full; make test stays under 10 minutes on 2 cores)
def test_evaluate_scores_the_runs_own_test_images_whatever_the_data_function_does(tmp_path):
    """A data set function whose test images follow limit_train and the random state: evaluate calls it as the
    run did (same arguments, same seeding) and reproduces the run's final test accuracy exactly."""
    (tmp_path / "drift.py").write_text(DRIFTING)
    (tmp_path / "conf" / "data").mkdir(parents=True)
    (tmp_path / "conf" / "data" / "drifting.yaml").write_text(
        "_target_: drift.drifting\nroot: unused\ndownload: false\nlimit_train: 480\nlimit_test: null\n"
        "num_workers: 0\nnum_classes: 4\nchannels: 3\nimage_size: 32\nmean: [0.5, 0.5, 0.5]\nstd: [0.25, 0.25, 0.25]\n"
    )
    env = {**os.environ, "WANDB_MODE": "offline", "PYTHONPATH": ".", "RESNET9_CACHE": str(tmp_path / "cache")}

    def run(module: str, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", module, "--config-dir", "conf", *args], cwd=tmp_path, env=env,
                              capture_output=True, text=True, timeout=600)  # fmt: skip

    trained = run("resnet9.train", "data=drifting", "model.width=0.0625", "batch_size=32", "epochs=2",
                  "optimizer.lr=0.05", "scheduler.lr_min=0.005", "logger=none", "progress=false", "device=cpu",
                  "seed=3", "hydra.run.dir=run")  # fmt: skip
    assert trained.returncode == 0, trained.stderr[-2000:]
    evaluated = run("resnet9.evaluate", "checkpoint=run/last.pt", "device=cpu", "hydra.run.dir=eval")
    assert evaluated.returncode == 0, evaluated.stderr[-2000:]
    record = json.loads((tmp_path / "run" / "metrics.json").read_text())
    evaluation = json.loads((tmp_path / "eval" / "evaluation.json").read_text())
    assert evaluation["n_test"] == record["n_test"] == 400
    assert 0.3 < evaluation["test_acc"] < 1 and evaluation["test_acc"] == record["final_test_acc"]

    # The same function drawing from another state gives other test images: one line, nothing scored.
    (tmp_path / "drift.py").write_text(DRIFTING.replace("(limit_train or 0) % 97", "(limit_train or 0) % 89"))
    refused = run("resnet9.evaluate", "checkpoint=run/last.pt", "device=cpu", "hydra.run.dir=eval2")
    assert refused.returncode == 2 and "gave other test images than the run" in refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1 and not (tmp_path / "eval2" / "evaluation.json").exists()
