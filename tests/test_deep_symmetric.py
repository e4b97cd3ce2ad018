"""The deep symmetric network: its declaration, the invertible feature transformer, tiles, training, the job."""
import json
import random

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from cli import main
from pipeline.checkpoint import load_checkpoint
from pipeline.guided import Tiling, run_tiled, to_u16
from pipeline.models import model_class
from pipeline.models.deep_symmetric import (RRAM, AttentionContext, DeepSymmetric, HaarCoder, LearnedCoder,
                                            auto_exposure, dark_scores, mean_luminance, underexpose)
from pipeline.operators import srgb_to_linear
from pipeline.render import open_retoucher

from conftest import ledger_rows, need_shared, rerender_ledger, run_three_formats, same_pixels


def _photo(name="Storm.jpg", size=(192, 128)) -> torch.Tensor:
    im = Image.open(need_shared("data", "photos", name)).convert("RGB").resize(size)
    return torch.from_numpy(np.asarray(im, dtype=np.float32) / 255).permute(2, 0, 1)


def _busy(model: DeepSymmetric, std: float = 0.02) -> DeepSymmetric:
    """Give every RRAM's zero-initialized last convolution weights, so the transformer is not the identity."""
    torch.manual_seed(0)
    for m in model.modules():
        if isinstance(m, RRAM):
            torch.nn.init.normal_(m.out.weight, std=std)
    return model.eval()


def test_declaration_and_parameter_counts():
    cls = model_class("deep-symmetric")
    assert cls.operators == ("blend",) and cls.params[0].low == 0 and cls.params[0].high == 1
    learned, haar = DeepSymmetric("learned"), DeepSymmetric("haar")
    assert len(learned.ift.blocks) == 8 and all(m.rounds == 3 for m in learned.modules() if isinstance(m, RRAM))
    assert sum(p.numel() for p in learned.ift.parameters()) == 97_056
    assert sum(p.numel() for p in learned.parameters()) == 98_715
    assert sum(p.numel() for p in haar.parameters()) == 97_056  # the wavelet has no parameters


def test_the_feature_transformer_inverts_exactly():
    model = _busy(DeepSymmetric("haar"))
    x = torch.randn(2, 12, 24, 20)
    with torch.no_grad():
        y = model.ift(x)
        back = model.ift.inverse(y)
    assert (y - x).abs().max() > 0.05  # it transforms
    assert (back - x).abs().max() < 1e-4


def test_the_haar_coder_is_lossless_and_the_learned_one_shares_its_weights():
    image = _photo()[None]
    haar = HaarCoder()
    assert (haar.decode(haar.encode(image)) - image).abs().max() < 1e-5
    coder = LearnedCoder()
    names = {n for n, _ in coder.named_parameters()}
    assert names == {"conv1.weight", "conv1.bias", "conv2.weight", "conv2.bias", "dec_bias2", "dec_bias1"}
    assert coder.decode(coder.encode(image)).shape == image.shape


def test_tiles_replaying_the_attention_equal_the_whole_image():
    model = _busy(DeepSymmetric("haar"), 0.05)
    pixels = np.asarray(Image.open(need_shared("data", "photos", "Dune.jpg")).convert("RGB").resize((421, 317)),
                        dtype=np.uint16) * 257
    image = torch.from_numpy(pixels.astype(np.float32) / 65535).permute(2, 0, 1)[None]
    full = torch.ones(1, 1)
    with torch.inference_mode():
        context = model.context(image, full)
        whole = to_u16(model.local_stage(image, full, context)).astype(np.int64)
        assert np.abs(whole - to_u16(model.local_stage(image, full)).astype(np.int64)).max() <= 1  # replay = pooling
    tiled = run_tiled(pixels, lambda crop, _: model.local_stage(crop, full, context),
                      Tiling(128, model.margin, model.align)).astype(np.int64)
    assert np.abs(whole - pixels).max() > 2000
    assert np.abs(tiled - whole).max() <= 128  # 0.5 levels of 8 bits


def test_attention_context_records_then_replays_in_order():
    ctx = AttentionContext()
    a, b = torch.ones(1, 2, 3, 3), torch.full((1, 2, 3, 3), 2.0)
    ctx.pooled(a), ctx.pooled(b)
    again = ctx.replay()
    assert again.pooled(torch.zeros(1, 2, 5, 5)).mean() == 1 and again.pooled(torch.zeros(1, 2, 5, 5)).mean() == 2


def test_synthetic_underexposure_is_darker_and_noisy():
    good = _photo()[None]
    dark = underexpose(good, random.Random(1))
    ratio = srgb_to_linear(dark).mean() / srgb_to_linear(good).mean()
    assert 2 ** -3.6 < ratio < 2 ** -0.6
    flat = underexpose(torch.full((1, 3, 64, 64), 0.5), random.Random(2))
    assert flat.std() > 1e-3  # sensor noise on a flat grey
    target = mean_luminance([good[0]])
    brightened = auto_exposure(dark, target)
    lum = lambda x: (srgb_to_linear(x) * torch.tensor([0.2126, 0.7152, 0.0722]).reshape(1, 3, 1, 1)).sum(1).mean()  # noqa: E731
    assert abs(float(lum(brightened)) - target) < 0.05 * target + 0.01


def test_the_shipped_weights_beat_neurop_and_auto_exposure_on_dark_photos():
    model = load_checkpoint(model="deep-symmetric").model.eval()
    photos = [_photo(n, (288, 192)) for n in ("Storm.jpg", "Dune.jpg")]
    s = dark_scores(model, photos, mean_luminance(photos))
    ours = s["blend_1.0"]
    assert ours > s["neurop"] + 1 and ours > s["auto_exposure"] and ours > s["input"] + 3


@pytest.mark.parametrize("full_res", ["guided", "tiles"])
def test_both_ways_to_full_resolution_follow_the_network(full_res):
    r = open_retoucher(load_checkpoint(model="deep-symmetric"), options={"full_res": full_res})
    r.TILE = 256
    good = _photo("Dune.jpg", (600, 400))
    dark = to_u16(underexpose(good[None], random.Random(3)))
    exact = r.render_exact(dark, [1.0])
    out = r.render(dark, [1.0])
    p = -10 * np.log10(np.mean((out.astype(np.float64) / 65535 - exact) ** 2))
    assert p > (50 if full_res == "tiles" else 25)


@pytest.fixture(scope="module")
def dsn_run(tmp_path_factory, ray_cluster):
    d = tmp_path_factory.mktemp("dsn")
    return d, run_three_formats(d, "deep-symmetric")


def test_run_rerender_and_audit_by_name(dsn_run):
    d, out = dsn_run
    rows = ledger_rows(out / "ledger")
    assert len(rows) == 3 and {x.status for x in rows.values()} == {"ok"}
    assert all(x.model == "deep-symmetric" and x.operators == ["blend"] for x in rows.values())
    _, after = rerender_ledger(out, d / "same")
    assert all(after[k].output_sha256 == rows[k].output_sha256 for k in after)
    _, half = rerender_ledger(out, d / "half", "--set", "blend=0.5")
    assert all(half[k].strengths == [0.5] and not same_pixels(half[k].output_path, rows[k].output_path) for k in half)
    r = CliRunner().invoke(main, ["audit", str(out / "ledger"), "--json"])
    assert r.exit_code == 0 and set(json.loads(r.output)["runs"][0]["strengths"]) == {"blend"}


def test_train_holds_photos_out_and_guards_the_pairs(tmp_path):
    photos, pairs = tmp_path / "photos", tmp_path / "pairs"
    photos.mkdir()
    for name in ("Storm.jpg", "Dune.jpg", "Aqua.jpg", "Blinds.jpg", "Bridge_by_Sander_Klootwijk.jpg"):
        Image.open(need_shared("data", "photos", name)).convert("RGB").resize((192, 128)).save(photos / name)
    fivek = need_shared("data", "fivek-pairs")
    for sub in ("input", "target"):
        (pairs / sub).mkdir(parents=True)
        for f in sorted((fivek / sub).iterdir())[:2]:
            Image.open(f).convert("RGB").resize((96, 64)).save(pairs / sub / (f.stem + ".png"))
    r = CliRunner().invoke(main, ["train", "--model", "deep-symmetric", "--coder", "haar", "--photos", str(photos),
                                  "--pairs", str(pairs), "--iters", "2", "--out", str(tmp_path / "d")])
    assert r.exit_code == 0, r.output
    report = json.loads((tmp_path / "d" / "dark.json").read_text())
    assert report["held_out_photos"] == 1 and report["held_out"]["n"] == 3 and report["coder"] == "haar"
    by_blend = report["pairs"][str(pairs)]
    assert by_blend["n"] == 2 and by_blend["0.0"] == pytest.approx(by_blend["input"])
    chosen = report["blend"]
    assert all(by_blend[str(b)] >= by_blend["input"] for b in (0.0, 0.25, 0.5, 0.75, 1.0) if b <= chosen)
    assert load_checkpoint(tmp_path / "d" / "best.pt").info.training["coder"] == "haar"


def test_train_options_belong_to_their_model(tmp_path):
    r = CliRunner().invoke(main, ["train", "--pairs", str(need_shared("data", "fivek-pairs")), "--coder", "haar",
                                  "--out", str(tmp_path / "x")])
    assert r.exit_code != 0 and "--coder belongs to --model deep-symmetric" in r.output
