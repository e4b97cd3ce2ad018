"""Full-resolution rendering through a baked 3D LUT against the exact per-pixel network."""
import numpy as np
import pytest
import torch

from pipeline.checkpoint import load_checkpoint
from pipeline.lut import (apply_lut_f32, apply_lut_planar, apply_lut_torch, apply_lut_u16, bake_lut, box_average_u16,
                          identity_grid)
from pipeline.metrics import psnr
from pipeline.render import open_retoucher, thumbnail

from conftest import synthetic_photo


def identity_lut(n):
    return identity_grid(n).numpy().reshape(n, n, n, 3)


def test_identity_lut_is_lossless_to_one_step():
    px = synthetic_photo()
    out = apply_lut_u16(px, identity_lut(17))
    assert np.abs(out.astype(int) - px.astype(int)).max() <= 1


def test_in_place_equals_out_of_place():
    r = open_retoucher(load_checkpoint(None))
    px = synthetic_photo()
    lut = r.lut([0.2, -0.3, 0.4])
    a = apply_lut_u16(px, lut)
    b = px.copy()
    apply_lut_u16(b, lut, out=b)
    assert np.array_equal(a, b)


@pytest.mark.parametrize("size,min_db", [(17, 40.0), (33, 50.0), (65, 58.0)])
def test_lut_render_matches_exact_network(size, min_db):
    """Measured here on a real photo with the shipped weights (see BENCHMARKS.md for the table)."""
    from conftest import need_shared
    from PIL import Image
    img = np.asarray(Image.open(need_shared("data", "fivek-pairs", "input", "a1305.png")).convert("RGB"))
    px = img.astype(np.uint16) * 257
    r = open_retoucher(load_checkpoint(None), lut_size=size)
    s = r.predict(px)
    exact = r.render_exact(px, s)
    via_lut = apply_lut_f32(px.astype(np.float32) / 65535, r.lut(s))
    db = psnr(via_lut, exact)
    assert db >= min_db, f"LUT {size}^3: {db:.1f} dB"


def test_torch_lut_path_matches_numba_path():
    lut = bake_lut(load_checkpoint(None).model, [0.3, 0.5, -0.2], 17)
    px = synthetic_photo().astype(np.float32) / 65535
    a = apply_lut_f32(px, lut)
    b = apply_lut_torch(torch.from_numpy(px).permute(2, 0, 1)[None], torch.from_numpy(lut))[0].permute(1, 2, 0)
    assert np.abs(a - b.numpy()).max() < 1e-5


def test_uint16_kernel_matches_float_kernel_on_every_cell():
    """Random colours reach every LUT cell, the top grid value included."""
    lut = bake_lut(load_checkpoint(None).model, [0.3, 0.5, -0.2], 17)
    px = np.random.default_rng(0).integers(0, 65536, (64, 257, 3), dtype=np.uint16)
    px[0, :8] = [[65535, 65535, 65535], [0, 0, 0], [65535, 0, 32768], [1, 65534, 2]] * 2
    ref = np.clip(apply_lut_f32(px.astype(np.float32) / 65535, lut), 0, 1) * 65535
    assert np.abs(apply_lut_u16(px, lut).astype(np.float64) - ref).max() <= 0.51


@pytest.mark.parametrize("width", [1, 2, 7])
def test_uint16_kernel_clamps_and_writes_nothing_past_the_image(width):
    """The kernel stores 4 lanes per pixel; the lane past each row's last pixel must never land in memory."""
    rng = np.random.default_rng(width)
    lut = rng.uniform(-0.2, 1.2, (9, 9, 9, 3)).astype(np.float32)  # values outside [0, 1] must be clamped
    px = rng.integers(0, 65536, (5, width, 3), dtype=np.uint16)
    guarded = np.full((7, width, 3), 12345, np.uint16)
    out = apply_lut_u16(px, lut, out=guarded[1:6])
    ref = apply_lut_f32(px.astype(np.float32) / 65535, lut) * 65535
    assert np.abs(out.astype(np.float64) - ref).max() <= 0.51
    assert (guarded[0] == 12345).all() and (guarded[6] == 12345).all()


def test_strided_sources_are_accepted_and_strided_outputs_refused():
    lut = bake_lut(load_checkpoint(None).model, [0.3, 0.5, -0.2], 17)
    px = synthetic_photo(60, 80)
    assert np.array_equal(apply_lut_u16(px[::2, ::3], lut), apply_lut_u16(np.ascontiguousarray(px[::2, ::3]), lut))
    with pytest.raises(ValueError, match="C-contiguous"):
        apply_lut_u16(px[:, :40], lut, out=px[:, 40:])


def test_planar_kernel_matches_grid_sample_over_a_domain():
    """The predictor's intermediates: a LUT sampled over [lo, hi], values outside [0, 1] kept."""
    lut = torch.from_numpy(bake_lut(load_checkpoint(None).model, [0.3, 0.5, -0.2], 17)) * 1.3 - 0.1
    img = torch.from_numpy(np.random.default_rng(1).uniform(-0.05, 1.1, (3, 41, 67)).astype(np.float32))
    a = apply_lut_planar(img, lut, (-0.05, 1.1))
    b = apply_lut_torch(img[None], lut, clamp=False, domain=(-0.05, 1.1))[0]
    assert a.shape == img.shape and float((a - b).abs().max()) < 1e-5 and float(a.max()) > 1.0


def test_box_average_equals_block_means():
    px = np.random.default_rng(2).integers(0, 65536, (37, 53, 3), dtype=np.uint16)
    for k in (1, 3, 5):
        out = np.empty((37 // k, 53 // k, 3), np.float32)
        box_average_u16(px, k, out)
        h, w = out.shape[:2]
        ref = px[:h * k, :w * k].reshape(h, k, w, k, 3).mean(axis=(1, 3)) / 65535
        assert np.abs(out - ref).max() < 1e-6


def test_thumbnail_is_resolution_independent_and_exact_when_small():
    px = synthetic_photo(300, 400)
    t = thumbnail(px, 512)
    assert t.shape == (1, 3, 300, 400) and torch.allclose(t[0, 0], torch.from_numpy(px[..., 0] / 65535.0).float())
    big = np.repeat(np.repeat(px, 4, axis=0), 4, axis=1)  # the same picture at 16x the pixels
    tb = thumbnail(big, 200)
    ts = thumbnail(px, 200)
    assert tb.shape == ts.shape == (1, 3, 150, 200)
    assert (tb - ts).abs().mean() < 0.01


def test_strengths_barely_move_with_resolution():
    r = open_retoucher(load_checkpoint(None))
    px = synthetic_photo(300, 400, seed=3)
    big = np.repeat(np.repeat(px, 5, axis=0), 5, axis=1)
    assert np.abs(r.predict(px) - r.predict(big)).max() < 0.02


def test_fast_prediction_through_luts_matches_the_exact_network():
    """Intermediate thumbnails through one LUT per operator instead of the network on every pixel."""
    from conftest import need_shared
    from PIL import Image
    m = load_checkpoint(None).model
    worst = 0.0
    for f in sorted(need_shared("data", "fivek-pairs", "input").glob("*.png"))[:6]:
        px = np.asarray(Image.open(f).convert("RGB"), dtype=np.uint16) * 257
        t = thumbnail(px, 512)
        with torch.inference_mode():
            worst = max(worst, float((m.predict_strengths(t) - m.predict_strengths(t, 33)).abs().max()))
    assert worst < 0.005, worst


def test_images_smaller_than_the_lut_render_exactly_without_one():
    """A web-size image has fewer pixels than a 33^3 table has entries: it gets the network itself, not a LUT, in
    prediction and in rendering; a larger one keeps the LUT. Both agree with the exact network."""
    from pipeline.render import ExactColours
    r = open_retoucher(load_checkpoint(None), lut_size=33)
    small = synthetic_photo(48, 64, seed=5)
    s = r.predict(small)
    with torch.inference_mode():
        exact_strengths = r.model.predict_strengths(thumbnail(small, 512))[0].numpy()
    assert np.array_equal(s, exact_strengths)  # the very same computation, not an approximation of it
    plan = r.prepare_image(r.view(small), s, small.shape)
    assert isinstance(plan, ExactColours)
    out = r.apply(small, plan)
    expected = np.round(r.render_exact(small, s) * 65535).astype(np.int64)
    assert np.abs(out.astype(np.int64) - expected).max() <= 1
    assert np.abs(out.astype(np.int64) - small.astype(np.int64)).max() > 500  # the edit did happen
    big = synthetic_photo(200, 300, seed=5)  # 60,000 pixels > 35,937 entries
    assert isinstance(r.prepare_image(r.view(big), s, big.shape), np.ndarray)


def test_gpu_render_path_matches_the_cpu_kernel():
    """The torch (GPU) strip renderer, run here on the CPU device, agrees with the compiled kernel to 1 step."""
    from pipeline.render import render_lut_torch
    import pipeline.render as render
    r = open_retoucher(load_checkpoint(None))
    px = synthetic_photo(70, 50)
    lut = r.lut([0.1, 0.4, -0.3])
    old, render.GPU_STRIP_PIXELS = render.GPU_STRIP_PIXELS, 1000  # several strips
    try:
        via_torch = render_lut_torch(px, lut, "cpu")
    finally:
        render.GPU_STRIP_PIXELS = old
    assert np.abs(via_torch.astype(int) - apply_lut_u16(px, lut).astype(int)).max() <= 1


@pytest.mark.gpu
def test_cuda_render_and_predict():
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    cpu = open_retoucher(load_checkpoint(None))
    gpu = open_retoucher(load_checkpoint(None, device="cuda"), device="cuda")
    px = synthetic_photo(400, 600)
    assert np.abs(cpu.predict(px) - gpu.predict(px)).max() < 1e-3
    s = cpu.predict(px)
    assert np.abs(gpu.render(px, s).astype(int) - cpu.render(px, s).astype(int)).max() <= 2


def test_kernels_called_from_several_threads_give_the_same_results():
    """A worker holding several images runs decodes (ICC conversions use a LUT) beside renders: same bytes."""
    from concurrent.futures import ThreadPoolExecutor
    lut = bake_lut(load_checkpoint(None).model, [0.3, 0.5, -0.2], 17)
    images = [synthetic_photo(120 + 8 * i, 160) for i in range(6)]
    alone = [apply_lut_u16(px, lut) for px in images]
    with ThreadPoolExecutor(3) as pool:
        together = list(pool.map(lambda px: apply_lut_u16(px, lut), images * 3))
    assert all(np.array_equal(a, b) for a, b in zip(alone * 3, together))
