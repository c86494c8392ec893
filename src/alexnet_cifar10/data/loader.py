"""Device-resident batches with augmentation done in batch (the airbench pattern).

The whole split stays one uint8 tensor on the training device. Each epoch draws one
permutation; each step gathers its images, crops them with one gather, flips with a masked
flip, optionally cuts out a square, and only then converts to float in [0, 1]. The random draws
of a step come from a generator seeded by (seed, epoch, step), so any step can be replayed
exactly, which is what makes mid-epoch resume bit-exact.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch


def _generator(device: torch.device, *keys: int) -> torch.Generator:
    seed = 0
    for k in keys:
        seed = (seed * 1_000_003 + int(k) + 1) % (2**62)
    return torch.Generator(device=device).manual_seed(seed)


@dataclass
class Draws:
    """The random choices of one batch: crop offsets (0..2*pad), flip mask, cutout centres."""

    dy: torch.Tensor
    dx: torch.Tensor
    flip: torch.Tensor
    cy: torch.Tensor | None = None
    cx: torch.Tensor | None = None


def draw(n: int, pad: int, flip: bool, cutout: int, gen: torch.Generator, device: torch.device) -> Draws:
    def ints(high: int) -> torch.Tensor:
        return torch.randint(0, high, (n,), generator=gen, device=device)

    dy, dx = ints(2 * pad + 1), ints(2 * pad + 1)
    mask = ints(2).bool() if flip else torch.zeros(n, dtype=torch.bool, device=device)
    cy, cx = (ints(32), ints(32)) if cutout else (None, None)
    return Draws(dy, dx, mask, cy, cx)


def augment(images: torch.Tensor, d: Draws, pad: int, cutout: int = 0) -> torch.Tensor:
    """Batched zero-padded random crop, horizontal flip and cutout of uint8 N x C x H x W images."""
    n, c, h, w = images.shape
    out = images
    if pad:
        padded = torch.nn.functional.pad(images, (pad, pad, pad, pad))
        rows = (d.dy[:, None] + torch.arange(h, device=images.device))[:, None, :, None]
        cols = (d.dx[:, None] + torch.arange(w, device=images.device))[:, None, None, :]
        batch = torch.arange(n, device=images.device)[:, None, None, None]
        chan = torch.arange(c, device=images.device)[None, :, None, None]
        out = padded[batch, chan, rows, cols]
    out = torch.where(d.flip[:, None, None, None], out.flip(3), out)
    if cutout and d.cy is not None and d.cx is not None:
        # a cutout x cutout square of zeros covering [c - cutout // 2, c - cutout // 2 + cutout)
        ys = torch.arange(h, device=images.device)[None, :, None] - (d.cy - cutout // 2)[:, None, None]
        xs = torch.arange(w, device=images.device)[None, None, :] - (d.cx - cutout // 2)[:, None, None]
        inside = (ys >= 0) & (ys < cutout) & (xs >= 0) & (xs < cutout)
        out = out.masked_fill(inside[:, None], 0)
    return out


def to_float(images: torch.Tensor, channels_last: bool) -> torch.Tensor:
    x = images.float().div_(255)
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x


class ResidentLoader:
    """Batches of (float images in [0, 1], labels) from tensors that live on ``device``.

    With ``train=True`` the order is a fresh permutation per epoch and each batch is augmented;
    ``rank``/``world`` give each process its slice of every global batch. ``alternate_flip`` flips each
    image in every other epoch instead of at random.
    """

    def __init__(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        batch_size: int,
        *,
        train: bool,
        device: torch.device | str = "cpu",
        seed: int = 0,
        pad: int = 4,
        flip: bool = True,
        alternate_flip: bool = False,
        cutout: int = 0,
        channels_last: bool = True,
        drop_last: bool | None = None,
        rank: int = 0,
        world: int = 1,
    ) -> None:
        self.device = torch.device(device)
        non_blocking = self.device.type == "cuda"
        self.images = images.to(self.device, non_blocking=non_blocking)
        self.labels = labels.to(self.device, non_blocking=non_blocking)
        self.batch_size, self.train, self.seed = batch_size, train, seed
        self.pad, self.flip, self.cutout = (pad, flip, cutout) if train else (0, False, 0)
        # airbench's alternating flip: each image's flip is drawn once, then inverted every other epoch, so
        # that any two consecutive epochs show every image both ways
        self.first_flips: torch.Tensor | None = None
        if self.flip and alternate_flip:
            gen = _generator(torch.device("cpu"), seed, 11)
            self.first_flips = torch.randint(0, 2, (len(self.labels),), generator=gen).bool().to(self.device)
        self.channels_last = channels_last
        self.drop_last = train if drop_last is None else drop_last
        self.rank, self.world = rank, world

    def __len__(self) -> int:
        n = len(self.labels)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def order(self, epoch: int) -> torch.Tensor:
        if not self.train:
            return torch.arange(len(self.labels), device=self.device)
        gen = _generator(torch.device("cpu"), self.seed, epoch)
        return torch.randperm(len(self.labels), generator=gen).to(self.device)

    def batch(self, epoch: int, step: int, order: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        idx = order[step * self.batch_size:(step + 1) * self.batch_size]
        mine = slice(None)
        if self.world > 1:  # this rank's slice of the global batch, and of its random draws
            size, extra = divmod(len(idx), self.world)  # the chunks of torch.tensor_split
            start = self.rank * size + min(self.rank, extra)
            mine = slice(start, start + size + (self.rank < extra))
        x, y = self.images[idx[mine]], self.labels[idx[mine]]
        if self.train:
            gen = _generator(self.device, self.seed, epoch, step, 7)
            d = draw(len(idx), self.pad, self.flip, self.cutout, gen, self.device)
            if self.first_flips is not None:
                d.flip = self.first_flips[idx] ^ bool(epoch % 2)
            d = Draws(*(None if t is None else t[mine] for t in (d.dy, d.dx, d.flip, d.cy, d.cx)))
            x = augment(x, d, self.pad, self.cutout)
        return to_float(x, self.channels_last), y

    def iterate(self, epoch: int, start_step: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        order = self.order(epoch)
        for step in range(start_step, len(self)):
            yield self.batch(epoch, step, order)
