"""`retouch-batch bench`: the table and JSON it promises, from a real (small) run."""
import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from cli import main
from pipeline.bench import bench_device, photo_at_size, run_bench
from pipeline.checkpoint import load_checkpoint
from pipeline.render import open_retoucher, thumbnail, thumbnail_tensor

from conftest import synthetic_photo


def test_bench_writes_every_stage_and_the_reference_ratio(tmp_path):
    out = tmp_path / "b.json"
    res = CliRunner().invoke(main, ["bench", "--sizes", "0.5", "--codecs", "none,zstd", "--reference-max-mp", "1",
                                    "--json", str(out), "--device", "cpu"])
    assert res.exit_code == 0, res.output
    assert "ratio" in res.output and "866x577" in res.output
    size = json.loads(out.read_text())["sizes"][0]
    assert (size["width"], size["height"]) == (866, 577)
    for stage in ("decode_s", "predict_s", "prepare_s", "apply_s"):
        assert 0 < size[stage] < 30, stage
    assert size["model_stage_s"] == pytest.approx(size["predict_s"] + size["prepare_s"] + size["apply_s"], abs=2e-4)
    assert set(size["encode_s"]) == {"none", "zstd"} and size["encoded_mb"]["zstd"] < size["encoded_mb"]["none"]
    assert size["apply_vs_exact_db"] > 50 and size["speedup_vs_reference"] > 1
    assert size["device"] is None  # no accelerator asked for


def test_bench_refuses_cuda_without_a_gpu():
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    res = CliRunner().invoke(main, ["bench", "--sizes", "0.5", "--device", "cuda"])
    assert res.exit_code != 0 and "no CUDA GPU" in res.output


def test_device_resident_path_matches_the_host_pipeline():
    """What the GPU bench times, run on the CPU device: same thumbnail, strengths and render as the host path."""
    r = open_retoucher(load_checkpoint(None))
    for h, w in ((300, 400), (1500, 1100), (97, 2100)):
        px = synthetic_photo(h, w)
        t = torch.from_numpy(px.astype(np.float32) / 65535).permute(2, 0, 1)[None]
        assert torch.allclose(thumbnail_tensor(t, 512), thumbnail(px, 512), atol=1e-5)
    px = photo_at_size(0.5)
    _, strengths = r.retouch_tensor(torch.from_numpy(px.astype(np.float32) / 65535).permute(2, 0, 1)[None])
    assert np.abs(strengths.numpy() - r.predict(px)).max() < 1e-4
    got = bench_device(r, px, r.render(px, r.predict(px)), repeat=1)
    assert got["device"] == "cpu" and got["device_max_diff_steps"] <= 1 and got["device_model_s"] > 0


def test_run_bench_reports_the_device_beside_the_cpu(tmp_path):
    report = run_bench([0.5], codecs=("none",), reference_max_mp=0, json_path=str(tmp_path / "b.json"),
                       log=lambda m: None, device="cpu")
    size = report.sizes[0]
    assert size.device == "cpu" and size.device_max_diff_steps <= 1 and size.device_with_transfers_s > 0


@pytest.mark.gpu
def test_cuda_model_stage_in_device_memory(tmp_path):
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    report = run_bench([12], codecs=("none",), reference_max_mp=0, json_path=str(tmp_path / "b.json"),
                       log=print, device="cuda")
    size = report.sizes[0]
    assert size.device.startswith("cuda") and size.device_max_diff_steps <= 2
    print(f"12 MP on {size.device}: {size.device_model_s * 1000:.2f} ms in device memory, "
          f"{size.device_with_transfers_s * 1000:.2f} ms with transfers")


def test_large_dng_benchmark_files_decode_like_the_camera_file(tmp_path):
    """benchmarks/large_dng.py: bigger DNGs from the real camera mosaic, read back through the pipeline's decode."""
    import sys
    from pathlib import Path

    from conftest import need_shared
    from pipeline.imageio import decode
    camera_file = need_shared("data", "raw", "good", "imageio_Blackmagic.dng")
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    import large_dng

    small = [large_dng.make(tmp_path / c, 2, megapixels=1.5, compression=c) for c in ("ljpeg", "none")]
    assert (tmp_path / "none" / "manifest.csv").read_text().split() == ["path", "large00-none.dng", "large01-none.dng"]
    a, b, c = (decode(str(p)).pixels for p in (small[0][0], small[0][1], small[1][0]))
    assert a.shape == (1000, 1500, 3) and a.dtype == np.uint16
    assert np.array_equal(a, c)  # the same mosaic, whichever compression
    assert not np.array_equal(a, b)  # each file is rolled differently

    # a frame bigger than the sensor holds the whole mosaic: away from its edges (where demosaicing sees other
    # neighbours) the very pixels of the camera's own file, so the colour tags came along; the camera file's
    # mosaic starts at its default crop origin, (8, 16)
    big = decode(str(large_dng.make(tmp_path / "big", 1, megapixels=12)[0])).pixels
    camera = decode(str(camera_file)).pixels
    _, _, top, left = large_dng.frame_geometry((2160, 4096), 12)
    inner = (slice(16, 2160 - 16), slice(16, 4096 - 16))
    assert np.array_equal(big[top:top + 2160, left:left + 4096][inner], camera[8:8 + 2160, 16:16 + 4096][inner])


def test_bench_times_the_bilateral_retoucher_beside_neurop(tmp_path):
    out = tmp_path / "b.json"
    res = CliRunner().invoke(main, ["bench", "--sizes", "0.3", "--codecs", "none", "--reference-max-mp", "0.5",
                                    "--model", "bilateral", "--json", str(out), "--device", "cpu"])
    assert res.exit_code == 0, res.output
    sizes = json.loads(out.read_text())["sizes"]
    assert [s["model"] for s in sizes] == ["neurop", "bilateral"]
    bilateral = sizes[1]
    assert bilateral["apply_vs_exact_db"] > 60  # the compiled kernel against torch's float slicing
    assert 0 < bilateral["apply_s"] < 30 and bilateral["reference_s"] > 0
