"""Figures (matplotlib) and a self-contained report.html for a run folder."""

from __future__ import annotations

import base64
import html
import json
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np
import torch
from matplotlib.figure import Figure

from alexnet_cifar10.evaluation import EvalResult
from alexnet_cifar10.io import atomic_write


# Figures are made with matplotlib's object API, not pyplot: no global backend is chosen or changed, so a notebook
# that imports the package keeps its inline figures, and a figure is freed with its last reference.
def _subplots(*grid: int, figsize: tuple[float, float], layout: str | None = None, **kwargs: Any) -> tuple[Figure, Any]:
    fig = Figure(figsize=figsize, layout=layout)
    return fig, fig.subplots(*grid, **kwargs)


def _save(fig: Figure, path: Path) -> Path:
    atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=110, bbox_inches="tight"))
    return path


def plot_curves(history: list[dict[str, Any]], path: Path) -> Path:
    """Loss and accuracy per epoch, train and validation."""
    epochs = [h["epoch"] for h in history]
    fig, (ax_loss, ax_acc) = _subplots(1, 2, figsize=(10, 3.8))
    for key, label in (("train_loss", "train"), ("val_loss", "val")):
        values = [h.get(key) for h in history]
        if any(v is not None for v in values):
            ax_loss.plot(epochs, values, marker="o", ms=3, label=label)
    for key, label in (("train_acc", "train"), ("val_acc", "val")):
        values = [None if h.get(key) is None else 100 * h[key] for h in history]
        if any(v is not None for v in values):
            ax_acc.plot(epochs, values, marker="o", ms=3, label=label)
    ax_loss.set(xlabel="epoch", ylabel="cross-entropy", title="loss")
    ax_acc.set(xlabel="epoch", ylabel="accuracy (%)", title="accuracy")
    for ax in (ax_loss, ax_acc):
        ax.grid(alpha=0.3)
        ax.legend()
    return _save(fig, path)


def plot_confusion(result: EvalResult, path: Path) -> Path:
    cm = result.confusion
    fig, ax = _subplots(figsize=(6.5, 5.5))
    ax.imshow(cm, cmap="Blues")
    ax.set_xticks(range(len(result.classes)), result.classes, rotation=45, ha="right")
    ax.set_yticks(range(len(result.classes)), result.classes)
    ax.set(xlabel="predicted", ylabel="true",
           title=f"{result.split}: {100 * result.accuracy:.2f}% of {int(cm.sum())} images")
    threshold = cm.max() / 2 if cm.size else 0
    for i in range(cm.shape[0]):
        for j in range(cm.shape[1]):
            ax.text(j, i, int(cm[i, j]), ha="center", va="center", fontsize=7,
                    color="white" if cm[i, j] > threshold else "black")
    return _save(fig, path)


def plot_reliability(result: EvalResult, path: Path) -> Path:
    """Reliability diagram: accuracy against confidence per bin (the diagonal is perfect calibration), with the
    share of images in each bin below it."""
    rows = result.reliability
    width = rows[0]["high"] - rows[0]["low"]
    centres = [(r["low"] + r["high"]) / 2 for r in rows]
    fig, (ax, ax_n) = _subplots(2, 1, figsize=(5.5, 6), height_ratios=(3, 1), sharex=True)
    ax.bar(centres, [r["accuracy"] or 0 for r in rows], width=width * 0.95, color="#4c72b0", label="accuracy")
    ax.bar(centres, [(r["confidence"] or 0) - (r["accuracy"] or 0) for r in rows], width=width * 0.95,
           bottom=[r["accuracy"] or 0 for r in rows], color="#dd8452", alpha=0.5, label="gap to confidence")
    ax.plot([0, 1], [0, 1], "k--", linewidth=1)
    ax.set(ylabel="accuracy", xlim=(0, 1), ylim=(0, 1),
           title=f"{result.split}: expected calibration error {100 * result.ece:.2f}%")
    ax.legend(loc="upper left")
    total = max(sum(r["images"] for r in rows), 1)
    ax_n.bar(centres, [r["images"] / total for r in rows], width=width * 0.95, color="#888888")
    ax_n.set(xlabel="confidence (top class's probability)", ylabel="share of images")
    return _save(fig, path)


def plot_samples(images: torch.Tensor, labels: torch.Tensor, preds: torch.Tensor,
                 classes: tuple[str, ...], path: Path, n: int = 32, seed: int = 0) -> Path:
    """A grid of images with true and predicted labels; mistakes in red."""
    n = min(n, len(labels))
    idx = torch.randperm(len(labels), generator=torch.Generator().manual_seed(seed))[:n]
    cols = 8
    rows = max(1, -(-n // cols))
    fig, axes = _subplots(rows, cols, figsize=(cols * 1.5, rows * 1.75))
    for ax in np.atleast_1d(axes).flat:
        ax.axis("off")
    for ax, i in zip(np.atleast_1d(axes).flat, idx.tolist(), strict=False):
        ax.imshow(images[i].permute(1, 2, 0).numpy())
        true, pred = classes[int(labels[i])], classes[int(preds[i])]
        wrong = true != pred
        ax.set_title(f"{pred}\n(true: {true})" if wrong else pred, fontsize=7,
                     color="red" if wrong else "black")
    return _save(fig, path)


def overlay(image: torch.Tensor, heatmap: torch.Tensor, scale: int = 8, alpha: float = 0.5) -> np.ndarray:
    """An image (3 x H x W, float in [0, 1]) with a heatmap (H x W, [0, 1]) laid over it in the jet colours,
    both upsampled ``scale`` times for viewing: (H*scale) x (W*scale) x 3 uint8."""
    size = (image.shape[-2] * scale, image.shape[-1] * scale)
    big = torch.nn.functional.interpolate(image[None].float(), size=size, mode="bilinear", align_corners=False)[0]
    heat = torch.nn.functional.interpolate(heatmap[None, None].float(), size=size, mode="bilinear",
                                           align_corners=False)[0, 0].clamp(0, 1)
    colours = torch.from_numpy(matplotlib.colormaps["jet"](heat.numpy())[..., :3]).permute(2, 0, 1).float()
    mixed = (1 - alpha) * big.clamp(0, 1) + alpha * colours
    return (mixed.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)


def plot_gradcam_sheet(rows: list[tuple[torch.Tensor, str, list[tuple[str, torch.Tensor]]]], path: Path,
                       title: str | None = None) -> Path:
    """A contact sheet: per row an image (3 x 32 x 32 in [0, 1]) with its caption, then one Grad-CAM overlay per
    (caption, heatmap) beside it."""
    cols = 1 + max((len(maps) for _, _, maps in rows), default=0)
    fig, axes = _subplots(max(1, len(rows)), cols, figsize=(cols * 1.6, max(1, len(rows)) * 1.8), squeeze=False,
                          layout="constrained")
    for ax in axes.flat:
        ax.axis("off")
    for r, (image, caption, maps) in enumerate(rows):
        axes[r][0].imshow(image.permute(1, 2, 0).clamp(0, 1).numpy(), interpolation="bilinear")
        axes[r][0].set_title(caption, fontsize=7)
        for c, (label, heatmap) in enumerate(maps, start=1):
            axes[r][c].imshow(overlay(image, heatmap))
            axes[r][c].set_title(label, fontsize=7)
    if title:
        fig.suptitle(title, fontsize=9)
    return _save(fig, path)


def gradcam_panel(model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor, preds: torch.Tensor,
                  classes: tuple[str, ...], n: int = 4, seed: int = 0) -> Figure | None:
    """Grad-CAM of the predicted class on ``n`` right and then ``n`` wrong images of a split (uint8 N x 3 x 32 x
    32), drawn at random: the images above (true class), their maps below (predicted class, red when wrong).
    None where captum is not installed."""
    from alexnet_cifar10.errors import ConfigError
    from alexnet_cifar10.explain import GradCam

    try:
        cam = GradCam(model)
    except ConfigError:  # the optional extra is missing: the report says so instead of showing the panel
        return None
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(seed))
    right = order[preds[order] == labels[order]][:n]
    wrong = order[preds[order] != labels[order]][:n]
    chosen = torch.cat([right, wrong])
    x = images[chosen].float().div(255).to(next(model.parameters()).device)
    maps = cam.maps(x, preds[chosen])
    fig, axes = _subplots(2, max(1, len(chosen)), figsize=(1.6 * max(1, len(chosen)), 3.8), squeeze=False,
                          layout="constrained")
    for ax in axes.flat:
        ax.axis("off")
    for col, (i, heatmap) in enumerate(zip(chosen.tolist(), maps, strict=True)):
        axes[0][col].imshow(images[i].permute(1, 2, 0).numpy())
        axes[0][col].set_title(f"true: {classes[int(labels[i])]}", fontsize=7)
        axes[1][col].imshow(overlay(x[col].cpu(), heatmap))
        axes[1][col].set_title(classes[int(preds[i])], fontsize=7,
                               color="black" if preds[i] == labels[i] else "red")
    fig.suptitle(f"Grad-CAM of the predicted class at {cam.layer}: {len(right)} right, then {len(wrong)} wrong",
                 fontsize=9)
    return fig


def plot_gradcam_panel(model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor, preds: torch.Tensor,
                       classes: tuple[str, ...], path: Path, **kwargs: Any) -> Path | None:
    """``gradcam_panel`` saved as ``path``; None (and no file) where captum is not installed."""
    fig = gradcam_panel(model, images, labels, preds, classes, **kwargs)
    return None if fig is None else _save(fig, path)


def _img(path: Path) -> str:
    if not path.is_file():
        return ""
    data = base64.b64encode(path.read_bytes()).decode()
    return f'<img alt="{html.escape(path.name)}" src="data:image/png;base64,{data}">'


def write_report(run_dir: Path, config: dict[str, Any], history: list[dict[str, Any]],
                 result: EvalResult | None, extra: dict[str, Any] | None = None) -> Path:
    """One offline page: config, curves, per-class table and confusion matrix, figures inline."""
    def pct(value: float | None) -> str:
        return "" if value is None else f"{100 * value:.2f}"

    rows = "".join(
        f"<tr><td>{h['epoch']}</td><td>{h['train_loss']:.4f}</td><td>{pct(h['train_acc'])}</td>"
        f"<td>{pct(h.get('val_acc'))}</td>"
        f"<td>{h['lr']:.2e}</td><td>{h['seconds']:.1f}</td><td>{h['images_per_s']:.0f}</td></tr>"
        for h in history
    )
    per_class = ""
    if result is not None:
        per_class = "".join(
            f"<tr><td>{html.escape(c)}</td>" + "".join(f"<td>{pct(m[k])}</td>" for k in ("recall", "precision", "f1"))
            + f"<td>{m['images']}</td></tr>" for c, m in result.per_class_metrics.items()
        )
        top5 = "" if result.top5_accuracy is None else f"; top-5 {100 * result.top5_accuracy:.2f}%"
        per_class = (
            f"<h2>Final evaluation on the {html.escape(result.split)} split: "
            f"{100 * result.accuracy:.2f}%</h2><p>Test-time augmentation: {html.escape(result.tta_text())}; the "
            f"per-epoch validation above is on plain images{top5}; expected calibration error "
            f"{100 * result.ece:.2f}%.</p><table><tr><th>class</th><th>accuracy (recall) %</th><th>precision %</th>"
            f"<th>F1 %</th><th>images</th></tr>{per_class}</table>{_img(run_dir / 'confusion.png')}"
            f"<h2>Calibration</h2>{_img(run_dir / 'reliability.png')}{_img(run_dir / 'samples.png')}"
            "<h2>Where the network looks (Grad-CAM)</h2>"
            + (_img(run_dir / "gradcam.png") or "<p>Install the explain extra (<code>pip install "
               "'alexnet-cifar10[explain]'</code>) for Grad-CAM maps of right and wrong predictions.</p>")
        )
    summary = "".join(
        f"<tr><th>{html.escape(str(k))}</th><td>{html.escape(str(v))}</td></tr>"
        for k, v in (extra or {}).items()
    )
    page = f"""<!doctype html>
<html><head><meta charset="utf-8"><title>alexnet-cifar10 run {html.escape(run_dir.name)}</title>
<style>body{{font-family:sans-serif;max-width:1000px;margin:2em auto;color:#222}}
table{{border-collapse:collapse;margin:1em 0}}td,th{{border:1px solid #ccc;padding:2px 8px;text-align:right}}
img{{max-width:100%;display:block;margin:1em 0}}pre{{background:#f4f4f4;padding:1em;overflow:auto}}</style>
</head><body>
<h1>alexnet-cifar10 run {html.escape(run_dir.name)}</h1>
<table>{summary}</table>
<h2>Curves</h2>{_img(run_dir / 'curves.png')}
<h2>Epochs</h2>
<table><tr><th>epoch</th><th>train loss</th><th>train acc %</th><th>val acc %</th><th>lr</th>
<th>seconds</th><th>images/s</th></tr>{rows}</table>
{per_class}
<h2>Config</h2><pre>{html.escape(json.dumps(config, indent=2))}</pre>
</body></html>
"""
    path = run_dir / "report.html"
    atomic_write(path, lambda f: f.write(page.encode()))
    return path
