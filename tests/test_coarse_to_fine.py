"""The coarse-to-fine retoucher's global stage: its declaration, its colour function, its training, the job."""
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
from pipeline.models.coarse_to_fine import (CoarseToFine, apply_cast, cast_scores, colour_matrix, random_cast,
                                            train_on_casts)
from pipeline.render import open_retoucher

from conftest import ledger_rows, need_shared, rerender_ledger, run_three_formats


def _photo(name="Storm.jpg", size=(192, 128)) -> torch.Tensor:
    im = Image.open(need_shared("data", "photos", name)).convert("RGB").resize(size)
    return torch.from_numpy(np.asarray(im, dtype=np.float32) / 255).permute(2, 0, 1)


def test_declaration_parameter_count_and_identity_start():
    cls = model_class("coarse-to-fine")
    assert cls.operators == ("rr", "rg", "rb", "gr", "gg", "gb", "br", "bg", "bb", "r_bias", "g_bias", "b_bias")
    model = CoarseToFine()
    assert sum(p.numel() for p in model.parameters()) == 56_092
    img = _photo()[None]
    with torch.inference_mode():
        out, params = model(img)
    assert torch.allclose(params, model.identity[None]) and (out - img).abs().max() < 1e-5


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


def test_the_lut_render_matches_the_colour_function(photo16):
    import tifffile
    r = open_retoucher(load_checkpoint(model="coarse-to-fine"))
    pixels = tifffile.imread(photo16)
    params = r.predict(pixels)
    fast = r.render(pixels, params).astype(np.float64) / 65535
    exact = r.render_exact(pixels, params).astype(np.float64)
    assert -10 * np.log10(np.mean((fast - exact) ** 2)) > 45


@pytest.fixture(scope="module")
def coarse_run(tmp_path_factory, ray_cluster):
    d = tmp_path_factory.mktemp("coarse")
    return d, run_three_formats(d, "coarse-to-fine")


def test_run_rerender_and_audit_by_name(coarse_run):
    d, out = coarse_run
    rows = ledger_rows(out / "ledger")
    assert len(rows) == 3 and {x.status for x in rows.values()} == {"ok"}
    assert all(x.model == "coarse-to-fine" and len(x.strengths) == 12 for x in rows.values())
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
    assert report["held_out_photos"] == 1 and report["casts"] == 3 and report["pairs"][str(pairs)]["n"] == 13
    assert load_checkpoint(tmp_path / "c" / "best.pt").info.model == "coarse-to-fine"
