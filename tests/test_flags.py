"""Each training flag that the README names changes what it says it changes: tiny runs of the library, one
epoch, compared with a run without the flag."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import run_cli

from alexnet_cifar10 import make_config, train
from alexnet_cifar10.errors import ConfigError

BASE = {"val_size": 20, "batch_size": 8, "epochs": 1, "threads": 1, "progress": False, "model": "alexnet_tiny",
        "precision": "fp32"}


def trained(tiny_png: Path, out: Path, **flags: object):  # noqa: ANN201 - a TrainResult
    return train(make_config(data=str(tiny_png), out=str(out), **{**BASE, **flags}))


def weights(run: Path) -> dict[str, torch.Tensor]:
    return torch.load(run / "last.pt", weights_only=True)["model"]


def same_weights(a: Path, b: Path) -> bool:
    wa, wb = weights(a), weights(b)
    return all(torch.equal(wa[k], wb[k]) for k in wa)


@pytest.fixture(scope="module")
def plain(tiny_png: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The run that every flag is compared with: the base settings, seed 0."""
    return trained(tiny_png, tmp_path_factory.mktemp("plain") / "run").run_dir


def test_seed_repeats_a_run_and_another_seed_changes_it(tiny_png: Path, tmp_path: Path, plain: Path) -> None:
    assert same_weights(plain, trained(tiny_png, tmp_path / "again").run_dir)
    assert not same_weights(plain, trained(tiny_png, tmp_path / "seed1", seed=1).run_dir)


def test_split_seed_draws_another_validation_split(tiny_png: Path, tmp_path: Path, plain: Path) -> None:
    from alexnet_cifar10.data import load_cifar10

    a, b = (load_cifar10(tiny_png, val_size=20, seed=s) for s in (0, 1))
    assert not torch.equal(a.val.images, b.val.images) and a.val.class_counts() == b.val.class_counts()
    other = trained(tiny_png, tmp_path / "split1", split_seed=1).run_dir
    assert json.loads((other / "config.json").read_text())["split_seed"] == 1
    assert not same_weights(plain, other)  # trained on other images


def test_label_smoothing_changes_the_loss(tiny_png: Path, tmp_path: Path, plain: Path) -> None:
    smooth = trained(tiny_png, tmp_path / "smooth", label_smoothing=0.3).run_dir
    loss = [json.loads(line)["train_loss"] for run in (plain, smooth)
            for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert loss[0] != loss[1]  # a run repeats bit for bit (the seed test): the difference is the smoothing's


@pytest.mark.parametrize("schedule", ["onecycle", "cosine", "linear"])
def test_a_schedule_sets_the_learning_rate_of_each_epoch(tiny_png: Path, tmp_path: Path, schedule: str) -> None:
    history = trained(tiny_png, tmp_path / schedule, schedule=schedule, epochs=2, lr=1e-3).history
    rates = [row["lr"] for row in history]
    assert rates[-1] == pytest.approx(0.0, abs=1e-9)  # each decays to zero by the last step
    constant = trained(tiny_png, tmp_path / "constant", epochs=2, lr=1e-3).history
    assert [row["lr"] for row in constant] == [1e-3, 1e-3]


def test_optimizer_adamw_decouples_the_weight_decay(tiny_png: Path, tmp_path: Path, plain: Path) -> None:
    run = trained(tiny_png, tmp_path / "adamw", optimizer="adamw", weight_decay=0.05).run_dir
    groups = torch.load(run / "last.pt", weights_only=True)["optimizer"]["param_groups"]
    assert all(g["decoupled_weight_decay"] for g in groups) and {g["weight_decay"] for g in groups} >= {0.05}
    adam = torch.load(plain / "last.pt", weights_only=True)["optimizer"]["param_groups"]
    assert not any(g.get("decoupled_weight_decay") for g in adam)


def test_no_channels_last_keeps_the_default_memory_format(tiny_png: Path, tmp_path: Path) -> None:
    conv = {}
    for flag in (True, False):
        model = trained(tiny_png, tmp_path / str(flag), channels_last=flag).model
        weight = next(m.weight for m in model.modules() if isinstance(m, torch.nn.Conv2d) and m.kernel_size > (1, 1))
        conv[flag] = weight.is_contiguous(memory_format=torch.channels_last) and not weight.is_contiguous()
    assert conv == {True: True, False: False}


def test_name_and_the_default_run_folder(tiny_png: Path, tmp_path: Path) -> None:
    """Without --out a run goes to runs/NAME under the working folder; without --name, NAME is
    RECIPE-MODEL-TIMESTAMP."""
    for extra in (("--name", "mine"), ()):
        result = run_cli("train", "--data", str(tiny_png), "--epochs", "1", "--val-size", "20", "--batch-size", "8",
                         "--model", "alexnet_tiny", "--threads", "1", "--no-progress", *extra, cwd=tmp_path)
        assert result.returncode == 0, result.stderr
    names = sorted(p.name for p in (tmp_path / "runs").iterdir())
    assert len(names) == 2 and "mine" in names, names
    assert re.fullmatch(r"seed-alexnet_tiny-\d{8}-\d{6}", next(n for n in names if n != "mine")), names
    assert (tmp_path / "runs" / "mine" / "best.pt").is_file()


def test_tensorboard_writes_event_files_or_names_what_it_needs(tiny_png: Path, tmp_path: Path) -> None:
    try:
        import tensorboard  # noqa: F401
    except ImportError:
        with pytest.raises(ConfigError, match=re.escape("--tensorboard needs the tensorboard package: pip install")):
            trained(tiny_png, tmp_path / "tb", tensorboard=True)
        return
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run = trained(tiny_png, tmp_path / "tb", tensorboard=True, epochs=2).run_dir
    events = EventAccumulator(str(run / "tensorboard"))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    assert {"loss/train", "loss/val", "acc/train", "acc/val", "lr"} <= tags, tags  # grouped: train beside val
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [e.step for e in events.Scalars("acc/val")] == [1, 2]
    assert [e.value for e in events.Scalars("acc/val")] == pytest.approx([r["val_acc"] for r in rows])


def test_version_and_data_info_json(tiny_png: Path) -> None:
    from alexnet_cifar10 import __version__

    version = subprocess.run([sys.executable, "-m", "alexnet_cifar10", "--version"], capture_output=True, text=True,
                             timeout=120)
    assert version.returncode == 0 and version.stdout.strip() == f"alexnet-cifar10 {__version__}"
    info = run_cli("data", "info", "--data", str(tiny_png), "--val-size", "20", "--json")
    assert info.returncode == 0, info.stderr
    found = json.loads(info.stdout)
    assert found["format"] == "imagefolder" and found["from_cache"] is False
    assert {name: split["images"] for name, split in found["splits"].items()} == {"train": 40, "val": 20, "test": 20}
    assert set(found["splits"]["val"]["per_class"].values()) == {2}


def test_compile_trains_through_torch_compile_and_saves_plain_weights(tiny_png: Path, tmp_path: Path, plain: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """--compile hands the model to torch.compile (its graph captured for real; the "eager" backend spares the test
    a C++ build) and the checkpoint keeps the network's own parameter names, so evaluate and resume load it."""
    real, compiled = torch.compile, []

    def recording(model: torch.nn.Module, **kwargs: object) -> torch.nn.Module:
        compiled.append(real(model, backend="eager"))
        return compiled[-1]

    monkeypatch.setattr(torch, "compile", recording)
    run = trained(tiny_png, tmp_path / "compiled", compile=True).run_dir
    assert len(compiled) == 1 and isinstance(compiled[0], torch._dynamo.eval_frame.OptimizedModule)
    assert weights(run).keys() == weights(plain).keys()  # no "_orig_mod." prefixes
    assert json.loads((run / "config.json").read_text())["compile"] is True
    from alexnet_cifar10 import load_model

    load_model(run / "last.pt")  # strict: every key of the network, no other


def test_device_auto_picks_cuda_then_mps_then_the_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    from alexnet_cifar10 import device

    assert device.select_device("auto").type == "cpu"
    monkeypatch.setattr(device, "mps_available", lambda: True)
    assert device.select_device("auto").type == "mps"
    assert device.precision_choice("auto", torch.device("mps"))[0] == "fp32"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert device.select_device("auto").type == "cuda"


@pytest.mark.parametrize("name", ["cuda", "mps"])
def test_a_device_that_is_absent_is_one_line(tiny_png: Path, tmp_path: Path, name: str) -> None:
    if name == "mps" and torch.backends.mps.is_available():
        pytest.skip("this machine has MPS")
    result = run_cli("train", "--data", str(tiny_png), "--out", str(tmp_path / "run"), "--device", name,
                     env={"CUDA_VISIBLE_DEVICES": ""})
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        f"alexnet-cifar10: error: --device {name}: no "
        + ("CUDA GPU is visible to PyTorch" if name == "cuda" else "Apple-silicon GPU (MPS) is available to PyTorch")
        + "; use --device cpu"], result.stderr
    assert not (tmp_path / "run").exists()


@pytest.mark.gpu
def test_training_on_apple_silicon(tiny_png: Path, tmp_path: Path) -> None:
    """Where MPS exists (a Mac): a short run trains there and its checkpoint evaluates on the CPU."""
    if not torch.backends.mps.is_available():
        pytest.skip("no MPS device")
    result = run_cli("train", "--data", str(tiny_png), "--epochs", "1", "--out", str(tmp_path / "run"),
                     "--val-size", "20", "--batch-size", "8", "--model", "alexnet_tiny", "--device", "mps")
    assert result.returncode == 0, result.stderr
    assert json.loads((tmp_path / "run" / "config.json").read_text())["device_name"] == "Apple-silicon GPU (MPS)"
    evaluated = run_cli("evaluate", str(tmp_path / "run" / "best.pt"), "--data", str(tiny_png), "--val-size", "20",
                        "--device", "cpu")
    assert evaluated.returncode == 0, evaluated.stderr
