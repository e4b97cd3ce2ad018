"""Carrying a network's edit to full resolution: the fitted bilateral grid and the tiles."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from pipeline.guided import Tiling, fit_grid, run_tiled, slice_torch, slice_u16_grid, to_u16
from pipeline.operators import exposure, vibrance

from conftest import need_shared


def _photo(size=(384, 256)) -> torch.Tensor:
    im = Image.open(need_shared("data", "photos", "Storm.jpg")).convert("RGB").resize(size)
    return torch.from_numpy(np.asarray(im, dtype=np.float32) / 255).permute(2, 0, 1)[None]


def _psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(-10 * torch.log10(((a - b) ** 2).mean()))


def test_the_grid_learns_a_global_edit_and_a_local_one():
    image = _photo()
    edited = vibrance(exposure(image, 0.8), 0.5)
    assert _psnr(slice_torch(fit_grid(image[0], edited[0]), image), edited) > 45
    local = edited.clone()
    local[..., :192] = exposure(edited[..., :192], 0.5)  # the left half a further half stop brighter
    fitted = slice_torch(fit_grid(image[0], local[0]), image)
    assert _psnr(fitted, local) > 35
    assert (fitted - edited)[..., :150].mean() > 0.03  # brighter where the edit was, not elsewhere
    assert (fitted - edited)[..., 240:].abs().mean() < 0.01


def test_the_compiled_kernel_slices_as_torch_does():
    image = _photo()
    grid = fit_grid(image[0], exposure(image, -0.5)[0])
    pixels = to_u16(image)
    kernel = slice_u16_grid(pixels, grid).astype(np.float64) / 65535
    reference = slice_torch(grid, torch.from_numpy(pixels.astype(np.float32) / 65535).permute(2, 0, 1)[None])
    assert np.abs(kernel - reference[0].permute(1, 2, 0).numpy()).max() < 2e-5


def test_fitting_is_deterministic_and_empty_cells_take_the_whole_image_map():
    image = _photo((96, 64))
    target = exposure(image, 0.3)
    a, b = fit_grid(image[0], target[0]), fit_grid(image[0], target[0])
    assert np.array_equal(a, b)
    dark = image * 0.2  # only the lowest luma bins hold pixels
    grid = fit_grid(dark[0], (dark * 2)[0])
    bright = torch.full((1, 3, 8, 8), 0.9)  # a colour the fit never saw: the whole image's map (x2), clamped
    assert torch.allclose(slice_torch(grid, bright), torch.ones_like(bright), atol=0.02)


def test_tiles_equal_the_whole_image_for_a_local_network():
    weight = torch.rand(3, 3, 7, 7)
    weight /= weight.sum((1, 2, 3), keepdim=True)

    def blur(crop, _origin):
        return F.conv2d(F.pad(crop, (3, 3, 3, 3), mode="replicate"), weight)
    pixels = to_u16(_photo((301, 203)))
    whole = to_u16(blur(torch.from_numpy(pixels.astype(np.float32) / 65535).permute(2, 0, 1)[None], None))
    tiled = run_tiled(pixels, blur, Tiling(64, 4))
    assert np.abs(tiled.astype(int) - whole.astype(int)).max() <= 1
    narrow = run_tiled(pixels, blur, Tiling(64, 1))  # a margin below the receptive field shows the seams
    assert np.abs(narrow.astype(int) - whole.astype(int)).max() > 100
    in_place = pixels.copy()
    assert run_tiled(in_place, blur, Tiling(64, 4), out=in_place) is in_place and np.array_equal(in_place, tiled)


def test_a_tiling_must_keep_the_strides_aligned():
    with pytest.raises(ValueError, match="multiples of 4"):
        Tiling(100, 30, 4)
