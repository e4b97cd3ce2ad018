"""`eval` parity with the published figures, and `train`: determinism, resume, curves."""
import json

import pytest
import torch
from click.testing import CliRunner

from cli import main
from pipeline.checkpoint import load_checkpoint

from conftest import need_shared


def test_eval_of_official_lite_matches_the_reference_figures(lite_weights):
    pairs = need_shared("data", "fivek-pairs")
    r = CliRunner().invoke(main, ["eval", str(pairs), "--weights", str(lite_weights), "--json"])
    assert r.exit_code == 0, r.output
    d = json.loads(r.output)
    assert d["n"] == 13 and len(d["per_image"]) == 13
    assert abs(d["psnr"] - 25.37) <= 0.02
    assert abs(d["ssim"] - 0.942) <= 0.001
    assert abs(d["delta_e"] - 7.21) <= 0.01
    assert abs(d["psnr_input"] - 20.27) <= 0.01


@pytest.fixture
def two_pairs(tmp_path):
    src = need_shared("data", "fivek-pairs")
    for sub in ("input", "target"):
        (tmp_path / "pairs" / sub).mkdir(parents=True)
        for i in ("a0481", "a2917", "a3102"):
            from PIL import Image
            Image.open(src / sub / f"{i}.png").resize((128, 85)).save(tmp_path / "pairs" / sub / f"{i}.png")
    return tmp_path / "pairs"


def _train(args, out):
    r = CliRunner().invoke(main, ["train", "--out", str(out), *args])
    assert r.exit_code == 0, r.output
    return r


def test_train_is_deterministic_resumable_and_writes_curves(two_pairs, lite_weights, tmp_path):
    base = ["--pairs", str(two_pairs), "--init", str(lite_weights), "--iters", "6", "--eval-every", "3", "--val", "1",
            "--seed", "7"]
    _train(base, tmp_path / "a")
    _train(base, tmp_path / "b")
    wa = load_checkpoint(tmp_path / "a" / "last.pt").model.state_dict()
    wb = load_checkpoint(tmp_path / "b" / "last.pt").model.state_dict()
    lite = load_checkpoint(lite_weights).model.state_dict()
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    assert any(not torch.equal(wa[k], lite[k]) for k in wa)  # it did train
    # stop after 3 iterations, then resume to 6: same weights as the uninterrupted run
    _train([*base[:5], "3", *base[6:]], tmp_path / "c")
    r = _train(base, tmp_path / "c")
    assert "resuming" in r.output
    wc = load_checkpoint(tmp_path / "c" / "last.pt").model.state_dict()
    assert all(torch.allclose(wa[k], wc[k], atol=1e-7) for k in wa)
    lines = (tmp_path / "a" / "loss.csv").read_text().splitlines()
    assert lines[0].startswith("iteration,train_loss,val_psnr") and len(lines) == 4  # iterations 0, 3, 6
    assert lines[1].startswith("0,,")
    assert (tmp_path / "a" / "loss.png").stat().st_size > 1000
    meta = load_checkpoint(tmp_path / "a" / "best.pt").info
    assert meta.training["iters"] == 6 and meta.training["init"] == lite_weights.name


def test_heads_only_training_moves_only_the_heads(two_pairs, lite_weights, tmp_path):
    _train(["--pairs", str(two_pairs), "--init", str(lite_weights), "--iters", "3", "--eval-every", "3",
            "--trainable", "heads", "--lr", "1e-3"], tmp_path / "h")
    w = load_checkpoint(tmp_path / "h" / "last.pt").model.state_dict()
    lite = load_checkpoint(lite_weights).model.state_dict()
    moved = {k for k in w if not torch.equal(w[k], lite[k])}
    assert moved and all("_predictor" in k for k in moved)


def test_training_from_scratch_initializes_operators(two_pairs, tmp_path):
    _train(["--pairs", str(two_pairs), "--iters", "2", "--eval-every", "2", "--init-iters", "20"], tmp_path / "s")
    m = load_checkpoint(tmp_path / "s" / "last.pt").model
    x = torch.rand(1, 3, 8, 8) * 0.5 + 0.25
    # an initialized exposure operator brightens with positive strength and darkens with negative
    up = m.renderer("ex")(x, torch.tensor([0.8])).mean()
    down = m.renderer("ex")(x, torch.tensor([-0.8])).mean()
    assert up > down


def test_cross_validation_holds_every_pair_out_once_with_paired_intervals(two_pairs, lite_weights, tmp_path):
    r = _train(["--pairs", str(two_pairs), "--init", str(lite_weights), "--iters", "2", "--cv", "loo",
                "--trainable", "heads"], tmp_path / "cv")
    assert "cross-validation (leave-one-out, 3 pairs)" in r.output and "95% interval" in r.output
    cv = json.loads((tmp_path / "cv" / "cv.json").read_text())
    held = sorted(i for f in cv["folds"] for i in f["held_out"])
    assert held == ["a0481", "a2917", "a3102"] and cv["scheme"] == "leave-one-out"
    for i, p in cv["per_pair"].items():
        assert p["start"]["psnr"] != p["trained"]["psnr"]
    gain = cv["gain"]["psnr"]
    assert gain["low"] <= gain["mean"] <= gain["high"]
    assert abs(gain["mean"] - (cv["trained"]["psnr"] - cv["start"]["psnr"])) < 1e-9
    assert isinstance(cv["replaces_start"], bool) and cv["reason"]
    r = CliRunner().invoke(main, ["train", "--pairs", str(two_pairs), "--init", str(lite_weights), "--cv", "x",
                                  "--out", str(tmp_path / "bad")])
    assert r.exit_code == 2 and "'loo' or a number of folds" in r.output


def test_training_with_photos_distorted_or_distilled(two_pairs, lite_weights, tmp_path):
    photos = tmp_path / "photos"
    photos.mkdir()
    from PIL import Image
    for name in ("Dune.jpg", "Storm.jpg"):
        Image.open(need_shared("data", "photos", name)).convert("RGB").resize((120, 80)).save(photos / name)
    for extra in ([], ["--teacher", str(lite_weights)]):
        out = tmp_path / f"p{len(extra)}"
        _train(["--pairs", str(two_pairs), "--init", str(lite_weights), "--iters", "4", "--eval-every", "4",
                "--photos", str(photos), "--real-fraction", "0", *extra], out)
        meta = load_checkpoint(out / "last.pt").info.training
        assert meta["photos"] == ["photos"] and meta["real_fraction"] == 0
        assert meta["teacher"] == (lite_weights.name if extra else None)


def test_distortions_change_photos_within_range():
    import random
    from pipeline.train import distort
    img = torch.rand(1, 3, 16, 16) * 0.8 + 0.1
    outs = [distort(img, random.Random(s)) for s in range(8)]
    assert all(o.shape == img.shape and float(o.min()) >= 0 and float(o.max()) <= 1 for o in outs)
    changes = [float((o - img).abs().mean()) for o in outs]
    assert sum(c > 0.01 for c in changes) >= 6, changes  # most draws visibly change the photo


def test_bilateral_trains_in_two_stages_and_cross_validates_against_a_baseline(two_pairs, lite_weights, tmp_path):
    """Stage 1 alone (--iters 0: operators imitate the standard ones), then joint training from it, by name."""
    _train(["--model", "bilateral", "--pairs", str(two_pairs), "--iters", "0", "--init-iters", "30"],
           tmp_path / "s1")
    m = load_checkpoint(tmp_path / "s1" / "best.pt", model="bilateral").model
    x = torch.rand(1, 3, 40, 60) * 0.5 + 0.25
    with torch.no_grad():
        up = m.operator("ex")(x, torch.tensor([0.8])).mean()
        down = m.operator("ex")(x, torch.tensor([-0.8])).mean()
        warm = m.operator("wb")(x, torch.tensor([0.8]))
    assert up > down  # exposure learned its direction
    assert warm[:, 0].mean() - warm[:, 2].mean() > x[:, 0].mean() - x[:, 2].mean()  # white balance warms
    _train(["--pairs", str(two_pairs), "--init", str(tmp_path / "s1" / "best.pt"), "--iters", "2",
            "--train-size", "64", "--cv", "3", "--baseline", str(lite_weights)], tmp_path / "cv")
    cv = json.loads((tmp_path / "cv" / "cv.json").read_text())
    assert len(cv["per_pair"]) == 3  # every pair held out once, scored beside the NeurOp baseline
    with pytest.raises(ValueError, match="does not start from other operators"):  # NeurOp's file only
        from pipeline.train import TrainConfig, train
        train(TrainConfig(pairs=[str(two_pairs)], out=str(tmp_path / "x"), model="bilateral",
                          init_operators=str(lite_weights)), log=lambda *_: None)


def test_eval_by_model_name_side_by_side():
    pairs = need_shared("data", "fivek-pairs")
    r = CliRunner().invoke(main, ["eval", str(pairs), "--model", "neurop", "--model", "bilateral", "--json"])
    assert r.exit_code == 0, r.output
    neurop, bilateral = json.loads(r.output)
    assert neurop["weights"].startswith("neurop:") and bilateral["weights"].startswith("bilateral:")
    assert neurop["n"] == bilateral["n"] == 13 and abs(neurop["psnr"] - 25.37) <= 0.02


def test_models_lists_every_retoucher_with_its_parameters():
    r = CliRunner().invoke(main, ["models", "--json"])
    assert r.exit_code == 0, r.output
    by_name = {e["model"]: e for e in json.loads(r.output)}
    assert {"neurop", "bilateral", "style-look"} <= set(by_name)
    assert [p["name"] for p in by_name["bilateral"]["params"]] == ["bc", "ex", "wb", "vb"]
    assert by_name["bilateral"]["shipped_weights"] == "bilateral-default.pt"
    assert by_name["style-look"]["shipped_weights"] is None
