"""Job throughput: the same manifest of 24 MP images through `retouch-batch run` with 1 and 2 workers.

    python benchmarks/throughput.py [--images 8] [--megapixels 24] [--configs 1x1,2x1,1x2] [--source tiff|dng]

``--source tiff`` (default): 16-bit TIFFs of real photos from ../shared/data/photos, scaled up to the size.
``--source dng``: RAW files, lossless-JPEG DNGs built from a real 9 MP sensor mosaic by benchmarks/large_dng.py.

A config is WORKERSxCPUS[xIMAGES]: workers, each claiming (and running threads on) that many CPU cores, and
holding that many images at once (`--images-per-worker`, default 1).

Prints images per second per worker count and the share of worker time per stage (from the ledger's timings).
Needs ../shared/data (photos, or the Blackmagic DNG).
"""
from __future__ import annotations

import argparse
import glob
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import tifffile
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))
from jobs.ledger import read_ledger  # noqa: E402
import large_dng  # noqa: E402


def cpu_ticks() -> tuple[int, int]:
    """(busy, total) jiffies of the whole machine from /proc/stat: every process, the kernel and Ray included."""
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait
    return sum(fields[:8]) - idle, sum(fields[:8])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, default=8)
    ap.add_argument("--megapixels", type=float, default=24)
    ap.add_argument("--tiff-compression", default="none", help="output codec, as `run --tiff-compression`")
    ap.add_argument("--repeat", type=int, default=1, help="run the configs this many times, in turn")
    ap.add_argument("--configs", default="1x1,2x1,1x2", help="WORKERSxCPUS_PER_WORKER[xIMAGES_PER_WORKER], comma-separated")
    ap.add_argument("--source", choices=("tiff", "dng"), default="tiff")
    args = ap.parse_args()
    w = int(round((args.megapixels * 1e6 * 1.5) ** 0.5))
    h = int(round(w / 1.5))
    with tempfile.TemporaryDirectory(prefix="retouch-throughput-") as d:
        if args.source == "dng":
            inputs = large_dng.make(d, args.images, args.megapixels, "ljpeg")
        else:
            inputs = []
            photos = sorted(glob.glob(str(ROOT.parent / "shared" / "data" / "photos" / "*.jpg")))[: args.images]
            for i, p in enumerate(photos):
                a = np.asarray(Image.open(p).convert("RGB").resize((w, h), Image.BILINEAR), dtype=np.uint16) * 257
                tifffile.imwrite(f"{d}/p{i}.tif", a, photometric="rgb")
                inputs.append(Path(d, f"p{i}.tif"))
        Path(d, "m.csv").write_text("path\n" + "".join(f"{p.name}\n" for p in inputs))
        os.sync()  # inputs on disk before timing, so their write-back does not land inside a measured run
        rates: dict[str, list[float]] = {}
        for config in args.configs.split(",") * args.repeat:
            n, cpus, held = ([int(x) for x in config.split("x")] + [1])[:3]
            out = f"{d}/out{config}"
            shutil.rmtree(out, ignore_errors=True)
            t = time.perf_counter()
            busy0, total0 = cpu_ticks()
            r = subprocess.run(["retouch-batch", "run", f"{d}/m.csv", "--out", out, "--workers", str(n),
                                "--cpus-per-worker", str(cpus), "--images-per-worker", str(held),
                                "--tiff-compression", args.tiff_compression,
                                "--no-progress"], capture_output=True, text=True)
            wall = time.perf_counter() - t
            busy1, total1 = cpu_ticks()
            cores_busy = (os.cpu_count() or 1) * (busy1 - busy0) / max(1, total1 - total0)
            if r.returncode:
                sys.exit(r.stderr)
            summary = r.stdout.strip().splitlines()[-1]
            rates.setdefault(config, []).append(float(summary.split("(")[1].split(" images/s")[0]))
            stages: dict[str, float] = {}
            for row in read_ledger(f"{out}/ledger"):
                for k, v in json.loads(row.timings).items():
                    stages[k] = stages.get(k, 0.0) + v
            total = sum(stages.values())
            share = ", ".join(f"{k} {100 * v / total:.0f}%" for k, v in stages.items())
            print(f"{n} worker(s) x {cpus} CPU x {held} image(s), {args.source} -> {args.tiff_compression}, {len(inputs)} x {w}x{h}: "
                  f"{summary.split(' in ')[1].split(';')[0]}, wall incl. Ray start-up {wall:.1f} s "
                  f"(machine busy {cores_busy:.2f} of {os.cpu_count()} cores over that wall); worker time: {share}")
        base = statistics.median(rates[args.configs.split(",")[0]])
        for config, r in rates.items():
            print(f"{config} ({args.source} -> {args.tiff_compression}): median {statistics.median(r):.2f} images/s over {len(r)} runs "
                  f"({', '.join(f'{x:.2f}' for x in r)}); {statistics.median(r) / base:.2f}x the first config")


if __name__ == "__main__":
    main()
