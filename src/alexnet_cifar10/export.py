"""Export a trained model: ONNX (checked with onnxruntime), safetensors, torch.export (.pt2), TorchScript.

Every format takes the same input as ``load_model``: float RGB images in [0, 1], N x 3 x 32 x 32;
normalisation is inside the model.
"""

from __future__ import annotations

import json
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from alexnet_cifar10.checkpoint import model_from_state, trained_state
from alexnet_cifar10.errors import CheckpointError, ConfigError
from alexnet_cifar10.io import atomic_write

FORMATS = ("onnx", "safetensors", "pt2", "torchscript")


def _example_batch() -> torch.Tensor:
    """What the exporters trace with: 2 images, so the batch dimension is not taken for a constant 1."""
    return torch.rand(2, 3, 32, 32)


@dataclass
class OnnxCheck:
    images: int
    max_abs_diff: float
    top1_agreement: float


def _require(module: str):  # noqa: ANN202
    try:
        return __import__(module, fromlist=["_"])
    except ImportError:
        package = module.split(".")[0]
        raise ConfigError(f"this needs the {package} package: pip install 'alexnet-cifar10[export]'") from None


def _write_via_temp(out: Path, write) -> None:  # noqa: ANN001 - write(path)
    """Exporters want a path; write next to ``out`` and rename, so ``out`` is never half-written."""
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out.parent) as tmp:
        path = Path(tmp) / out.name
        write(path)
        atomic_write(out, lambda f: f.write(path.read_bytes()))


def export_onnx(model: nn.Module, out: Path) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        _write_via_temp(out, lambda p: torch.onnx.export(
            model, (_example_batch(),), str(p), dynamo=False, input_names=["images"], output_names=["logits"],
            dynamic_axes={"images": {0: "batch"}, "logits": {0: "batch"}}, opset_version=17))


def check_onnx(model: nn.Module, onnx_file: Path, images: torch.Tensor, batch: int = 250) -> OnnxCheck:
    """Compare ONNX Runtime with PyTorch on float images in [0, 1]."""
    ort = _require("onnxruntime")
    session = ort.InferenceSession(str(onnx_file), providers=["CPUExecutionProvider"])
    diff, agree = 0.0, 0
    with torch.no_grad():
        for x in images.split(batch):
            ref = model(x)
            got = torch.from_numpy(session.run(None, {"images": x.numpy()})[0])
            diff = max(diff, float((got - ref).abs().max()))
            agree += int((got.argmax(1) == ref.argmax(1)).sum())
    return OnnxCheck(len(images), diff, agree / max(len(images), 1))


def export_safetensors(state: dict, out: Path) -> None:
    st = _require("safetensors.torch")
    tensors = {k: v.contiguous() for k, v in state["model"].items()}
    metadata = {"model_name": state["model_name"], "model_kwargs": json.dumps(state.get("model_kwargs", {})),
                "format": "alexnet-cifar10"}
    if state.get("config"):  # the run's settings: evaluate and predict then use its test-time augmentation
        metadata["config"] = json.dumps(state["config"])
    _write_via_temp(out, lambda p: st.save_file(tensors, str(p), metadata=metadata))


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
    if Path(out).is_dir():
        raise ConfigError(f"--out {out} is a folder; give a file name")
    state = trained_state(checkpoint)
    model = model_from_state(state).float().eval()
    model = model.to(memory_format=torch.contiguous_format)
    out = Path(out)
    if fmt == "onnx":
        _require("onnx")
        export_onnx(model, out)
    elif fmt == "safetensors":
        export_safetensors(state, out)
    elif fmt == "pt2":
        export_pt2(model, out)
    else:
        export_torchscript(model, out)
    return model


def load_safetensors(path: str | Path) -> dict:
    """A checkpoint-like dict from a .safetensors file: tensors only, nothing executed."""
    st = _require("safetensors")
    try:
        with st.safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 - safe_open has no items()
    except Exception as e:  # noqa: BLE001 - any parse failure of a hostile file
        raise CheckpointError(f"{path}: not a readable safetensors file ({e})") from None
    if "model_name" not in meta:
        raise CheckpointError(f"{path}: safetensors file without alexnet-cifar10 metadata (model_name)")
    state: dict = {"model": tensors, "model_name": meta["model_name"]}
    for key, default in (("model_kwargs", "{}"), ("config", "null")):
        try:
            state[key] = json.loads(meta.get(key, default))
        except ValueError:
            raise CheckpointError(f"{path}: unreadable {key} metadata") from None
        if not isinstance(state[key], dict | None):
            raise CheckpointError(f"{path}: {key} metadata is not a JSON object")
    return state
