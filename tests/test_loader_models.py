"""The fast paths compute what the plain ones do: batched augmentation, models, precision."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageOps

from alexnet_cifar10.config import make_config
from alexnet_cifar10.data.loader import ResidentLoader, augment, draw
from alexnet_cifar10.errors import ConfigError
from alexnet_cifar10.models import MODELS, create_model, dirac_init, forward_flops, whiten_first_conv
from alexnet_cifar10.optimization import EMA, build_optimizer, lookahead, lr_factor
from alexnet_cifar10.training import mean_std


def reference_augment(img: np.ndarray, dy: int, dx: int, flip: bool, pad: int) -> np.ndarray:
    """What torchvision's RandomCrop(32, padding=pad) + RandomHorizontalFlip do, one PIL image."""
    pil = Image.fromarray(img.transpose(1, 2, 0))
    padded = ImageOps.expand(pil, border=pad, fill=0)
    crop = padded.crop((dx, dy, dx + 32, dy + 32))
    if flip:
        crop = ImageOps.mirror(crop)
    return np.asarray(crop).transpose(2, 0, 1)


def test_batched_crop_and_flip_match_per_image_reference() -> None:
    gen = torch.Generator().manual_seed(3)
    images = torch.randint(0, 256, (64, 3, 32, 32), dtype=torch.uint8, generator=gen)
    d = draw(64, 4, True, 0, gen, torch.device("cpu"))
    out = augment(images, d, pad=4)
    assert d.flip.any() and not d.flip.all() and len(set(d.dx.tolist())) > 3
    for i in range(64):
        ref = reference_augment(images[i].numpy(), int(d.dy[i]), int(d.dx[i]), bool(d.flip[i]), 4)
        np.testing.assert_array_equal(out[i].numpy(), ref)


def test_cutout_zeroes_one_square() -> None:
    images = torch.full((8, 3, 32, 32), 200, dtype=torch.uint8)
    gen = torch.Generator().manual_seed(0)
    d = draw(8, 0, False, 8, gen, torch.device("cpu"))
    out = augment(images, d, pad=0, cutout=8)
    for i in range(8):
        zero = (out[i, 0] == 0)
        rows, cols = zero.any(1).nonzero().flatten(), zero.any(0).nonzero().flatten()
        cy, cx = int(d.cy[i]), int(d.cx[i])
        assert rows.min() == max(cy - 4, 0) and rows.max() == min(cy + 3, 31)
        assert cols.min() == max(cx - 4, 0) and cols.max() == min(cx + 3, 31)
        assert (out[i, :, zero] == 0).all() and zero.sum() == len(rows) * len(cols)


def test_loader_epoch_is_a_permutation_and_replayable() -> None:
    images = torch.arange(50, dtype=torch.uint8).view(50, 1, 1, 1).expand(50, 3, 32, 32).contiguous()
    labels = torch.arange(50) % 10
    loader = ResidentLoader(images, labels, 10, train=True, pad=0, flip=False, channels_last=False)
    seen = torch.cat([y for _, y in loader.iterate(0)])
    assert len(loader) == 5 and sorted(seen.tolist()) == sorted(labels.tolist())
    first = [x for x, _ in loader.iterate(1)]
    again = [x for x, _ in loader.iterate(1, start_step=2)]
    assert all(torch.equal(a, b) for a, b in zip(first[2:], again, strict=True))
    assert not all(torch.equal(a, b) for a, b in zip(first, [x for x, _ in loader.iterate(2)], strict=True))
    x, _ = next(loader.iterate(0))
    assert x.dtype == torch.float32 and 0 <= x.min() and x.max() <= 1


def test_alternating_flip_shows_each_image_both_ways_in_two_epochs() -> None:
    images = torch.randint(0, 256, (40, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    labels = torch.arange(40)  # the label says which image a batch row is
    loader = ResidentLoader(images, labels, 8, train=True, pad=0, alternate_flip=True, channels_last=False)

    def flipped(epoch: int) -> torch.Tensor:
        out = torch.zeros(40, dtype=torch.bool)
        for x, y in loader.iterate(epoch):
            mirrored = (x * 255).round().to(torch.uint8).flip(3)
            out[y] = (mirrored == images[y]).flatten(1).all(1)
        return out

    first = flipped(0)
    assert 5 < int(first.sum()) < 35  # a random start
    assert torch.equal(flipped(1), ~first) and torch.equal(flipped(2), first)


@pytest.mark.parametrize("alternate", [False, True])
def test_sharded_batches_cover_the_global_batch(alternate: bool) -> None:
    images = torch.randint(0, 256, (40, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(2))
    labels = torch.arange(40)
    kwargs = {"train": True, "pad": 2, "alternate_flip": alternate}
    whole = ResidentLoader(images, labels, 8, **kwargs)
    parts = [ResidentLoader(images, labels, 8, rank=r, world=2, **kwargs) for r in (0, 1)]
    for epoch in (0, 1):  # the same crops and flips as one process would draw
        for (x, y), (x0, y0), (x1, y1) in zip(whole.iterate(epoch), parts[0].iterate(epoch), parts[1].iterate(epoch),
                                              strict=True):
            assert torch.equal(torch.cat([y0, y1]), y) and torch.equal(torch.cat([x0, x1]), x)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_every_variant_classifies_32x32(name: str) -> None:
    model = create_model(name).eval()
    assert hasattr(model, "features") and hasattr(model, "avgpool") and hasattr(model, "classifier")
    with torch.no_grad():
        out = model(torch.rand(2, 3, 32, 32))
    assert out.shape == (2, 10)
    has_bn = any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())
    assert has_bn == name.endswith("_bn")
    if name != "alexnet_224":
        assert forward_flops(model) > 1e6


def test_the_224_model_uses_the_original_layout() -> None:
    model = create_model("alexnet_224")
    first = model.features[0]
    assert first.kernel_size == (11, 11) and first.stride == (4, 4) and model.input_size == 224
    assert forward_flops(model) > 1e9


def test_overlapping_pools_keep_the_sizes_and_share_their_borders() -> None:
    overlap = create_model("alexnet_large_bn").eval()
    square = create_model("alexnet_large_bn", pool=(2, 2), pool_padding=0).eval()

    def pool_sizes(model: torch.nn.Module) -> list[tuple[int, ...]]:
        sizes: list[tuple[int, ...]] = []
        hooks = [m.register_forward_hook(lambda _m, _i, out: sizes.append(tuple(out.shape)))
                 for m in model.modules() if isinstance(m, torch.nn.MaxPool2d)]
        with torch.no_grad():
            model(torch.rand(1, 3, 32, 32))
        for hook in hooks:
            hook.remove()
        return sizes

    assert pool_sizes(overlap) == pool_sizes(square)
    assert forward_flops(overlap) == forward_flops(square)
    pool = next(m for m in overlap.modules() if isinstance(m, torch.nn.MaxPool2d))
    x = torch.zeros(1, 1, 8, 8)
    x[0, 0, 1, 1] = 1.0  # on the border of four 3x3 windows at stride 2, inside one 2x2 window
    assert pool(x).shape == (1, 1, 4, 4) and int(pool(x).sum()) == 4


def test_bf16_and_fp32_losses_agree() -> None:
    torch.manual_seed(0)
    model = create_model("alexnet", dropout=0.0).eval()
    x, y = torch.rand(16, 3, 32, 32), torch.randint(0, 10, (16,))
    loss32 = torch.nn.functional.cross_entropy(model(x), y)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss16 = torch.nn.functional.cross_entropy(model(x).float(), y)
    assert abs(loss32.item() - loss16.item()) < 0.03 * loss32.item()


def test_mean_std_of_uint8_images() -> None:
    images = torch.randint(0, 256, (100, 3, 8, 8), dtype=torch.uint8)
    mean, std = mean_std(images)
    ref = images.double().div(255)
    np.testing.assert_allclose(mean, ref.mean(dim=(0, 2, 3)).numpy(), rtol=1e-9)
    np.testing.assert_allclose(std, ref.std(dim=(0, 2, 3), unbiased=False).numpy(), rtol=1e-6)


def test_schedules() -> None:
    steps = 10
    one = lr_factor(make_config(epochs=2, schedule="onecycle"), steps)
    assert one(0) == 0 and one(5) == pytest.approx(1.0) and one(20) == 0
    const = lr_factor(make_config(epochs=2), steps)
    assert const(0) == const(19) == 1.0
    cos = lr_factor(make_config(epochs=2, schedule="cosine", warmup_epochs=1), steps)
    assert cos(0) == pytest.approx(0.1) and cos(9) == pytest.approx(1.0) and cos(20) == pytest.approx(0.0)


def test_ema_warms_up_and_tracks() -> None:
    model = torch.nn.Linear(2, 2)
    ema = EMA(model, 0.999)
    with torch.no_grad():
        model.weight.add_(1.0)
    ema.update(model)  # first decay is 2/11: the average moves most of the way at once
    assert torch.allclose(ema.module.weight, model.weight - 2 / 11, atol=1e-6)


def test_lookahead_pulls_the_weights_back_every_fifth_step_and_ends_on_the_average() -> None:
    model = torch.nn.Linear(2, 2)
    average = EMA(model, 0.0)
    start = model.weight.detach().clone()
    with torch.no_grad():
        model.weight.add_(1.0)
    lookahead(average, model, step=4, total=10)  # not a fifth step: nothing moves
    assert torch.equal(model.weight, start + 1) and torch.equal(average.module.weight, start)
    lookahead(average, model, step=5, total=10)  # decay 0.95^5 * (5/10)^3 toward the average
    decay = 0.95 ** 5 * 0.5 ** 3
    assert torch.allclose(model.weight, start + (1 - decay), atol=1e-6)
    assert torch.equal(model.weight, average.module.weight)
    with torch.no_grad():
        model.weight.add_(1.0)
    lookahead(average, model, step=9, total=11)  # not a fifth step, not the last: nothing moves
    assert torch.allclose(model.weight, start + (1 - decay) + 1, atol=1e-6)
    lookahead(average, model, step=11, total=11)  # the last step: the weights land on the average, unblended
    assert torch.allclose(model.weight, start + (1 - decay), atol=1e-6)
    assert torch.equal(model.weight, average.module.weight)
    with torch.no_grad():
        model.weight.add_(1.0)
    lookahead(average, model, step=15, total=15)  # a last step that is a fifth one blends first (airbench)
    last = 0.95 ** 5
    assert torch.allclose(model.weight, start + (1 - decay) + (1 - last), atol=1e-6)
    assert torch.equal(model.weight, average.module.weight)


def test_no_decay_norm_bias_keeps_weight_decay_off_1d_parameters() -> None:
    model = create_model("alexnet_narrow_bn")
    groups = build_optimizer(make_config("best", decay_norm_bias=False), model).param_groups
    decayed = {id(p) for g in groups if g["weight_decay"] > 0 for p in g["params"]}
    names = {id(p): n for n, p in model.named_parameters()}
    assert sorted(names[i] for i in decayed) == sorted(n for n, p in model.named_parameters() if p.ndim > 1)
    bn = next(m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d))
    assert id(bn.weight) not in decayed and id(model.classifier[-1].bias) not in decayed
    assert sum(len(g["params"]) for g in groups) == len(list(model.parameters()))
    whole = build_optimizer(make_config("best", decay_norm_bias=True), model).param_groups
    assert len(whole) == 1 and whole[0]["weight_decay"] == 5e-4
    assert [id(p) for p in whole[0]["params"]] == [id(p) for p in model.parameters()]  # old checkpoints load


def test_muon_moves_the_filters_and_hidden_weights_and_sgd_the_rest() -> None:
    model = create_model("alexnet_narrow_bn")
    for bn in model.modules():
        if isinstance(bn, torch.nn.BatchNorm2d):
            bn.weight.requires_grad_(False)  # --freeze-bn-scale: nothing to optimise
    optimizer = build_optimizer(make_config("best", optimizer="muon", muon_lr=0.05, lr=0.3), model)
    sgd, muon = optimizer.optimizers
    names = {id(p): n for n, p in model.named_parameters()}
    in_muon = sorted(names[id(p)] for g in muon.param_groups for p in g["params"])
    in_sgd = sorted(names[id(p)] for g in sgd.param_groups for p in g["params"])
    assert in_muon == sorted(n for n, p in model.named_parameters() if p.ndim > 1 and n != "classifier.6.weight")
    assert in_sgd == sorted(n for n, p in model.named_parameters()
                            if p.requires_grad and (p.ndim == 1 or n == "classifier.6.weight"))
    assert optimizer.param_groups[0]["lr"] == 0.3 and muon.param_groups[0]["lr"] == 0.05  # the logged lr is SGD's


def test_muon_is_torchs_muon_with_filters_as_matrices() -> None:
    """One step on a convolution (channels_last) and a linear layer, against torch.optim.Muon on their matrices;
    torch computes Newton-Schulz in bf16, this Muon in fp32 or bf16, so they agree to bf16's precision."""
    from alexnet_cifar10.optimization import Muon

    torch.manual_seed(0)
    conv = torch.nn.Conv2d(8, 16, 3, bias=False).to(memory_format=torch.channels_last)
    linear = torch.nn.Linear(40, 12, bias=False)
    matrices = [torch.nn.Parameter(conv.weight.detach().flatten(1).clone()),
                torch.nn.Parameter(linear.weight.detach().clone())]
    conv(torch.randn(4, 8, 6, 6).to(memory_format=torch.channels_last)).square().sum().backward()
    linear(torch.randn(64, 40)).square().sum().backward()  # a full-rank gradient: NS inflates tiny directions
    matrices[0].grad, matrices[1].grad = conv.weight.grad.flatten(1).clone(), linear.weight.grad.clone()
    torch.optim.Muon(matrices, lr=0.1, momentum=0.9, weight_decay=0.05).step()
    for dtype, tolerance in ((torch.float32, 0.05), (torch.bfloat16, 0.08)):  # of an update's largest entry
        start = [conv.weight.detach().clone(), linear.weight.detach().clone()]
        Muon([{"params": [conv.weight, linear.weight]}], lr=0.1, momentum=0.9, weight_decay=0.05, dtype=dtype).step()
        assert conv.weight.is_contiguous(memory_format=torch.channels_last)  # updated in place
        for mine, torchs, before in zip((conv.weight.detach().flatten(1), linear.weight.detach()), matrices,
                                        (start[0].flatten(1), start[1]), strict=True):
            expected = torchs.detach() - before
            assert ((mine - before) - expected).abs().max() <= tolerance * expected.abs().max()
        with torch.no_grad():
            conv.weight.copy_(start[0])
            linear.weight.copy_(start[1])


def test_norm_bias_lr_scale_speeds_up_the_batchnorm_shifts_only() -> None:
    model = create_model("alexnet_narrow_bn")
    shifts = {id(m.bias) for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)}
    for decay in (True, False):
        config = make_config("best", lr=0.1, norm_bias_lr_scale=64.0, decay_norm_bias=decay)
        groups = build_optimizer(config, model).param_groups
        assert groups[0]["lr"] == 0.1  # the group whose lr the run logs
        setting = {id(p): (g["lr"], g["weight_decay"]) for g in groups for p in g["params"]}
        assert len(setting) == len(list(model.parameters())) == sum(len(g["params"]) for g in groups)
        for name, p in model.named_parameters():
            lr, wd = setting[id(p)]
            if id(p) in shifts:  # 64 times the lr, the same decay per step (lr x wd)
                assert lr == pytest.approx(6.4) and lr * wd == pytest.approx(0.1 * 5e-4 if decay else 0.0), name
            else:
                assert (lr, wd) == (0.1, 5e-4 if decay or p.ndim > 1 else 0.0), name
    with pytest.raises(ConfigError, match=r"--norm-bias-lr-scale must lie in \(0, 1000\]"):
        make_config("best", norm_bias_lr_scale=0.0)


def test_dirac_init_makes_the_first_filters_pass_their_input_through() -> None:
    torch.manual_seed(0)
    model = create_model("alexnet_narrow_bn")
    before = [m.weight.detach().clone() for m in model.features if isinstance(m, torch.nn.Conv2d)]
    dirac_init(model)
    convs = [m for m in model.features if isinstance(m, torch.nn.Conv2d)]
    for conv, old in zip(convs, before, strict=True):
        x = torch.randn(2, conv.in_channels, 8, 8)
        out = torch.nn.functional.conv2d(x, conv.weight, padding=1)
        assert torch.allclose(out[:, :conv.in_channels], x, atol=1e-6)  # identity filters
        assert torch.equal(conv.weight[conv.in_channels:], old[conv.in_channels:])  # the rest stay random


def smooth_images(n: int, seed: int) -> torch.Tensor:
    """uint8 images with strongly correlated neighbouring pixels and channels (like photographs)."""
    gen = torch.Generator().manual_seed(seed)
    coarse = torch.rand(n, 1, 8, 8, generator=gen) + 0.3 * torch.rand(n, 3, 8, 8, generator=gen)
    return torch.nn.functional.interpolate(coarse, size=32, mode="bilinear").mul(180).clamp(0, 255).to(torch.uint8)


def test_whitening_decorrelates_the_first_layer_and_freezes_it() -> None:
    model = create_model("alexnet_tiny")  # 16 first-layer channels: 8 directions and their negatives
    model.set_normalization(*mean_std(smooth_images(400, 0)))
    whiten_first_conv(model, smooth_images(400, 0))
    conv = model.features[0]  # a model without BatchNorm: its bias is zeroed and frozen too
    assert not conv.weight.requires_grad and not conv.bias.requires_grad and not conv.bias.any()
    assert torch.equal(conv.weight[8:], -conv.weight[:8])
    images = smooth_images(300, 1)  # other images from the same distribution
    with torch.no_grad():
        out = conv((images.float() / 255 - model.mean) / model.std)[:, :8, 1:-1, 1:-1]  # no zero padding
    features = out.permute(0, 2, 3, 1).reshape(-1, 8).double()
    cov = features.T @ features / len(features)
    assert torch.allclose(cov, torch.eye(8, dtype=torch.float64), atol=0.15), cov
    raw = (images.double() / 255 - model.mean.double()) / model.std.double()
    assert torch.nn.functional.unfold(raw, 3).transpose(1, 2).reshape(-1, 27).T.corrcoef().abs().mean() > 0.5


def test_whitening_needs_a_first_layer_it_can_fill() -> None:
    model = create_model("alexnet")  # 64 channels from 27-dimensional 3x3 patches: at most 54
    with pytest.raises(ConfigError, match="at most 54"):
        whiten_first_conv(model, smooth_images(20, 0))


def test_shift_tta_averages_the_moved_images() -> None:
    from alexnet_cifar10.evaluation import logits_of

    class Probe(torch.nn.Module):  # "logits": one pixel of each channel
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x[:, :, 5, 7]

    x = torch.rand(4, 3, 32, 32).contiguous(memory_format=torch.channels_last)
    # the image moved 2 pixels down-right shows pixel (3, 5) at (5, 7); moved up-left, pixel (7, 9)
    moved = (x[:, :, 3, 5] + x[:, :, 7, 9]) / 2
    assert torch.allclose(logits_of(Probe(), x, tta=False, shift=2), (x[:, :, 5, 7] + moved) / 2)
    # with flips each view is averaged with its mirror image, whose pixel (5, 7) is the view's (5, 24)
    flips = (x[:, :, 5, 7] + x[:, :, 5, 24]) / 2
    moved = (x[:, :, 3, 5] + x[:, :, 3, 22] + x[:, :, 7, 9] + x[:, :, 7, 26]) / 4
    assert torch.allclose(logits_of(Probe(), x, tta=True, shift=2), (flips + moved) / 2)
    # at the border the moved image is reflected, not zero-padded
    assert torch.allclose(logits_of(lambda t: t[:, :, 0, 0], x, tta=False, shift=1),
                          (x[:, :, 0, 0] + x[:, :, 1, 1]) / 2)


@pytest.mark.parametrize(("old", "new"), [("alexnet_fast_bn", "alexnet_narrow_bn"),
                                          ("alexnet_big_overlap_pool_bn", "alexnet_large_bn")])
def test_checkpoints_of_renamed_models_still_load(old: str, new: str, tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """A checkpoint carries its model's name: the old names in published files rebuild today's network, with a
    warning naming the new name, once."""
    from alexnet_cifar10 import models
    from alexnet_cifar10.checkpoint import load_model, save_checkpoint

    monkeypatch.setattr(models, "_warned", set())
    torch.manual_seed(0)
    model = create_model(new, dropout=0.25).eval()
    save_checkpoint(tmp_path / "old.pt", {"model_name": old, "model_kwargs": {"dropout": 0.25},
                                          "model": model.state_dict()})
    with pytest.warns(FutureWarning, match=f"model name {old} is deprecated: it is {new} now") as warned:
        loaded = load_model(tmp_path / "old.pt")
        load_model(tmp_path / "old.pt")
    assert len(warned) == 1
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))
    assert old not in MODELS  # not offered to new runs


def test_a_name_of_no_published_file_is_unknown_and_a_name_registers_once() -> None:
    from alexnet_cifar10.errors import ConfigError
    from alexnet_cifar10.models import register

    with pytest.raises(ConfigError, match="unknown model 'alexnet_classic'"):
        create_model("alexnet_classic")

    def alexnet_tiny() -> dict[str, object]:
        return {"convs": ((8, 3, 1),) * 5, "pool_after": (0, 1, 4), "hidden": 8}

    with pytest.raises(ValueError, match="a model named alexnet_tiny is already registered"):
        register(alexnet_tiny)
    assert MODELS["alexnet_tiny"].kwargs["hidden"] == 64  # the first registration stands


def test_test_time_augmentation_averages_the_views_it_names() -> None:
    """Flips: the mean of the image's and its mirror's logits; + 1-pixel moves: half that, plus a quarter each of
    the same for the image moved one pixel up-left and down-right (reflect-padded)."""
    from alexnet_cifar10.evaluation import logits_of

    torch.manual_seed(0)
    model = create_model("alexnet_tiny").eval()
    x = torch.rand(4, 3, 32, 32)
    with torch.no_grad():
        plain = model(x)
        flips = (model(x) + model(x.flip(3))) / 2
        padded = torch.nn.functional.pad(x, (1, 1, 1, 1), mode="reflect")
        moved = [padded[..., :32, :32], padded[..., 2:, 2:]]
        both = flips / 2 + sum((model(m) + model(m.flip(3))) / 2 for m in moved) / 4
        torch.testing.assert_close(logits_of(model, x, tta=False), plain)
        torch.testing.assert_close(logits_of(model, x, tta=True), flips)
        torch.testing.assert_close(logits_of(model, x, tta=True, shift=1), both)
    assert not torch.allclose(flips, plain) and not torch.allclose(both, flips)  # each view changes the answer


def test_the_slim_network_has_its_shapes_and_flops() -> None:
    """alexnet_slim_bn: the maps after each pool, and its FLOPs counted by hand (2 x multiply-adds of the five
    3x3 convolutions at 32, 32, 16, 8 and 4 pixels and of the three linear layers)."""
    model = create_model("alexnet_slim_bn").eval()
    shapes: list[tuple[int, ...]] = []
    hooks = [m.register_forward_hook(lambda _m, _i, out: shapes.append(tuple(out.shape[1:])))
             for m in model.features if isinstance(m, torch.nn.Conv2d | torch.nn.MaxPool2d)]
    with torch.no_grad():
        assert model(torch.rand(2, 3, 32, 32)).shape == (2, 10)
    for hook in hooks:
        hook.remove()
    assert shapes == [(48, 32, 32), (64, 32, 32), (64, 16, 16), (256, 16, 16), (256, 8, 8), (384, 8, 8),
                      (384, 4, 4), (384, 4, 4), (384, 2, 2)]
    convs = [(3, 48, 32), (48, 64, 32), (64, 256, 16), (256, 384, 8), (384, 384, 4)]
    linears = [(384 * 2 * 2, 1024), (1024, 1024), (1024, 10)]
    by_hand = 2 * (sum(9 * cin * cout * side * side for cin, cout, side in convs) + sum(a * b for a, b in linears))
    assert forward_flops(model) == by_hand
    assert round(by_hand / 1e6, 1) == 295.8  # what `models` lists and RECIPES.md counts


def test_whitening_is_deterministic() -> None:
    """The same images give the same frozen filters, bit for bit, whatever the global random state."""
    images = smooth_images(600, 3)
    filters = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        model = create_model("alexnet_slim_bn")
        model.set_normalization(*mean_std(images))
        whiten_first_conv(model, images)
        filters.append(model.features[0].weight.detach().clone())
    assert torch.equal(filters[0], filters[1])
    assert torch.equal(filters[0][24:], -filters[0][:24])  # 24 directions with both signs fill 48 channels
