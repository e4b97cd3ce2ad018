"""Full-resolution rendering of the bilateral retoucher (pipeline.models.bilateral): prepare grids, slice them.

``prepare`` runs the model on the 256 x 256 low-resolution copy only: four grids of affine colour maps and the four
guides' parameters. ``apply`` then computes each full-resolution pixel from those alone: for every operator its
guide value, the trilinear lookup of its 12 coefficients in the grid, the affine map, the clamp; all four operators
one after the other on the pixel, in registers. On a CPU a compiled kernel does it row by row, uint16 in and uint16
out (in place), so no full-resolution float image, guide map or coefficient map ever exists: the extra memory is a
few rows of interpolated grid per thread. On a GPU the same maths runs in torch (grid_sample) in strips of rows.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from numba import njit, prange

from .lut import _KERNEL_LOCK
from .models.bilateral import GUIDE_POINTS, OPERATORS, low_resolution, slice_grid
from .render import Retoucher, render_strips_torch, thumbnail_tensor

GPU_STRIP_PIXELS = 1 << 22
EXACT_STRIP_PIXELS = 1 << 20


@dataclass(frozen=True)
class BilateralPlan:
    """What rendering one image needs: per operator a grid (Hg, Wg, D, 12) and its guide's numbers (packed)."""

    grids: np.ndarray  # (K, Hg, Wg, D, 12) float32, C-contiguous: one cell's 12 coefficients are adjacent
    guides: np.ndarray  # (K, 16 + 6 * GUIDE_POINTS) float32, GuideMap.packed() order
    strengths: np.ndarray  # (K,) the strengths the grids were made for

    @property
    def torch_grids(self) -> list[torch.Tensor]:
        """The grids in the model's layout, (1, 12, D, Hg, Wg) each."""
        return [torch.from_numpy(np.ascontiguousarray(g.transpose(3, 2, 0, 1)))[None] for g in self.grids]


@njit(inline="always", fastmath=True, error_model="numpy")
def _axis(coordinate, cells):
    """A grid coordinate in cell units, clamped as grid_sample's border padding: (lower index, fraction)."""
    c = min(max(coordinate, np.float32(0.0)), np.float32(cells - 1))
    i = min(np.int32(c), np.int32(cells - 2))
    return i, c - np.float32(i)


@njit(parallel=True, fastmath=True, error_model="numpy", cache=True)
def _slice_u16(src, grids, ccm, curves, curve_lo, curve_scale, guide_bias, dst):
    """All operators on every pixel: src (H, W, 3) uint16 -> dst (H, W, 3) uint16 (may be src itself).

    Row by row: the grid is first interpolated along y for the row (it is constant along it), then each pixel
    interpolates along x and the guide's luma axis (4 corners x 12 coefficients) per operator. Each guide curve is
    read from a table (``guide_tables``), its mixing weight folded in.
    """
    height, width = src.shape[0], src.shape[1]
    ops, gh, gw, bins = grids.shape[0], grids.shape[1], grids.shape[2], grids.shape[3]
    samples = curves.shape[2]
    zero, one, full, half = np.float32(0.0), np.float32(1.0), np.float32(65535.0), np.float32(0.5)
    inv = np.float32(1.0 / 65535.0)
    top = np.float32(samples - 1)
    x_cell = np.empty(width, np.int32)
    x_frac = np.empty(width, np.float32)
    for j in range(width):
        x_cell[j], x_frac[j] = _axis(np.float32((j + 0.5) * gw / width - 0.5), gw)
    cell = np.uint32(bins * 12)  # floats per x position of a row's grid
    twelve, one_u, top_bin = np.uint32(12), np.uint32(1), np.uint32(bins - 2)
    u1, u2, u3, u4, u5, u6 = np.uint32(1), np.uint32(2), np.uint32(3), np.uint32(4), np.uint32(5), np.uint32(6)
    u7, u8, u9, u10, u11 = np.uint32(7), np.uint32(8), np.uint32(9), np.uint32(10), np.uint32(11)
    x_cell = (x_cell * cell).astype(np.uint32)  # unsigned offsets spare the compiler negative-index checks
    for y in prange(height):
        y0, wy = _axis(np.float32((y + 0.5) * gh / height - 0.5), gh)
        row = np.empty((ops, gw * bins * 12), np.float32)
        for k in range(ops):
            above = grids[k, y0].reshape(-1)
            below = grids[k, y0 + 1].reshape(-1)
            for i in range(gw * bins * 12):
                row[k, i] = above[i] + wy * (below[i] - above[i])
        red = np.empty(width, np.float32)
        green = np.empty(width, np.float32)
        blue = np.empty(width, np.float32)
        for x in range(width):
            red[x] = np.float32(src[y, x, 0]) * inv
            green[x] = np.float32(src[y, x, 1]) * inv
            blue[x] = np.float32(src[y, x, 2]) * inv
        for k in range(ops):  # one operator over the whole row: a short, branch-free loop body per pixel
            lane = row[k]
            m00, m01, m02, m03 = ccm[k, 0, 0], ccm[k, 0, 1], ccm[k, 0, 2], ccm[k, 0, 3]
            m10, m11, m12, m13 = ccm[k, 1, 0], ccm[k, 1, 1], ccm[k, 1, 2], ccm[k, 1, 3]
            m20, m21, m22, m23 = ccm[k, 2, 0], ccm[k, 2, 1], ccm[k, 2, 2], ccm[k, 2, 3]
            lo0, lo1, lo2 = curve_lo[k, 0], curve_lo[k, 1], curve_lo[k, 2]
            sc0, sc1, sc2 = curve_scale[k, 0], curve_scale[k, 1], curve_scale[k, 2]
            t0, t1, t2 = curves[k, 0], curves[k, 1], curves[k, 2]
            bias = guide_bias[k]
            last = np.uint32(samples - 2)
            for x in range(width):
                r, g, b = red[x], green[x], blue[x]
                f0 = min(max((m00 * r + m01 * g + m02 * b + m03 - lo0) * sc0, zero), top)
                f1 = min(max((m10 * r + m11 * g + m12 * b + m13 - lo1) * sc1, zero), top)
                f2 = min(max((m20 * r + m21 * g + m22 * b + m23 - lo2) * sc2, zero), top)
                i0, i1, i2 = min(np.uint32(f0), last), min(np.uint32(f1), last), min(np.uint32(f2), last)
                j0, j1, j2 = i0 + one_u, i1 + one_u, i2 + one_u
                guide = (bias + t0[i0] + (f0 - np.float32(i0)) * (t0[j0] - t0[i0])
                         + t1[i1] + (f1 - np.float32(i1)) * (t1[j1] - t1[i1])
                         + t2[i2] + (f2 - np.float32(i2)) * (t2[j2] - t2[i2]))
                fz = min(max(guide * bins - half, zero), np.float32(bins - 1))
                z0 = min(np.uint32(fz), top_bin)
                wz = fz - np.float32(z0)
                wx = x_frac[x]
                c00 = x_cell[x] + z0 * twelve
                c01 = c00 + twelve
                c10 = c00 + cell
                c11 = c10 + twelve
                w00 = (one - wx) * (one - wz)
                w01 = (one - wx) * wz
                w10 = wx * (one - wz)
                w11 = wx * wz
                red[x] = min(max(
                    (w00 * lane[c00] + w01 * lane[c01] + w10 * lane[c10] + w11 * lane[c11]) * r
                    + (w00 * lane[c00 + u1] + w01 * lane[c01 + u1] + w10 * lane[c10 + u1] + w11 * lane[c11 + u1]) * g
                    + (w00 * lane[c00 + u2] + w01 * lane[c01 + u2] + w10 * lane[c10 + u2] + w11 * lane[c11 + u2]) * b
                    + (w00 * lane[c00 + u3] + w01 * lane[c01 + u3] + w10 * lane[c10 + u3] + w11 * lane[c11 + u3]),
                    zero), one)
                green[x] = min(max(
                    (w00 * lane[c00 + u4] + w01 * lane[c01 + u4] + w10 * lane[c10 + u4] + w11 * lane[c11 + u4]) * r
                    + (w00 * lane[c00 + u5] + w01 * lane[c01 + u5] + w10 * lane[c10 + u5] + w11 * lane[c11 + u5]) * g
                    + (w00 * lane[c00 + u6] + w01 * lane[c01 + u6] + w10 * lane[c10 + u6] + w11 * lane[c11 + u6]) * b
                    + (w00 * lane[c00 + u7] + w01 * lane[c01 + u7] + w10 * lane[c10 + u7] + w11 * lane[c11 + u7]),
                    zero), one)
                blue[x] = min(max(
                    (w00 * lane[c00 + u8] + w01 * lane[c01 + u8] + w10 * lane[c10 + u8] + w11 * lane[c11 + u8]) * r
                    + (w00 * lane[c00 + u9] + w01 * lane[c01 + u9] + w10 * lane[c10 + u9] + w11 * lane[c11 + u9]) * g
                    + (w00 * lane[c00 + u10] + w01 * lane[c01 + u10] + w10 * lane[c10 + u10]
                       + w11 * lane[c11 + u10]) * b
                    + (w00 * lane[c00 + u11] + w01 * lane[c01 + u11] + w10 * lane[c10 + u11] + w11 * lane[c11 + u11]),
                    zero), one)
        for x in range(width):
            dst[y, x, 0] = np.uint16(red[x] * full + half)
            dst[y, x, 1] = np.uint16(green[x] * full + half)
            dst[y, x, 2] = np.uint16(blue[x] * full + half)


GUIDE_TABLE_SAMPLES = 4096


def guide_tables(guides: np.ndarray, samples: int = GUIDE_TABLE_SAMPLES):
    """The kernel's form of the guides (K, GuideMap.packed()): ccm with bias (K, 3, 4); each channel's curve times
    its mixing weight sampled over every value the colour matrix can give for RGB in [0, 1] (K, 3, samples), with
    the range's start (K, 3) and samples per unit (K, 3); the mix bias (K,).

    Between samples the curve is read linearly: exact except in the sample cells holding a knot (tests state
    the error against the exact guide)."""
    k = guides.shape[0]
    p = GUIDE_POINTS
    ccm = np.zeros((k, 3, 4), np.float32)
    ccm[:, :, :3] = guides[:, :9].reshape(k, 3, 3)
    ccm[:, :, 3] = guides[:, 9:12]
    shifts = guides[:, 12:12 + 3 * p].reshape(k, 3, p).astype(np.float64)
    slopes = guides[:, 12 + 3 * p:12 + 6 * p].reshape(k, 3, p).astype(np.float64)
    mix = guides[:, 12 + 6 * p:15 + 6 * p].astype(np.float64)
    lo = ccm[:, :, 3] + np.minimum(ccm[:, :, :3], 0).sum(-1)
    hi = ccm[:, :, 3] + np.maximum(ccm[:, :, :3], 0).sum(-1)
    hi = np.maximum(hi, lo + 1e-6)
    q = lo[..., None] + (hi - lo)[..., None] * np.linspace(0, 1, samples)  # (K, 3, S)
    curve = (np.maximum(q[..., None] - shifts[:, :, None, :], 0) * slopes[:, :, None, :]).sum(-1) * mix[..., None]
    return (ccm, np.ascontiguousarray(curve, np.float32), lo.astype(np.float32),
            ((samples - 1) / (hi - lo)).astype(np.float32), guides[:, 15 + 6 * p].astype(np.float32))


def slice_u16(pixels: np.ndarray, plan: BilateralPlan, out: np.ndarray | None = None) -> np.ndarray:
    """(H, W, 3) uint16 -> (H, W, 3) uint16 through the plan's operators; may write in place (``out=pixels``)."""
    if pixels.dtype != np.uint16 or pixels.ndim != 3 or pixels.shape[2] != 3:
        raise ValueError(f"expected (H, W, 3) uint16 pixels, got {pixels.shape} {pixels.dtype}")
    pixels = np.ascontiguousarray(pixels)
    out = np.empty_like(pixels) if out is None else out
    if pixels.size == 0:
        return out
    with _KERNEL_LOCK:
        _slice_u16(pixels, plan.grids, *guide_tables(plan.guides), out)
    return out


class BilateralRetoucher(Retoucher):
    """Prepare = the four grids from the low-resolution chain; apply = slicing them at full resolution."""

    @torch.inference_mode()
    def prepare(self, pixels_or_view, strengths) -> BilateralPlan:
        view = self._as_view(pixels_or_view)
        s = torch.as_tensor(np.asarray(strengths, dtype=np.float32), device=self.device).reshape(1, -1)
        grids, _ = self.model.grids(low_resolution(view.float()), s)
        return BilateralPlan(
            np.ascontiguousarray(np.stack([g[0].permute(2, 3, 1, 0).float().cpu().numpy() for g in grids])),
            np.stack([self.model.operator(op).guide.packed().cpu().numpy() for op in OPERATORS]),
            s[0].cpu().numpy())

    def apply(self, pixels: np.ndarray, prepared: BilateralPlan, out: np.ndarray | None = None) -> np.ndarray:
        if self.device == "cpu":
            return slice_u16(pixels, prepared, out)
        return self._apply_torch(pixels, prepared, out)

    @torch.inference_mode()
    def _apply_torch(self, pixels: np.ndarray, plan: BilateralPlan, out: np.ndarray | None = None) -> np.ndarray:
        """The GPU path: strips of rows go up as uint16, are sliced in float by torch, come back as uint16."""
        grids = [g.to(self.device) for g in plan.torch_grids]

        def strip(image: torch.Tensor, top: int) -> torch.Tensor:
            return self._render_rows(image, grids, top, pixels.shape[0])
        return render_strips_torch(pixels, self.device, strip, GPU_STRIP_PIXELS, out)

    def _render_rows(self, image: torch.Tensor, grids, top: int, height: int) -> torch.Tensor:
        """Rows ``top`` .. of an image ``height`` rows high, through every operator (coordinates of the whole)."""
        for op, grid in zip(OPERATORS, grids):
            operator = self.model.operator(op)
            guide = operator.guide(image.permute(0, 2, 3, 1))
            image = slice_grid(grid, guide, image, rows=(top, height)).clamp(0, 1)
        return image

    @torch.inference_mode()
    def render_exact(self, pixels: np.ndarray, strengths) -> np.ndarray:
        """torch's float slicing (grid_sample) of the same grids, in strips; float32 (H, W, 3) in [0, 1]."""
        plan = self.prepare(pixels, strengths)
        grids = [g.to(self.device) for g in plan.torch_grids]
        out = np.empty(pixels.shape, np.float32)
        scale = 65535.0 if pixels.dtype == np.uint16 else 1.0
        rows = max(1, EXACT_STRIP_PIXELS // max(1, pixels.shape[1]))
        for y in range(0, pixels.shape[0], rows):
            img = torch.from_numpy(pixels[y:y + rows].astype(np.float32) / scale).permute(2, 0, 1)[None]
            res = self._render_rows(img.to(self.device), grids, y, pixels.shape[0])
            out[y:y + rows] = res[0].permute(1, 2, 0).cpu().numpy()
        return out

    @torch.inference_mode()
    def retouch_tensor(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """On the device, in strips of rows: the per-pixel coefficients exist for one strip at a time."""
        view = thumbnail_tensor(image, self.info.prediction_size)
        grids, strengths = self.model.grids(low_resolution(view))
        out = torch.empty_like(image)
        height, width = image.shape[-2:]
        rows = max(1, GPU_STRIP_PIXELS // max(1, width))
        for y in range(0, height, rows):
            out[..., y:y + rows, :] = self._render_rows(image[..., y:y + rows, :], grids, y, height)
        return out, strengths[0]
