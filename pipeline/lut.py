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


@njit(parallel=True, fastmath=False, cache=True)
def _apply_u16(src, lut, dst):
    h, w = src.shape[0], src.shape[1]
    n = lut.shape[0]
    scale = (n - 1) / 65535.0
    for y in prange(h):
        for x in range(w):
            fr = src[y, x, 0] * scale
            fg = src[y, x, 1] * scale
            fb = src[y, x, 2] * scale
            r0 = min(int(fr), n - 2)
            g0 = min(int(fg), n - 2)
            b0 = min(int(fb), n - 2)
            dr = fr - r0
            dg = fg - g0
            db = fb - b0
            for c in range(3):
                c00 = lut[r0, g0, b0, c] * (1 - dr) + lut[r0 + 1, g0, b0, c] * dr
                c01 = lut[r0, g0, b0 + 1, c] * (1 - dr) + lut[r0 + 1, g0, b0 + 1, c] * dr
                c10 = lut[r0, g0 + 1, b0, c] * (1 - dr) + lut[r0 + 1, g0 + 1, b0, c] * dr
                c11 = lut[r0, g0 + 1, b0 + 1, c] * (1 - dr) + lut[r0 + 1, g0 + 1, b0 + 1, c] * dr
                v = (c00 * (1 - dg) + c10 * dg) * (1 - db) + (c01 * (1 - dg) + c11 * dg) * db
                v = min(max(v, 0.0), 1.0)
                dst[y, x, c] = np.uint16(v * 65535.0 + 0.5)


@njit(parallel=True, fastmath=False, cache=True)
def _apply_f32(src, lut, dst):
    h, w = src.shape[0], src.shape[1]
    n = lut.shape[0]
    for y in prange(h):
        for x in range(w):
            fr = min(max(src[y, x, 0], 0.0), 1.0) * (n - 1)
            fg = min(max(src[y, x, 1], 0.0), 1.0) * (n - 1)
            fb = min(max(src[y, x, 2], 0.0), 1.0) * (n - 1)
            r0 = min(int(fr), n - 2)
            g0 = min(int(fg), n - 2)
            b0 = min(int(fb), n - 2)
            dr = fr - r0
            dg = fg - g0
            db = fb - b0
            for c in range(3):
                c00 = lut[r0, g0, b0, c] * (1 - dr) + lut[r0 + 1, g0, b0, c] * dr
                c01 = lut[r0, g0, b0 + 1, c] * (1 - dr) + lut[r0 + 1, g0, b0 + 1, c] * dr
                c10 = lut[r0, g0 + 1, b0, c] * (1 - dr) + lut[r0 + 1, g0 + 1, b0, c] * dr
                c11 = lut[r0, g0 + 1, b0 + 1, c] * (1 - dr) + lut[r0 + 1, g0 + 1, b0 + 1, c] * dr
                v = (c00 * (1 - dg) + c10 * dg) * (1 - db) + (c01 * (1 - dg) + c11 * dg) * db
                dst[y, x, c] = min(max(v, 0.0), 1.0)


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


def apply_lut_torch(pixels: torch.Tensor, lut: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) float in [0, 1] on any device -> same, trilinear through (N, N, N, 3) ``lut`` (GPU path)."""
    grid = pixels.permute(0, 2, 3, 1).clamp(0, 1) * 2 - 1  # grid_sample wants (x, y, z) = (b, g, r)
    grid = grid.flip(-1).unsqueeze(1)  # (B, 1, H, W, 3)
    vol = lut.permute(3, 0, 1, 2).unsqueeze(0).expand(pixels.shape[0], -1, -1, -1, -1)  # (B, 3, R, G, B)
    out = torch.nn.functional.grid_sample(vol.to(pixels.dtype), grid, mode="bilinear", padding_mode="border",
                                          align_corners=True)
    return out.squeeze(2).clamp(0, 1)
