"""`run --model aesthetic`, `rerender`, `eval` and `train --model aesthetic` end to end on real images."""
import json
import shutil

import pytest
from click.testing import CliRunner

from cli import main
from pipeline import filters

from conftest import ledger_rows, need_shared, rerender_ledger, run_three_formats


@pytest.fixture(scope="module")
def aesthetic_run(tmp_path_factory, ray_cluster):
    d = tmp_path_factory.mktemp("aesthetic")
    return d, run_three_formats(d, "aesthetic")


def test_the_ledger_names_every_filter_parameter_and_the_guide(aesthetic_run):
    _, out = aesthetic_run
    rows = ledger_rows(out / "ledger")
    assert len(rows) == 3 and {x.status for x in rows.values()} == {"ok"}
    for x in rows.values():
        assert x.model == "aesthetic" and x.operators == list(filters.FILTER_NAMES)
        assert len(x.strengths) == len(filters.FILTER_PARAMS)
        assert all(p.low <= s <= p.high for p, s in zip(filters.FILTER_PARAMS, x.strengths))
        details = json.loads(x.prediction)
        assert details["guide"] == "aesthetic-default" and len(details["guide_sha256"]) == 64
        assert details["search_steps"] == 20 and details["search_lr"] == pytest.approx(3e-5)
        assert 1 <= details["score_before"] <= 10 and 1 <= details["score_after"] <= 10


def test_rerender_set_contrast_zero_removes_only_the_contrast(aesthetic_run):
    d, out = aesthetic_run
    before, after = rerender_ledger(out, d / "flat", "--set", "contrast=0")
    for image_id, a in after.items():
        b = before[image_id]
        for op, sb, sa in zip(b.operators, b.strengths, a.strengths):
            assert sa == (0.0 if op == "contrast" else pytest.approx(sb, abs=1e-9)), op


def test_unchanged_rerender_is_byte_identical(aesthetic_run):
    d, out = aesthetic_run
    before, after = rerender_ledger(out, d / "same")
    assert after and all(after[k].output_sha256 == before[k].output_sha256 for k in after)


def test_search_settings_are_run_options_and_recorded(aesthetic_run, tmp_path):
    d, _ = aesthetic_run
    out = tmp_path / "nosearch"
    r = CliRunner().invoke(main, ["run", str(d / "manifest.csv"), "--out", str(out), "--model", "aesthetic",
                                  "--search-steps", "0", "--workers", "1", "--no-progress"])
    assert r.exit_code == 0, r.output
    for x in ledger_rows(out / "ledger").values():
        details = json.loads(x.prediction)
        assert details["search_steps"] == 0 and details["score_after"] == details["score_before"]
        expected = [p.default for p in filters.FILTER_PARAMS]
        if x.image_id != "tinydng_colorchart":  # a very dark image starts a stop brighter
            assert x.strengths == pytest.approx(expected)


def test_search_options_are_refused_for_other_models(tmp_path):
    manifest = tmp_path / "m.csv"
    manifest.write_text("path\nnothing.jpg\n")
    r = CliRunner().invoke(main, ["run", str(manifest), "--out", str(tmp_path / "o"), "--search-steps", "5"])
    assert r.exit_code != 0 and "--search-steps: model 'neurop' takes no such option" in r.output


def test_eval_reports_the_seeds_histogram_metric():
    pairs = need_shared("data", "fivek-pairs")
    r = CliRunner().invoke(main, ["eval", str(pairs), "--model", "aesthetic", "--search-steps", "2", "--json"])
    assert r.exit_code == 0, r.output
    result = json.loads(r.output)
    assert result["n"] == 13 and set(result["histogram_intersection"]) == {"luminance", "contrast", "saturation"}
    assert all(0 < v <= 100 for v in result["histogram_intersection"].values())


def test_train_writes_a_guide_with_its_leave_one_out_accuracy(tmp_path):
    photos = tmp_path / "photos"
    photos.mkdir()
    for name in ("Storm.jpg", "Dune.jpg", "Aqua.jpg"):
        shutil.copy(need_shared("data", "photos", name), photos)
    pairs = need_shared("data", "fivek-pairs")
    out = tmp_path / "guide"
    r = CliRunner().invoke(main, ["train", "--model", "aesthetic", "--photos", str(photos), "--pairs", str(pairs),
                                  "--iters", "5", "--out", str(out)])
    assert r.exit_code == 0, r.output
    report = json.loads((out / "guide.json").read_text())
    assert report["photos"] == 3 and len(report["pairs"]) == 13 and report["scheme"] == "leave-one-out"
    wins = sum(p["target"] > p["input"] for p in report["pairs"].values())
    assert report["ranking_accuracy"] == pytest.approx(wins / 13)
    from pipeline.checkpoint import load_checkpoint
    loaded = load_checkpoint(out / "best.pt")
    assert loaded.info.model == "aesthetic" and loaded.info.training["pairs"] == 13
    r = CliRunner().invoke(main, ["train", "--model", "aesthetic", "--pairs", str(pairs), "--lr", "0.1",
                                  "--out", str(out)])
    assert r.exit_code != 0 and "--lr" in r.output
