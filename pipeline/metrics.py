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
