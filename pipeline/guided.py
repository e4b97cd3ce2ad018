"""Carrying a network's edit to full resolution: a fitted bilateral grid (fast), or overlapping tiles (exact).

Networks that work on every pixel (the coarse-to-fine refinement, the deep symmetric network) cost seconds to
minutes per 12 MP image on a CPU. Two ways to full resolution:

- ``guided``: run the network on a working-resolution copy, fit a bilateral grid of local affine colour maps that
  takes the copy to the network's output (bilateral guided upsampling: every cell of space x luma holds a 3 x 4
  affine map, fitted by weighted least squares), and slice that grid at full resolution with the bilateral
  retoucher's compiled kernel (pipeline.bilateral), uint16 in and out, no full-resolution float image;
- ``tiles``: the network itself on the full-resolution image in overlapping tiles, each tile with a margin as wide
  as the network's receptive field, so the tiled result equals the untiled one; memory is one tile's.

Global context (the non-local block's memory, channel attention) is computed once, from the working copy, and
shared by all tiles, so tiles cannot disagree about it.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .bilateral import BilateralPlan, slice_u16
from .lut import apply_lut_torch, apply_lut_u16, bake_lut
from .models.bilateral import GUIDE_POINTS, slice_grid
from .render import Retoucher, render_lut_torch, render_strips_torch, thumbnail_tensor

GRID_CELLS = 16  # cells along the long side of the working copy
GRID_BINS = 8  # luma bins
FIT_REGULARIZER = 1e-2  # pulls thinly populated cells towards the whole image's affine map (in pixels' weight)
LUMA = (0.299, 0.587, 0.114)


def luma_guide() -> np.ndarray:
    """The grid's guide (GuideMap.packed() layout, one row): luma = 0.299 R + 0.587 G + 0.114 B."""
    p = GUIDE_POINTS
    ccm, bias = np.eye(3, dtype=np.float32).ravel(), np.zeros(3, np.float32)
    shifts = np.tile(np.linspace(0, 1, p + 1, dtype=np.float32)[:-1], 3)
    slopes = np.zeros((3, p), np.float32)
    slopes[:, 0] = 1.0
    return np.concatenate([ccm, bias, shifts, slopes.ravel(), np.asarray(LUMA, np.float32), [0.0]]).astype(np.float32)


def grid_shape(height: int, width: int, cells: int = GRID_CELLS) -> tuple[int, int]:
    """Cells along y and x: ``cells`` on the long side, the short side in proportion (at least 2)."""
    scale = cells / max(height, width)
    return max(2, round(height * scale)), max(2, round(width * scale))


def _corners(coord: torch.Tensor, cells: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Cell coordinate -> (lower index, fraction), clamped as the slicing kernel does (border padding)."""
    c = coord.clamp(0, cells - 1)
    i = c.floor().clamp(max=cells - 2)
    return i.long(), c - i


@torch.no_grad()
def fit_grid(source: torch.Tensor, target: torch.Tensor, cells: int = GRID_CELLS, bins: int = GRID_BINS,
             regularizer: float = FIT_REGULARIZER) -> np.ndarray:
    """The bilateral grid of affine colour maps that best takes ``source`` to ``target`` (both (3, h, w) in [0, 1]):
    (Hg, Wg, bins, 12) float32, the layout ``BilateralPlan`` slices.

    Each pixel is splatted to its 8 grid corners with the trilinear weights slicing will read it with; each cell
    solves its weighted least squares, regularized towards the whole image's affine map (cells with few pixels take
    that map). Closed form and deterministic, so a rerender prepares the same grid.
    """
    src = source.double().reshape(3, -1).T  # (N, 3)
    dst = target.double().reshape(3, -1).T
    h, w = source.shape[-2:]
    gh, gw = grid_shape(h, w, cells)
    ys = ((torch.arange(h, dtype=torch.float64) + 0.5) * gh / h - 0.5)[:, None].expand(h, w).reshape(-1)
    xs = ((torch.arange(w, dtype=torch.float64) + 0.5) * gw / w - 0.5)[None, :].expand(h, w).reshape(-1)
    luma = (src @ torch.tensor(LUMA, dtype=torch.float64)).clamp(0, 1)
    y0, fy = _corners(ys, gh)
    x0, fx = _corners(xs, gw)
    z0, fz = _corners(luma * bins - 0.5, bins)
    homog = torch.cat([src, torch.ones_like(src[:, :1])], 1)  # (N, 4)
    outer = homog[:, :, None] * homog[:, None, :]  # (N, 4, 4)
    cross = homog[:, :, None] * dst[:, None, :]  # (N, 4, 3)
    stats = torch.cat([outer.reshape(-1, 16), cross.reshape(-1, 12)], 1)  # (N, 28)
    acc = torch.zeros(gh * gw * bins, 28, dtype=torch.float64)
    for dy in (0, 1):
        for dx in (0, 1):
            for dz in (0, 1):
                weight = ((fy if dy else 1 - fy) * (fx if dx else 1 - fx) * (fz if dz else 1 - fz))
                index = ((y0 + dy) * gw + (x0 + dx)) * bins + (z0 + dz)
                acc.index_add_(0, index, stats * weight[:, None])
    whole = torch.linalg.solve(outer.sum(0) + 1e-9 * torch.eye(4, dtype=torch.float64), cross.sum(0))  # (4, 3)
    lam = regularizer * src.shape[0] / acc.shape[0]
    a = acc[:, :16].reshape(-1, 4, 4) + lam * torch.eye(4, dtype=torch.float64)
    b = acc[:, 16:].reshape(-1, 4, 3) + lam * whole
    maps = torch.linalg.solve(a, b)  # (cells, 4, 3): out = maps^T [r g b 1]
    return np.ascontiguousarray(maps.transpose(1, 2).reshape(gh, gw, bins, 12).float().numpy())


def slice_torch(grid: np.ndarray | torch.Tensor, image: torch.Tensor, rows: tuple[int, int] | None = None
                ) -> torch.Tensor:
    """The fitted grid (Hg, Wg, bins, 12) applied to image (1, 3, H, W) in torch (GPU path, checks), clamped."""
    g = torch.as_tensor(grid, device=image.device).permute(3, 2, 0, 1)[None]  # (1, 12, bins, Hg, Wg)
    luma = (image * torch.tensor(LUMA, device=image.device, dtype=image.dtype)[None, :, None, None]).sum(1)
    return slice_grid(g, luma.clamp(0, 1), image, rows).clamp(0, 1)


def plan_for(grid: np.ndarray) -> BilateralPlan:
    """A one-operator ``BilateralPlan`` slicing ``grid`` with the luma guide (the compiled CPU kernel's input)."""
    return BilateralPlan(np.ascontiguousarray(grid[None]), luma_guide()[None], np.zeros(1, np.float32))


def slice_u16_grid(pixels: np.ndarray, grid: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """uint16 (H, W, 3) through the fitted grid on the CPU, row-parallel, in place with ``out=pixels``."""
    return slice_u16(pixels, plan_for(grid), out)


@dataclass(frozen=True)
class Tiling:
    """Tiles of ``core`` pixels with ``margin`` pixels of context on every side; both multiples of ``align`` so a
    network's stride-2 layers sample the same positions in a tile as in the whole image."""

    core: int
    margin: int
    align: int = 1

    def __post_init__(self):
        if self.core % self.align or self.margin % self.align:
            raise ValueError(f"tile core {self.core} and margin {self.margin} must be multiples of {self.align}")

    def tiles(self, height: int, width: int):
        """(top, left, bottom, right) of each core, with its (top, left, bottom, right) crop (margins, clipped)."""
        for top in range(0, height, self.core):
            for left in range(0, width, self.core):
                bottom, right = min(top + self.core, height), min(left + self.core, width)
                yield ((top, left, bottom, right),
                       (max(0, top - self.margin), max(0, left - self.margin),
                        min(height, bottom + self.margin), min(width, right + self.margin)))


@torch.inference_mode()
def run_tiled(pixels: np.ndarray, network, tiling: Tiling, device: str = "cpu", out: np.ndarray | None = None
              ) -> np.ndarray:
    """uint16 (H, W, 3) through ``network(crop (1, 3, h, w) float in [0, 1], (top, left) of the crop) -> same
    shape`` tile by tile; the cores are written to ``out`` (uint16, may be ``pixels`` itself only when every tile's
    margin has been read before it is overwritten, so the caller gives a separate array or accepts a copy)."""
    height, width = pixels.shape[:2]
    result = np.empty_like(pixels) if out is None or out is pixels else out
    for (top, left, bottom, right), (ct, cl, cb, cr) in tiling.tiles(height, width):
        crop = torch.from_numpy(pixels[ct:cb, cl:cr].astype(np.float32) / 65535.0).permute(2, 0, 1)[None]
        res = network(crop.to(device), (ct, cl))[0].clamp(0, 1)
        core = res[:, top - ct:bottom - ct, left - cl:right - cl].permute(1, 2, 0)
        result[top:bottom, left:right] = (core * 65535.0 + 0.5).to(torch.int32).cpu().numpy().astype(np.uint16)
    if out is pixels:
        pixels[...] = result
        return pixels
    return result


def to_u16(image: torch.Tensor) -> np.ndarray:
    """(1, 3, h, w) float in [0, 1] -> (h, w, 3) uint16."""
    return (image[0].clamp(0, 1).permute(1, 2, 0) * 65535.0 + 0.5).to(torch.int32).cpu().numpy().astype(np.uint16)


@dataclass(frozen=True)
class NetworkPlan:
    """What rendering one image needs: the global stage's LUT (None: none), and the local stage as a fitted grid
    (``guided``) or as the shared context tiles use (``tiles``); ``grid`` and ``context`` are None when the local
    stage leaves the image as it is (refine or blend at 0)."""

    strengths: np.ndarray
    full_res: str
    lut: np.ndarray | None = None
    grid: np.ndarray | None = None
    context: object = None


class NetworkRetoucher(Retoucher):
    """Retouchers with a network on every pixel (``rendering = "network"``): an optional global colour function
    (``render_pixels``, through a LUT) then a local stage (``local_stage``), carried to full resolution by a fitted
    grid or run in tiles (the model's ``full_res``: ``guided`` or ``tiles``).

    The model provides ``global_stage(image, params)`` (the identity for models without one; with one, also
    ``render_pixels`` for the LUT), ``context(image, params)`` (what tiles share), ``local_stage(image, params,
    context)``, ``local_is_identity(params)``, and ``margin``/``align`` for tiles."""

    TILE = 1024

    @property
    def has_global_stage(self) -> bool:
        return hasattr(self.model, "render_pixels")

    def _strengths(self, strengths) -> torch.Tensor:
        return torch.as_tensor(np.asarray(strengths, dtype=np.float32), device=self.device).reshape(1, -1)

    @torch.inference_mode()
    def prepare(self, pixels_or_view, strengths) -> NetworkPlan:
        view = self._as_view(pixels_or_view).float()
        s = self._strengths(strengths)
        lut = bake_lut(self.model, s[0], self.lut_size) if self.has_global_stage else None
        full_res = self.model.full_res
        if self.model.local_is_identity(s):
            return NetworkPlan(s[0].cpu().numpy(), full_res, lut)
        base = self._global(view, s, lut)
        if full_res == "tiles":
            return NetworkPlan(s[0].cpu().numpy(), full_res, lut, context=self.model.context(base, s))
        local = self.model.local_stage(base, s)
        return NetworkPlan(s[0].cpu().numpy(), full_res, lut, grid=fit_grid(base[0].cpu(), local[0].float().cpu()))

    def _global(self, image: torch.Tensor, s: torch.Tensor, lut: np.ndarray | None) -> torch.Tensor:
        """The global stage as full resolution will see it: through the same LUT."""
        if lut is None:
            return image
        return apply_lut_torch(image, torch.from_numpy(lut).to(image.device))

    def apply(self, pixels: np.ndarray, prepared: NetworkPlan, out: np.ndarray | None = None) -> np.ndarray:
        if prepared.lut is not None:
            pixels = (apply_lut_u16(pixels, prepared.lut, out) if self.device == "cpu"
                      else render_lut_torch(pixels, prepared.lut, self.device, out))
            out = pixels  # the LUT's result is ours to finish in place: no second full-resolution copy
        elif out is not None and out is not pixels:
            out[...] = pixels
            pixels = out
        if prepared.grid is not None:
            if self.device == "cpu":
                return slice_u16_grid(pixels, prepared.grid, out)
            grid = torch.from_numpy(prepared.grid).to(self.device)
            return render_strips_torch(
                pixels, self.device, lambda img, top: slice_torch(grid, img, (top, pixels.shape[0])), out=out)
        if prepared.context is not None:
            return self._tiles(pixels, prepared, out)
        return pixels if out is not None else pixels.copy()

    def _tiles(self, pixels: np.ndarray, plan: NetworkPlan, out: np.ndarray | None) -> np.ndarray:
        s = self._strengths(plan.strengths)
        tiling = Tiling(self.TILE, self.model.margin, self.model.align)
        return run_tiled(pixels, lambda crop, _: self.model.local_stage(crop, s, plan.context), tiling, self.device,
                         out)

    @torch.inference_mode()
    def render_exact(self, pixels: np.ndarray, strengths) -> np.ndarray:
        """The network on the whole image at once, untiled, global stage exact (float32 (H, W, 3) in [0, 1])."""
        view = self.view(pixels).float()
        s = self._strengths(strengths)
        scale = 65535.0 if pixels.dtype == np.uint16 else 1.0
        image = torch.from_numpy(pixels.astype(np.float32) / scale).permute(2, 0, 1)[None].to(self.device)
        base = self.model.global_stage(image, s) if self.has_global_stage else image
        if not self.model.local_is_identity(s):
            view_base = self.model.global_stage(view, s) if self.has_global_stage else view
            base = self.model.local_stage(base, s, self.model.context(view_base, s))
        return base[0].permute(1, 2, 0).float().cpu().numpy()

    @torch.inference_mode()
    def retouch_tensor(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        view = thumbnail_tensor(image, self.info.prediction_size)
        s = self.model.predict_strengths(view)
        plan = self.prepare(view, s[0].cpu().numpy())
        out = image if plan.lut is None else apply_lut_torch(image, torch.from_numpy(plan.lut).to(image.device))
        if plan.grid is not None:
            out = slice_torch(plan.grid, out)
        elif plan.context is not None:
            out = self.model.local_stage(out, s, plan.context)
        return out, s[0]
