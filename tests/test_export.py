"""Export: ONNX checked with onnxruntime on 1,000 real images, safetensors, torch.export, TorchScript, torch.hub."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import pytest
import torch
from conftest import REPO, SHARED_ARCHIVE, http_server, run_cli

from alexnet_cifar10 import CLASSES, load_model
from alexnet_cifar10.errors import CheckpointError, DownloadError


@pytest.fixture(scope="module")
def checkpoint(tiny_png: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    run = tmp_path_factory.mktemp("export") / "run"
    result = run_cli("train", "--data", str(tiny_png), "--epochs", "1", "--out", str(run), "--val-size", "20",
                     "--batch-size", "8", "--model", "alexnet_tiny", "--no-progress", "--threads", "1")
    assert result.returncode == 0, result.stderr
    return run / "best.pt"


def test_onnx_matches_pytorch_on_1000_real_images(checkpoint: Path, tmp_path: Path, shared_cache: Path) -> None:
    out = tmp_path / "model.onnx"
    result = run_cli("export", str(checkpoint), "--format", "onnx", "--out", str(out), "--check-data",
                     str(SHARED_ARCHIVE), "--check-images", "1000", env={"ALEXNET_CIFAR10_CACHE": str(shared_cache)})
    assert result.returncode == 0, result.stderr
    found = re.search(r"on (\d+) images: max \|logit diff\| (\S+), top-1 agreement (\S+)%", result.stdout)
    assert found, result.stdout
    assert int(found.group(1)) == 1000 and float(found.group(2)) < 1e-3 and float(found.group(3)) == 100.0
    import onnx

    props = {p.key: p.value for p in onnx.load(str(out)).metadata_props}  # what an ONNX user reads the labels from
    assert json.loads(props["classes"]) == list(CLASSES) and props["model_name"] == "alexnet_tiny"
    assert "[0, 1]" in props["input"] and props["producer"] == "alexnet-cifar10"


def test_safetensors_pt2_and_torchscript_give_the_same_outputs(checkpoint: Path, tmp_path: Path) -> None:
    x = torch.rand(5, 3, 32, 32)
    ref = load_model(checkpoint)(x)
    st = tmp_path / "w.safetensors"
    assert run_cli("export", str(checkpoint), "--format", "safetensors", "--out", str(st)).returncode == 0
    assert torch.equal(load_model(st)(x), ref)
    from safetensors import safe_open

    with safe_open(str(st), "pt") as f:
        assert json.loads(f.metadata()["classes"]) == list(CLASSES) == list(load_model(st).classes)
    pt2 = tmp_path / "m.pt2"
    assert run_cli("export", str(checkpoint), "--format", "pt2", "--out", str(pt2)).returncode == 0
    program = torch.export.load(str(pt2)).module()
    torch.testing.assert_close(program(x), ref)  # 5 images, exported with 2: the batch size is free
    torch.testing.assert_close(program(x[:1]), ref[:1])
    ts = tmp_path / "m.pt"
    assert run_cli("export", str(checkpoint), "--format", "torchscript", "--out", str(ts)).returncode == 0
    torch.testing.assert_close(torch.jit.load(str(ts))(x), ref)
    assert (checkpoint.parent / "model.safetensors").is_file()  # training writes it too
    torch.testing.assert_close(load_model(checkpoint.parent / "model.safetensors")(x), load_model(
        checkpoint.parent / "last.pt")(x))


def test_hostile_safetensors_is_refused(tmp_path: Path) -> None:
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\xff" * 64)
    with pytest.raises(CheckpointError, match="not a readable safetensors"):
        load_model(bad)


def test_torch_hub_local_loads_through_the_safe_loader(checkpoint: Path) -> None:
    x = torch.rand(3, 3, 32, 32)
    model = torch.hub.load(str(REPO), "alexnet_cifar10", source="local", weights=str(checkpoint))
    assert torch.equal(model(x), load_model(checkpoint)(x))
    fresh = torch.hub.load(str(REPO), "alexnet_cifar10", source="local", variant="alexnet_tiny")
    assert fresh(x).shape == (3, 10)


def hub(**kwargs: object) -> torch.nn.Module:
    return torch.hub.load(str(REPO), "alexnet_cifar10", source="local", progress=False, **kwargs)


@pytest.fixture
def hub_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    for name in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    old = torch.hub.get_dir()
    torch.hub.set_dir(str(tmp_path / "hub"))
    yield tmp_path / "hub" / "alexnet_cifar10"
    torch.hub.set_dir(old)


def test_torch_hub_from_a_url_downloads_once_resumes_and_checks_the_hash(checkpoint: Path, hub_dir: Path) -> None:
    """weights=URL as the data archive is fetched: a cut download leaves a .part that the next call resumes with
    a Range request; the file is fetched once; a sha256 prefix in the name (torch.hub's convention) is checked."""
    x = torch.rand(3, 3, 32, 32)
    reference = load_model(checkpoint)(x)
    payload = checkpoint.read_bytes()
    prefix = hashlib.sha256(payload).hexdigest()[:10]
    with http_server(payload) as server:
        url = server.url(f"/tiny-{prefix}.pt")
        server.state.mode = "cut"
        with pytest.raises(DownloadError, match="ended early|broke off"):
            hub(weights=url)
        (part,) = hub_dir.glob("*.part")
        have = part.stat().st_size
        assert 0 < have < len(payload)
        server.state.mode = "ok"
        assert torch.equal(hub(weights=url)(x), reference)
        assert server.state.ranges == [None, f"bytes={have}-"]
        assert torch.equal(hub(weights=url)(x), reference)  # from the folder: no third request
        assert len(server.state.ranges) == 2 and not list(hub_dir.glob("*.part"))

        wrong = server.url("/tiny-deadbeef00.pt")
        with pytest.raises(DownloadError, match="sha256 [0-9a-f]{10} does not match the expected deadbeef00"):
            hub(weights=wrong)
        assert list(hub_dir.glob("*-tiny-deadbeef00.pt.bad")) and not list(hub_dir.glob("*-tiny-deadbeef00.pt"))
        assert torch.equal(hub(weights=wrong, check_hash=False)(x), reference)


def test_torch_hub_refuses_a_download_beyond_the_checkpoint_limit(hub_dir: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    from alexnet_cifar10 import checkpoint as module

    monkeypatch.setattr(module, "MAX_CHECKPOINT_BYTES", 1 << 20)
    with http_server(bytes(2 << 20)) as server:
        for mode, needle in (("ok", "announces 2 MiB, more than the 1 MiB limit"),
                             ("endless", "sends more than 1 MiB")):
            server.state.mode = mode
            with pytest.raises(DownloadError, match=needle):
                hub(weights=server.url("/big.pt"))
    assert not [p for p in hub_dir.iterdir() if p.name != ".lock"]


def test_torch_hub_pretrained_means_the_best_weights() -> None:
    x = torch.rand(2, 3, 32, 32)
    assert torch.equal(hub(pretrained=True)(x), load_model("best")(x))
    with pytest.raises(ValueError, match="weights carry their own network"):
        hub(weights="best", variant="alexnet_tiny")
    with pytest.raises(ValueError, match="pretrained=True means weights='best'"):
        hub(pretrained=True, weights="seed")


def test_evaluate_keeps_the_runs_test_time_augmentation_from_pt_and_safetensors(
        tiny_png: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    trained = run_cli("train", "--data", str(tiny_png), "--epochs", "1", "--out", str(run), "--val-size", "20",
                      "--batch-size", "8", "--model", "alexnet_tiny", "--no-progress", "--threads", "1",
                      "--tta", "--tta-shift", "1", "--precision", "fp32")  # as `evaluate`, which it is compared with
    assert trained.returncode == 0, trained.stderr
    final = json.loads((run / "final.json").read_text())
    assert (final["tta"], final["tta_shift"]) == (True, 1)
    assert "Test-time augmentation: flips + 1-pixel moves" in (run / "report.html").read_text()
    for weights in ("last.pt", "model.safetensors"):
        result = run_cli("evaluate", str(run / weights), "--data", str(tiny_png), "--val-size", "20", "--json")
        assert result.returncode == 0, result.stderr
        report = json.loads(result.stdout)
        assert (report["tta"], report["tta_shift"]) == (True, 1), weights
        assert report["accuracy"] == pytest.approx(final["accuracy"]) and report["loss"] == pytest.approx(
            final["loss"], rel=1e-5), weights
    plain = run_cli("evaluate", str(run / "model.safetensors"), "--data", str(tiny_png), "--val-size", "20",
                    "--no-tta")
    assert plain.returncode == 0, plain.stderr
    assert "test-time augmentation: none" in plain.stdout
    moves = run_cli("evaluate", str(run / "last.pt"), "--data", str(tiny_png), "--val-size", "20", "--json",
                    "--no-tta", "--tta-shift", "1")
    assert moves.returncode == 0, moves.stderr
    assert (json.loads(moves.stdout)["tta"], json.loads(moves.stdout)["tta_shift"]) == (False, 1)
    # predict reads the run's test-time augmentation from the checkpoint too: the same scores as when it is given
    image = next((tiny_png / "test").rglob("*.png"))
    scores = {}
    for name, flags in (("default", ()), ("given", ("--tta", "--tta-shift", "1")), ("plain", ("--no-tta",))):
        result = run_cli("predict", str(run / "last.pt"), str(image), "--json", "--top-k", "10", *flags)
        assert result.returncode == 0, result.stderr
        scores[name] = json.loads(result.stdout)
    assert scores["default"] == scores["given"] != scores["plain"]


def test_safetensors_with_bad_config_metadata_is_refused(checkpoint: Path, tmp_path: Path) -> None:
    from safetensors.torch import save_file

    state = torch.load(checkpoint, weights_only=True)
    for config, message in (("{not json", "unreadable config metadata"), ("[1, 2]", "config metadata is not a")):
        bad = tmp_path / "bad.safetensors"
        tensors = {k: v.contiguous() for k, v in state["model"].items()}
        save_file(tensors, str(bad), metadata={"model_name": state["model_name"], "config": config})
        with pytest.raises(CheckpointError, match=message):
            load_model(bad)
        result = run_cli("evaluate", str(bad), "--data", str(tmp_path))
        assert result.returncode != 0 and message in result.stderr and "Traceback" not in result.stderr
