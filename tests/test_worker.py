"""The per-image work without Ray: the callable the actors wrap."""
import os

import numpy as np
import tifffile

from jobs.worker import ImageProcessor, ImageTask, RenderSettings, WorkerConfig, output_mode

from conftest import synthetic_photo


def make_processor(**kw):
    return ImageProcessor(WorkerConfig(weights=None, settings=RenderSettings(**kw)))


def test_processes_an_image_and_reports_timings(tmp_path):
    src = tmp_path / "a.tif"
    tifffile.imwrite(src, synthetic_photo(), photometric="rgb")
    row = make_processor().process(ImageTask("a", str(src), str(tmp_path / "out" / "a.tif")))
    assert row.status == "ok", row.error
    assert row.width == 128 and row.height == 96 and len(row.strengths) == 3
    out = tifffile.imread(tmp_path / "out" / "a.tif")
    assert out.dtype == np.uint16 and not np.array_equal(out, synthetic_photo())
    assert {"decode", "predict", "prepare", "apply", "encode", "write"} <= set(__import__("json").loads(row.timings))


def test_given_strengths_are_used_not_predicted(tmp_path):
    src = tmp_path / "a.tif"
    tifffile.imwrite(src, synthetic_photo(), photometric="rgb")
    p = make_processor()
    row = p.process(ImageTask("a", str(src), str(tmp_path / "b.tif"), strengths=[0.0, 0.5, 0.0]))
    assert row.strengths == [0.0, 0.5, 0.0]


def test_failures_become_error_rows_naming_file_and_cause(tmp_path):
    p = make_processor()
    missing = p.process(ImageTask("m", str(tmp_path / "nope.tif"), str(tmp_path / "o.tif")))
    assert missing.status == "error" and missing.error == f"{tmp_path / 'nope.tif'}: file not found"
    src = tmp_path / "a.tif"
    tifffile.imwrite(src, synthetic_photo(), photometric="rgb")
    blocked = tmp_path / "ro"
    blocked.mkdir()
    os.chmod(blocked, 0o500)
    try:
        row = p.process(ImageTask("w", str(src), str(blocked / "sub" / "o.tif")))
        if os.geteuid() != 0:  # root writes anyway
            assert row.status == "error" and "cannot write output" in row.error
    finally:
        os.chmod(blocked, 0o700)
    same = p.process(ImageTask("s", str(src), str(src)))
    assert same.status == "error" and "overwrite the source" in same.error
    assert tifffile.imread(src).shape == (96, 128, 3)


def test_skips_only_when_everything_still_matches(tmp_path):
    src = tmp_path / "a.tif"
    tifffile.imwrite(src, synthetic_photo(), photometric="rgb")
    p = make_processor()
    out = str(tmp_path / "o.tif")
    first = p.process(ImageTask("a", str(src), out))
    again = p.process(ImageTask("a", str(src), out, previous=first))
    assert again.status == "skipped" and again.output_sha256 == first.output_sha256
    forced = p.process(ImageTask("a", str(src), out, previous=first, overwrite=True))
    assert forced.status == "ok"
    with open(out, "ab") as f:
        f.write(b"x")  # output damaged: redone
    assert p.process(ImageTask("a", str(src), out, previous=first)).status == "ok"
    other = make_processor(lut_size=17).process(ImageTask("a", str(src), out, previous=first))
    assert other.status == "ok"  # different render settings: redone


def test_output_permissions_never_widen_the_source(tmp_path):
    src = tmp_path / "a.tif"
    tifffile.imwrite(src, synthetic_photo(), photometric="rgb")
    os.chmod(src, 0o600)
    assert output_mode(str(src)) & 0o077 == 0
    row = make_processor().process(ImageTask("a", str(src), str(tmp_path / "o.tif")))
    assert row.status == "ok" and os.stat(tmp_path / "o.tif").st_mode & 0o077 == 0
