"""Learning a style from a few pairs: the NeurOp + look model, the recipe choice, `train` with no options, and a
styled model through run and rerender."""
import json

import numpy as np
import tifffile
import torch
from click.testing import CliRunner
from PIL import Image

from cli import main
from pipeline.checkpoint import ModelInfo, load_checkpoint, save_checkpoint
from pipeline.lut import apply_lut_f32, bake_lut
from pipeline.metrics import psnr
from pipeline.models.style_look import STATISTICS, StyleLook, apply_operators, image_statistics
from pipeline.operators import exposure, linear_to_srgb, srgb_to_linear
from pipeline.style import RECIPES, choose_recipe, fit_style, rendered_psnr

from conftest import need_shared


def warm_matte(x: torch.Tensor) -> torch.Tensor:
    """A fixed look: warmer, lifted blacks, a little gamma. (B, 3, H, W) -> same."""
    gains = torch.tensor([1.08, 1.0, 0.88]).view(1, 3, 1, 1)
    return (0.06 + 0.9 * (x * gains).clamp(0, 1) ** 0.9).clamp(0, 1)


def auto_exposed(x: torch.Tensor) -> torch.Tensor:
    """An adaptive style: each photo's exposure set so its mean linear luminance is 0.18, then the fixed look."""
    lin = srgb_to_linear(x)
    mean = (lin * torch.tensor([0.2126, 0.7152, 0.0722]).view(1, 3, 1, 1)).sum(1).mean()
    return warm_matte(linear_to_srgb(lin * (0.18 / mean)))


def photo_pairs(style, names, size=(150, 100), darken=None):
    out = []
    for k, n in enumerate(names):
        img = Image.open(need_shared("data", "photos", n)).convert("RGB").resize(size)
        x = torch.from_numpy(np.asarray(img, np.float32) / 255).permute(2, 0, 1)[None]
        if darken:  # vary the exposures, as an archive's would
            x = exposure(x, darken[k % len(darken)]).clamp(0, 1)
        y = style(x)
        out.append((n.split(".")[0], x[0].permute(1, 2, 0).contiguous().numpy(),
                    y[0].permute(1, 2, 0).contiguous().numpy()))
    return out


PHOTOS = ["Dune.jpg", "Storm.jpg", "Garden.jpg", "Aqua.jpg", "Wood.jpg", "RainDrops.jpg", "LadyBird.jpg",
          "GreenMeadow.jpg", "YellowFlower.jpg", "Blinds.jpg"]


def test_operators_at_zero_are_the_identity_and_exposure_is_in_stops():
    x = torch.rand(2, 3, 8, 8) * 0.6 + 0.2
    assert torch.allclose(apply_operators(x, torch.zeros(2, 3)), x, atol=1e-5)
    brighter = apply_operators(x, torch.tensor([[0.0, 1 / 3, 0.0]] * 2))  # ex +1/3 of 3 stops = +1 EV
    assert torch.allclose(srgb_to_linear(brighter).clamp(max=1), (2 * srgb_to_linear(x)).clamp(max=1), atol=1e-4)


def test_look_model_full_image_pixel_list_and_baked_lut_agree_and_round_trip(tmp_path):
    torch.manual_seed(1)
    model = StyleLook(look_size=9).requires_grad_(False)
    model.look.copy_((model.look * 0.8 + 0.1) ** 1.2)  # some non-identity look
    model.strength_weight.normal_(0, 0.3)
    image = torch.rand(1, 3, 24, 32)
    out, s = model(image)
    pixels = model.render_pixels(image[0].permute(1, 2, 0).reshape(-1, 3), s[0]).reshape(24, 32, 3)
    assert torch.allclose(out[0].permute(1, 2, 0), pixels, atol=1e-5)
    baked = apply_lut_f32(image[0].permute(1, 2, 0).numpy(), bake_lut(model, s[0].numpy(), 33))
    assert psnr(baked, pixels.numpy()) > 40
    info = ModelInfo(model="style-look", model_version="1", operators=("bc", "ex", "vb"))
    save_checkpoint(tmp_path / "look.pt", model, info)
    loaded = load_checkpoint(tmp_path / "look.pt").model
    assert loaded.look.shape == (9, 9, 9, 3) and torch.equal(loaded.look, model.look)
    assert torch.equal(loaded(image)[1], s)


def test_statistics_shift_with_exposure():
    x = torch.rand(1, 3, 40, 60) * 0.4 + 0.05
    a, b = image_statistics(x), image_statistics(exposure(x, -1.0))
    assert a.shape == (1, len(STATISTICS))
    # one stop darker halves linear luminance: the log2 luminance columns drop by 1 (less near black, where the
    # log's floor takes over)
    drop = a[0, :8] - b[0, :8]
    assert torch.allclose(drop[3:], torch.ones(5), atol=0.05) and bool((drop > 0.8).all()), drop


def test_a_fixed_look_is_learned_from_two_pairs():
    pairs = photo_pairs(warm_matte, PHOTOS[:2])
    held = photo_pairs(warm_matte, PHOTOS[6:9])
    model = fit_style(pairs, RECIPES[0])
    for pair in held:
        assert rendered_psnr(model, pair) > psnr(pair[1], pair[2]) + 6, (rendered_psnr(model, pair), psnr(*pair[1:]))


def test_cross_validation_picks_an_adaptive_recipe_for_a_style_that_corrects_exposure():
    pairs = photo_pairs(auto_exposed, PHOTOS[:6], darken=[0.0, -1.0, -0.5, 0.5, -1.5, -0.2])
    recipe, selection = choose_recipe(pairs, log=lambda *_: None)
    scores = selection["leave_one_out_psnr"]
    assert recipe.adaptive, scores
    assert scores[recipe.name] > scores["look"] + 1.0, scores


def test_train_with_no_options_learns_a_style_that_run_and_rerender_use(tmp_path, ray_cluster):
    pairs_dir = tmp_path / "mine"
    for sub in ("input", "target"):
        (pairs_dir / sub).mkdir(parents=True)
    for i, a, b in photo_pairs(warm_matte, PHOTOS[:2]):
        Image.fromarray((a * 255 + 0.5).astype(np.uint8)).save(pairs_dir / "input" / f"{i}.png")
        Image.fromarray((b * 255 + 0.5).astype(np.uint8)).save(pairs_dir / "target" / f"{i}.png")
    runner = CliRunner()
    r = runner.invoke(main, ["train", "--pairs", str(pairs_dir), "--out", str(tmp_path / "run")])
    assert r.exit_code == 0, r.output
    assert "learning a style from 2 pair(s)" in r.output and "recipe look" in r.output
    weights = tmp_path / "run" / "best.pt"
    assert load_checkpoint(weights).info.model == "style-look"
    chosen = json.loads((tmp_path / "run" / "style.json").read_text())
    assert chosen["recipe"]["name"] in ("look", "look-fine")  # 2 pairs: a fixed look, chosen by leave-one-out
    assert set(chosen["leave_one_out_psnr"]) == {"look", "look-fine"}
    r = runner.invoke(main, ["train", "--pairs", str(pairs_dir), "--out", str(tmp_path / "x"), "--recipe", "style",
                             "--iters", "5"])
    assert r.exit_code == 2 and "--iters" in r.output

    # the styled model in the batch job, and its strengths re-edited
    src = tmp_path / "archive"
    src.mkdir()
    for n in PHOTOS[6:8]:
        Image.open(need_shared("data", "photos", n)).convert("RGB").resize((240, 160)).save(src / n)
    (tmp_path / "m.csv").write_text("path\n" + "".join(f"archive/{n}\n" for n in PHOTOS[6:8]))
    out = tmp_path / "out"
    r = runner.invoke(main, ["run", str(tmp_path / "m.csv"), "--out", str(out), "--weights", str(weights),
                             "--no-progress"])
    assert r.exit_code == 0, r.output
    from jobs.ledger import latest_by_image, read_ledger
    rows = latest_by_image(read_ledger(out / "ledger"))
    assert {row.model for row in rows.values()} == {"style-look"}
    def red_over_blue(a):
        return a[..., 0].mean() / a[..., 2].mean()

    for row in rows.values():  # the look is in the output: warmer than the source
        source = np.asarray(Image.open(row.source_path), np.float64)
        assert red_over_blue(tifffile.imread(row.output_path).astype(np.float64)) > 1.05 * red_over_blue(source)
    same, bright = tmp_path / "same", tmp_path / "bright"
    assert runner.invoke(main, ["rerender", str(out / "ledger"), "--out", str(same), "--no-progress"]).exit_code == 0
    assert runner.invoke(main, ["rerender", str(out / "ledger"), "--out", str(bright), "--shift", "ex=+0.3",
                                "--no-progress"]).exit_code == 0
    for k, row in latest_by_image(read_ledger(same / "ledger")).items():
        assert row.output_sha256 == rows[k].output_sha256
    for k, row in latest_by_image(read_ledger(bright / "ledger")).items():
        assert tifffile.imread(row.output_path).mean() > tifffile.imread(rows[k].output_path).mean()


def test_shipped_default_is_the_published_lite_checkpoint(lite_weights):
    shipped, lite = load_checkpoint(None).model.state_dict(), load_checkpoint(lite_weights).model.state_dict()
    assert shipped.keys() == lite.keys() and all(torch.equal(shipped[k], lite[k]) for k in lite)


def test_style_cross_validation_against_the_shipped_weights(tmp_path):
    pairs_dir = tmp_path / "mine"
    for sub in ("input", "target"):
        (pairs_dir / sub).mkdir(parents=True)
    for i, a, b in photo_pairs(warm_matte, PHOTOS[:3], size=(900, 600)):  # shrunk to 512 for learning
        Image.fromarray((a * 255 + 0.5).astype(np.uint8)).save(pairs_dir / "input" / f"{i}.png")
        Image.fromarray((b * 255 + 0.5).astype(np.uint8)).save(pairs_dir / "target" / f"{i}.png")
    r = CliRunner().invoke(main, ["train", "--pairs", str(pairs_dir), "--out", str(tmp_path / "cv"), "--cv", "loo"])
    assert r.exit_code == 0, r.output
    cv = json.loads((tmp_path / "cv" / "cv.json").read_text())
    assert cv["scheme"] == "leave-one-out" and sorted(cv["per_pair"]) == ["Dune", "Garden", "Storm"]
    # a fixed look learned from two photos beats the shipped NeurOp on the third, every time
    assert all(p["trained"]["psnr"] > p["start"]["psnr"] for p in cv["per_pair"].values())
    assert cv["gain"]["psnr"]["low"] > 0
