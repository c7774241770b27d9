import json

import pytest
import torch
from conftest import REPO
from hydra import compose, initialize_config_dir
from PIL import Image

from resnet9.core.errors import UsageError
from resnet9.evaluate import evaluate_checkpoint
from resnet9.training import build


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
