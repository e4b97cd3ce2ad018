"""Evaluation metrics exactly as the NeurOp reference: float images in [0, 1], no 8-bit rounding."""
from __future__ import annotations

import math

import numpy as np


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """-20 log10(RMSE) over all pixels and channels, data range 1."""
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return math.inf if mse == 0 else -10.0 * math.log10(mse)


def ssim(a: np.ndarray, b: np.ndarray) -> float:
    from skimage.metrics import structural_similarity
    return float(structural_similarity(a, b, data_range=1.0, channel_axis=-1))


def delta_e76(a: np.ndarray, b: np.ndarray) -> float:
    from skimage.color import deltaE_cie76, rgb2lab
    return float(np.mean(deltaE_cie76(rgb2lab(a), rgb2lab(b))))


# The aesthetic-guided seed's metric (after EXPOSURE, Hu et al. 2018): how alike two sets of images are in the
# distributions of patch luminance, contrast and saturation. Our reading of it, stated so figures can be checked:
# every image is cut into PATCH_GRID x PATCH_GRID patches; per patch, luminance = mean of 0.27R + 0.67G + 0.06B,
# contrast = standard deviation of that luminance, saturation = mean HSV saturation; each quantity is histogrammed
# over all patches of a set (HISTOGRAM_BINS bins on [0, 1], contrast on [0, 0.5]), and the intersection of the two
# normalized histograms, sum(min(p, q)), is reported in percent (100 = identical distributions).
PATCH_GRID = 8
HISTOGRAM_BINS = 32
PATCH_FEATURES = ("luminance", "contrast", "saturation")


def patch_features(image: np.ndarray, grid: int = PATCH_GRID) -> np.ndarray:
    """(H, W, 3) float in [0, 1] -> (grid * grid, 3): each patch's luminance, contrast and saturation."""
    h, w = image.shape[:2]
    rows, cols = np.linspace(0, h, grid + 1).astype(int), np.linspace(0, w, grid + 1).astype(int)
    lum = image @ np.array([0.27, 0.67, 0.06])
    value = image.max(-1)
    sat = np.where(value > 1e-6, (value - image.min(-1)) / np.maximum(value, 1e-6), 0.0)
    out = []
    for i in range(grid):
        for j in range(grid):
            window = np.s_[rows[i]:max(rows[i + 1], rows[i] + 1), cols[j]:max(cols[j + 1], cols[j] + 1)]
            out.append((lum[window].mean(), lum[window].std(), sat[window].mean()))
    return np.asarray(out)


def histogram_intersections(outputs: list[np.ndarray], targets: list[np.ndarray]) -> dict[str, float]:
    """Patch-based histogram intersection (percent) of luminance, contrast and saturation between two image sets."""
    a = np.concatenate([patch_features(x) for x in outputs])
    b = np.concatenate([patch_features(x) for x in targets])
    result = {}
    for k, name in enumerate(PATCH_FEATURES):
        top = 0.5 if name == "contrast" else 1.0
        p = np.histogram(np.clip(a[:, k], 0, top), bins=HISTOGRAM_BINS, range=(0, top))[0] / len(a)
        q = np.histogram(np.clip(b[:, k], 0, top), bins=HISTOGRAM_BINS, range=(0, top))[0] / len(b)
        result[name] = float(np.minimum(p, q).sum() * 100)
    return result
