"""Export a trained model: ONNX (checked with onnxruntime), safetensors, torch.export (.pt2), TorchScript.

Every format takes the same input as ``load_model``: float RGB images in [0, 1], N x 3 x 32 x 32;
normalisation is inside the model.
"""

from __future__ import annotations

import json
import os
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from alexnet_cifar10.checkpoint import model_from_state, require, save_safetensors, trained_state
from alexnet_cifar10.config import EXPORT_FORMATS
from alexnet_cifar10.errors import ConfigError
from alexnet_cifar10.io import atomic_write, check_replaceable
from alexnet_cifar10.version import __version__

FORMATS = EXPORT_FORMATS
INPUT_DESCRIPTION = "float RGB images in [0, 1], N x 3 x 32 x 32 (normalised inside the model)"


def _example_batch() -> torch.Tensor:
    """What the exporters trace with: 2 images, so the batch dimension is not taken for a constant 1."""
    return torch.rand(2, 3, 32, 32)


@dataclass
class OnnxCheck:
    images: int
    max_abs_diff: float
    top1_agreement: float


def _write_via_temp(out: Path, write) -> None:  # noqa: ANN001 - write(path)
    """Exporters want a path; write next to ``out`` and rename, so ``out`` is never half-written."""
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out.parent) as tmp:
        path = Path(tmp) / out.name
        write(path)
        atomic_write(out, lambda f: f.write(path.read_bytes()))


def export_onnx(model: nn.Module, out: Path, metadata: dict[str, str] | None = None) -> None:
    """``metadata``: key-value text stored in the ONNX file (``metadata_props``), e.g. the class names."""
    onnx = require("onnx")

    def write(path: Path) -> None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(model, (_example_batch(),), str(path), dynamo=False, input_names=["images"],
                              output_names=["logits"], dynamic_axes={"images": {0: "batch"}, "logits": {0: "batch"}},
                              opset_version=17)
        if metadata:
            graph = onnx.load(str(path))
            onnx.helper.set_model_props(graph, metadata)
            onnx.save(graph, str(path))

    _write_via_temp(out, write)


def metadata_of(state: dict[str, Any], model: nn.Module) -> dict[str, str]:
    """What an exported file records beside the network: its name and settings, its classes in output order, its
    input, the package version."""
    return {"model_name": state["model_name"], "model_kwargs": json.dumps(state.get("model_kwargs") or {}),
            "classes": json.dumps(list(model.classes)), "input": INPUT_DESCRIPTION, "producer": "alexnet-cifar10",
            "version": __version__}


def check_onnx(model: nn.Module, onnx_file: Path, images: torch.Tensor, batch: int = 250) -> OnnxCheck:
    """Compare ONNX Runtime with PyTorch on float images in [0, 1]."""
    ort = require("onnxruntime")
    runtime = ort.InferenceSession(str(onnx_file), providers=["CPUExecutionProvider"])
    diff, agree = 0.0, 0
    with torch.no_grad():
        for x in images.split(batch):
            ref = model(x)
            got = torch.from_numpy(runtime.run(None, {"images": x.numpy()})[0])
            diff = max(diff, float((got - ref).abs().max()))
            agree += int((got.argmax(1) == ref.argmax(1)).sum())
    return OnnxCheck(len(images), diff, agree / max(len(images), 1))


def export_pt2(model: nn.Module, out: Path) -> None:
    """torch.export's ExportedProgram, any batch size: ``torch.export.load(path).module()(images)``. It is
    what PyTorch offers in place of TorchScript, which torch 2.13 deprecates."""
    batch = torch.export.Dim("batch", min=1)
    program = torch.export.export(model, (_example_batch(),), dynamic_shapes=({0: batch},))
    _write_via_temp(out, lambda p: torch.export.save(program, str(p)))


def export_torchscript(model: nn.Module, out: Path) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(model, _example_batch())
    _write_via_temp(out, lambda p: traced.save(str(p)))


def export(checkpoint: str | Path, fmt: str, out: str | Path) -> nn.Module:
    """Write ``checkpoint``'s trained model to ``out`` in ``fmt``; returns the PyTorch model."""
    if fmt not in FORMATS:
        raise ConfigError(f"--format must be one of {', '.join(FORMATS)}")
    out = Path(out)
    check_replaceable(out.parent, [out.name], ConfigError)  # a FIFO, a device, a folder: named for what it is
    if os.path.lexists(out):  # never over a file of the user's, the checkpoint included; nor through a link
        raise ConfigError(f"--out {out} already exists; remove it or give another file name")
    state = trained_state(checkpoint)
    model = model_from_state(state).float().eval()
    model = model.to(memory_format=torch.contiguous_format)
    if fmt == "onnx":
        export_onnx(model, out, metadata_of(state, model))
    elif fmt == "safetensors":
        save_safetensors(state, out)
    elif fmt == "pt2":
        export_pt2(model, out)
    else:
        export_torchscript(model, out)
    return model
