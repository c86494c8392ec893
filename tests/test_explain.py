"""Grad-CAM (`explain`, the report's panel): the map lies where the evidence is, and the command's files and
errors are what it says."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import png, run_cli
from PIL import Image

from alexnet_cifar10 import load_model
from alexnet_cifar10.evaluation import load_image, predict
from alexnet_cifar10.explain import GradCam
from alexnet_cifar10.models import create_model
from alexnet_cifar10.reporting import overlay

CORNERS = ((0, 0), (0, 20), (20, 0), (20, 20))  # top-left corner (row, column) of class c's square


def corner_squares(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Images of dim noise with one bright 12x12 square; its corner is the class (0-3)."""
    g = torch.Generator().manual_seed(seed)
    images = torch.rand(n, 3, 32, 32, generator=g) * 0.3
    labels = torch.randint(0, len(CORNERS), (n,), generator=g)
    for i, label in enumerate(labels.tolist()):
        r, c = CORNERS[label]
        images[i, :, r:r + 12, c:c + 12] = 0.7 + 0.3 * torch.rand(3, 1, 1, generator=g)
    return images, labels


@pytest.fixture(scope="module")
def corner_model() -> torch.nn.Module:
    torch.manual_seed(0)
    model = create_model("alexnet_tiny")  # ten outputs; the corners use four
    optimizer = torch.optim.Adam(model.parameters(), lr=2e-3)
    images, labels = corner_squares(2048, seed=1)
    model.train()
    for _ in range(3):
        for x, y in zip(images.split(64), labels.split(64), strict=True):
            optimizer.zero_grad()
            F.cross_entropy(model(x), y).backward()
            optimizer.step()
    return model.eval()


@pytest.mark.parametrize("layer", [None, "features.3"])
def test_the_heatmap_lies_on_the_square_that_decides_the_class(corner_model: torch.nn.Module,
                                                                 layer: str | None) -> None:
    images, labels = corner_squares(64, seed=2)
    with torch.no_grad():
        assert (corner_model(images).argmax(1) == labels).float().mean() > 0.95  # it learned the corners
    maps = GradCam(corner_model, layer).maps(images, labels)
    assert maps.shape == (64, 32, 32) and maps.min() >= 0 and maps.amax(dim=(1, 2)).max() <= 1
    inside = []
    for heatmap, label in zip(maps, labels.tolist(), strict=True):
        r, c = CORNERS[label]
        quadrant = heatmap[max(r - 4, 0):r + 16, max(c - 4, 0):c + 16]  # the square and a margin: a quarter
        inside.append(float(quadrant.sum() / heatmap.sum().clamp_min(1e-12)))
    assert torch.tensor(inside).median() > 0.6, inside  # a map that ignored the image would put ~0.25 there


def test_maps_of_other_classes_differ_and_the_model_is_left_as_it_was(corner_model: torch.nn.Module) -> None:
    images, labels = corner_squares(8, seed=3)
    before = {k: v.clone() for k, v in corner_model.state_dict().items()}
    cam = GradCam(corner_model)
    assert cam.layer == "features.10"  # the last convolution of alexnet_tiny
    own, other = cam.maps(images, labels), cam.maps(images, (labels + 1) % len(CORNERS))
    assert not torch.allclose(own, other)
    assert all(torch.equal(before[k], v) for k, v in corner_model.state_dict().items())
    assert any(isinstance(m, torch.nn.ReLU) and m.inplace for m in corner_model.modules())  # its own ReLUs kept


def test_explain_writes_a_png_per_class_a_sheet_and_json_that_agree_with_predict(tmp_path: Path) -> None:
    images = tmp_path / "images"
    images.mkdir()
    colours = [(200, 30, 30), (30, 200, 30), (30, 30, 200)]
    for i, colour in enumerate(colours):
        (images / f"img{i}.png").write_bytes(png((48, 40), colour))
    (images / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    out = tmp_path / "out"
    result = run_cli("explain", "--weights", "seed", str(images), "--out", str(out), "--top-k", "2")
    assert result.returncode == 1, result.stderr  # the broken file fails; the others are explained
    assert result.stderr.strip().splitlines() == [
        f"alexnet-cifar10: error: {images / 'broken.png'}: not a readable PNG or JPEG image"]
    record = json.loads((out / "explain.json").read_text())
    assert record["layer"] == "features.15"  # the last convolution of seed's network
    expected = predict(load_model("seed"), sorted(images.glob("img*.png")), top_k=2)  # seed trains without TTA
    assert [Path(r["path"]).name for r in record["images"]] == ["img0.png", "img1.png", "img2.png"]
    for got, want in zip(record["images"], expected, strict=True):
        assert [label for label, _ in got["top"]] == [label for label, _ in want.top]
        assert [p for _, p in got["top"]] == pytest.approx([p for _, p in want.top], abs=1e-5)
        assert got["resized_from"] == [48, 40] and len(got["gradcam"]) == 2
        for name in got["gradcam"]:
            with Image.open(out / name) as image:
                assert image.size == (256, 256) and image.mode == "RGB"
    # each PNG is its class's map: the one GradCam computes here for that class, over that image
    model = load_model("seed")
    cam = GradCam(model)
    for record_of_image in record["images"]:
        x = load_image(Path(record_of_image["path"]))[0]
        for (label, _), name in zip(record_of_image["top"], record_of_image["gradcam"], strict=True):
            heatmap = cam.maps(x[None], torch.tensor([model.classes.index(label)]))[0]
            with Image.open(out / name) as image:
                written = np.asarray(image).astype(int)
            assert np.abs(written - overlay(x, heatmap).astype(int)).mean() < 1, name
    with Image.open(out / "sheet.png") as sheet:
        assert sheet.size[0] > 300 and sheet.size[1] > 3 * 100
    assert sorted(p.name for p in out.iterdir()) == sorted(
        ["explain.json", "sheet.png", *(n for r in record["images"] for n in r["gradcam"])])
    assert len(result.stdout.strip().splitlines()) == 3


def test_explain_refuses_a_folder_with_files_a_bad_layer_and_no_images(tmp_path: Path) -> None:
    image = tmp_path / "a.png"
    image.write_bytes(png((32, 32)))
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    cases = [
        (["--out", str(mine)], f"--out {mine} is not empty; give a new or empty folder"),
        (["--out", str(tmp_path / "o1"), "--layer", "features.99"],
         "--layer features.99: no such layer; the convolutions are features.0, features.4, features.8, features.11, "
         "features.15"),  # seed's network
        (["--out", str(tmp_path / "o2"), "--layer", "classifier.1"],
         "--layer classifier.1: Grad-CAM needs a layer with a spatial map"),
        (["--out", str(tmp_path / "o3"), "--top-k", "0"], "--top-k"),
    ]
    for flags, message in cases:
        result = run_cli("explain", "--weights", "seed", str(image), *flags)
        assert result.returncode != 0 and "Traceback" not in result.stderr
        assert len(result.stderr.strip().splitlines()) == 1 and message in result.stderr, (flags, result.stderr)
    assert (mine / "notes.txt").read_text() == "keep me" and len(list(mine.iterdir())) == 1
    empty = tmp_path / "empty"
    empty.mkdir()
    result = run_cli("explain", "--weights", "seed", str(empty), "--out", str(tmp_path / "o4"))
    assert result.returncode == 1
    assert result.stderr.strip() == f"alexnet-cifar10: error: no image files found in {empty}"


@pytest.mark.parametrize(("hidden_module", "command", "extra"), [
    ("captum", ["explain", "--out", "OUT"], "explain"),
    ("fastapi", ["serve", "--port", "0"], "serve"),
])
def test_without_the_extra_a_command_says_what_to_install(tmp_path: Path, hidden_module: str, command: list[str],
                                                          extra: str) -> None:
    hidden = tmp_path / "hidden"
    hidden.mkdir()
    (hidden / f"{hidden_module}.py").write_text(f"raise ImportError('{hidden_module} is not installed here')\n")
    (tmp_path / "a.png").write_bytes(png((32, 32)))
    args = [str(tmp_path / "out") if a == "OUT" else a for a in command]
    if command[0] == "explain":
        args.insert(1, str(tmp_path / "a.png"))
    result = run_cli(*args, "--weights", "seed", "--device", "cpu", timeout=120,
                     env={"PYTHONPATH": os.pathsep.join([str(hidden), os.environ.get("PYTHONPATH", "")])})
    assert result.returncode == 1
    assert result.stderr.strip() == (f"alexnet-cifar10: error: this needs the {hidden_module} package: pip install "
                                     f"'alexnet-cifar10[{extra}]'")


def test_the_report_panel_shows_right_then_wrong_images(corner_model: torch.nn.Module,
                                                                               tmp_path: Path) -> None:
    from alexnet_cifar10 import reporting

    images, labels = corner_squares(40, seed=4)
    preds = labels.clone()
    preds[:3] = (labels[:3] + 1) % len(CORNERS)  # three mistakes: the panel shows all three, then right ones
    uint8 = (images * 255).round().to(torch.uint8)
    classes = ("top-left", "top-right", "bottom-left", "bottom-right", *(f"c{i}" for i in range(4, 10)))
    fig = reporting.gradcam_panel(corner_model, uint8, labels, preds, classes)
    top, bottom = fig.axes[:7], fig.axes[7:]  # four right and all three wrong: images above, maps below
    assert len(fig.axes) == 14 and all(ax.get_title().startswith("true: ") for ax in top)
    assert [ax.title.get_color() for ax in bottom] == ["black"] * 4 + ["red"] * 3
    assert all(ax.get_title() in classes for ax in bottom)
    assert reporting.plot_gradcam_panel(corner_model, uint8, labels, preds, classes, tmp_path / "g.png").is_file()
