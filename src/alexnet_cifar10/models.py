"""AlexNet variants for 32x32 CIFAR-10, structured as torchvision's (features/avgpool/classifier).

Every model takes float images in [0, 1], N x 3 x 32 x 32, and normalises them itself with the
training mean and std it carries as buffers, so a checkpoint, an ONNX file and a torch.hub model
all take the same input.
"""

from __future__ import annotations

import inspect
import math
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from alexnet_cifar10.errors import ConfigError, shown

CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2470, 0.2435, 0.2616)


class AlexNet(nn.Module):
    """Five convolutions with ReLU and max-pooling, then three fully-connected layers with dropout.

    ``convs`` lists (out_channels, kernel, stride) per convolution; ``pool_after`` the 0-based
    convolutions followed by a max-pool; ``pool_first`` pools straight after the convolution, before
    BatchNorm and ReLU (airbench's order: BatchNorm and ReLU then touch a quarter of the values).
    ``pool`` is (kernel, stride); ``pool_padding`` 1 with (3, 2) gives AlexNet's overlapping pools at the
    same output sizes as (2, 2). ``input_size`` > 32 upsamples inputs on the device (the original
    224-pixel network).
    """

    def __init__(
        self,
        convs: Sequence[tuple[int, int, int]] = ((64, 3, 1), (192, 3, 1), (384, 3, 1), (256, 3, 1), (256, 3, 1)),
        pool_after: Sequence[int] = (0, 1, 4),
        pool: tuple[int, int] = (2, 2),
        pool_padding: int = 0,
        pool_output: int = 2,
        hidden: int = 1024,
        dropout: float = 0.5,
        batch_norm: bool = False,
        pool_first: bool = False,
        input_size: int = 32,
        num_classes: int = 10,
        mean: Sequence[float] = CIFAR_MEAN,
        std: Sequence[float] = CIFAR_STD,
    ) -> None:
        super().__init__()
        self.input_size = input_size
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1))
        layers: list[nn.Module] = []
        in_ch = 3
        for i, (out_ch, kernel, stride) in enumerate(convs):
            layers.append(nn.Conv2d(in_ch, out_ch, kernel, stride, padding=kernel // 2, bias=not batch_norm))
            pooling = [nn.MaxPool2d(pool[0], pool[1], pool_padding)] if i in pool_after else []
            if pool_first:
                layers += pooling
            if batch_norm:
                layers.append(nn.BatchNorm2d(out_ch))
            layers.append(nn.ReLU(inplace=True))
            if not pool_first:
                layers += pooling
            in_ch = out_ch
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d((pool_output, pool_output))
        flat = in_ch * pool_output * pool_output
        self.classifier = nn.Sequential(
            nn.Dropout(p=dropout),
            nn.Linear(flat, hidden),
            nn.ReLU(inplace=True),
            nn.Dropout(p=dropout),
            nn.Linear(hidden, hidden),
            nn.ReLU(inplace=True),
            nn.Linear(hidden, num_classes),
        )

    def set_normalization(self, mean: Sequence[float], std: Sequence[float]) -> None:
        self.mean.copy_(torch.as_tensor(mean, dtype=torch.float32).view(1, 3, 1, 1))
        self.std.copy_(torch.as_tensor(std, dtype=torch.float32).view(1, 3, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = (x - self.mean) / self.std
        if self.input_size != x.shape[-1]:
            x = F.interpolate(x, size=(self.input_size, self.input_size), mode="bilinear", align_corners=False)
        x = self.features(x)
        x = self.avgpool(x)
        x = torch.flatten(x, 1)
        return self.classifier(x)


@dataclass(frozen=True)
class ModelSpec:
    name: str
    description: str
    kwargs: dict = field(default_factory=dict)

    def build(self, **overrides: object) -> AlexNet:
        return AlexNet(**{**self.kwargs, **overrides})


MODELS: dict[str, ModelSpec] = {}


def register(builder: Callable[[], dict[str, object]]) -> Callable[[], dict[str, object]]:
    """Register a model under its builder's name: the builder returns the AlexNet settings, and its docstring
    is the description that `alexnet-cifar10 models` prints."""
    name = builder.__name__
    if name in MODELS:  # as torchvision's registry: a second builder would silently replace the first
        raise ValueError(f"a model named {name} is already registered")
    MODELS[name] = ModelSpec(name, (builder.__doc__ or "").strip(), builder())
    return builder


_ALEXNET_CONVS = ((64, 3, 1), (192, 3, 1), (384, 3, 1), (256, 3, 1), (256, 3, 1))
_NARROW_CONVS = ((32, 3, 1), (128, 3, 1), (256, 3, 1), (256, 3, 1), (256, 3, 1))
_LARGE_CONVS = ((64, 3, 1), (128, 3, 1), (256, 3, 1), (512, 3, 1), (512, 3, 1))
_SLIM_CONVS = ((48, 3, 1), (64, 3, 1), (256, 3, 1), (384, 3, 1), (384, 3, 1))
# the large networks pool after conv 2, 3, 4 and 5, each pool before its BatchNorm and ReLU
_POOL_FIRST: dict[str, object] = {"pool_after": (1, 2, 3, 4), "hidden": 1024, "batch_norm": True, "pool_first": True}


@register
def alexnet() -> dict[str, object]:
    """AlexNet adapted to 32x32: 3x3 convs 64-192-384-256-256, max-pools after conv 1, 2, 5, no BatchNorm"""
    return {"convs": _ALEXNET_CONVS, "pool_after": (0, 1, 4), "hidden": 1024}


@register
def alexnet_narrow_bn() -> dict[str, object]:
    """the seed recipe's: 3x3 convs 32-128-256-256-256 with BatchNorm, max-pools after conv 1, 2, 4, 5"""
    return {"convs": _NARROW_CONVS, "pool_after": (0, 1, 3, 4), "hidden": 1024, "batch_norm": True}


@register
def alexnet_large_bn() -> dict[str, object]:
    """the best recipe's: 3x3 convs 64-128-256-512-512, overlapping 3x3/2 max-pools after conv 2-5, BatchNorm"""
    return {"convs": _LARGE_CONVS, "pool": (3, 2), "pool_padding": 1, **_POOL_FIRST}


@register
def alexnet_slim_bn() -> dict[str, object]:
    """3x3 convs 48-64-256-384-384 with BatchNorm, overlapping 3x3/2 max-pools after conv 2-5: width at 8x8 and 4x4"""
    return {"convs": _SLIM_CONVS, "pool": (3, 2), "pool_padding": 1, **_POOL_FIRST}


@register
def alexnet_224() -> dict[str, object]:
    """the original 224-pixel AlexNet (11x11 stride-4 conv, 4096-4096), on inputs upsampled on the device"""
    return {"convs": ((64, 11, 4), (192, 5, 1), (384, 3, 1), (256, 3, 1), (256, 3, 1)), "pool_after": (0, 1, 4),
            "pool": (3, 2), "pool_output": 6, "hidden": 4096, "input_size": 224}


@register
def alexnet_tiny() -> dict[str, object]:
    """a narrow alexnet (16-32-64-64-32, 64-64 classifier) for tests and quick checks"""
    return {"convs": ((16, 3, 1), (32, 3, 1), (64, 3, 1), (64, 3, 1), (32, 3, 1)), "pool_after": (0, 1, 4),
            "hidden": 64}


# Names of earlier releases that published files carry (results/), each standing for today's network, as timm's
# register_model_deprecations keeps old names: they load and train, with a warning, and `models` does not list them.
DEPRECATED_NAMES: dict[str, str] = {"alexnet_fast_bn": "alexnet_narrow_bn",
                                    "alexnet_big_overlap_pool_bn": "alexnet_large_bn"}
_warned: set[str] = set()


def current_name(name: str) -> str:
    """The registered name for ``name``: itself, or the network a deprecated name stands for (warned once)."""
    new = DEPRECATED_NAMES.get(name)
    if new is None:
        return name
    if name not in _warned:
        _warned.add(name)
        warnings.warn(f"model name {name} is deprecated: it is {new} now", FutureWarning, stacklevel=2)
    return new


def model_kwargs(name: str) -> dict[str, object]:
    """The AlexNet settings of a model name: a registered one, or a deprecated name of one."""
    name = current_name(name)
    if name in MODELS:
        return MODELS[name].kwargs
    raise ConfigError(f"unknown model {name!r}; choose one of: {', '.join(MODELS)}")


NUM_CLASSES = 10  # the outputs every model has: CIFAR-10's classes
MAX_PARAMETERS = 100_000_000  # the most weights a model may have; alexnet_224, the largest here, has 57 million


def _is_int(value: object, low: int, high: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and low <= value <= high


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _ints(value: object, low: int, high: int, length: range) -> bool:
    return isinstance(value, list | tuple) and len(value) in length and all(_is_int(v, low, high) for v in value)


def _triple(value: object) -> bool:
    return (isinstance(value, list | tuple) and len(value) == 3 and _is_int(value[0], 1, 4096)
            and _is_int(value[1], 1, 11) and _is_int(value[2], 1, 4))


def _three_numbers(value: object, positive: bool) -> bool:
    return (isinstance(value, list | tuple) and len(value) == 3 and all(_is_number(v) for v in value)
            and (not positive or all(v > 0 for v in value)))


# Every setting AlexNet takes, with the values a model may have: what a checkpoint's model_kwargs or a
# safetensors file's metadata may ask for (each range holds every registered model and then some).
SETTINGS: dict[str, tuple[Callable[[object], bool], str]] = {
    "convs": (lambda v: isinstance(v, list | tuple) and 1 <= len(v) <= 8 and all(_triple(c) for c in v),
              "1 to 8 (channels 1-4096, kernel 1-11, stride 1-4) triples"),
    "pool_after": (lambda v: _ints(v, 0, 7, range(0, 9)), "a list of convolution indices 0-7"),
    "pool": (lambda v: _ints(v, 1, 4, range(2, 3)), "a (kernel, stride) pair of integers 1-4"),
    "pool_padding": (lambda v: _is_int(v, 0, 2), "an integer 0-2"),
    "pool_output": (lambda v: _is_int(v, 1, 8), "an integer 1-8"),
    "hidden": (lambda v: _is_int(v, 1, 8192), "an integer 1-8192"),
    "dropout": (lambda v: _is_number(v) and 0 <= v < 1, "a number in [0, 1)"),
    "batch_norm": (lambda v: isinstance(v, bool), "true or false"),
    "pool_first": (lambda v: isinstance(v, bool), "true or false"),
    "input_size": (lambda v: _is_int(v, 32, 256), "an integer 32-256"),
    "num_classes": (lambda v: v == NUM_CLASSES and not isinstance(v, bool), f"{NUM_CLASSES} (CIFAR-10's classes)"),
    "mean": (lambda v: _three_numbers(v, positive=False), "three finite numbers"),
    "std": (lambda v: _three_numbers(v, positive=True), "three positive finite numbers"),
}


_DEFAULTS = {k: p.default for k, p in inspect.signature(AlexNet.__init__).parameters.items() if k != "self"}
assert set(_DEFAULTS) == set(SETTINGS), "SETTINGS must hold a rule for every AlexNet argument"


def model_settings(name: str, overrides: Mapping[str, object] | None = None) -> dict[str, object]:
    """The AlexNet settings of model ``name`` with ``overrides``, checked before anything is built: only settings
    AlexNet takes, each within its range (``SETTINGS``), a feature map of at least one pixel after every
    layer and at most ``MAX_PARAMETERS`` weights. A ConfigError says what is wrong."""
    settings = {**model_kwargs(name), **(overrides or {})}
    for key, value in settings.items():
        rule = SETTINGS.get(key) if isinstance(key, str) else None
        if rule is None:
            raise ConfigError(f"model {name} has no setting {shown(key)} (models.SETTINGS lists those "
                              "it has)")
        if not rule[0](value):
            raise ConfigError(f"model setting {key}={shown(value)} is not {rule[1]}")
    full = {**_DEFAULTS, **settings}
    convs, pool_after, (kernel, stride), padding = full["convs"], full["pool_after"], full["pool"], full["pool_padding"]
    if padding > kernel // 2:
        raise ConfigError(f"model setting pool_padding={padding} is more than half the pool kernel {kernel}")
    if any(i >= len(convs) for i in pool_after):
        raise ConfigError(f"model setting pool_after={shown(pool_after)} names a convolution beyond the "
                          f"{len(convs)} there are")
    side = full["input_size"]
    for i, (_, k, s) in enumerate(convs):
        side = (side + 2 * (k // 2) - k) // s + 1
        if i in pool_after:
            side = (side + 2 * padding - kernel) // stride + 1
        if side < 1:
            raise ConfigError(f"model {name} with these settings shrinks the image to nothing at convolution {i + 1}")
    with torch.device("meta"):  # shapes only: nothing is allocated
        count = count_parameters(AlexNet(**settings))
    if count > MAX_PARAMETERS:
        raise ConfigError(f"model {name} with these settings has {count:,} weights, more than the "
                          f"{MAX_PARAMETERS:,} limit")
    return settings


def expected_state(name: str, overrides: Mapping[str, object] | None = None) -> dict[str, torch.Tensor]:
    """The state dict of model ``name`` with ``overrides`` (checked by ``model_settings``) as meta tensors: its
    keys, shapes and dtypes, found without allocating any weights."""
    settings = model_settings(name, overrides)
    with torch.device("meta"):
        return AlexNet(**settings).state_dict()


def batch_norms(model: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    """The BatchNorm layers of ``model``, of any dimension and synchronised or not."""
    return [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


def dirac_init(model: AlexNet) -> None:
    """Set each convolution's first in-channels filters to the identity (airbench): at the start every such
    layer passes its input through, like a residual connection, and the others keep their random init."""
    with torch.no_grad():
        for conv in model.features:
            if isinstance(conv, nn.Conv2d):
                nn.init.dirac_(conv.weight[:conv.in_channels])


def whiten_first_conv(model: AlexNet, images: torch.Tensor, eps: float = 5e-4, sample: int = 5000) -> None:
    """Set the first convolution to a fixed whitening of the images' patches and freeze it (airbench).

    Its filters are the top eigenvectors of the covariance of the normalised k x k x 3 patches of
    ``images`` (uint8, N x 3 x H x W), each scaled by 1 / sqrt(eigenvalue + eps) and paired with its
    negative, so that after ReLU both signs of each direction survive. They stay frozen: the network
    starts from decorrelated features instead of having to learn them.
    """
    conv = model.features[0]
    assert isinstance(conv, nn.Conv2d)
    out_ch, in_ch, k, _ = conv.weight.shape
    dims = in_ch * k * k
    check_whitening(out_ch, k, model.input_size)
    cov, n = torch.zeros(dims, dims, dtype=torch.float64), 0
    mean, std = model.mean.double().cpu(), model.std.double().cpu()
    for chunk in images[::max(1, len(images) // sample)].split(500):  # strided: spread over the classes
        x = (chunk.cpu().double() / 255 - mean) / std
        patches = F.unfold(x, k).transpose(1, 2).reshape(-1, dims)  # in the (C, kh, kw) order of the weight
        cov += patches.T @ patches
        n += len(patches)
    cov /= n
    values, vectors = torch.linalg.eigh(cov)  # ascending
    top = vectors[:, -(out_ch // 2):].flip(1) / (values[-(out_ch // 2):].flip(0) + eps).sqrt()
    filters = torch.cat([top, -top], dim=1).T.reshape(out_ch, in_ch, k, k)
    with torch.no_grad():
        conv.weight.copy_(filters.to(conv.weight.dtype))
        if conv.bias is not None:  # models without BatchNorm: a zero bias, frozen too
            conv.bias.zero_()
    freeze_first_conv(model)


def freeze_first_conv(model: AlexNet) -> None:
    """Keep the first convolution as it is (a resumed --whiten run gets its filters from the checkpoint)."""
    for p in model.features[0].parameters():
        p.requires_grad_(False)


def check_whitening(channels: int, kernel: int, input_size: int = 32) -> None:
    """A first convolution that --whiten can fill: an even number of channels, at most two per dimension
    of its 3 x k x k patches, seeing the 32-pixel images themselves."""
    if input_size != 32:
        raise ConfigError(f"--whiten needs a model that sees the 32-pixel images; this one upsamples to "
                          f"{input_size}")
    if channels % 2 or channels > 2 * 3 * kernel * kernel:
        raise ConfigError(f"--whiten needs an even number of first-layer channels, at most "
                          f"{2 * 3 * kernel * kernel} for {kernel}x{kernel} kernels; this model has {channels}")


def check_whitenable(name: str) -> None:
    """``check_whitening`` for a registered model, without building it (a config checks this before any data
    is loaded); unknown names are left to ``create_model``."""
    if current_name(name) in MODELS:
        kwargs = model_kwargs(name)
        channels, kernel, _ = kwargs["convs"][0]
        check_whitening(channels, kernel, kwargs.get("input_size", 32))


def create_model(name: str, **overrides: object) -> AlexNet:
    """The network ``name`` (see ``MODELS``), with ``overrides`` of its settings (e.g. ``dropout``), each checked
    by ``model_settings`` first."""
    return AlexNet(**model_settings(name, overrides))


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def forward_flops(model: nn.Module, input_size: int = 32) -> int:
    """FLOPs of one forward pass of one image, counted by torch's FLOP counter."""
    from torch.utils.flop_counter import FlopCounterMode

    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(torch.zeros(1, 3, input_size, input_size, device=device))
    model.train(was_training)
    return int(counter.get_total_flops())


def training_pflop(model: nn.Module, images: int, epochs: int) -> float:
    """A run's training compute in PFLOP: the forward FLOPs of one image x 3 (forward and backward) x the
    training images x the epochs; the same count on every machine."""
    return forward_flops(model) * 3 * images * epochs / 1e15


def describe_models() -> list[dict[str, object]]:
    rows = []
    for spec in MODELS.values():
        model = spec.build()
        rows.append({
            "name": spec.name,
            "params": count_parameters(model),
            "mflops": forward_flops(model) / 1e6,
            "description": spec.description,
        })
    return rows


