"""Accuracy, per-class accuracy, confusion matrix, and prediction on image files."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from alexnet_cifar10.config import check_tta_shift
from alexnet_cifar10.data.formats import CLASSES
from alexnet_cifar10.data.images import IMAGE_SUFFIXES, decode_for_network
from alexnet_cifar10.data.loader import ResidentLoader
from alexnet_cifar10.data.sources import list_files
from alexnet_cifar10.device import autocast, sum_dtype
from alexnet_cifar10.errors import DataError
from alexnet_cifar10.io import read_regular

PREDICT_BATCH = 256  # images classified at once by predict
CALIBRATION_BINS = 15  # equal-width confidence bins of the expected calibration error (Guo et al., 2017)
TOP_K = 5  # the wider accuracy an evaluation reports beside top-1
MAX_IMAGE_BYTES = 64 * 1024 * 1024  # the largest image file predict reads


@dataclass
class EvalResult:
    split: str
    loss: float
    accuracy: float
    confusion: np.ndarray  # rows: true class, columns: predicted class
    predictions: torch.Tensor = field(repr=False)
    classes: tuple[str, ...] = CLASSES
    tta: bool = False  # the test-time augmentation the numbers were measured with
    tta_shift: int = 0
    top5_accuracy: float | None = None
    temperature: float = 1.0  # the logits were divided by it before the softmax (1: as trained)
    logits: torch.Tensor | None = field(default=None, repr=False)  # with keep_logits: N x 10, float32, on the CPU
    # per confidence bin (the top class's softmax probability): images, summed confidence, correct top-1
    bins: np.ndarray = field(default_factory=lambda: np.zeros((3, CALIBRATION_BINS)), repr=False)

    @property
    def ece(self) -> float:
        return ece_of_bins(self.bins)

    @property
    def reliability(self) -> list[dict[str, float | int | None]]:
        """Per bin: its confidence range, images, mean confidence and accuracy (None for an empty bin)."""
        rows = []
        for b, (n, conf, right) in enumerate(self.bins.T):
            rows.append({"low": b / CALIBRATION_BINS, "high": (b + 1) / CALIBRATION_BINS, "images": int(n),
                         "confidence": float(conf / n) if n else None, "accuracy": float(right / n) if n else None})
        return rows

    @property
    def per_class_metrics(self) -> dict[str, dict[str, float | int | None]]:
        """Precision, recall and F1 per class from the confusion matrix; None where a ratio has no images."""
        metrics = {}
        for i, c in enumerate(self.classes):
            hits, predicted, actual = self.confusion[i, i], self.confusion[:, i].sum(), self.confusion[i].sum()
            precision = float(hits / predicted) if predicted else None
            recall = float(hits / actual) if actual else None
            f1 = (2 * precision * recall / (precision + recall) if precision and recall else
                  (0.0 if precision is not None and recall is not None else None))
            metrics[c] = {"precision": precision, "recall": recall, "f1": f1, "images": int(actual)}
        return metrics

    @property
    def per_class(self) -> dict[str, float | None]:
        """Accuracy per class; None for a class the split has no images of (JSON null, not NaN)."""
        totals = self.confusion.sum(axis=1)
        return {c: float(self.confusion[i, i] / totals[i]) if totals[i] else None for i, c in enumerate(self.classes)}

    def to_dict(self) -> dict[str, object]:
        return {
            "split": self.split,
            "images": int(self.confusion.sum()),
            "loss": self.loss,
            "accuracy": self.accuracy,
            "top5_accuracy": self.top5_accuracy,
            "temperature": self.temperature,
            "per_class": self.per_class,
            "per_class_metrics": self.per_class_metrics,
            "ece": self.ece,
            "reliability": self.reliability,
            "confusion": self.confusion.tolist(),
            "tta": self.tta,
            "tta_shift": self.tta_shift,
        }

    def tta_text(self) -> str:
        views = [v for v, on in (("flips", self.tta), (f"{self.tta_shift}-pixel moves", self.tta_shift)) if on]
        return " + ".join(views) or "none"

    def table(self) -> str:
        lines = [f"{'class':<12}{'accuracy':>10}{'images':>8}"]
        for (name, acc), n in zip(self.per_class.items(), self.confusion.sum(axis=1), strict=True):
            lines.append(f"{name:<12}{'n/a' if acc is None else f'{100 * acc:.2f}%':>10}{int(n):>8}")
        lines.append(f"{'all':<12}{100 * self.accuracy:>9.2f}%{int(self.confusion.sum()):>8}")
        return "\n".join(lines)


@torch.no_grad()
def logits_of(model: nn.Module, x: torch.Tensor, tta: bool, shift: int = 0) -> torch.Tensor:
    """Logits, averaged over the mirror image with ``tta``; with ``shift`` also over the image moved
    ``shift`` pixels up-left and down-right (reflect-padded), weighted 1/2, 1/4, 1/4 (airbench's TTA)."""
    out = model(x).float()
    if tta:
        out = out + model(x.flip(3)).float()
        out = out / 2
    if shift:
        h, w = x.shape[-2:]
        padded = F.pad(x, (shift, shift, shift, shift), mode="reflect")
        fmt = torch.channels_last if x.is_contiguous(memory_format=torch.channels_last) else torch.contiguous_format
        up_left, down_right = (m.contiguous(memory_format=fmt) for m in
                               (padded[..., :h, :w], padded[..., 2 * shift:, 2 * shift:]))
        out = out / 2 + (logits_of(model, up_left, tta) + logits_of(model, down_right, tta)) / 4
    return out


@torch.no_grad()
def evaluate(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    *,
    split: str = "val",
    batch_size: int = 500,
    device: torch.device | str = "cpu",
    precision: str = "fp32",
    tta: bool = False,
    tta_shift: int = 0,
    channels_last: bool = True,
    loader: ResidentLoader | None = None,
    temperature: float = 1.0,
    keep_logits: bool = False,
) -> EvalResult:
    """Evaluate ``model`` on uint8 ``images``; metrics stay on the device until the end. ``temperature`` divides
    the logits (calibrated confidences; the top class is unchanged); ``keep_logits`` returns them."""
    check_tta_shift(tta_shift)
    device = torch.device(device)
    loader = loader or ResidentLoader(images, labels, batch_size, train=False, device=device,
                                      channels_last=channels_last)
    was_training = model.training
    model.eval()
    n = len(CLASSES)
    confusion = torch.zeros(n * n, dtype=torch.int64, device=device)
    loss_sum = torch.zeros((), dtype=sum_dtype(device), device=device)
    top5 = torch.zeros((), dtype=torch.int64, device=device)
    bins = torch.zeros(3, CALIBRATION_BINS, dtype=sum_dtype(device), device=device)  # calibration_bins, summed
    preds, kept = [], []
    with autocast(device, precision):
        for x, y in loader.iterate(0):
            logits = logits_of(model, x, tta, tta_shift).float() / temperature
            loss_sum += F.cross_entropy(logits, y, reduction="sum").to(loss_sum.dtype)
            pred = logits.argmax(1)
            confusion += torch.bincount(y * n + pred, minlength=n * n)
            top5 += (logits.topk(min(TOP_K, n), dim=1).indices == y[:, None]).any(1).sum()
            bins += calibration_bins(logits, y)
            preds.append(pred)
            if keep_logits:
                kept.append(logits.cpu())
    model.train(was_training)
    cm = confusion.view(n, n).cpu().numpy()
    total = max(int(cm.sum()), 1)
    return EvalResult(
        split=split,
        loss=float(loss_sum) / total,
        accuracy=float(np.trace(cm)) / total,
        confusion=cm,
        predictions=torch.cat(preds).cpu() if preds else torch.empty(0, dtype=torch.int64),
        tta=tta,
        tta_shift=tta_shift,
        top5_accuracy=int(top5) / total,
        temperature=temperature,
        bins=bins.cpu().numpy(),
        logits=torch.cat(kept) if kept else None,
    )


def calibration_bins(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Per confidence bin (the top class's softmax probability): images, summed confidence, correct top-1
    (3 x CALIBRATION_BINS, ``sum_dtype``), what the expected calibration error is computed from."""
    confidence, pred = logits.float().softmax(1).max(1)
    b = (confidence * CALIBRATION_BINS).long().clamp_(max=CALIBRATION_BINS - 1)
    bins = torch.zeros(3, CALIBRATION_BINS, dtype=sum_dtype(logits.device), device=logits.device)
    for row, values in enumerate((torch.ones_like(confidence), confidence, (pred == labels).float())):
        bins[row].index_add_(0, b, values.to(bins.dtype))
    return bins


def ece_of_bins(bins: np.ndarray) -> float:
    """Expected calibration error: the images-weighted mean gap between confidence and accuracy per bin."""
    count, confidence, correct = np.asarray(bins)
    return float(np.abs(confidence - correct).sum() / max(count.sum(), 1))


def expected_calibration_error(logits: torch.Tensor, labels: torch.Tensor) -> float:
    return ece_of_bins(calibration_bins(logits, labels).cpu().numpy())


TEMPERATURE_BOUNDS = (0.05, 20.0)


def fit_temperature(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """The temperature T that minimises the cross-entropy of ``logits / T`` (Guo et al., 2017): one number,
    fitted on held-out images, that rescales confidence without changing any prediction."""
    low, high = TEMPERATURE_BOUNDS
    log_t = torch.zeros((), requires_grad=True)
    optimizer = torch.optim.LBFGS([log_t], lr=0.1, max_iter=200, line_search_fn="strong_wolfe")
    logits, labels = logits.detach().float().cpu(), labels.cpu()

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = F.cross_entropy(logits / log_t.exp(), labels)
        loss.backward()
        return loss

    optimizer.step(closure)
    return float(min(max(log_t.exp().item(), low), high))


# --------------------------------------------------------------------------- predict
@dataclass
class Prediction:
    path: str
    top: list[tuple[str, float]] | None = None  # (class, probability), best first
    resized_from: tuple[int, int] | None = None
    error: str | None = None


def expand_inputs(paths: list[str | Path], command: str = "predict") -> list[Path]:
    """Files as given, and the image files inside any folder given (sorted), found as a data folder's are: at
    most 16 levels down, symlinked folders and hidden files left out, at most 200,000 files."""
    out: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            names = list_files(p, f"give {command} a smaller folder")
            out += sorted(p / name for name in names if Path(name).suffix.lower() in IMAGE_SUFFIXES)
        else:
            out.append(p)
    return out


def load_image(path: Path) -> tuple[torch.Tensor, tuple[int, int] | None]:
    """An image as float 3 x 32 x 32 in [0, 1]; other sizes are resized (and say from what)."""
    data = read_regular(path, MAX_IMAGE_BYTES, DataError, "an image may be")
    return decode_image_bytes(data, str(path))


def decode_image_bytes(data: bytes, where: str) -> tuple[torch.Tensor, tuple[int, int] | None]:
    """``load_image`` of bytes already read (an upload): float 3 x 32 x 32 in [0, 1], and the size it was resized
    from (None when it was 32x32)."""
    array, resized = decode_for_network(data, where)
    return torch.from_numpy(array.copy()).permute(2, 0, 1).float() / 255, resized


@torch.no_grad()
def top_k(model: nn.Module, images: torch.Tensor, k: int = 3, *, tta: bool = False,
          tta_shift: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``k`` likeliest classes of each image (float N x 3 x 32 x 32 in [0, 1], on the model's device), best
    first: their probabilities and indices (N x k each, on the CPU), the logits divided by ``model.temperature``
    (``evaluate --calibrate``'s, where one was fitted)."""
    model.eval()
    batch = images.contiguous(memory_format=torch.channels_last)  # as evaluate
    probs = (logits_of(model, batch, tta, tta_shift).float() / getattr(model, "temperature", 1.0)).softmax(1).cpu()
    return probs.topk(max(1, min(k, probs.shape[1])), dim=1)


def named(model: nn.Module, values: torch.Tensor, indices: torch.Tensor) -> list[list[tuple[str, float]]]:
    """``top_k``'s answer as (class, probability) per image, named by ``model.classes`` (CIFAR-10's where the model
    has none)."""
    classes = getattr(model, "classes", CLASSES)
    return [[(classes[j], float(v)) for v, j in zip(vals, idxs, strict=True)]
            for vals, idxs in zip(values, indices, strict=True)]


def top_classes(model: nn.Module, images: torch.Tensor, k: int = 3, *, tta: bool = False,
                tta_shift: int = 0) -> list[list[tuple[str, float]]]:
    """The ``k`` likeliest classes of each image with their probabilities, best first (``top_k``, ``named``)."""
    return named(model, *top_k(model, images, k, tta=tta, tta_shift=tta_shift))


@torch.no_grad()
def predict(
    model: nn.Module,
    paths: list[str | Path],
    *,
    top_k: int = 3,
    device: torch.device | str = "cpu",
    tta: bool = False,
    tta_shift: int = 0,
) -> list[Prediction]:
    """Top-k classes for each image file (``top_classes``); a file that fails gets its own error, the rest go
    on."""
    check_tta_shift(tta_shift)
    device = torch.device(device)
    results: list[Prediction] = []
    good: list[tuple[int, torch.Tensor]] = []  # decoded images waiting for the next batch

    def classify() -> None:
        batch = torch.stack([x for _, x in good]).to(device)
        for (i, _), top in zip(good, top_classes(model, batch, top_k, tta=tta, tta_shift=tta_shift), strict=True):
            results[i].top = top
        good.clear()

    for path in expand_inputs(paths):  # in batches of PREDICT_BATCH: memory stays flat however many files
        try:
            x, resized = load_image(path)
        except DataError as e:
            results.append(Prediction(str(path), error=str(e)))
            continue
        results.append(Prediction(str(path), resized_from=resized))
        good.append((len(results) - 1, x))
        if len(good) == PREDICT_BATCH:
            classify()
    if good:
        classify()
    return results
