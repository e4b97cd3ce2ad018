"""Share of the model (predict + prepare + apply) in the worker's time per RAW file, as a 1-core worker runs it.

    python benchmarks/raw_model_share.py [--runs 5] [--large-megapixels 24]

The RAWs in ../shared/data/raw/good, then two 24 MP DNGs built from the Blackmagic DNG's Bayer data by
benchmarks/large_dng.py (lossless JPEG tiles, as the camera writes, and uncompressed), since no RAW that large is
in ../shared. Each file runs ``--runs`` times; the share is given for the median run (by total time) and the
range over all runs. ``--large-megapixels 0`` leaves the large files out.
"""
import argparse
import glob
import json
import os
import statistics
import sys
import tempfile
from pathlib import Path

# a 1-core worker: Ray sets OMP_NUM_THREADS to a worker's CPU claim, and LibRaw's demosaic runs on OpenMP threads
# (set before torch and rawpy load the OpenMP runtime)
os.environ.setdefault("OMP_NUM_THREADS", "1")

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))
from jobs.worker import ImageProcessor, ImageTask, WorkerConfig  # noqa: E402
import large_dng  # noqa: E402

MODEL_STAGES = ("predict", "prepare", "apply")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--large-megapixels", type=float, default=24)
    args = ap.parse_args()
    processor = ImageProcessor(WorkerConfig(weights=None, threads=1))
    processor.retoucher.warm_up()
    with tempfile.TemporaryDirectory(prefix="retouch-model-share-") as work:
        paths = sorted(glob.glob(str(ROOT.parent / "shared" / "data" / "raw" / "good" / "*")))
        if args.large_megapixels:
            for codec in ("ljpeg", "none"):
                paths += [str(p) for p in large_dng.make(f"{work}/in", 1, args.large_megapixels, codec)]
        for path in paths:
            runs = []
            for _ in range(args.runs):
                row = processor.process(ImageTask("x", path, f"{work}/{Path(path).stem}.tif"))
                if row.status != "ok":
                    sys.exit(row.error)
                runs.append(json.loads(row.timings))
            shares = [100 * sum(t[k] for k in MODEL_STAGES) / sum(t.values()) for t in runs]
            median = sorted(runs, key=lambda t: sum(t.values()))[len(runs) // 2]
            total = sum(median.values())
            model = sum(median[k] for k in MODEL_STAGES)
            stages = ", ".join(f"{k} {v:.3f}" for k, v in median.items())
            print(f"{Path(path).name} ({row.width}x{row.height}, {row.width * row.height / 1e6:.1f} MP), median of "
                  f"{len(runs)}: {stages} s; model {model:.3f} of {total:.3f} s = {100 * model / total:.1f} % "
                  f"(all runs {min(shares):.1f}-{max(shares):.1f} %, median {statistics.median(shares):.1f} %)")


if __name__ == "__main__":
    main()
