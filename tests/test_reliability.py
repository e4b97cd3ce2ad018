"""Nothing lost, nothing corrupted: bad inputs, kill -9 of the driver, a killed worker, then resume."""
import glob
import os
import random
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import tifffile
from click.testing import CliRunner
from PIL import Image

from cli import main
from jobs.ledger import latest_by_image, read_ledger
from pipeline.checkpoint import file_sha256

from conftest import ROOT, need_shared
from test_cli import write_manifest
from test_imageio import bomb_tiff

CLI = [sys.executable, "-c", "import sys; sys.argv[0] = 'retouch-batch'; from cli import main; main()"]


def test_bad_corpus_every_file_reported_and_good_ones_done(ray_cluster, tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    good = ["a0481.png", "a2917.png", "tinydng_colorchart.dng"]
    shutil.copy(need_shared("data", "fivek-pairs", "input", "a0481.png"), src)
    shutil.copy(need_shared("data", "fivek-pairs", "input", "a2917.png"), src)
    raw = need_shared("data", "raw", "good", "tinydng_colorchart.dng")
    shutil.copy(raw, src)
    bad = {}
    for f in need_shared("data", "raw", "bad").iterdir():  # RAW files with the image data stripped
        shutil.copy(f, src)
        bad[f.name] = ""
    (src / "truncated.dng").write_bytes(raw.read_bytes()[:200_000]); bad["truncated.dng"] = ""
    (src / "empty.dng").write_bytes(b""); bad["empty.dng"] = "empty file"
    (src / "notes.nef").write_text("not a raw file\n" * 100); bad["notes.nef"] = "not a RAW format"
    bomb_tiff(src / "bomb.tif", 100_000, 100_000); bad["bomb.tif"] = "pixel limit"
    tifffile.imwrite(src / "cmyk.tif", np.zeros((8, 8, 4), np.uint8), photometric="separated"); bad["cmyk.tif"] = "CMYK"
    Image.new("RGB", (1, 1)).save(src / "tiny.png")  # 1x1 is odd but valid: processed
    Image.new("RGB", (4000, 2)).save(src / "strip.png"); bad["strip.png"] = "aspect ratio"
    Image.new("RGB", (1500, 40)).save(src / "pano.png")  # a wide panorama strip is fine
    good += ["tiny.png", "pano.png"]
    rows = [f"in/{n}" for n in good + sorted(bad)] + ["in/does_not_exist.dng"]
    bad["does_not_exist.dng"] = "file not found"
    write_manifest(tmp_path / "m.csv", rows)
    r = CliRunner().invoke(main, ["run", str(tmp_path / "m.csv"), "--out", str(tmp_path / "out"), "--workers", "2",
                                  "--no-progress"])
    assert r.exit_code == 1, r.output
    assert "Traceback" not in r.output
    latest = latest_by_image(read_ledger(tmp_path / "out" / "ledger"))
    assert len(latest) == len(rows)
    by_name = {os.path.basename(x.source_path): x for x in latest.values()}
    for g in good:
        assert by_name[g].status == "ok", by_name[g].error
    for b, cause in bad.items():
        row = by_name[b]
        assert row.status == "error" and row.error.startswith(str(src / b) + ": ") and cause in row.error, row.error
        assert "\n" not in row.error
        assert f"failed: {row.error}" in r.output


def _outputs(folder):
    return [f for f in glob.glob(f"{folder}/**/*", recursive=True) if f.endswith(".tif")]


def _descendants(pid):
    out, todo = [], [pid]
    while todo:
        q = todo.pop()
        for t in glob.glob(f"/proc/{q}/task/*/children"):
            try:
                kids = [int(c) for c in open(t).read().split()]
            except OSError:
                continue
            out += kids
            todo += kids
    return out


def _check_exactly_once(out, n):
    rows = read_ledger(out / "ledger")
    latest = latest_by_image(rows)
    assert len(latest) == n and all(r.status in ("ok", "skipped") for r in latest.values()), \
        [(r.image_id, r.status, r.error) for r in latest.values() if r.status == "error"]
    for run in {r.run_id for r in rows}:  # one row per image per run
        ids = [r.image_id for r in rows if r.run_id == run]
        assert len(ids) == len(set(ids)), run
    owned = set()
    for r in latest.values():
        assert file_sha256(r.output_path) == r.output_sha256
        owned.add(os.path.realpath(r.output_path))
    strays = [f for f in glob.glob(f"{out}/**/*", recursive=True) if os.path.isfile(f) and "/ledger/" not in f
              and os.path.realpath(f) not in owned]
    assert not strays, strays


def kill_driver_then_resume(work, n, after_outputs, seed):
    out = work / "out"
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.Popen([*CLI, "run", str(work / "m.csv"), "--out", str(out), "--workers", "2", "--no-progress"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True, env=env)
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None and len(_outputs(out)) < after_outputs:
        time.sleep(0.05)
    time.sleep(random.Random(seed).uniform(0, 0.5))
    for pid in [proc.pid] + _descendants(proc.pid):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    proc.wait()
    r = subprocess.run([*CLI, "run", str(work / "m.csv"), "--out", str(out), "--workers", "2", "--no-progress"],
                       capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    _check_exactly_once(out, n)
    return r


def test_kill_9_of_the_whole_job_then_resume(kill_corpus):
    work, n = kill_corpus
    kill_driver_then_resume(work, n, after_outputs=3, seed=0)


@pytest.mark.slow
@pytest.mark.parametrize("trial", range(8))
def test_kill_9_at_random_points_repeatedly(kill_corpus, trial):
    work, n = kill_corpus
    kill_driver_then_resume(work, n, after_outputs=random.Random(trial).randint(0, n - 1), seed=trial)


@pytest.mark.parametrize("held", [[], ["--images-per-worker", "3"]], ids=["one-image", "three-images-held"])
def test_a_killed_worker_is_replaced_and_its_images_retried(kill_corpus, held):
    """Every image the killed worker held (one, or several at once) is retried; each lands exactly once."""
    work, n = kill_corpus
    out = work / "out"
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.Popen([*CLI, "run", str(work / "m.csv"), "--out", str(out), "--workers", "2", "--no-progress",
                             *held],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
                            env=env)
    killed = 0
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None and not killed:
        if _outputs(out):
            for pid in _descendants(proc.pid):
                try:
                    cmd = open(f"/proc/{pid}/cmdline", "rb").read()
                except OSError:
                    continue
                if b"_Worker" in cmd:
                    os.kill(pid, signal.SIGKILL)
                    killed += 1
                    break
        time.sleep(0.05)
    output = proc.communicate(timeout=300)[0]
    assert killed == 1
    assert proc.returncode == 0, output
    assert "died and were replaced" in output
    _check_exactly_once(out, n)


def _as_in_a_terminal() -> None:
    """The child's SIGINT as a terminal's foreground job has it: a process that inherits SIGINT ignored (started
    in the background of a non-interactive shell, as CI runners and agents start test suites) keeps it ignored
    through exec, and Python then installs no KeyboardInterrupt handler at all."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def test_ctrl_c_stops_cleanly_says_how_to_resume_and_resume_finishes(kill_corpus):
    work, n = kill_corpus
    out = work / "out"
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    # each photo four times (own id and output): a job that outlasts the interrupt on a fast machine too
    copies = 4
    with open(work / "long.csv", "w") as f:
        f.write("path,id,output\n")
        for i in range(n):
            for c in range(copies):
                f.write(f"in/p{i:02d}.tif,p{i:02d}-{c},p{i:02d}-{c}.tif\n")
    n *= copies
    args = [*CLI, "run", str(work / "long.csv"), "--out", str(out), "--workers", "2", "--no-progress"]
    inherited = signal.getsignal(signal.SIGINT)
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                            start_new_session=True, preexec_fn=_as_in_a_terminal)
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None and len(_outputs(out)) < 2:
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGINT)  # what a terminal sends to the whole foreground group
    output = proc.communicate(timeout=120)[0]
    assert proc.returncode == 130, f"SIGINT in the test process: {inherited}\n{output}"
    assert "Run the same command again to resume" in output and "Traceback" not in output
    r = subprocess.run(args, capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "(resumed)" in r.stdout
    _check_exactly_once(out, n)
