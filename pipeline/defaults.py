"""Defaults the command line shows before any heavy module loads (no numpy, torch or numba here)."""

OUTPUT_FORMATS = {"tiff16": ".tif", "jpeg": ".jpg", "png": ".png"}  # --format -> file extension
DEFAULT_MAX_PIXELS = 250_000_000  # --max-pixels: larger sources are refused from their header
DEFAULT_LUT_SIZE = 33  # 3D LUT points per axis for full-resolution rendering (BENCHMARKS.md: error per size)
