"""Small views of sources and outputs for people: report thumbnails and the editor's preview.

A thumbnail takes the cheapest way to a few hundred pixels: JPEG's DCT scaling, and for the rest our decoder (RAW at
half size, TIFF, PNG) with block averaging. The editor's preview is the source as the model sees
it (the checkpoint's RAW rendition), reduced to at most ``PREVIEW_PIXELS``.
"""
from __future__ import annotations

import io
import math

import numpy as np

from .imageio import DecodeError, decode, sniff, to_uint8

PREVIEW_PIXELS = 2_000_000


def reduce_u16(pixels: np.ndarray, max_pixels: int) -> np.ndarray:
    """(H, W, 3) uint16 -> at most ``max_pixels`` by box averaging over whole blocks (no resampling blur)."""
    h, w = pixels.shape[:2]
    k = math.ceil(math.sqrt(h * w / max_pixels)) if h * w > max_pixels else 1
    if k == 1:
        return pixels
    hh, ww = h // k * k, w // k * k
    blocks = pixels[:hh, :ww].reshape(hh // k, k, ww // k, k, 3).astype(np.float32)
    return (blocks.mean(axis=(1, 3)) + 0.5).astype(np.uint16)


def thumbnail(path: str, long_side: int):
    """An 8-bit RGB Pillow image whose longer side is at most ``long_side``, upright. Raises DecodeError."""
    from PIL import Image, ImageOps
    kind = sniff(path)
    if kind == "jpeg":
        try:
            with Image.open(path) as im:
                im.draft("RGB", (2 * long_side, 2 * long_side))
                small = ImageOps.exif_transpose(im).convert("RGB")
        except Exception as e:
            raise DecodeError(f"unreadable JPEG ({type(e).__name__})") from None
    else:  # a RAW as the model saw it (not the camera's own preview), demosaiced at half size
        small = _decoded(path, long_side)
    small.thumbnail((long_side, long_side), Image.LANCZOS)
    return small


def _decoded(path: str, long_side: int):
    from PIL import Image
    px = decode(path, half_size=True).pixels
    return Image.fromarray(to_uint8(reduce_u16(px, 16 * long_side * long_side)), "RGB")


def jpeg_bytes(image, quality: int) -> bytes:
    buf = io.BytesIO()
    image.save(buf, "JPEG", quality=quality, optimize=True)
    return buf.getvalue()
