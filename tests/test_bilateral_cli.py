"""`run --model bilateral`, `rerender` and `audit` end to end on a real RAW, a 16-bit TIFF and a JPEG."""
import json

import numpy as np
import pytest
import tifffile
from click.testing import CliRunner

from cli import main

from conftest import ledger_rows, rerender_ledger, run_three_formats


@pytest.fixture(scope="module")
def bilateral_run(tmp_path_factory, ray_cluster):
    d = tmp_path_factory.mktemp("bilateral")
    return d, run_three_formats(d, "bilateral")


def test_run_with_the_bilateral_model(bilateral_run):
    _, out = bilateral_run
    rows = ledger_rows(out / "ledger")
    assert len(rows) == 3 and {x.status for x in rows.values()} == {"ok"}
    for x in rows.values():
        assert x.model == "bilateral" and x.operators == ["bc", "ex", "wb", "vb"] and len(x.strengths) == 4
        assert all(-1 <= s <= 1 for s in x.strengths)
        assert {"predict", "prepare", "apply"} <= set(json.loads(x.timings))


def _red_over_blue(path) -> float:
    px = tifffile.imread(path).astype(np.float64)
    return px[..., 0].mean() / px[..., 2].mean()


def test_rerender_shift_wb_warms_and_leaves_the_other_strengths(bilateral_run):
    d, out = bilateral_run
    before, after = rerender_ledger(out, d / "warm", "--shift", "wb=+0.2")
    for image_id, a in after.items():
        b = before[image_id]
        assert a.command == "rerender" and a.model == "bilateral"
        for op, sb, sa in zip(b.operators, b.strengths, a.strengths):
            assert sa == pytest.approx(min(sb + 0.2, 1.0) if op == "wb" else sb, abs=1e-6), op
        assert _red_over_blue(a.output_path) > _red_over_blue(b.output_path)


def test_unchanged_rerender_is_byte_identical(bilateral_run):
    d, out = bilateral_run
    before, after = rerender_ledger(out, d / "same")
    assert after and all(after[k].output_sha256 == before[k].output_sha256 for k in after)


def test_audit_reports_every_bilateral_operator(bilateral_run):
    _, out = bilateral_run
    r = CliRunner().invoke(main, ["audit", str(out / "ledger"), "--json"])
    assert r.exit_code == 0, r.output
    run = json.loads(r.output)["runs"][0]
    assert set(run["strengths"]) == {"bc", "ex", "wb", "vb"} and run["models"] == ["bilateral v1"]
    assert all(s["n"] == 3 for s in run["strengths"].values())


def test_set_outside_the_declared_range_is_refused(bilateral_run):
    d, out = bilateral_run
    r = CliRunner().invoke(main, ["rerender", str(out / "ledger"), "--out", str(d / "x"), "--set", "wb=1.5"])
    assert r.exit_code != 0 and "outside the strength range [-1.0, 1.0]" in r.output


def test_unknown_model_and_weightless_model_are_clear_errors(tmp_path):
    manifest = tmp_path / "m.csv"
    manifest.write_text("path\nnothing.jpg\n")
    r = CliRunner().invoke(main, ["run", str(manifest), "--out", str(tmp_path / "o"), "--model", "nope"])
    assert r.exit_code != 0 and "unknown model 'nope'" in r.output
    r = CliRunner().invoke(main, ["run", str(manifest), "--out", str(tmp_path / "o"), "--model", "style-look"])
    assert r.exit_code != 0 and "ships no weights" in r.output
