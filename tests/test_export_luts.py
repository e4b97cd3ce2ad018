"""`export-luts`: each image's edit as a .cube LUT that an independent implementation (ffmpeg's lut3d) applies as we do."""
import csv
import shutil
import subprocess

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from cli import main
from jobs.export_luts import not_a_colour_function
from pipeline.metrics import psnr
from pipeline.models import model_class

from conftest import need_shared


@pytest.fixture(scope="module")
def png_run(tmp_path_factory, ray_cluster):
    d = tmp_path_factory.mktemp("cube")
    (d / "in").mkdir()
    for name, size in (("Storm.jpg", (300, 200)), ("Dune.jpg", (240, 160))):
        Image.open(need_shared("data", "photos", name)).convert("RGB").resize(size).save(d / "in" / (name[:-4] + ".png"))
    with open(d / "m.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path"])
        w.writerows([["in/Storm.png"], ["in/Dune.png"]])
    r = CliRunner().invoke(main, ["run", str(d / "m.csv"), "--out", str(d / "out"), "--format", "png", "--workers",
                                  "1", "--no-progress"])
    assert r.exit_code == 0, r.output
    return d


def test_the_cube_file_is_well_formed(png_run, tmp_path):
    r = CliRunner().invoke(main, ["export-luts", str(png_run / "out" / "ledger"), "--out", str(tmp_path), "--size",
                                  "17"])
    assert r.exit_code == 0, r.output
    cube = (tmp_path / "in" / "Storm.cube").read_text().splitlines()
    assert "LUT_3D_SIZE 17" in cube and any("input colour space: srgb" in line for line in cube)
    assert any(line.startswith("# strengths bc=") for line in cube)
    values = [line for line in cube if line and line[0].isdigit()]
    assert len(values) == 17 ** 3 and all(len(v.split()) == 3 for v in values)


def test_ffmpeg_lut3d_reproduces_our_output(png_run, tmp_path):
    ffmpeg = shutil.which("ffmpeg")
    if not ffmpeg:
        pytest.skip("ffmpeg is not installed (Debian package ffmpeg; .ci/run installs it)")
    r = CliRunner().invoke(main, ["export-luts", str(png_run / "out" / "ledger"), "--out", str(tmp_path)])
    assert r.exit_code == 0, r.output
    for name in ("Storm", "Dune"):
        theirs = tmp_path / f"{name}-ffmpeg.png"
        subprocess.run([ffmpeg, "-v", "error", "-y", "-i", str(png_run / "in" / f"{name}.png"), "-vf",
                        f"lut3d=file={tmp_path / 'in' / (name + '.cube')}:interp=trilinear", "-pix_fmt", "rgb24",
                        str(theirs)], check=True)
        ours = np.asarray(Image.open(png_run / "out" / "in" / f"{name}.png").convert("RGB"), dtype=np.float32) / 255
        other = np.asarray(Image.open(theirs).convert("RGB"), dtype=np.float32) / 255
        source = np.asarray(Image.open(png_run / "in" / f"{name}.png"), dtype=np.float32) / 255
        assert psnr(ours, source) < 40  # the edit is visible
        assert np.abs(ours - other).max() <= 1.5 / 255 and psnr(ours, other) >= 45


def test_local_retouchers_are_skipped_with_the_reason():
    bilateral = model_class("bilateral")()
    assert "local retoucher" in not_a_colour_function(bilateral, [0.0] * 4)
    c2f = model_class("coarse-to-fine")()
    params = [p.default for p in c2f.params]
    assert not_a_colour_function(c2f, params) is None  # refine 0: the global stage is a colour function
    params[-1] = 0.25
    assert "refine" in not_a_colour_function(c2f, params)
    assert not_a_colour_function(model_class("neurop")(), [0.0] * 3) is None
