"""Shipped weights: a name resolves to the package's file, its sha256 is checked, and a wrong name is one line."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import REPO, run_cli

from alexnet_cifar10 import pretrained
from alexnet_cifar10.checkpoint import load_model, save_checkpoint, save_safetensors
from alexnet_cifar10.errors import CheckpointError
from alexnet_cifar10.models import create_model


@pytest.fixture
def weights_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A weights folder holding "tiny": an alexnet_tiny in float16 with its JSON, as the package ships them."""
    torch.manual_seed(0)
    model = create_model("alexnet_tiny").eval()
    folder = tmp_path / "weights"
    folder.mkdir()
    save_safetensors({"model": model.state_dict(), "model_name": "alexnet_tiny", "model_kwargs": {}},
                     folder / "tiny.safetensors", half=True)
    info = {"name": "tiny", "model": "alexnet_tiny", "sha256": pretrained.sha256(folder / "tiny.safetensors")}
    (folder / "tiny.json").write_text(json.dumps(info))
    monkeypatch.setattr(pretrained, "WEIGHTS_DIR", folder)
    return folder


def test_a_shipped_name_loads_its_weights_in_float32(weights_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(weights_dir.parent)
    assert pretrained.shipped() == ["tiny"]
    model = load_model("tiny")
    assert all(p.dtype == torch.float32 for p in model.parameters())
    torch.manual_seed(0)
    reference = create_model("alexnet_tiny").eval()
    for name, tensor in reference.state_dict().items():
        assert torch.equal(model.state_dict()[name], tensor.half().to(tensor.dtype)), name
    assert load_model(weights_dir / "tiny.safetensors") is not None  # the path works as before


def test_a_damaged_shipped_file_is_refused(weights_dir: Path) -> None:
    path = weights_dir / "tiny.safetensors"
    data = bytearray(path.read_bytes())
    data[-1] ^= 1
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="sha256 does not match"):
        load_model("tiny")


def test_an_unknown_name_lists_what_ships(weights_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(CheckpointError, match="no trained weights named 'nope'.*available: tiny"):
        load_model("nope")


def test_predict_with_a_name_that_does_not_ship_is_one_line(tmp_path: Path) -> None:
    image = tmp_path / "a.png"
    from PIL import Image

    Image.new("RGB", (32, 32)).save(image)
    result = run_cli("predict", "--weights", "no_such_weights", str(image), cwd=tmp_path)
    err = result.stderr.strip().splitlines()
    assert result.returncode == 1 and len(err) == 1 and "no trained weights named 'no_such_weights'" in err[0], err


def run_ship(*args: str) -> subprocess.CompletedProcess[str]:
    """The maintainers' shipping tool, ``scripts/ship_weights.py``, in a subprocess."""
    return subprocess.run([sys.executable, str(REPO / "scripts" / "ship_weights.py"), *args], capture_output=True,
                          text=True, timeout=300)


def test_a_run_ships_as_float16_weights_with_what_the_json_promises(tmp_path: Path, tiny_png: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """The shipping tool, run as a user runs it, checked against references it did not compute: the run's own
    float32 checkpoint evaluated here, and the labels."""
    from alexnet_cifar10.data import load_cifar10
    from alexnet_cifar10.evaluation import evaluate

    run = tmp_path / "run"
    result = run_cli("train", "--data", str(tiny_png), "--epochs", "1", "--out", str(run), "--val-size", "20",
                     "--batch-size", "16", "--no-progress", "--threads", "1", "--model", "alexnet_tiny",
                     "--precision", "fp32")
    assert result.returncode == 0, result.stderr
    shipped = run_ship(str(run), "--name", "tiny", "--data", str(tiny_png), "--out", str(tmp_path / "weights"))
    assert shipped.returncode == 0, shipped.stderr
    monkeypatch.setattr(pretrained, "WEIGHTS_DIR", tmp_path / "weights")
    info = pretrained.shipped_info("tiny")
    assert json.loads(shipped.stdout)["sha256"] == info["sha256"] == pretrained.sha256(tmp_path / "weights" /
                                                                                        "tiny.safetensors")
    data = load_cifar10(tiny_png, val_size=20, seed=0)
    val = data.split("val")
    full_model = load_model(run / "best.pt")  # the run's float32 weights
    reference = evaluate(full_model, val.images, val.labels)
    with torch.no_grad():  # float16 weights move each logit by a rounding error, not more
        expected = full_model(val.images.float() / 255)
        logits = load_model("tiny")(val.images.float() / 255)
    spread = float(expected.max() - expected.min())
    assert spread > 0 and float((logits - expected).abs().max()) <= 0.02 * spread
    assert info["val_accuracy_float32"]["plain"] == pytest.approx(reference.accuracy)
    assert abs(info["val_accuracy"]["plain"] - reference.accuracy) <= 1 / 20
    # the check images: the first of each class, every class present; their recorded predictions are the run's
    check = info["check_images"]
    assert set(val.labels[check].tolist()) == set(val.labels.tolist()) and check == sorted(set(check))
    assert info["check_predictions_float32"] == "".join(map(str, reference.predictions[check].tolist()))
    # no local path of the trainer's machine in what ships
    metadata = (tmp_path / "weights" / "tiny.safetensors").read_bytes()[:20_000]
    assert str(tiny_png).encode() not in metadata and str(run).encode() not in metadata
    assert info["model"] == "alexnet_tiny" and info["training_data"]["train_images"] == len(data.train)


def test_the_shipping_tool_refuses_what_is_not_a_finished_run(tmp_path: Path) -> None:
    result = run_ship(str(tmp_path), "--name", "x", "--data", str(tmp_path))
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert result.stderr.strip() == (f"ship_weights.py: error: {tmp_path}: not a finished run (no "
                                      "best.pt or config.json)")
    out = tmp_path / "weights"
    out.mkdir()
    os.mkfifo(out / "x.json")
    result = run_ship(str(tmp_path), "--name", "x", "--data", str(tmp_path), "--out", str(out))
    assert result.stderr.strip() == (f"ship_weights.py: error: {out / 'x.json'}: is a FIFO, not a "
                                     "regular file; give the path of a file to write")
    assert stat.S_ISFIFO((out / "x.json").lstat().st_mode)


@pytest.mark.parametrize("name", ["best", "seed"])
def test_the_shipped_weights_reproduce_their_recorded_validation_results(name: str, shared_cache: Path) -> None:
    """The package's weights, loaded by name, give the validation accuracy and the predictions their JSON
    records, on the validation split of the shared training archive."""
    from conftest import SHARED_ARCHIVE

    from alexnet_cifar10.data import load_cifar10
    from alexnet_cifar10.evaluation import evaluate

    info = pretrained.shipped_info(name)
    data = load_cifar10(SHARED_ARCHIVE, val_size=info["training_data"]["val_images"],
                        seed=info["training_data"]["split_seed"], cache_dir=shared_cache)
    assert len(data.train) == info["training_data"]["train_images"]
    model = load_model(name)
    result = evaluate(model, data.val.images, data.val.labels)
    assert result.accuracy == pytest.approx(info["val_accuracy"]["plain"], abs=2e-4)  # float16 weights, in fp32
    recorded, check = info["check_predictions_float32"], info["check_images"]
    agree = sum(int(c) == int(p) for c, p in zip(recorded, result.predictions[check].tolist(), strict=True))
    assert agree >= 0.99 * len(recorded)


def test_the_shipped_weights_are_listed_with_their_metadata_and_shown_by_models() -> None:
    from alexnet_cifar10 import CLASSES, list_weights

    rows = {w["name"]: w for w in list_weights()}
    assert set(rows) == set(pretrained.shipped()) >= {"seed", "best"}
    for name, row in rows.items():
        model = load_model(name)
        assert type(model).__name__ == "AlexNet" and model.classes == CLASSES == tuple(row["classes"])
        assert model.state_dict().keys() == create_model(row["model"]).state_dict().keys()
        assert 0.1 < row["val_accuracy"]["plain"] <= 1 and row["sha256"] == pretrained.shipped_info(name)["sha256"]
    shown = run_cli("models", "--json")
    assert shown.returncode == 0, shown.stderr
    by_network = {r["name"]: [w["name"] for w in r["weights"]] for r in json.loads(shown.stdout)}
    assert by_network[rows["best"]["model"]] == ["best"] and by_network[rows["seed"]["model"]] == ["seed"]
    assert by_network["alexnet_tiny"] == []
    table = run_cli("models").stdout
    assert f"--weights best: validation {100 * rows['best']['val_accuracy']['tta']:.2f} % with TTA" in table


@pytest.mark.parametrize("classes", [["cat"] * 9, [1] * 10, ["a\nb"] * 10, "airplane", ["x" * 65] * 10])
def test_a_checkpoint_with_bad_class_names_is_refused(classes: object, tmp_path: Path) -> None:
    torch.manual_seed(0)
    state = {"model_name": "alexnet_tiny", "model": create_model("alexnet_tiny").state_dict(), "classes": classes}
    save_checkpoint(tmp_path / "c.pt", state)
    with pytest.raises(CheckpointError, match="classes is not a list of 10 class names"):
        load_model(tmp_path / "c.pt")
