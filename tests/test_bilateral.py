"""The bilateral retoucher: size, slicing against a per-pixel reference, the CPU kernel, strips, the interface."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from pipeline.bilateral import BilateralPlan, BilateralRetoucher, slice_u16
from pipeline.checkpoint import LoadedModel, ModelInfo, load_checkpoint
from pipeline.lut import apply_lut_u16, bake_lut
from pipeline.models import Param, model_class, params_of, register
from pipeline.models.bilateral import (COEFFICIENTS, GRID_CELLS, LUMA_BINS, OPERATORS, BilateralNeurOp,
                                       slice_grid)
from pipeline.operators import white_balance
from pipeline.render import LutRetoucher, Retoucher, open_retoucher


def random_model(seed: int = 0) -> BilateralNeurOp:
    """A bilateral model far from the identity, so every part of the maths shows in the output."""
    torch.manual_seed(seed)
    m = BilateralNeurOp()
    with torch.no_grad():
        for p in m.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return m.eval()


def retoucher_for(model, **kw) -> Retoucher:
    info = ModelInfo(model.name, model.version, tuple(model.operators))
    return open_retoucher(LoadedModel(model, info, "(memory)", "0" * 64), **kw)


def photo(h: int, w: int, seed: int = 1) -> np.ndarray:
    """Smooth colour gradients plus noise: every luma bin and every grid cell is visited."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w]
    base = np.stack([x / w, y / h, 0.5 + 0.5 * np.sin(x / 37.0 + y / 23.0)], -1)
    return (np.clip(base * 0.9 + rng.random((h, w, 3)) * 0.1, 0, 1) * 65535).astype(np.uint16)


def test_parameter_count_and_declared_sliders():
    m = BilateralNeurOp()
    total = sum(p.numel() for p in m.parameters())
    per_operator = sum(p.numel() for p in m.operator("ex").parameters())
    assert per_operator == 12_200 and total == 4 * 12_200 + 13_984 + 4 * 97 == 63_172
    assert OPERATORS == ("bc", "ex", "wb", "vb") == m.operators
    assert [p.name for p in params_of("bilateral")] == ["bc", "ex", "wb", "vb"]
    assert params_of("bilateral")[2].label.startswith("white balance")
    assert model_class("bilateral") is BilateralNeurOp


def test_a_new_model_starts_as_the_identity():
    m = BilateralNeurOp().eval()
    x = torch.from_numpy(photo(120, 170).astype(np.float32) / 65535).permute(2, 0, 1)[None]
    with torch.no_grad():
        out = m.render(x, torch.zeros(1, 4))
    assert (out - x).abs().max() < 0.02


def _trilinear_reference(grid: np.ndarray, guide: np.ndarray, image: np.ndarray) -> np.ndarray:
    """The HDRNet slicing convention written out pixel by pixel in numpy (float64), independent of grid_sample."""
    _, depth, gh, gw = grid.shape
    h, w = guide.shape
    out = np.zeros((3, h, w))
    for i in range(h):
        for j in range(w):
            coords = []
            for c, n in (((j + 0.5) * gw / w - 0.5, gw), ((i + 0.5) * gh / h - 0.5, gh),
                         (guide[i, j] * depth - 0.5, depth)):
                c = min(max(c, 0.0), n - 1.0)
                lo = min(int(np.floor(c)), n - 2)
                coords.append((lo, c - lo))
            (x0, fx), (y0, fy), (z0, fz) = coords
            a = np.zeros(12)
            for dz, wz in ((0, 1 - fz), (1, fz)):
                for dy, wy in ((0, 1 - fy), (1, fy)):
                    for dx, wx in ((0, 1 - fx), (1, fx)):
                        a += wz * wy * wx * grid[:, z0 + dz, y0 + dy, x0 + dx]
            a = a.reshape(3, 4)
            out[:, i, j] = a[:, :3] @ image[:, i, j] + a[:, 3]
    return out


def test_slicing_matches_a_per_pixel_reference():
    rng = np.random.default_rng(3)
    grid = rng.normal(size=(COEFFICIENTS, LUMA_BINS, 5, 7)).astype(np.float32)
    guide = rng.random((23, 31)).astype(np.float32)
    image = rng.random((3, 23, 31)).astype(np.float32)
    got = slice_grid(torch.from_numpy(grid)[None], torch.from_numpy(guide)[None], torch.from_numpy(image)[None])
    ref = _trilinear_reference(grid.astype(np.float64), guide.astype(np.float64), image.astype(np.float64))
    assert np.abs(got[0].numpy() - ref).max() < 1e-5  # float32 rounding only


def test_cpu_kernel_matches_torch_float_slicing():
    """The compiled kernel (guide curves read from tables, uint16 out) against torch's float maths of the same grids:
    within 4 steps of 65535 at most and 0.5 on average (rounding to uint16 alone averages 0.25)."""
    r = retoucher_for(random_model())
    assert isinstance(r, BilateralRetoucher)
    px = photo(301, 457)
    s = r.predict(px)
    exact = r.render_exact(px, s)
    got = r.render(px, s).astype(np.float64) / 65535
    err = np.abs(got - exact) * 65535
    assert err.max() <= 4 and err.mean() < 0.5
    with torch.no_grad():  # and the model's own forward with those strengths on the whole image
        whole = r.model.render(torch.from_numpy(px.astype(np.float32) / 65535).permute(2, 0, 1)[None],
                               torch.from_numpy(s)[None])[0].permute(1, 2, 0).numpy()
    assert np.abs(got - whole).max() * 65535 <= 4


def test_strips_and_in_place_give_the_whole_image_result(monkeypatch):
    r = retoucher_for(random_model(1))
    px = photo(203, 311, seed=5)
    s = r.predict(px)
    plan = r.prepare(px, s)
    whole = r.apply(px, plan)
    in_place = px.copy()
    r.apply(in_place, plan, out=in_place)
    assert np.array_equal(in_place, whole)
    # the torch path (GPU) in strips of 7 rows, run on the CPU device: the same image as in one piece
    import pipeline.bilateral as bl
    monkeypatch.setattr(bl, "GPU_STRIP_PIXELS", 7 * 311)
    strips = r._apply_torch(px, plan)
    monkeypatch.setattr(bl, "GPU_STRIP_PIXELS", 1 << 30)
    one_piece = r._apply_torch(px, plan)
    assert np.array_equal(strips, one_piece)
    assert np.abs(strips.astype(int) - whole.astype(int)).max() <= 4
    # and the kernel on horizontal halves with the whole image's coordinates is not what apply does: apply sees the
    # whole image, so the halves' row coordinates differ (a sanity check that y really enters the slicing)
    top = slice_u16(np.ascontiguousarray(px[:101]), plan)
    assert not np.array_equal(top, whole[:101])


def test_the_grids_do_not_grow_with_the_image():
    r = retoucher_for(random_model())
    small, large = photo(200, 300), photo(1200, 1800)
    for px in (small, large):
        plan = r.prepare(px, r.predict(px))
        assert plan.grids.shape == (4, GRID_CELLS, GRID_CELLS, LUMA_BINS, COEFFICIENTS)
        assert plan.grids.dtype == np.float32 and plan.grids.nbytes == 6 * 2**20  # whatever the image size


def test_white_balance_warms_and_keeps_grey_luminance():
    grey = torch.full((1, 3, 4, 4), 0.5)
    warm = white_balance(grey, 0.3)
    assert warm[0, 0].mean() > 0.5 > warm[0, 2].mean()
    lin = lambda x: torch.where(x <= 0.04045, x / 12.92, ((x + 0.055) / 1.055) ** 2.4)  # noqa: E731
    lum = lambda x: 0.27 * x[0, 0] + 0.67 * x[0, 1] + 0.06 * x[0, 2]  # noqa: E731
    assert torch.allclose(lum(lin(warm)), lum(lin(grey)), atol=1e-5)
    assert torch.allclose(white_balance(grey, 0.0), grey, atol=1e-6)


def test_neurop_keeps_the_lut_path():
    loaded = load_checkpoint(None)
    r = open_retoucher(loaded)
    assert type(r) is LutRetoucher
    px = photo(150, 220)
    s = r.predict(px)
    assert np.array_equal(r.render(px, s), apply_lut_u16(px, bake_lut(loaded.model, s, r.lut_size)))


# ------------------------------------------------------------------------------------- the interface, by a tiny one

class TinyGain(nn.Module):
    """A test retoucher: one global gain predicted from the mean; a LUT-path colour function."""

    name = "test-tiny-gain"
    version = "0"
    params = (Param("gain", "gain", 0.0, 2.0, 1.0),)
    rendering = "lut"
    default_weights = None

    def __init__(self):
        super().__init__()
        self.scale = nn.Parameter(torch.tensor(1.5))

    def predict_strengths(self, thumbnail, lut_size=None):
        return (self.scale * (0.5 / thumbnail.mean(dim=(1, 2, 3)).clamp(min=1e-3))).clamp(0, 2)[:, None]

    def render_pixels(self, rgb, strengths):
        return (rgb * strengths[0]).clamp(0, 1)

    def forward(self, image):
        s = self.predict_strengths(image)
        return (image * s[:, :, None, None]).clamp(0, 1), s


class TinyLocal(TinyGain):
    """The same maths through a retoucher of its own (rendering other than "lut")."""

    name = "test-tiny-local"
    rendering = "own"

    @staticmethod
    def retoucher_class():
        class Own(Retoucher):
            def prepare(self, view, strengths):
                return float(strengths[0])

            def apply(self, pixels, prepared, out=None):
                res = np.clip(pixels.astype(np.float64) * prepared + 0.5, 0, 65535).astype(np.uint16)
                if out is None:
                    return res
                out[...] = res
                return out
        return Own


@pytest.fixture(scope="module")
def tiny_models():
    from pipeline.models import _REGISTRY
    for cls in (TinyGain, TinyLocal):
        if cls.name not in _REGISTRY:
            register(cls)
    yield
    for cls in (TinyGain, TinyLocal):
        _REGISTRY.pop(cls.name, None)


def test_a_registered_retoucher_runs_through_predict_prepare_apply(tiny_models, tmp_path):
    from pipeline.checkpoint import save_checkpoint
    px = np.full((40, 60, 3), 16384, np.uint16)  # mean 0.25: the tiny model predicts gain 1.5 * 2 = 2 (clamped)
    outputs = []
    for cls in (TinyGain, TinyLocal):
        path = tmp_path / f"{cls.name}.pt"
        save_checkpoint(path, cls(), ModelInfo(cls.name, cls.version, cls.operators))
        loaded = load_checkpoint(path, model=cls.name)
        r = open_retoucher(loaded)
        assert r.operators == ("gain",) and r.params[0].default == 1.0
        s = r.predict(px)
        assert s == pytest.approx([2.0])
        outputs.append(r.apply(px, r.prepare(r.view(px), s)))
    assert np.abs(outputs[0].astype(int) - 32768).max() <= 2 and np.abs(outputs[1].astype(int) - 32768).max() <= 1
    with pytest.raises(Exception, match="holds model"):
        load_checkpoint(tmp_path / "test-tiny-gain.pt", model="neurop")


def test_the_registry_refuses_incomplete_declarations():
    class NoParams(nn.Module):
        name = "test-no-params"
        rendering = "lut"
        params = ()

    class Twice(nn.Module):
        name = "test-twice"
        rendering = "lut"
        params = (Param("a", "a"), Param("a", "again"))

    class BadDefault(nn.Module):
        name = "test-bad-default"
        rendering = "lut"
        params = (Param("a", "a", 0.0, 1.0, 2.0),)

    for cls in (NoParams, Twice, BadDefault):
        with pytest.raises(ValueError):
            register(cls)
    with pytest.raises(KeyError, match="known: aesthetic, bilateral"):
        model_class("nope")


def test_shipped_bilateral_weights_load_and_retouch():
    try:
        loaded = load_checkpoint(None, model="bilateral")
    except Exception as e:  # pragma: no cover - the package ships them
        pytest.fail(f"bilateral weights not shipped: {e}")
    r = open_retoucher(loaded)
    px = photo(240, 360)
    s = r.predict(px)
    assert s.shape == (4,) and np.all(np.abs(s) <= 1)
    out = r.render(px, s)
    assert out.dtype == np.uint16 and out.shape == px.shape
    warmer = r.render(px, s + np.array([0, 0, 0.4, 0], np.float32))
    ratio = lambda im: im[..., 0].astype(float).mean() / max(im[..., 2].astype(float).mean(), 1)  # noqa: E731
    assert ratio(warmer) > ratio(out) * 1.02  # the wb slider warms


def test_plan_is_what_apply_reads():
    plan = retoucher_for(random_model()).prepare(photo(64, 64), np.zeros(4, np.float32))
    assert isinstance(plan, BilateralPlan) and plan.guides.shape[0] == 4 and len(plan.torch_grids) == 4


@pytest.mark.gpu
def test_cuda_bilateral_matches_the_cpu_kernel():
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    cpu = open_retoucher(load_checkpoint(None, model="bilateral"))
    gpu = open_retoucher(load_checkpoint(None, device="cuda", model="bilateral"), device="cuda")
    px = photo(600, 900)
    assert np.abs(cpu.predict(px) - gpu.predict(px)).max() < 1e-3
    s = cpu.predict(px)
    assert np.abs(gpu.render(px, s).astype(int) - cpu.render(px, s).astype(int)).max() <= 4
    image = torch.from_numpy(px.astype(np.float32) / 65535).permute(2, 0, 1)[None].cuda()
    out, strengths = gpu.retouch_tensor(image)
    host = (out[0].permute(1, 2, 0).cpu().numpy() * 65535 + 0.5).astype(np.uint16)
    assert np.abs(host.astype(int) - cpu.render(px, strengths.cpu().numpy()).astype(int)).max() <= 4
