"""Wall-clock time of small commands as a user runs them (a fresh process each, median of 3): `--help`, the 7
example photos in this process and on Ray, their rerender, and one 12 MP 16-bit TIFF.

    python benchmarks/startup.py > benchmarks/startup.txt
"""
from __future__ import annotations

import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CLI = [sys.executable, "-c", "import sys; from cli import main; sys.argv[0] = 'retouch-batch'; main()"]
REPEATS = 3


def timed(args: list[str], cwd: str) -> float:
    times = []
    for _ in range(REPEATS):
        for d in ("out", "again"):
            shutil.rmtree(os.path.join(cwd, d), ignore_errors=True)
        t = time.perf_counter()
        subprocess.run([*CLI, *args], cwd=cwd, check=True, capture_output=True,
                       env=dict(os.environ, PYTHONPATH=str(ROOT)))
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def main() -> None:
    import numpy as np
    import tifffile
    from PIL import Image
    with tempfile.TemporaryDirectory() as d:
        subprocess.run([*CLI, "manifest", "--examples", "-o", "examples.csv"], cwd=d, check=True,
                       capture_output=True, env=dict(os.environ, PYTHONPATH=str(ROOT)))
        storm = ROOT.parent / "shared" / "data" / "photos" / "Storm.jpg"
        big = np.asarray(Image.open(storm).convert("RGB").resize((4000, 3000), Image.BICUBIC), np.uint16) * 257
        tifffile.imwrite(os.path.join(d, "twelve.tif"), big, photometric="rgb")
        Path(d, "one.csv").write_text("path\ntwelve.tif\n")
        print(f"# wall seconds per command (fresh process, median of {REPEATS}), {os.cpu_count()} cores; "
              "python benchmarks/startup.py")
        rows = [
            ("--help", ["--help"]),
            ("run --help", ["run", "--help"]),
            ("bad option (usage error)", ["run", "--no-such-option"]),
            ("7 example photos, in this process", ["run", "examples.csv", "--out", "out", "--no-progress"]),
            ("7 example photos, on Ray", ["run", "examples.csv", "--out", "out", "--no-progress", "--executor",
                                          "ray"]),
            ("one 12 MP 16-bit TIFF, in this process", ["run", "one.csv", "--out", "out", "--no-progress"]),
        ]
        for label, args in rows:
            try:
                seconds = timed(args, d)
            except subprocess.CalledProcessError as e:
                if label.startswith("bad option") and e.returncode == 2:
                    seconds = _usage_error_time(args, d)
                else:
                    raise
            print(f"{label:42} {seconds:6.2f}")
        subprocess.run([*CLI, "run", "examples.csv", "--out", "out", "--no-progress"], cwd=d, check=True,
                       capture_output=True, env=dict(os.environ, PYTHONPATH=str(ROOT)))
        times = []
        for _ in range(REPEATS):
            shutil.rmtree(os.path.join(d, "again"), ignore_errors=True)
            t = time.perf_counter()
            subprocess.run([*CLI, "rerender", "out/ledger", "--out", "again", "--shift", "ex=+0.1", "--no-progress"],
                           cwd=d, check=True, capture_output=True, env=dict(os.environ, PYTHONPATH=str(ROOT)))
            times.append(time.perf_counter() - t)
        print(f"{'rerender of the 7, in this process':42} {statistics.median(times):6.2f}")


def _usage_error_time(args: list[str], cwd: str) -> float:
    times = []
    for _ in range(REPEATS):
        t = time.perf_counter()
        subprocess.run([*CLI, *args], cwd=cwd, capture_output=True, env=dict(os.environ, PYTHONPATH=str(ROOT)))
        times.append(time.perf_counter() - t)
    return statistics.median(times)


if __name__ == "__main__":
    main()
