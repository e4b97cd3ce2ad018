"""The coarse-to-fine retoucher: its declaration, the global colour function, PRNet and its non-local block, the
two ways to full resolution, training, the job."""
import json
import random

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from cli import main
from pipeline.checkpoint import load_checkpoint
from pipeline.models import model_class
from pipeline.guided import Tiling, run_tiled, to_u16
from pipeline.models.coarse_to_fine import (CoarseToFine, NonLocalBlock, PRNet, apply_cast, cast_scores,
                                            colour_matrix, random_cast, train_on_casts)
from pipeline.render import open_retoucher

from conftest import ledger_rows, need_shared, rerender_ledger, run_three_formats


def _photo(name="Storm.jpg", size=(192, 128)) -> torch.Tensor:
    im = Image.open(need_shared("data", "photos", name)).convert("RGB").resize(size)
    return torch.from_numpy(np.asarray(im, dtype=np.float32) / 255).permute(2, 0, 1)


def test_declaration_parameter_count_and_identity_start():
    cls = model_class("coarse-to-fine")
    assert cls.operators == ("rr", "rg", "rb", "gr", "gg", "gb", "br", "bg", "bb", "r_bias", "g_bias", "b_bias",
                             "refine")
    model = CoarseToFine()
    assert sum(p.numel() for p in model.parameters()) == 142_991
    assert sum(p.numel() for p in model.refinement.parameters()) == 86_899
    img = _photo()[None]
    with torch.inference_mode():
        out, params = model(img)
        params[:, 12] = 1.0
        refined = model.render(img, params)  # PRNet's last layer starts at zero: no residual yet
    assert torch.allclose(params[:, :12], model.identity[None]) and (out - img).abs().max() < 1e-5
    assert (refined - img).abs().max() < 1e-5


def test_the_non_local_block_reaches_across_the_image():
    """A constructed input: one bright 2 x 2 patch in a corner of a 32 x 32 map; with identity projections the far
    corner's output is the attention-weighted mean of the memory (softmax over pooled keys), which a stack of 3x3
    convolutions could not see; a query that matches the bright key attends to it most."""
    block = NonLocalBlock(1, inner=1, cells=4)
    for conv in (block.theta, block.phi, block.g, block.out):
        torch.nn.init.ones_(conv.weight)
        torch.nn.init.zeros_(conv.bias)
    x = torch.zeros(1, 1, 32, 32)
    x[..., :2, :2] = 8.0
    with torch.no_grad():
        y = block(x)
        keys, values = block.memory(x)
    pooled = torch.nn.functional.adaptive_avg_pool2d(x, 4).flatten()
    assert torch.allclose(keys.flatten(), pooled) and torch.allclose(values.flatten(), pooled)
    far = y[0, 0, -1, -1]  # query 0: uniform attention over the 16 memory cells
    assert torch.isclose(far, pooled.mean(), atol=1e-6) and far > 0
    near = y[0, 0, 0, 0] - x[0, 0, 0, 0]  # query 8 . key 0.5 = 4 vs 0 elsewhere: the bright cell dominates
    weights = torch.softmax(8.0 * pooled, 0)
    assert torch.isclose(near, (weights * pooled).sum(), atol=1e-5) and near > far


def test_prnet_in_tiles_equals_prnet_on_the_whole_image():
    torch.manual_seed(0)
    net = PRNet().eval()
    for m in net.modules():  # a trained-looking network: non-zero last layer and batch-norm statistics
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 1.5)
    torch.nn.init.normal_(net.up[-1].weight, std=0.05)
    torch.nn.init.normal_(net.non_local.out.weight, std=0.2)
    pixels = (np.asarray(Image.open(need_shared("data", "photos", "Storm.jpg")).convert("RGB").resize((301, 203)),
                         dtype=np.uint16) * 257)
    image = torch.from_numpy(pixels.astype(np.float32) / 65535).permute(2, 0, 1)[None]
    with torch.inference_mode():
        memory = net.memory(image)
        whole = to_u16((image + net(image, memory)).clamp(0, 1)).astype(np.int64)
    tiled = run_tiled(pixels, lambda crop, _: (crop + net(crop, memory)).clamp(0, 1),
                      Tiling(64, PRNet.MARGIN, PRNet.STRIDE)).astype(np.int64)
    assert np.abs(whole - pixels).max() > 2000  # the residual does change the image
    assert np.abs(tiled - whole).max() <= 128  # 0.5 levels of 8 bits


def test_the_matrix_undoes_a_cast_exactly():
    rng = random.Random(0)
    cast = random_cast(rng)
    img = _photo()[None] * 0.8  # away from clipping
    cast_img = apply_cast(img, cast)
    inverse = torch.linalg.inv(cast)
    params = torch.cat([inverse.flatten(), torch.zeros(3)])
    back = colour_matrix(cast_img.permute(0, 2, 3, 1), params).permute(0, 3, 1, 2)
    assert (back - img).abs().max() < 1e-4


def test_a_short_training_beats_the_cast_on_photos_it_never_saw():
    train = [_photo(n) for n in ("Storm.jpg", "Dune.jpg", "Aqua.jpg", "Blinds.jpg")]
    held = [_photo("Bridge_by_Sander_Klootwijk.jpg")]
    model = train_on_casts(train, steps=60, batch=8)
    rows = cast_scores(model, held)
    assert np.mean([r[1] for r in rows]) > np.mean([r[0] for r in rows])


def test_the_shipped_weights_remove_casts_better_than_neurop():
    model = load_checkpoint(model="coarse-to-fine").model.eval()
    photos = [_photo(n) for n in ("Storm.jpg", "Dune.jpg")]
    ours = cast_scores(model, photos)
    neurop = cast_scores(load_checkpoint().model.eval(), photos)
    assert np.mean([r[1] for r in ours]) > np.mean([r[1] for r in neurop]) + 3


def _psnr16(a, b) -> float:
    return -10 * np.log10(np.mean((a.astype(np.float64) / 65535 - b.astype(np.float64)) ** 2))


def test_the_global_stage_renders_through_the_lut_exactly(photo16):
    import tifffile
    r = open_retoucher(load_checkpoint(model="coarse-to-fine"))
    pixels = tifffile.imread(photo16)
    params = r.predict(pixels)
    params[12] = 0.0  # the global stage alone
    plan = r.prepare(pixels, params)
    assert plan.grid is None and plan.context is None
    assert _psnr16(r.render(pixels, params), r.render_exact(pixels, params)) > 45


@pytest.mark.parametrize("full_res", ["guided", "tiles"])
def test_both_ways_to_full_resolution_follow_the_network(full_res):
    loaded = load_checkpoint(model="coarse-to-fine")
    r = open_retoucher(loaded, options={"full_res": full_res})
    pixels = np.asarray(Image.open(need_shared("data", "photos", "Dune.jpg")).convert("RGB").resize((900, 600)),
                        dtype=np.uint16) * 257
    params = r.predict(pixels)
    params[12] = 1.0
    exact = r.render_exact(pixels, params)
    out = r.render(pixels, params)
    assert _psnr16(out, exact) > (50 if full_res == "tiles" else 30)


@pytest.fixture(scope="module")
def coarse_run(tmp_path_factory, ray_cluster):
    d = tmp_path_factory.mktemp("coarse")
    return d, run_three_formats(d, "coarse-to-fine")


def test_run_rerender_and_audit_by_name(coarse_run):
    d, out = coarse_run
    rows = ledger_rows(out / "ledger")
    assert len(rows) == 3 and {x.status for x in rows.values()} == {"ok"}
    assert all(x.model == "coarse-to-fine" and len(x.strengths) == 13 for x in rows.values())
    _, after = rerender_ledger(out, d / "same")
    assert all(after[k].output_sha256 == rows[k].output_sha256 for k in after)
    r = CliRunner().invoke(main, ["audit", str(out / "ledger"), "--json"])
    assert r.exit_code == 0 and set(json.loads(r.output)["runs"][0]["strengths"]) == set(model_class("coarse-to-fine").operators)


def test_train_holds_photos_out_and_scores_the_pairs(tmp_path):
    photos = tmp_path / "photos"
    photos.mkdir()
    import shutil
    for name in ("Storm.jpg", "Dune.jpg", "Aqua.jpg", "Blinds.jpg", "Bridge_by_Sander_Klootwijk.jpg"):
        shutil.copy(need_shared("data", "photos", name), photos)
    pairs = need_shared("data", "fivek-pairs")
    r = CliRunner().invoke(main, ["train", "--model", "coarse-to-fine", "--photos", str(photos), "--pairs",
                                  str(pairs), "--iters", "3", "--out", str(tmp_path / "c")])
    assert r.exit_code == 0, r.output
    report = json.loads((tmp_path / "c" / "casts.json").read_text())
    assert report["held_out_photos"] == 1 and report["degraded"] == 3 and report["pairs"][str(pairs)]["n"] == 13
    assert set(report["psnr_by_refine"]) == {"0.0", "0.25", "0.5", "0.75", "1.0"} and report["refine_steps"] == 6
    assert load_checkpoint(tmp_path / "c" / "best.pt").info.model == "coarse-to-fine"
