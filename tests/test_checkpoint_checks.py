"""Checkpoints and safetensors files a user hands over: each crafted one ends in one CheckpointError line,
before any memory is set aside for the model it asks for."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from conftest import HOSTILE_CHECKPOINTS, tiny_state, write_checkpoint

from alexnet_cifar10.checkpoint import load_checkpoint, load_model, save_checkpoint, save_safetensors, trained_state
from alexnet_cifar10.errors import CheckpointError, ConfigError
from alexnet_cifar10.models import (
    DEPRECATED_NAMES,
    MAX_PARAMETERS,
    MODELS,
    count_parameters,
    create_model,
    model_settings,
)


def _refused(path: Path, needle: str) -> str:
    with pytest.raises(CheckpointError) as info:
        load_model(path)
    message = str(info.value)
    assert "\n" not in message and len(message) <= 300, message
    assert needle in message, message
    return message


@pytest.mark.parametrize("kind", sorted(HOSTILE_CHECKPOINTS))
def test_hostile_checkpoints_are_refused_in_one_line(kind: str, tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    path = write_checkpoint(tmp_path / f"{kind}.pt", kind, marker)
    message = _refused(path, HOSTILE_CHECKPOINTS[kind][1])
    assert str(path) in message
    assert not marker.exists()


def test_a_sound_checkpoint_still_loads_with_its_ema_weights(tmp_path: Path) -> None:
    state = tiny_state(model_kwargs={"dropout": 0.25})
    ema = {k: v + 1 if v.is_floating_point() else v for k, v in state["model"].items()}
    save_checkpoint(tmp_path / "ok.pt", {**state, "ema_model": ema})
    model = load_model(tmp_path / "ok.pt")
    assert torch.equal(model.state_dict()["classifier.6.bias"], ema["classifier.6.bias"])
    assert model.classifier[0].p == 0.25


def test_a_checkpoint_that_is_not_a_regular_file(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "pipe.pt")
    with pytest.raises(CheckpointError, match="not a checkpoint file"):
        load_checkpoint(tmp_path / "pipe.pt")  # refused without blocking on the FIFO
    (tmp_path / "folder.pt").mkdir()
    with pytest.raises(CheckpointError, match="not a checkpoint file"):
        load_checkpoint(tmp_path / "folder.pt")
    with pytest.raises(CheckpointError, match="no such checkpoint file"):
        load_checkpoint(tmp_path / "missing.pt")


def _safetensors(path: Path, **metadata: str) -> Path:
    st = pytest.importorskip("safetensors.torch")
    state = tiny_state()
    meta = {"model_name": "alexnet_tiny", "model_kwargs": "{}", "format": "alexnet-cifar10", **metadata}
    path.write_bytes(st.save({k: v.contiguous() for k, v in state["model"].items()}, metadata=meta))
    return path


@pytest.mark.parametrize(("metadata", "needle"), [
    ({"model_kwargs": "[" * 100_000 + "]" * 100_000}, "unreadable model_kwargs metadata"),
    ({"model_kwargs": json.dumps({"num_classes": 10**9})}, "num_classes=1000000000"),
    ({"model_kwargs": json.dumps({"hidden": 65})}, "the model needs (65, 128)"),
    ({"config": json.dumps({"tta": "yes"})}, "config tta is not true or false"),
    ({"model_name": "nope"}, "unknown model 'nope'"),
])
def test_hostile_safetensors_metadata(tmp_path: Path, metadata: dict[str, str], needle: str) -> None:
    _refused(_safetensors(tmp_path / "m.safetensors", **metadata), needle)


@pytest.mark.parametrize("content", [b"", b"\x08\x00\x00\x00\x00\x00\x00\x00{}", b"\xff" * 8 + b"{}",
                                     (1 << 40).to_bytes(8, "little") + b"{}"])
def test_garbage_safetensors(tmp_path: Path, content: bytes) -> None:
    pytest.importorskip("safetensors")
    path = tmp_path / "g.safetensors"
    path.write_bytes(content)
    _refused(path, "not a readable safetensors file")


def test_settings_that_cannot_be_written_as_json(tmp_path: Path) -> None:
    deep: list = []
    for _ in range(100_000):
        deep = [deep]
    with pytest.raises(CheckpointError, match="cannot be written as JSON"):
        save_safetensors(tiny_state(config={"deep": deep}), tmp_path / "out.safetensors")
    assert not (tmp_path / "out.safetensors").exists()


@pytest.mark.parametrize("name", sorted([*MODELS, *DEPRECATED_NAMES]))
def test_every_model_passes_its_own_checks(name: str) -> None:
    settings = model_settings(name, {"dropout": 0.25})
    assert settings["dropout"] == 0.25
    assert count_parameters(create_model(name)) <= MAX_PARAMETERS


@pytest.mark.parametrize(("overrides", "needle"), [
    ({"pool_padding": 2}, "more than half the pool kernel"),
    ({"pool_after": [5]}, "beyond the 5 there are"),
    ({"convs": [[64, 3, 4]] * 5}, "shrinks the image to nothing"),
    ({"std": [1, 0, 1]}, "three positive finite numbers"),
    ({"batch_norm": 1}, "true or false"),
])
def test_model_settings_out_of_range(overrides: dict, needle: str) -> None:
    with pytest.raises(ConfigError, match=needle.replace("(", r"\(").replace(")", r"\)")):
        model_settings("alexnet", overrides)


def test_trained_state_checks_the_weights_it_returns(tmp_path: Path) -> None:
    state = tiny_state()
    save_checkpoint(tmp_path / "ok.pt", state)
    assert trained_state(tmp_path / "ok.pt")["model_name"] == "alexnet_tiny"
