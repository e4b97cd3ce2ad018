"""The CLI end to end with click's CliRunner on real temporary files and an embedded Ray with 2 workers."""
import csv
import json
import os
import shutil

import numpy as np
import pytest
import tifffile
from click.testing import CliRunner
from PIL import Image

from cli import main
from jobs.ledger import SCHEMA_VERSION, latest_by_image, read_ledger

from conftest import need_shared, output_pixels, same_pixels


def write_manifest(path, rows, header=("path",)):
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        for r in rows:
            w.writerow(r if isinstance(r, (list, tuple)) else [r])


@pytest.fixture(scope="module")
def archive(tmp_path_factory):
    """A small archive: a RAW, a 16-bit TIFF, a JPEG with EXIF, and a PNG, plus its manifest."""
    d = tmp_path_factory.mktemp("archive")
    src = d / "in"
    src.mkdir()
    shutil.copy(need_shared("data", "raw", "good", "tinydng_colorchart.dng"), src)
    storm = Image.open(need_shared("data", "photos", "Storm.jpg")).convert("RGB").resize((420, 280))
    tifffile.imwrite(src / "storm16.tif", np.asarray(storm, dtype=np.uint16) * 257, photometric="rgb")
    exif = Image.Exif()
    exif[0x010F] = "TestCam"
    Image.open(need_shared("data", "photos", "Dune.jpg")).convert("RGB").resize((300, 200)).save(
        src / "dune.jpg", quality=92, exif=exif.tobytes())
    shutil.copy(need_shared("data", "fivek-pairs", "input", "a0481.png"), src)
    # a RAW + JPEG pair sharing a stem: two images, two ids, two outputs
    storm.save(src / "tinydng_colorchart.jpg", quality=90)
    write_manifest(d / "manifest.csv", [f"in/{n}" for n in sorted(os.listdir(src))])
    return d


@pytest.fixture(scope="module")
def first_run(archive, ray_cluster):
    out = archive / "out"
    r = CliRunner().invoke(main, ["run", str(archive / "manifest.csv"), "--out", str(out), "--workers", "2",
                                  "--no-progress"])
    assert r.exit_code == 0, r.output
    return out, r


def test_run_writes_outputs_and_ledger(first_run, archive):
    out, r = first_run
    assert "5 images: 5 ok, 0 failed, 0 skipped" in r.output
    rows = read_ledger(out / "ledger")
    assert len(rows) == 5 and {x.status for x in rows} == {"ok"}
    ids = {x.image_id for x in rows}
    assert ids == {"in/a0481.png", "in/dune.jpg", "in/storm16.tif", "in/tinydng_colorchart.dng",
                   "in/tinydng_colorchart.jpg"}
    for x in rows:
        assert x.operators == ["bc", "ex", "vb"] and len(x.strengths) == 3
        assert all(-1 < s < 1 for s in x.strengths)
        assert os.path.isfile(x.output_path) and x.output_path.endswith(".tif")
        from pipeline.checkpoint import file_sha256
        assert file_sha256(x.output_path) == x.output_sha256
        assert file_sha256(x.source_path) == x.source_sha256
        assert x.width > 0 and x.height > 0 and x.model == "neurop" and len(x.weights_sha256) == 64
    outs = {os.path.relpath(x.output_path, out) for x in rows}
    assert {"in/tinydng_colorchart_dng.tif", "in/tinydng_colorchart_jpg.tif"} <= outs
    dng = next(x for x in rows if x.image_id.endswith(".dng"))
    with tifffile.TiffFile(dng.output_path) as t:
        assert t.pages[0].dtype == np.uint16 and t.pages[0].iccprofile
        assert t.pages[0].shape == (dng.height, dng.width, 3)


def test_ledger_reads_with_pyarrow_and_duckdb(first_run):
    out, _ = first_run
    import duckdb
    import pyarrow.dataset as ds
    t = ds.dataset(out / "ledger", format="parquet", partitioning="hive").to_table()
    assert t.num_rows == 5 and "run_id" in t.column_names
    part = next((out / "ledger").glob("run_id=*/*.parquet"))
    import pyarrow.parquet as pq
    assert pq.read_schema(part).metadata[b"ledger_schema_version"] == SCHEMA_VERSION.encode()
    n, runs = duckdb.sql(f"select count(*), count(distinct run_id) from read_parquet('{out}/ledger/**/*.parquet', "
                         "hive_partitioning=true)").fetchall()[0]
    assert (n, runs) == (5, 1)


def test_a_small_job_runs_in_this_process_with_the_same_results(first_run, archive, tmp_path):
    """No worker options and 5 images: the worker code runs in the CLI's process (no Ray start-up); its ledger and
    outputs are those of the Ray run (up to float rounding: the model runs on 2 threads here, 1 in a Ray worker)."""
    out = tmp_path / "local"
    r = CliRunner().invoke(main, ["run", str(archive / "manifest.csv"), "--out", str(out), "--no-progress"])
    assert r.exit_code == 0, r.output
    assert "5 images in this process" in r.output and "5 ok" in r.output
    on_ray = {x.image_id: x for x in read_ledger(first_run[0] / "ledger")}
    local = {x.image_id: x for x in read_ledger(out / "ledger")}
    assert local.keys() == on_ray.keys()
    for k, row in local.items():
        assert row.status == "ok" and row.source_sha256 == on_ray[k].source_sha256
        assert row.strengths == pytest.approx(on_ray[k].strengths, abs=1e-5)
        a, b = output_pixels(row.output_path).astype(int), output_pixels(on_ray[k].output_path).astype(int)
        assert np.abs(a - b).max() <= 2, k  # of 65535
    r = CliRunner().invoke(main, ["run", str(archive / "manifest.csv"), "--out", str(tmp_path / "ray"), "--executor",
                                  "ray", "--no-progress"])
    assert r.exit_code == 0 and "cpu worker(s)" in r.output, r.output


def test_second_run_skips_current_outputs(first_run, archive):
    out, _ = first_run
    r = CliRunner().invoke(main, ["run", str(archive / "manifest.csv"), "--out", str(out), "--no-progress"])
    assert r.exit_code == 0, r.output
    assert "0 ok, 0 failed, 5 skipped" in r.output
    rows = read_ledger(out / "ledger")
    assert len({x.run_id for x in rows}) == 2 and len(rows) == 10


def test_rerender_unchanged_is_byte_identical_and_shift_brightens(first_run, tmp_path):
    out, _ = first_run
    runner = CliRunner()
    same = tmp_path / "same"
    r = runner.invoke(main, ["rerender", str(out / "ledger"), "--out", str(same), "--no-progress"])
    assert r.exit_code == 0, r.output
    orig = latest_by_image(read_ledger(out / "ledger"))
    new = latest_by_image(read_ledger(same / "ledger"))
    assert set(new) == set(orig)
    for k, row in new.items():
        assert row.output_sha256 == orig[k].output_sha256, k
        assert row.command == "rerender" and row.parent_run_id == orig[k].run_id or orig[k].status == "skipped"
    bright = tmp_path / "bright"
    r = runner.invoke(main, ["rerender", str(out / "ledger"), "--out", str(bright), "--shift", "ex=+0.3",
                             "--no-progress"])
    assert r.exit_code == 0, r.output
    for k, row in latest_by_image(read_ledger(bright / "ledger")).items():
        assert abs(row.strengths[1] - min(1.0, orig[k].strengths[1] + 0.3)) < 1e-6
        assert tifffile.imread(row.output_path).mean() > tifffile.imread(orig[k].output_path).mean()


def test_rerender_with_edits_file_and_bad_edits(first_run, tmp_path):
    out, _ = first_run
    runner = CliRunner()
    edits = tmp_path / "edits.csv"
    write_manifest(edits, [("in/dune.jpg", "0.5", "")], header=("image_id", "vb", "ex"))
    r = runner.invoke(main, ["rerender", str(out / "ledger"), "--out", str(tmp_path / "e"), "--edits", str(edits),
                             "--no-progress"])
    assert r.exit_code == 0, r.output
    row = latest_by_image(read_ledger(tmp_path / "e" / "ledger"))["in/dune.jpg"]
    assert row.strengths[2] == 0.5
    for args, msg in [(["--set", "zz=0.1"], "unknown operator 'zz'"), (["--set", "ex=abc"], "not a number"),
                      (["--set", "ex=3"], "outside the strength range")]:
        bad = tmp_path / "bad"
        r = runner.invoke(main, ["rerender", str(out / "ledger"), "--out", str(bad), *args])
        assert r.exit_code == 1 and msg in r.output, r.output
        assert not bad.exists()  # nothing written
    write_manifest(edits, [("no/such/id", "0.1")], header=("image_id", "vb"))
    r = runner.invoke(main, ["rerender", str(out / "ledger"), "--out", str(tmp_path / "bad"), "--edits", str(edits)])
    assert r.exit_code == 1 and "not in the ledger" in r.output


def test_audit_reports_and_catches_a_changed_output(first_run, tmp_path):
    out, _ = first_run
    led = tmp_path / "ledger"
    shutil.copytree(out / "ledger", led)
    runner = CliRunner()
    r = runner.invoke(main, ["audit", str(led), "--verify"])
    assert r.exit_code == 0, r.output
    assert "all match the ledger" in r.output and "ex:" in r.output
    r = runner.invoke(main, ["audit", str(led), "--json"])
    report = json.loads(r.output)
    assert report["consistent"] and report["runs"][0]["ok"] == 5
    assert set(report["runs"][0]["strengths"]) == {"bc", "ex", "vb"}
    victim = latest_by_image(read_ledger(led))["in/a0481.png"].output_path
    backup = victim + ".bak"
    shutil.copy(victim, backup)
    try:
        with open(victim, "r+b") as f:
            f.seek(os.path.getsize(victim) // 2)
            b = f.read(1)
            f.seek(-1, 1)
            f.write(bytes([b[0] ^ 0xFF]))
        r = runner.invoke(main, ["audit", str(led), "--verify", "--json"])
        assert r.exit_code == 1
        problems = json.loads(r.output)["problems"]
        assert [p["image_id"] for p in problems] == ["in/a0481.png"] and "changed" in problems[0]["problem"]
    finally:
        shutil.move(backup, victim)


def test_jpeg_output_keeps_exif_unless_stripped(archive, ray_cluster, tmp_path):
    m = tmp_path / "m.csv"
    write_manifest(m, [str(archive / "in" / "dune.jpg")])
    runner = CliRunner()
    for flag, expect in [([], "TestCam"), (["--strip-metadata"], None)]:
        out = tmp_path / f"jpeg{len(flag)}"
        r = runner.invoke(main, ["run", str(m), "--out", str(out), "--format", "jpeg", "--quality", "90",
                                 "--workers", "1", "--no-progress", *flag])
        assert r.exit_code == 0, r.output
        jpg = next(out.glob("*.jpg"))
        im = Image.open(jpg)
        assert im.format == "JPEG" and im.getexif().get(0x010F) == expect


def test_manifest_command_scans_a_folder(archive, tmp_path):
    dest = tmp_path / "scan.csv"
    r = CliRunner().invoke(main, ["manifest", str(archive / "in"), "-o", str(dest)])
    assert r.exit_code == 0 and "5 images" in r.output
    assert len(dest.read_text().splitlines()) == 6
    r = CliRunner().invoke(main, ["manifest", "--examples", "-o", str(tmp_path / "ex.csv")])
    assert r.exit_code == 0 and int(r.output.split()[0]) >= 5


def test_hostile_and_invalid_manifests_are_refused_before_any_work(archive, tmp_path):
    runner = CliRunner()
    good = str(archive / "in" / "dune.jpg")
    cases = [
        ((("path", "output"), [(good, "../escaped.tif")]), "escapes the output folder"),
        ((("path", "output"), [(good, "/tmp/abs.tif")]), "absolute path"),
        ((("name",), [(good,)]), "no 'path' column"),
        ((("path", "id"), [(good, "a"), (good, "a")]), "duplicate id"),
        ((("path", "output"), [(good, "x.tif"), (str(archive / "in" / "a0481.png"), "x.tif")]), "duplicate output"),
        ((("path",), []), "no rows"),
        ((("path",), [(good,), (".",)]), "line 3: '.' is a folder, not an image"),
        ((("path",), [(str(archive / "in"),)]), "is a folder, not an image"),
    ]
    for (header, rows), msg in cases:
        m = tmp_path / "m.csv"
        write_manifest(m, rows, header=header)
        out = tmp_path / "o"
        r = runner.invoke(main, ["run", str(m), "--out", str(out)])
        assert r.exit_code == 1 and msg in r.output, (msg, r.output)
        assert not (out / "ledger").exists()
    (tmp_path / "empty.csv").write_text("")
    r = runner.invoke(main, ["run", str(tmp_path / "empty.csv"), "--out", str(tmp_path / "o")])
    assert r.exit_code == 1 and "empty manifest" in r.output
    # a symlink inside the output folder that leads out of it
    out = tmp_path / "o2"
    out.mkdir()
    (tmp_path / "elsewhere").mkdir()
    os.symlink(tmp_path / "elsewhere", out / "link")
    m = tmp_path / "m.csv"
    write_manifest(m, [(good, "link/x.tif")], header=("path", "output"))
    r = runner.invoke(main, ["run", str(m), "--out", str(out)])
    assert r.exit_code == 1 and "symlink" in r.output


def test_unknown_columns_warn(archive, ray_cluster, tmp_path):
    m = tmp_path / "m.csv"
    write_manifest(m, [(str(archive / "in" / "a0481.png"), "x")], header=("path", "rating"))
    r = CliRunner().invoke(main, ["run", str(m), "--out", str(tmp_path / "o"), "--no-progress"])
    assert r.exit_code == 0 and "unknown column 'rating' ignored" in r.output


def test_a_second_job_on_the_same_folder_is_refused(archive, tmp_path):
    from jobs.lock import FolderBusy, OutputLock
    out = tmp_path / "busy"
    with OutputLock(str(out)):
        with pytest.raises(FolderBusy):
            OutputLock(str(out)).__enter__()
        m = tmp_path / "m.csv"
        write_manifest(m, [str(archive / "in" / "dune.jpg")])
        r = CliRunner().invoke(main, ["run", str(m), "--out", str(out)])
        assert r.exit_code == 1 and "another retouch-batch job" in r.output


def test_example_manifests_point_at_the_shared_data(tmp_path):
    from manifests.manifest import load_manifest
    from conftest import ROOT
    need_shared("data", "photos")
    for name, n in (("shared-photos.csv", 33), ("shared-raw.csv", 3)):
        m = load_manifest(str(ROOT / "manifests" / "examples" / name), str(tmp_path))
        assert len(m.entries) == n and all(os.path.isfile(e.source) for e in m.entries)


def test_gpu_workers_hold_one_image_per_core_as_memory_allows():
    """The GPU placement, from the resources a cluster reports (no GPU needed to check the arithmetic)."""
    from jobs.cluster import HELD_IMAGE_BYTES, place
    gib = HELD_IMAGE_BYTES
    one_gpu = place(16, 1, 64 * gib, 1, None)
    assert (one_gpu.device, one_gpu.workers, one_gpu.gpus_per_worker) == ("cuda", 1, 1.0)
    assert (one_gpu.threads_per_worker, one_gpu.images_per_worker, one_gpu.decode_threads) == (16, 16, 1)
    two_nodes = place(32, 4, 48 * gib, 2, None)  # 2 GPUs per node share its 16 cores; 12 GiB each
    assert (two_nodes.workers, two_nodes.threads_per_worker, two_nodes.images_per_worker) == (4, 8, 8)
    tight = place(16, 1, 5.5 * gib, 1, None)  # memory, not cores, limits the images held
    assert tight.images_per_worker == 5 and tight.decode_threads == 3
    assert place(16, 1, 64 * gib, 1, None, images_per_worker=2).images_per_worker == 2
    assert place(16, 1, 64 * gib, 1, None, device="cpu").device == "cpu"
    with pytest.raises(RuntimeError, match="no GPUs"):
        place(16, 0, 64 * gib, 1, None, device="cuda")


def test_a_worker_holding_several_images_gives_the_same_outputs(first_run, archive, tmp_path):
    """--images-per-worker: one worker decodes and encodes several images at once, one at a time on the model
    (as a GPU worker does by default); the outputs are the same images as one at a time."""
    out = tmp_path / "held"
    r = CliRunner().invoke(main, ["run", str(archive / "manifest.csv"), "--out", str(out), "--workers", "1",
                                  "--images-per-worker", "3", "--no-progress"])
    assert r.exit_code == 0, r.output
    assert "1 cpu worker(s) x 1 thread(s), 3 images at once" in r.output
    one_at_a_time = {row.image_id: row for row in read_ledger(str(first_run[0] / "ledger"))}
    rows = list(read_ledger(str(out / "ledger")))
    assert sorted(row.image_id for row in rows) == sorted(one_at_a_time)
    for row in rows:
        assert row.status == "ok", row.error
        assert same_pixels(row.output_path, one_at_a_time[row.image_id].output_path), row.image_id
        assert "wait" in json.loads(row.timings)  # time spent waiting for another image's model stage
    # the worker really held several: some images were in progress at the same time
    spans = sorted((row.created_at.timestamp() - row.seconds, row.created_at.timestamp()) for row in rows)
    assert any(later[0] < earlier[1] - 0.01 for earlier, later in zip(spans, spans[1:]))


def test_a_cpu_worker_runs_as_many_threads_as_cpus_it_claims(ray_cluster):
    """Ray's accounting holds: threads per worker = CPUs claimed, so workers never share a core unasked."""
    from jobs.cluster import plan
    cpus = int(ray_cluster.cluster_resources()["CPU"])
    default = plan(None, "cpu")
    assert (default.workers, default.cpus_per_worker, default.threads_per_worker) == (cpus, 1.0, 1)
    one = plan(1, "cpu")
    assert (one.workers, one.cpus_per_worker, one.threads_per_worker) == (1, 1.0, 1)
    wide = plan(None, "cpu", cpus_per_worker=cpus)
    assert (wide.workers, wide.cpus_per_worker, wide.threads_per_worker) == (1, float(cpus), cpus)
    crowded = plan(4 * cpus, "cpu")  # more workers than CPUs: equal shares, so every one can start
    assert crowded.workers == 4 * cpus and crowded.cpus_per_worker * crowded.workers <= cpus
    assert crowded.threads_per_worker == 1
    # a CPU worker holds one image unless asked; held images share its cores for RAW decoding
    assert default.images_per_worker == 1
    held = plan(1, "cpu", cpus_per_worker=cpus, images_per_worker=2)
    assert (held.images_per_worker, held.decode_threads) == (2, max(1, cpus // 2))
