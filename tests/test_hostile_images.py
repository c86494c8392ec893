"""Images a user hands to predict: only regular PNG/JPEG files are read, big ones are refused before decoding."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from conftest import jpeg_of_many_scans, png
from PIL import Image

from alexnet_cifar10.data.images import MAX_IMAGE_SIDE
from alexnet_cifar10.evaluation import PREDICT_BATCH, load_image, predict
from alexnet_cifar10.models import create_model


@pytest.mark.parametrize(("name", "content", "message"), [
    ("page.eps", b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 32 32\nshowpage\n", "not a readable PNG or JPEG"),
    ("bitmap.png", None, "not a readable PNG or JPEG"),  # a BMP under a .png name: Pillow knows it, we do not
    ("wide.png", png((MAX_IMAGE_SIDE + 1, 2)), f"at most {MAX_IMAGE_SIDE} pixels a side"),
])
def test_predict_refuses_what_it_should_not_decode(name: str, content: bytes | None, message: str,
                                                    tmp_path: Path) -> None:
    path = tmp_path / name
    if content is None:
        Image.new("RGB", (32, 32)).save(path, format="BMP")
    else:
        path.write_bytes(content)
    [result] = predict(create_model("alexnet_tiny"), [path])
    assert result.top is None and message in result.error


def test_a_fifo_is_refused_without_blocking(tmp_path: Path) -> None:
    fifo = tmp_path / "pipe.png"
    os.mkfifo(fifo)
    ok = tmp_path / "ok.png"
    ok.write_bytes(png((32, 32)))
    results = predict(create_model("alexnet_tiny"), [fifo, ok])
    assert "not a regular file" in results[0].error and results[1].top is not None


def test_predict_classifies_in_batches_and_keeps_the_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """More files than one batch: every file gets the prediction it gets alone, in the order given."""
    paths = []
    for i in range(PREDICT_BATCH + 3):
        path = tmp_path / f"{i:04d}.png"
        Image.new("RGB", (32, 32), (i % 256, (7 * i) % 256, 0)).save(path)
        paths.append(path)
    torch.manual_seed(0)
    model = create_model("alexnet_tiny").eval()
    batched = predict(model, paths, top_k=1)
    assert [r.path for r in batched] == [str(p) for p in paths]
    for i in (0, PREDICT_BATCH - 1, PREDICT_BATCH, PREDICT_BATCH + 2):
        [alone] = predict(model, [paths[i]], top_k=1)
        assert alone.top[0][0] == batched[i].top[0][0]
        assert alone.top[0][1] == pytest.approx(batched[i].top[0][1], abs=1e-5)
    assert load_image(paths[0])[0].shape == (3, 32, 32)


def test_a_jpeg_of_too_many_scans_is_refused_before_decoding(tmp_path: Path) -> None:
    from conftest import run_cli

    (tmp_path / "scans.jpg").write_bytes(jpeg_of_many_scans(5000))
    (tmp_path / "photo.jpg").write_bytes(jpeg_of_many_scans(10))
    result = run_cli("predict", "--weights", "seed", str(tmp_path / "photo.jpg"), str(tmp_path / "scans.jpg"))
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "photo.jpg: " in result.stdout and "(resized from 640x480 to 32x32)" in result.stdout
    assert result.stderr.strip().splitlines() == [
        f"alexnet-cifar10: error: {tmp_path / 'scans.jpg'}: a 640x480 JPEG of 5000 scans; decoding is limited to 64 "
        "scans and 268,435,456 pixels x scans"]


def test_predict_walks_a_folder_as_data_folders_are_walked(tmp_path: Path) -> None:
    """At most 16 levels down, hidden files and symlinked folders left out."""
    from conftest import make_deep_tree, remove_deep_tree, run_cli

    folder = tmp_path / "images"
    (folder / "a" / "b").mkdir(parents=True)
    (folder / "a" / "b" / "near.png").write_bytes(png((32, 32)))
    (folder / ".hidden.png").write_bytes(png((32, 32)))
    (folder / "loop").symlink_to(folder)
    make_deep_tree(folder, 40)
    deep = folder.joinpath(*["d"] * 40)
    try:
        (deep / "far.png").write_bytes(png((32, 32)))
        result = run_cli("predict", "--weights", "seed", str(folder), "--json")
        assert result.returncode == 0, result.stderr
        assert [Path(r["path"]).name for r in json.loads(result.stdout)] == ["near.png"]
    finally:
        (deep / "far.png").unlink(missing_ok=True)
        remove_deep_tree(folder, 40)


def test_pillows_warnings_do_not_reach_stderr(tmp_path: Path) -> None:
    """A palette PNG with byte transparency makes Pillow warn as it converts it; the image is still read, and
    stderr stays clean."""
    from conftest import run_cli

    image = Image.new("P", (32, 32))
    image.putpalette([i % 256 for i in range(768)])
    image.save(tmp_path / "palette.png", format="PNG", transparency=bytes(range(256)))
    result = run_cli("predict", "--weights", "seed", str(tmp_path / "palette.png"))
    assert result.returncode == 0 and "palette.png: " in result.stdout
    assert result.stderr == "", result.stderr
