"""Checkpoints: a dict of tensors and plain values, written atomically, read with weights_only."""

from __future__ import annotations

import hashlib
import json
import pickle
import random
import re
import stat
import urllib.parse
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from alexnet_cifar10 import pretrained
from alexnet_cifar10.data.formats import CLASSES
from alexnet_cifar10.errors import TORCH_LOAD_ERRORS, CheckpointError, ConfigError, first_line, write_failure
from alexnet_cifar10.io import atomic_write, atomic_write_serialized
from alexnet_cifar10.models import AlexNet, create_model, expected_state


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    try:
        atomic_write_serialized(Path(path), lambda f: torch.save(state, f))
    except (OSError, RuntimeError) as e:
        raise CheckpointError(
            f"cannot write checkpoint {path}: {write_failure(e)}; the previous checkpoint is intact"
        ) from None


# The largest checkpoint file read: MAX_PARAMETERS float32 weights five times over (the model, its EMA and
# lookahead copies, Adam's two moments) with room to spare.
MAX_CHECKPOINT_BYTES = 4 << 30
MAX_CLASS_NAME = 64  # characters of one class name a checkpoint may record
MAX_ZIP_ENTRIES = 10_000  # a checkpoint holds one entry per tensor storage, a few hundred at most


CHECKPOINT_HELP = "a checkpoint is a run's best.pt or last.pt, or a .safetensors file"


def other_format(path: Path, head: bytes, zip_names: list[str] | None = None) -> str | None:
    """What ``path`` is when it is a file of another kind that users hand over where a checkpoint belongs (the
    project's own exports and run files, images, data archives), from its first bytes or zip entries."""
    if zip_names is not None:
        inner = {name.split("/", 1)[-1] for name in zip_names}
        if any(name.startswith("code/") for name in inner):
            return "a TorchScript export (export --format torchscript)"
        if "archive_format" in inner or "models/model.json" in inner:
            return "a torch.export program (export --format pt2)"
        return None
    if len(head) >= 9 and head[8:9] == b"{" and int.from_bytes(head[:8], "little") < 100 << 20:
        return "a safetensors file (name it .safetensors to load it)"
    kinds = {b"\x89PNG": "a PNG image", b"\xff\xd8\xff": "a JPEG image", b"\x1f\x8b": "a gzip file (a data archive?)",
             b"{": "a JSON file (a run's config.json, final.json or metrics.jsonl?)", b"\x08": "an ONNX export?"}
    if head[257:262] == b"ustar":
        return "a tar archive (a data set?)"
    found = next((kind for magic, kind in kinds.items() if head.lstrip().startswith(magic)), None)
    if found == "an ONNX export?":
        return "an ONNX export (export --format onnx)" if path.suffix == ".onnx" or b"pytorch" in head else None
    return found


def _check_zip(path: Path) -> None:
    """Refuse a .pt file that torch.load could not read within bounds: not a zip as torch.save writes (so a text
    file, an empty file or the legacy format), or one whose entries are compressed (a zip bomb: torch's reader
    allocates an entry's declared size) or too many."""
    try:
        with zipfile.ZipFile(path) as z:
            entries = z.infolist()
    except (zipfile.BadZipFile, OSError, ValueError, EOFError, NotImplementedError) as e:
        if isinstance(e, OSError) and e.strerror:
            raise CheckpointError(f"{path}: not a PyTorch checkpoint ({e.strerror})") from None
        with path.open("rb") as f:
            kind = other_format(path, f.read(512))
        if kind:
            raise CheckpointError(f"{path}: {kind}, not a checkpoint; {CHECKPOINT_HELP}") from None
        raise CheckpointError(f"{path}: not a PyTorch checkpoint (truncated or corrupt: not the zip file that "
                              "torch.save writes)") from None
    kind = other_format(path, b"", [e.filename for e in entries[:MAX_ZIP_ENTRIES]])
    if kind:
        raise CheckpointError(f"{path}: {kind}, not a checkpoint; {CHECKPOINT_HELP}")
    if len(entries) > MAX_ZIP_ENTRIES:
        raise CheckpointError(f"{path}: refused: {len(entries):,} entries, more than a checkpoint holds")
    if any(e.compress_type != zipfile.ZIP_STORED or e.file_size != e.compress_size for e in entries):
        raise CheckpointError(f"{path}: refused: compressed entries, which torch.save never writes")


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint without running any code from it; anything else is refused."""
    path = Path(path)
    try:
        st = path.stat()
    except OSError as e:
        reason = "no such checkpoint file" if isinstance(e, FileNotFoundError) else e.strerror or str(e)
        raise CheckpointError(f"{path}: {reason}") from None
    if not stat.S_ISREG(st.st_mode):
        raise CheckpointError(f"{path}: not a checkpoint file (a folder or a special file)")
    if st.st_size > MAX_CHECKPOINT_BYTES:
        raise CheckpointError(f"{path}: {st.st_size:,} bytes, more than the {MAX_CHECKPOINT_BYTES >> 30} GiB a "
                              "checkpoint may be")
    if path.suffix == ".safetensors":
        return load_safetensors(path)
    _check_zip(path)
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        text = str(e)
        if "global" not in text.lower():  # not a refused class: a damaged file
            raise CheckpointError(f"{path}: truncated or corrupt checkpoint") from None
        found = re.search(r"(?:Unsupported global|GLOBAL)[^.\n]*", text)
        raise CheckpointError(
            f"{path}: refused: the checkpoint holds more than tensors and plain values "
            f"({found.group(0)[:120] if found else 'code'}); it was not loaded"
        ) from None
    except TORCH_LOAD_ERRORS as e:
        raise CheckpointError(f"{path}: truncated or corrupt checkpoint ({first_line(e)[:160]})") from None
    return check_state(state, path)


def check_state(state: object, where: str | Path) -> dict[str, Any]:
    """``state`` when it is shaped like an alexnet-cifar10 checkpoint: a dict with a model name, a dict of weights
    and, when present, dict-valued model_kwargs and config whose test-time augmentation settings have their
    types. The weights themselves are checked against the model by ``model_from_state``."""
    if not isinstance(state, dict) or "model" not in state or "model_name" not in state:
        raise CheckpointError(f"{where}: not an alexnet-cifar10 checkpoint (no model weights)")
    if not isinstance(state["model_name"], str):
        raise CheckpointError(f"{where}: not an alexnet-cifar10 checkpoint (model_name is not a string)")
    for key in ("model", "ema_model"):
        if state.get(key) is not None and not isinstance(state[key], dict):
            raise CheckpointError(f"{where}: not an alexnet-cifar10 checkpoint ({key} is not a dict of tensors)")
    for key in ("model_kwargs", "config"):
        if state.get(key) is not None and not isinstance(state[key], dict):
            raise CheckpointError(f"{where}: {key} is not a dict")
    config = state.get("config") or {}
    if not isinstance(config.get("tta", False), bool):
        raise CheckpointError(f"{where}: config tta is not true or false")
    shift = config.get("tta_shift", 0)
    if not isinstance(shift, int) or isinstance(shift, bool) or not 0 <= shift <= 8:
        raise CheckpointError(f"{where}: config tta_shift is not an integer 0-8")
    classes = state.get("classes")
    if classes is not None and (not isinstance(classes, list | tuple) or len(classes) != len(CLASSES) or not all(
            isinstance(c, str) and 0 < len(c) <= MAX_CLASS_NAME and c.isprintable() for c in classes)):
        raise CheckpointError(f"{where}: classes is not a list of {len(CLASSES)} class names")
    return state


def require(module: str, install: str = "'alexnet-cifar10[export]'"):  # noqa: ANN201 - the module
    try:
        return __import__(module, fromlist=["_"])
    except ImportError:
        package = module.split(".")[0]
        raise ConfigError(f"this needs the {package} package: pip install {install}") from None


def save_safetensors(state: dict[str, Any], out: Path, half: bool = False) -> None:
    """``state``'s weights as a .safetensors file (tensors only), with the model name and the run's settings as
    JSON text in its metadata; ``half`` stores the floating-point tensors in float16."""
    st = require("safetensors.torch", install="safetensors")
    tensors = {k: (v.half() if half and v.is_floating_point() else v).contiguous() for k, v in state["model"].items()}
    try:
        metadata = {"model_name": state["model_name"], "model_kwargs": json.dumps(state.get("model_kwargs", {})),
                    "format": "alexnet-cifar10"}
        if state.get("config"):  # the run's settings: evaluate and predict then use its test-time augmentation
            metadata["config"] = json.dumps(state["config"])
        if state.get("classes"):
            metadata["classes"] = json.dumps(list(state["classes"]))
    except (TypeError, ValueError, RecursionError) as e:
        raise CheckpointError(f"the checkpoint's settings cannot be written as JSON ({first_line(e)[:120]})") from None
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    atomic_write(Path(out), lambda f: f.write(st.save(tensors, metadata=metadata)))


def load_safetensors(path: str | Path) -> dict:
    """A checkpoint-like dict from a .safetensors file: tensors only, nothing executed."""
    st = require("safetensors", install="safetensors")
    try:
        with st.safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 - safe_open has no items()
    except (st.SafetensorError, OSError, ValueError, TypeError, RuntimeError) as e:
        raise CheckpointError(f"{path}: not a readable safetensors file ({first_line(e)[:160]})") from None
    if "model_name" not in meta:
        raise CheckpointError(f"{path}: safetensors file without alexnet-cifar10 metadata (model_name)")
    state: dict = {"model": tensors, "model_name": meta["model_name"]}
    for key, default in (("model_kwargs", "{}"), ("config", "null"), ("classes", "null")):
        try:
            state[key] = json.loads(meta.get(key, default))
        except (ValueError, RecursionError):  # RecursionError: JSON nested thousands deep
            raise CheckpointError(f"{path}: unreadable {key} metadata") from None
        if key != "classes" and not isinstance(state[key], dict | None):  # classes: checked by check_state
            raise CheckpointError(f"{path}: {key} metadata is not a JSON object")
    return check_state(state, path)


def rng_state() -> dict[str, Any]:
    """Every RNG state, as tensors and plain values so that weights_only loading accepts it."""
    py = random.getstate()
    np_state = np.random.get_state()
    state: dict[str, Any] = {
        "python": [py[0], list(py[1]), py[2]],
        "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    np_state = state["numpy"]
    np.random.set_state((np_state[0], np_state[1].numpy().astype(np.uint32), *np_state[2:]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _listed(keys: list[str]) -> str:
    return ", ".join(keys[:3]) + (f" and {len(keys) - 3} more" if len(keys) > 3 else "")


def check_weights(weights: dict, expected: dict[str, torch.Tensor], name: str, where: str | Path) -> None:
    """Refuse ``weights`` unless they are CPU tensors with the keys, shapes and kinds (floating-point or integer)
    of model ``name``'s state dict ``expected``."""
    prefix = f"{where}: weights do not fit model {name}"
    missing = [k for k in expected if k not in weights]
    unexpected = [str(k)[:60] for k in weights if k not in expected]
    if missing or unexpected:
        what = "; ".join(part for part in (missing and f"missing {_listed(missing)}",
                                           unexpected and f"unexpected {_listed(unexpected)}") if part)
        raise CheckpointError(f"{prefix}: {what}")
    for key, want in expected.items():
        tensor = weights[key]
        if not isinstance(tensor, torch.Tensor) or tensor.layout != torch.strided or tensor.device.type != "cpu":
            raise CheckpointError(f"{prefix}: {key} is not a plain tensor")
        if tensor.shape != want.shape:
            raise CheckpointError(f"{prefix}: {key} has shape {tuple(tensor.shape)}, the model needs "
                                  f"{tuple(want.shape)}")
        if tensor.is_floating_point() != want.is_floating_point() or tensor.is_complex():
            raise CheckpointError(f"{prefix}: {key} has dtype {tensor.dtype}, the model needs {want.dtype}")
        if tensor.is_floating_point() and not torch.isfinite(tensor).all():
            raise CheckpointError(f"{where}: {key} holds NaN or infinite values; these weights cannot classify")


def check_model(state: object, where: str | Path) -> dict[str, Any]:
    """``state`` when its model name and settings pass the registry's checks (``models.model_settings``) and its
    weights fit that model, all found before anything is allocated for the model."""
    state = check_state(state, where)
    name = state["model_name"]
    try:
        expected = expected_state(name, state.get("model_kwargs"))
    except ConfigError as e:
        raise CheckpointError(f"{where}: {e}") from None
    check_weights(state["model"], expected, name, where)
    return state


def model_from_state(state: dict[str, Any]) -> AlexNet:
    """The model of a checkpoint's state, in eval mode, built only after ``check_model`` accepts the state; its
    ``classes`` name its outputs, as the checkpoint records them."""
    state = check_model(state, "checkpoint")
    name = state["model_name"]
    try:
        model = create_model(name, **(state.get("model_kwargs") or {}))
        model.load_state_dict(state["model"])
    except (RuntimeError, TypeError, ValueError) as e:
        raise CheckpointError(f"checkpoint weights do not fit model {name}: {first_line(e)[:160]}") from None
    model.classes = tuple(state.get("classes") or CLASSES)
    return model.eval()


def trained_state(weights: str | Path) -> dict[str, Any]:
    """The weights to use for inference, from a checkpoint or .safetensors path or the name of shipped weights
    (``pretrained.shipped()``): the EMA ones when the run kept them."""
    path = pretrained.resolve(weights)
    state = load_checkpoint(path)
    if state.get("ema_model") is not None:
        return check_model({**state, "model": state["ema_model"]}, f"{path} (EMA weights)")
    return check_model(state, path)


def load_for_inference(weights: str | Path, device: str | torch.device = "cpu",
                       calibrated: bool = True) -> tuple[AlexNet, dict[str, Any]]:
    """``load_model``'s model and the checkpoint state it came from; ``calibrated=False`` leaves the kept
    temperature unread (1.0), as a new fit needs."""
    from alexnet_cifar10.calibration import load_temperature

    state = trained_state(weights)
    model = model_from_state(state).float().to(device)
    model.temperature = load_temperature(weights) if calibrated else 1.0
    return model, state


def load_model(weights: str | Path, device: str | torch.device = "cpu") -> AlexNet:
    """The trained model of shipped weights (by name) or of a checkpoint or .safetensors path, in eval
    mode, in float32 (EMA weights when the run kept them).

    It takes float images in [0, 1], N x 3 x 32 x 32, and normalises them itself; ``model.classes`` names the
    outputs (the CIFAR-10 classes, in label order), and ``model.temperature`` is the temperature that
    ``evaluate --calibrate`` fitted for these weights (1.0 when none was): softmax(logits / temperature) gives
    calibrated probabilities, as ``predict`` reports them.
    """
    return load_for_inference(weights, device)[0]


HUB_HASH = re.compile(r"-([0-9a-f]{8,64})\.")  # torch.hub's convention: NAME-<sha256 prefix>.EXT


def weights_from_url(url: str, folder: Path, *, check_hash: bool = True, progress: bool = True) -> Path:
    """The file at ``url``, downloaded once into ``folder`` (one file per URL) as the data archive is: at most
    ``MAX_CHECKPOINT_BYTES``, into a ``.part`` file that a later call resumes, renamed when complete. With
    ``check_hash``, a file name carrying a sha256 prefix of at least 8 hex digits (``best-66a29e9e.pt``, as
    torch.hub names files) must match it, on every load."""
    from alexnet_cifar10.data.download import Expected, check_url, fetch

    name = Path(urllib.parse.unquote(urllib.parse.urlsplit(check_url(url)).path)).name
    if not name or name.startswith(".") or not name.isprintable():
        name = "weights.pt"
    found = HUB_HASH.search(name) if check_hash else None
    key = hashlib.sha256(url.encode()).hexdigest()[:16]
    expected = Expected("sha256", found.group(1) if found else "", MAX_CHECKPOINT_BYTES, "the checkpoint limit",
                        "download the file yourself and give its path")
    return fetch(url, Path(folder) / f"{key}-{name[-100:]}", expected, progress=progress)
