"""Fit a global 3D colour LUT from before/after image pairs: per-node mean, smooth fallback.

The baseline a learned style model is compared against (and a way to fit a model's "look" LUT):

1. ``splat``: every sample (input colour -> target colour) is spread over the 8 grid nodes around its input colour
   with trilinear weights, giving per node a weight sum c_n and a mean offset d_n = mean(target - input).
2. ``solve_offsets``: the offset field o = LUT - identity minimises
   sum_n c_n |o_n - d_n|^2 + lam * sum_edges |o_a - o_b|^2 + eps * sum_n |o_n|^2,
   a sparse SPD system (diag(c + eps) + lam * graph Laplacian of the grid), solved by conjugate gradients
   preconditioned with a multigrid V-cycle, the three channels at once, warm-started at the per-node means.
   Nodes with plenty of data follow their mean; empty nodes get a smooth (membrane) continuation of the offsets
   around them; the tiny ridge eps only makes far-away empty regions well-posed (it relaxes them to identity).
3. ``fit_lut``: identity + o, clipped to [0, 1], float32, in the layout of ``pipeline.lut`` ((n, n, n, 3) indexed
   [r, g, b], r slowest, node i at i / (n - 1)).

Measured on this project's 2-core machine with another job keeping both cores busy, 10 FiveK pairs of 512 x 341
(1.75 M samples, all used), fit_lut wall time: 17^3 0.3-0.45 s, 33^3 0.5-0.75 s (splat 0.3-0.4 s, solve 0.2 s),
65^3 1.6-2.2 s (solve 1.2-1.4 s); single-threaded numpy throughout. Even sizes take slower grid transfers in the
solver (32^3 0.7 s, 64^3 3.2-3.7 s). Solvers measured at 33^3: scipy's cg 0.25-3.3 s a channel (threaded BLAS
dot products stalling on the busy cores), SuperLU 5 s, Jacobi-preconditioned CG 0.3-0.5 s (9 s at 65^3).
"""
from __future__ import annotations

import warnings
from functools import lru_cache
from typing import Sequence

import numpy as np

# lam = DEFAULT_SMOOTHNESS * (mean c_n over nodes with data): relative to the data amount, so the balance between
# following the data and smoothing does not change with the number of pairs or their sizes; the smoothing reaches
# ~sqrt(smoothness) cells at any grid size. 0.05 keeps a known colour map fitted on random colours within 1 dB of
# unsmoothed (60.1 against 60.8 dB at 33^3) and carries it into the nodes photos leave empty (unsmoothed leaves them
# at identity: 49 against 46 dB at 33^3, 52 against 42 at 65^3); real FiveK pairs, which no global map fits, gain
# 0.5-1 dB held out with 1-5 (pass it for that use)
DEFAULT_SMOOTHNESS = 0.05
# 10 pairs of 512 x 341 are 1.75 M pixels: all used; bigger sets are strided down to this many
DEFAULT_MAX_SAMPLES = 2_000_000
# ridge relative to the mean data weight: small enough that the continuation into empty regions stays a membrane
# over the whole cube (decay length sqrt(lam / eps) = ~220 nodes at the default smoothness)
_RIDGE = 1e-6
_SPLAT_CHUNK = 1 << 16  # samples per splat pass
# conjugate gradients stop when the preconditioned residual is below this (LUT units); the solution is then
# within ~1e-7 of a direct solve, far under a 16-bit step (1.5e-5)
_CG_TOL = 1e-8
_CG_MAXITER = 200  # 15-25 are used at any size
# multigrid: coarsest grid, solved directly (3: a 27 x 27 inverse; 125 x 125 at 5 took 23 ms through threaded
# OpenBLAS on a busy machine), damped Jacobi sweeps before and after each coarse correction
_COARSEST = 3
_SWEEPS = 1
_JACOBI_DAMPING = 0.8


def _strided(img: np.ndarray, step: float) -> np.ndarray:
    """(k, 3) pixels of ``img`` on a regular grid keeping about one pixel in ``step``: fractional strides along both
    axes (a 1-D stride through the flattened image that is near a multiple of the width keeps a few columns only)."""
    if step <= 1.0:
        return img.reshape(-1, 3)
    h, w = img.shape[:2]
    sy = min(np.sqrt(step), float(h))  # a short image keeps one row and strides along it
    sx = min(step / sy, float(w))
    rows = np.unique(np.floor(np.arange(0.0, h, sy)).astype(np.intp))
    cols = np.unique(np.floor(np.arange(0.0, w, sx)).astype(np.intp))
    return img[np.ix_(rows, cols)].reshape(-1, 3)


def collect_samples(inputs: Sequence[np.ndarray], targets: Sequence[np.ndarray],
                    max_samples: int | None = DEFAULT_MAX_SAMPLES) -> tuple[np.ndarray, np.ndarray]:
    """Check the pairs and gather (N, 3) float32 input and target colours, at most ~``max_samples`` of them (the
    same evenly strided fraction of every pair, deterministic); samples with a non-finite value are dropped."""
    if len(inputs) != len(targets):
        raise ValueError(f"{len(inputs)} inputs but {len(targets)} targets")
    if len(inputs) == 0:
        raise ValueError("no image pairs to fit")
    pairs = []
    for i, (a, b) in enumerate(zip(inputs, targets)):
        a, b = np.asarray(a), np.asarray(b)
        if a.ndim != 3 or a.shape[2] != 3 or a.shape != b.shape:
            raise ValueError(f"pair {i}: input {a.shape} and target {b.shape} must be the same (H, W, 3) shape")
        if not (np.issubdtype(a.dtype, np.floating) and np.issubdtype(b.dtype, np.floating)):
            # integer images would be taken as 0..255 or 0..65535 and clipped to white: refuse rather than guess
            raise ValueError(f"pair {i}: expected float images in [0, 1], got {a.dtype} and {b.dtype}")
        pairs.append((a, b))
    total = sum(a.shape[0] * a.shape[1] for a, _ in pairs)
    step = total / max_samples if max_samples else 1.0
    x = np.concatenate([_strided(a, step) for a, _ in pairs]).astype(np.float32, copy=False)
    y = np.concatenate([_strided(b, step) for _, b in pairs]).astype(np.float32, copy=False)
    # one sum each is the fast check (a NaN or inf makes it non-finite); the per-pixel mask only when it fails
    if not (np.isfinite(x.sum()) and np.isfinite(y.sum())):
        ok = np.isfinite(x).all(axis=1) & np.isfinite(y).all(axis=1)
        x, y = x[ok], y[ok]
    if len(x) == 0:
        raise ValueError("the image pairs hold no finite pixels")
    return x, y


def splat(x: np.ndarray, y: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Trilinear splat of samples x -> y onto a size^3 grid: (weight sums c (size^3,), weighted sums of the offsets
    y - x (3, size^3)), float64, nodes in LUT order (r slowest).

    Offsets rather than targets are averaged: where a node's samples lie on one side of it (at the faces of the
    cube, at the edge of the data) their mean input is not the node, and mean(target) - node would be off by that
    displacement (a third of a cell for an identity map at the faces); mean(target - input) is exact for identity
    and constant shifts whatever the sample layout. Inputs are clipped to the cube first, as the LUT kernels clip
    them; targets are taken as given.
    """
    m = size ** 3
    count = np.zeros(m)
    sums = np.zeros((3, m))
    # in chunks whose temporaries stay in cache: 1.5x faster than whole-array passes (0.32 against 0.49 s for
    # 1.75 M samples at 33^3)
    for start in range(0, len(x), _SPLAT_CHUNK):
        _splat_chunk(x[start:start + _SPLAT_CHUNK], y[start:start + _SPLAT_CHUNK], size, count, sums)
    return count, sums


def _splat_chunk(x: np.ndarray, y: np.ndarray, n: int, count: np.ndarray, sums: np.ndarray) -> None:
    """``splat`` of a few samples, added into ``count`` (n^3,) and ``sums`` (3, n^3)."""
    m = n ** 3
    xc = np.clip(x, 0.0, 1.0)
    # channel planes: the weight products on strided (N, 3) columns took twice as long
    d = np.ascontiguousarray((y - xc).T, dtype=np.float64)
    xs = np.ascontiguousarray(xc.T, dtype=np.float64)
    xs *= n - 1
    i0 = np.minimum(xs.astype(np.intp), n - 2)  # truncation is the floor of these non-negative values
    t = xs - i0
    base = (i0[0] * n + i0[1]) * n + i0[2]
    # 1-D weights per axis ((1 - t, t) for the lower and upper node), r x g products shared by both b corners
    axis_w = [(1.0 - t[a], t[a]) for a in range(3)]
    for cr in (0, 1):
        for cg_ in (0, 1):
            wrg = axis_w[0][cr] * axis_w[1][cg_]
            for cb in (0, 1):
                w = wrg * axis_w[2][cb]
                idx = base + ((cr * n + cg_) * n + cb)
                # np.bincount per channel: one sequential pass each (np.add.at matches it on numpy 2 only)
                count += np.bincount(idx, w, minlength=m)
                for c in range(3):
                    sums[c] += np.bincount(idx, w * d[c], minlength=m)


@lru_cache(maxsize=8)
def _degree(size: int) -> np.ndarray:
    """Number of grid neighbours of each node of the 6-connected size^3 grid, (size, size, size), read-only."""
    deg = np.full((size, size, size), 6.0)
    for a in range(3):
        for end in (0, -1):
            np.moveaxis(deg, a, 0)[end] -= 1.0
    deg.setflags(write=False)
    return deg


def laplacian(v: np.ndarray) -> np.ndarray:
    """Graph Laplacian of the 6-connected grid applied to fields v (k, n, n, n): sum over neighbours of v - v_nb.

    A stencil on array slices rather than a sparse matrix product: as fast, and no matrix to build.
    """
    out = _degree(v.shape[1]) * v
    out[:, 1:] -= v[:, :-1]
    out[:, :-1] -= v[:, 1:]
    out[:, :, 1:] -= v[:, :, :-1]
    out[:, :, :-1] -= v[:, :, 1:]
    out[:, :, :, 1:] -= v[:, :, :, :-1]
    out[:, :, :, :-1] -= v[:, :, :, 1:]
    return out


def _interp_taps(n: int, nc: int) -> tuple[np.ndarray, np.ndarray]:
    """1-D linear interpolation from nc to n nodes over [0, 1]: fine i = (1 - f[i]) coarse j[i] + f[i] coarse j[i]+1."""
    u = np.arange(n) * ((nc - 1) / (n - 1))
    j = np.minimum(u.astype(np.intp), nc - 2)
    return j, u - j


def _along(ax: int, index) -> tuple:
    """An index for 4-D fields (k, n, n, n) that applies ``index`` along axis ``ax`` only."""
    full = [slice(None)] * 4
    full[ax] = index
    return tuple(full)


def prolong(vc: np.ndarray, n: int) -> np.ndarray:
    """Trilinear interpolation of fields (k, nc, nc, nc) on a coarse grid to (k, n, n, n), both spanning [0, 1]."""
    for ax in (1, 2, 3):
        nc = vc.shape[ax]
        shape = list(vc.shape)
        shape[ax] = n
        if n == 2 * nc - 1:  # nested grids (odd sizes): copies and midpoints, no gathers (5x faster)
            out = np.empty(shape)
            out[_along(ax, slice(0, None, 2))] = vc
            mid = out[_along(ax, slice(1, None, 2))]
            np.add(vc[_along(ax, slice(None, -1))], vc[_along(ax, slice(1, None))], out=mid)
            mid *= 0.5
        else:
            j, f = _interp_taps(n, nc)
            f = f.reshape([n if a == ax else 1 for a in range(4)])
            out = np.take(vc, j, axis=ax) * (1.0 - f) + np.take(vc, j + 1, axis=ax) * f
        vc = out
    return vc


def restrict(v: np.ndarray, nc: int) -> np.ndarray:
    """The transpose of ``prolong``: fields (k, n, n, n) -> (k, nc, nc, nc), each fine value shared out to the coarse
    nodes with its interpolation weights (sums, not means: data weights add up)."""
    for ax in (1, 2, 3):
        n = v.shape[ax]
        if n == 2 * nc - 1:
            out = v[_along(ax, slice(0, None, 2))].copy()
            half = 0.5 * v[_along(ax, slice(1, None, 2))]
            out[_along(ax, slice(None, -1))] += half
            out[_along(ax, slice(1, None))] += half
        else:
            j, f = _interp_taps(n, nc)
            f = f.reshape([n if a == ax else 1 for a in range(4)])
            shape = list(v.shape)
            shape[ax] = nc
            out = np.zeros(shape)
            np.add.at(out, _along(ax, j), v * (1.0 - f))
            np.add.at(out, _along(ax, j + 1), v * f)
        v = out
    return v


class _Level:
    """One grid of the multigrid hierarchy: the operator diag(react) + lam * Laplacian on an n^3 grid."""

    def __init__(self, react: np.ndarray, lam: float):
        self.n, self.react, self.lam = react.shape[0], react, lam
        self.inv_diag = 1.0 / (react + lam * _degree(self.n))
        self.coarse_inv: np.ndarray | None = None

    def apply(self, v: np.ndarray) -> np.ndarray:
        return self.react * v + self.lam * laplacian(v)


def _hierarchy(react: np.ndarray, lam: float) -> list[_Level]:
    """Grids n -> n // 2 + 1 (33 -> 17 -> 9 -> 5 -> 3) down to 3^3, solved there by a dense inverse.

    Coarse operators are rediscretised rather than Galerkin products (which would have 27-point stencils): the data
    weights are restricted (summed), and the edge weight grows with the spacing, (n - 1) / (nc - 1), as a
    discretised integral of |grad o|^2 over the same cube does in 3-D.
    """
    levels = [_Level(react, lam)]
    while levels[-1].n > _COARSEST:
        n = levels[-1].n
        nc = n // 2 + 1
        react = restrict(react[None], nc)[0]
        lam *= (n - 1) / (nc - 1)
        levels.append(_Level(react, lam))
    last = levels[-1]
    m = last.n ** 3
    last.coarse_inv = np.linalg.inv(last.apply(np.eye(m).reshape(m, last.n, last.n, last.n)).reshape(m, m))
    return levels


def _vcycle(levels: list[_Level], b: np.ndarray, i: int = 0) -> np.ndarray:
    """One V-cycle from x = 0 for fields b (k, n, n, n): damped Jacobi before and after the coarse correction (the
    same sweeps both ways, so the cycle is a symmetric operator and can precondition CG)."""
    lv = levels[i]
    if lv.coarse_inv is not None:
        k = b.shape[0]
        return (b.reshape(k, -1) @ lv.coarse_inv).reshape(b.shape)  # coarse_inv is symmetric
    x = _JACOBI_DAMPING * lv.inv_diag * b
    for _ in range(_SWEEPS - 1):
        x += _JACOBI_DAMPING * lv.inv_diag * (b - lv.apply(x))
    nc = levels[i + 1].n
    x += prolong(_vcycle(levels, restrict(b - lv.apply(x), nc), i + 1), lv.n)
    for _ in range(_SWEEPS):
        x += _JACOBI_DAMPING * lv.inv_diag * (b - lv.apply(x))
    return x


def _mgpcg(levels: list[_Level], b: np.ndarray, x0: np.ndarray, tol: float, maxiter: int) -> tuple[np.ndarray, int]:
    """Conjugate gradients preconditioned by a multigrid V-cycle, on k independent fields at once (b, x0:
    (k, n, n, n)), until the preconditioned residual is below ``tol`` everywhere (in the units of x).
    Returns (x, iterations).

    Not scipy.sparse.linalg.cg: its dot products go through OpenBLAS, whose threads made it 6-8x slower and erratic
    (0.4 to 3.3 s instead of 0.08 s a channel at size 33) on a 2-core machine with the other core busy; einsum's
    reductions stay on one thread. And Jacobi-preconditioned CG needs iterations in proportion to the grid size
    (~180 at 33, ~350 at 65: 9 s there); with the V-cycle it takes 15-25 at any size.
    """
    fine = levels[0]

    def dot(a: np.ndarray, c: np.ndarray) -> np.ndarray:
        return np.einsum("kijl,kijl->k", a, c)[:, None, None, None]

    x = x0.copy()
    r = b - fine.apply(x)
    z = _vcycle(levels, r)
    p = z.copy()
    rz = dot(r, z)
    for it in range(maxiter):
        if np.abs(z).max() <= tol:
            return x, it
        ap = fine.apply(p)
        alpha = rz / dot(p, ap)
        x += alpha * p
        r -= alpha * ap
        z = _vcycle(levels, r)
        rz_new = dot(r, z)
        p *= rz_new / np.where(rz == 0, 1.0, rz)
        p += z
        rz = rz_new
    warnings.warn(f"LUT fit: conjugate gradients stopped after {maxiter} iterations (residual {np.abs(z).max():.2g})",
                  RuntimeWarning, stacklevel=3)
    return x, maxiter


def solve_offsets(count: np.ndarray, sums: np.ndarray, size: int,
                  smoothness: float = DEFAULT_SMOOTHNESS) -> np.ndarray:
    """Offsets o (3, size^3) minimising sum c |o - d|^2 + lam sum_edges |o_a - o_b|^2 + eps |o|^2 (d = sums / c where
    c > 0), with lam = smoothness * mean(c over nodes with data) and eps = 1e-6 * that mean.

    The system (diag(c + eps) + lam * Laplacian) o = sums is solved by multigrid-preconditioned conjugate gradients,
    warm-started at the per-node means (0 where there is no data), to ~1e-7 in LUT units.
    """
    has = count > 0
    if not has.any():
        raise ValueError("no samples to fit")
    scale = float(count[has].mean())
    lam, eps = smoothness * scale, _RIDGE * scale
    mean = np.zeros_like(sums)
    mean[:, has] = sums[:, has] / count[has]
    if lam <= 0:  # no smoothing: the per-node means, identity where there is no data
        return mean * (count / (count + eps))
    n = size
    levels = _hierarchy((count + eps).reshape(n, n, n), lam)
    out, _ = _mgpcg(levels, sums.reshape(3, n, n, n), mean.reshape(3, n, n, n), _CG_TOL, _CG_MAXITER)
    return out.reshape(3, -1)


def fit_lut(inputs: Sequence[np.ndarray], targets: Sequence[np.ndarray], size: int = 33,
            smoothness: float = DEFAULT_SMOOTHNESS, max_samples: int | None = DEFAULT_MAX_SAMPLES) -> np.ndarray:
    """inputs/targets: (H, W, 3) float32 arrays in [0, 1], pairwise the same shape (sizes may differ between pairs).
    Returns an (size, size, size, 3) float32 LUT in [0, 1], indexed [r, g, b] (r slowest), node i at i/(size-1):
    the layout of pipeline.lut.identity_grid / apply_lut_f32 / apply_lut_torch.

    ``smoothness`` is relative to the data: the edge weight is smoothness * (mean trilinear weight sum over the
    nodes that have data), so its effect does not depend on how many pixels were given; 0 gives the raw per-node
    means (identity where there is no data). ``max_samples``: pairs holding more pixels are strided down to about
    this many (deterministic, the same fraction of each pair); None uses every pixel.
    """
    if size < 2:
        raise ValueError(f"size must be at least 2, got {size}")
    if not smoothness >= 0:  # also refuses NaN
        raise ValueError(f"smoothness must be >= 0, got {smoothness}")
    if max_samples is not None and max_samples < 1:
        raise ValueError(f"max_samples must be positive or None, got {max_samples}")
    x, y = collect_samples(inputs, targets, max_samples)
    count, sums = splat(x, y, size)
    offsets = solve_offsets(count, sums, size, smoothness)
    axis = np.linspace(0.0, 1.0, size)
    grid = np.stack(np.meshgrid(axis, axis, axis, indexing="ij"), axis=0).reshape(3, -1)
    return np.clip(grid + offsets, 0.0, 1.0).T.astype(np.float32).reshape(size, size, size, 3)
