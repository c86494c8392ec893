"""Shipped weights: a name resolves to the package's file, its sha256 is checked, and a wrong name is one line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import run_cli

from alexnet_cifar10 import pretrained
from alexnet_cifar10.checkpoint import load_model, save_safetensors
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


def parity(info: dict, model: torch.nn.Module, data) -> tuple[float, float]:  # noqa: ANN001 - a Cifar10
    """Accuracy of ``model`` and of the float32 weights (their recorded predictions) on the first validation images."""
    from alexnet_cifar10.evaluation import evaluate

    recorded = torch.tensor([int(c) for c in info["check_predictions_float32"]])
    val = data.split("val")
    labels = val.labels[: len(recorded)]
    now = evaluate(model, val.images[: len(recorded)], labels).accuracy
    return now, float((recorded == labels).float().mean())


def test_a_run_ships_as_float16_weights_with_what_the_json_promises(tmp_path: Path, tiny_png: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    from alexnet_cifar10.data import load_cifar10
    from alexnet_cifar10.ship import ship

    run = tmp_path / "run"
    result = run_cli("train", "--data", str(tiny_png), "--epochs", "1", "--out", str(run), "--val-size", "20",
                     "--batch-size", "16", "--no-progress", "--threads", "1", "--model", "alexnet_tiny")
    assert result.returncode == 0, result.stderr
    data = load_cifar10(tiny_png, val_size=20, seed=0)
    info = ship(run, "tiny", data, out_dir=tmp_path / "weights")
    monkeypatch.setattr(pretrained, "WEIGHTS_DIR", tmp_path / "weights")
    assert pretrained.shipped() == ["tiny"] and pretrained.shipped_info("tiny") == info
    assert info["model"] == "alexnet_tiny" and info["training_data"]["train_images"] == len(data.train)
    assert abs(info["val_accuracy"]["plain"] - info["val_accuracy_float32"]["plain"]) <= 0.0005 + 1 / 20
    now, full = parity(info, load_model("tiny"), data)
    assert now == pytest.approx(info["val_accuracy"]["plain"]) and full == pytest.approx(
        info["val_accuracy_float32"]["plain"])


@pytest.mark.parametrize("name", ["best", "seed"])
def test_the_shipped_weights_reproduce_their_recorded_validation_results(name: str) -> None:
    """The package's weights, loaded by name, give the validation accuracy and the predictions their JSON
    records, on the validation split of the shared training archive."""
    import os

    from conftest import SHARED_ARCHIVE

    from alexnet_cifar10.data import load_cifar10
    from alexnet_cifar10.evaluation import evaluate

    if not SHARED_ARCHIVE.is_file():
        if os.environ.get("CI") == "true":
            pytest.fail(f"{SHARED_ARCHIVE} is missing, and CI=true: the shipped-weights check must run")
        pytest.skip(f"{SHARED_ARCHIVE} is not on this machine")
    info = pretrained.shipped_info(name)
    data = load_cifar10(SHARED_ARCHIVE, val_size=info["training_data"]["val_images"],
                        seed=info["training_data"]["split_seed"])
    assert len(data.train) == info["training_data"]["train_images"]
    model = load_model(name)
    result = evaluate(model, data.val.images, data.val.labels)
    assert result.accuracy == pytest.approx(info["val_accuracy"]["plain"], abs=2e-4)  # float16 weights, in fp32
    recorded = info["check_predictions_float32"]
    agree = sum(int(c) == int(p) for c, p in zip(recorded, result.predictions[: len(recorded)], strict=True))
    assert agree >= 0.99 * len(recorded)
