"""Job throughput: the same manifest of 24 MP 16-bit TIFFs through `retouch-batch run` with 1 and 2 workers.

    python benchmarks/throughput.py [--images 8] [--megapixels 24]

Prints images per second per worker count and the share of worker time per stage (from the ledger's timings).
Needs ../shared/data/photos (real photos scaled up to the test size).
"""
from __future__ import annotations

import argparse
import glob
import json
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
from jobs.ledger import read_ledger  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, default=8)
    ap.add_argument("--megapixels", type=float, default=24)
    ap.add_argument("--workers", default="1,2")
    args = ap.parse_args()
    photos = sorted(glob.glob(str(ROOT.parent / "shared" / "data" / "photos" / "*.jpg")))[: args.images]
    w = int(round((args.megapixels * 1e6 * 1.5) ** 0.5))
    h = int(round(w / 1.5))
    with tempfile.TemporaryDirectory(prefix="retouch-throughput-") as d:
        rows = ["path"]
        for i, p in enumerate(photos):
            a = np.asarray(Image.open(p).convert("RGB").resize((w, h), Image.BILINEAR), dtype=np.uint16) * 257
            tifffile.imwrite(f"{d}/p{i}.tif", a, photometric="rgb")
            rows.append(f"p{i}.tif")
        Path(d, "m.csv").write_text("\n".join(rows) + "\n")
        for n in [int(x) for x in args.workers.split(",")]:
            out = f"{d}/out{n}"
            t = time.perf_counter()
            r = subprocess.run(["retouch-batch", "run", f"{d}/m.csv", "--out", out, "--workers", str(n),
                                "--no-progress"], capture_output=True, text=True)
            wall = time.perf_counter() - t
            if r.returncode:
                sys.exit(r.stderr)
            summary = r.stdout.strip().splitlines()[-1]
            stages: dict[str, float] = {}
            for row in read_ledger(f"{out}/ledger"):
                for k, v in json.loads(row.timings).items():
                    stages[k] = stages.get(k, 0.0) + v
            total = sum(stages.values())
            share = ", ".join(f"{k} {100 * v / total:.0f}%" for k, v in stages.items())
            print(f"{n} worker(s), {len(photos)} x {w}x{h}: {summary.split(' in ')[1].split(';')[0]}, "
                  f"wall incl. Ray start-up {wall:.1f} s; worker time: {share}")


if __name__ == "__main__":
    main()
