"""Decode one image file: PNG and JPEG only, its size checked before its pixels are decoded."""

from __future__ import annotations

import io
import struct

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
                 AttributeError, ZeroDivisionError, OverflowError, RuntimeError, Image.DecompressionBombError)


def decode_image(data: bytes, where: str, *, strict: bool = True) -> np.ndarray:
    """Decode one PNG or JPEG image to H x W x 3 uint8; ``strict`` demands 32x32 RGB as stored, otherwise any
    size up to ``MAX_IMAGE_SIDE`` pixels a side."""
    try:
        with Image.open(io.BytesIO(data), formats=IMAGE_FORMATS) as img:
            if max(img.size) > MAX_IMAGE_SIDE:
                raise DataError(f"{where}: image is {img.size[0]}x{img.size[1]}; at most {MAX_IMAGE_SIDE} pixels a "
                                "side are decoded")
            if strict and img.size != (32, 32):
                raise DataError(f"{where}: image is {img.size[0]}x{img.size[1]}, expected 32x32")
            if strict and img.mode != "RGB":
                raise DataError(f"{where}: image mode is {img.mode}, expected RGB")
            return np.asarray(img.convert("RGB"))
    except _IMAGE_ERRORS as e:
        detail = "" if isinstance(e, UnidentifiedImageError) else f" ({str(e)[:160]})"  # its text names a BytesIO
        raise DataError(f"{where}: not a readable PNG or JPEG image{detail}") from None
