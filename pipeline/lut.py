"""3D colour lookup tables: bake a model's colour function for fixed strengths, apply it at full resolution.

Tables are (N, N, N, 3) float32 indexed [r, g, b] over the encoded [0, 1] cube. Application is trilinear, in
strips, straight from uint16 to uint16 (or float32 to float32), so no full-resolution float copy is ever made.
"""
from __future__ import annotations

import numpy as np
import torch

from numba import njit, prange

DEFAULT_LUT_SIZE = 33


def identity_grid(size: int) -> torch.Tensor:
    """(size^3, 3) grid colours in [r, g, b] order, r slowest."""
    axis = torch.linspace(0.0, 1.0, size)
    r, g, b = torch.meshgrid(axis, axis, axis, indexing="ij")
    return torch.stack([r, g, b], dim=-1).reshape(-1, 3)


@torch.inference_mode()
def bake_lut(model, strengths, size: int = DEFAULT_LUT_SIZE) -> np.ndarray:
    """Sample ``model.render_pixels`` for one image's strengths on a size^3 grid."""
    device = next(model.parameters()).device
    s = torch.as_tensor(np.asarray(strengths, dtype=np.float32), device=device)
    out = model.render_pixels(identity_grid(size).to(device), s)
    return np.ascontiguousarray(out.float().cpu().numpy().reshape(size, size, size, 3))


@njit(inline="always", cache=True)
def _trilinear(lut, fr, fg, fb, c):
    """Channel c of ``lut`` at the grid position (fr, fg, fb) in [0, n - 1], in float32 (fast and within one
    16-bit step of float64)."""
    n = lut.shape[0]
    one = np.float32(1.0)
    r0 = min(int(fr), n - 2)
    g0 = min(int(fg), n - 2)
    b0 = min(int(fb), n - 2)
    dr = fr - np.float32(r0)
    dg = fg - np.float32(g0)
    db = fb - np.float32(b0)
    c00 = lut[r0, g0, b0, c] * (one - dr) + lut[r0 + 1, g0, b0, c] * dr
    c01 = lut[r0, g0, b0 + 1, c] * (one - dr) + lut[r0 + 1, g0, b0 + 1, c] * dr
    c10 = lut[r0, g0 + 1, b0, c] * (one - dr) + lut[r0 + 1, g0 + 1, b0, c] * dr
    c11 = lut[r0, g0 + 1, b0 + 1, c] * (one - dr) + lut[r0 + 1, g0 + 1, b0 + 1, c] * dr
    v = (c00 * (one - dg) + c10 * dg) * (one - db) + (c01 * (one - dg) + c11 * dg) * db
    return min(max(v, np.float32(0.0)), one)


@njit(parallel=True, cache=True)
def _apply_u16(src, lut, dst):
    scale = np.float32((lut.shape[0] - 1) / 65535.0)
    for y in prange(src.shape[0]):
        for x in range(src.shape[1]):
            fr = np.float32(src[y, x, 0]) * scale
            fg = np.float32(src[y, x, 1]) * scale
            fb = np.float32(src[y, x, 2]) * scale
            for c in range(3):
                dst[y, x, c] = np.uint16(_trilinear(lut, fr, fg, fb, c) * np.float32(65535.0) + np.float32(0.5))


@njit(parallel=True, cache=True)
def _apply_f32(src, lut, dst):
    top = np.float32(lut.shape[0] - 1)
    for y in prange(src.shape[0]):
        for x in range(src.shape[1]):
            fr = min(max(src[y, x, 0], np.float32(0.0)), np.float32(1.0)) * top
            fg = min(max(src[y, x, 1], np.float32(0.0)), np.float32(1.0)) * top
            fb = min(max(src[y, x, 2], np.float32(0.0)), np.float32(1.0)) * top
            for c in range(3):
                dst[y, x, c] = _trilinear(lut, fr, fg, fb, c)


@njit(parallel=True, cache=True)
def box_average_u16(src, k, dst):
    """dst[y, x] = mean of the k x k block of uint16 src at (y, x), scaled to [0, 1]: a cheap exact box filter."""
    h, w = dst.shape[0], dst.shape[1]
    scale = 1.0 / (k * k * 65535.0)
    for y in prange(h):
        for x in range(w):
            for c in range(3):
                acc = 0.0
                for dy in range(k):
                    for dx in range(k):
                        acc += src[y * k + dy, x * k + dx, c]
                dst[y, x, c] = acc * scale


def apply_lut_u16(pixels: np.ndarray, lut: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """(H, W, 3) uint16 -> (H, W, 3) uint16 through ``lut``; may write in place (``out=pixels``)."""
    if pixels.dtype != np.uint16 or pixels.ndim != 3 or pixels.shape[2] != 3:
        raise ValueError(f"expected (H, W, 3) uint16 pixels, got {pixels.shape} {pixels.dtype}")
    out = np.empty_like(pixels) if out is None else out
    _apply_u16(pixels, np.ascontiguousarray(lut, dtype=np.float32), out)
    return out


def apply_lut_f32(pixels: np.ndarray, lut: np.ndarray) -> np.ndarray:
    """(H, W, 3) float32 in [0, 1] -> (H, W, 3) float32, for evaluation at float precision."""
    pixels = np.ascontiguousarray(pixels, dtype=np.float32)
    out = np.empty_like(pixels)
    _apply_f32(pixels, np.ascontiguousarray(lut, dtype=np.float32), out)
    return out


def apply_lut_torch(pixels: torch.Tensor, lut: torch.Tensor, clamp: bool = True,
                    domain: tuple[float, float] = (0.0, 1.0)) -> torch.Tensor:
    """(B, 3, H, W) float in [0, 1] on any device -> same, trilinear through (N, N, N, 3) ``lut`` (GPU path).

    ``clamp=False`` keeps values outside [0, 1] (intermediate images are only clamped at the very end);
    ``domain`` is the input range the LUT was sampled over.
    """
    lo, hi = domain
    grid = ((pixels.permute(0, 2, 3, 1) - lo) / (hi - lo)).clamp(0, 1) * 2 - 1  # (x, y, z) = (b, g, r)
    grid = grid.flip(-1).unsqueeze(1)  # (B, 1, H, W, 3)
    vol = lut.permute(3, 0, 1, 2).unsqueeze(0).expand(pixels.shape[0], -1, -1, -1, -1)  # (B, 3, R, G, B)
    out = torch.nn.functional.grid_sample(vol.to(pixels.dtype), grid, mode="bilinear", padding_mode="border",
                                          align_corners=True)
    out = out.squeeze(2)
    return out.clamp(0, 1) if clamp else out
