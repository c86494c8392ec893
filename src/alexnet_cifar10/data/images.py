"""Decode one image file: PNG and JPEG only, its size checked before its pixels are decoded."""

from __future__ import annotations

import io
import struct
import warnings
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
from PIL import Image, UnidentifiedImageError

from alexnet_cifar10.errors import DataError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
IMAGE_FORMATS = ("PNG", "JPEG")  # what is decoded; Pillow's other formats (PostScript, ...) are never tried
MAX_IMAGE_SIDE = 4096  # pixels a side of an image given to predict, checked before it is decoded


# What Pillow's PNG and JPEG decoders raise on damaged or crafted files: UnidentifiedImageError and other
# OSErrors, SyntaxError from header parsers, struct.error from cut chunks, DecompressionBombError, and the
# plain errors of code that meets values it did not expect.
_IMAGE_ERRORS = (OSError, ValueError, SyntaxError, struct.error, TypeError, IndexError, KeyError, EOFError,
                 AttributeError, ZeroDivisionError, OverflowError, RuntimeError, Image.DecompressionBombError,
                 Image.DecompressionBombWarning)


# Pillow's warnings never reach stderr as raw lines: its notes on odd but readable files are dropped (the image is
# used), and its decompression-bomb warning is raised, so that it ends as one of our errors. Set once, for the
# process: images are decoded on several threads, and warnings.catch_warnings is not thread-safe.
warnings.filterwarnings("ignore", module=r"PIL(\.|$)")
warnings.filterwarnings("error", category=Image.DecompressionBombWarning)

# A JPEG's decoding cost is its pixels times its scans (a progressive JPEG refines the whole image once per scan),
# not its size in bytes: a few kilobytes can hold thousands of scans. Photos have 1 (baseline) to about 12.
MAX_JPEG_SCANS = 64
MAX_DECODE_WORK = 16 * MAX_IMAGE_SIDE * MAX_IMAGE_SIDE  # pixels x scans: a 4096x4096 JPEG of 16 scans


@contextmanager
def opened(data: bytes, where: str) -> Iterator[Image.Image]:
    """``data`` opened as a PNG or JPEG whose size and decoding cost lie within the limits, not yet decoded;
    a damaged file is a DataError (also when it turns out damaged while it is decoded inside the block)."""
    try:
        with Image.open(io.BytesIO(data), formats=IMAGE_FORMATS) as img:
            width, height = img.size
            if max(width, height) > MAX_IMAGE_SIDE:
                raise DataError(f"{where}: image is {width}x{height}; at most {MAX_IMAGE_SIDE} pixels a side are "
                                "decoded")
            if img.format == "JPEG":
                scans = data.count(b"\xff\xda")  # start-of-scan markers; entropy-coded data never holds one
                if scans > MAX_JPEG_SCANS or scans * width * height > MAX_DECODE_WORK:
                    raise DataError(f"{where}: a {width}x{height} JPEG of {scans} scans; decoding is limited to "
                                    f"{MAX_JPEG_SCANS} scans and {MAX_DECODE_WORK:,} pixels x scans")
            yield img
    except _IMAGE_ERRORS as e:
        detail = "" if isinstance(e, UnidentifiedImageError) else f" ({str(e)[:160]})"  # its text names a BytesIO
        raise DataError(f"{where}: not a readable PNG or JPEG image{detail}") from None


def decode_image(data: bytes, where: str) -> np.ndarray:
    """Decode one image of a data set: a 32x32 RGB PNG or JPEG, to 32 x 32 x 3 uint8."""
    with opened(data, where) as img:
        if img.size != (32, 32):
            raise DataError(f"{where}: image is {img.size[0]}x{img.size[1]}, expected 32x32")
        if img.mode != "RGB":
            raise DataError(f"{where}: image mode is {img.mode}, expected RGB")
        return np.asarray(img.convert("RGB"))


def decode_for_network(data: bytes, where: str) -> tuple[np.ndarray, tuple[int, int] | None]:
    """Any PNG or JPEG within the limits as the network's 32 x 32 x 3 uint8 input, and the size it was resized
    from (None when it was 32x32). A larger JPEG is decoded at the smallest of its 1/2, 1/4, 1/8 scales that
    still covers 32x32 (``Image.draft``), since it is shrunk to that anyway."""
    with opened(data, where) as img:
        size = img.size
        if size == (32, 32):
            return np.asarray(img.convert("RGB")), None
        img.draft("RGB", (32, 32))
        return np.asarray(img.convert("RGB").resize((32, 32), Image.Resampling.BILINEAR)), size
