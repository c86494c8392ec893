"""Images a user hands to predict: only regular PNG/JPEG files are read, big ones are refused before decoding."""

from __future__ import annotations

import io
import os
from pathlib import Path

import pytest
import torch
from PIL import Image

from alexnet_cifar10.data.images import MAX_IMAGE_SIDE
from alexnet_cifar10.evaluation import PREDICT_BATCH, load_image, predict
from alexnet_cifar10.models import create_model


def png(size: tuple[int, int]) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", size, (200, 10, 10)).save(out, format="PNG")
    return out.getvalue()


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
