"""The fixed cost per image, two ways, 2-core CPU:

1. small images: N 64x48 PNGs (real photos, shrunk) through `retouch-batch run` on Ray with 2 one-core workers
   (the job's own summary: images/s after worker start-up), and one image after another through one in-process
   ImageProcessor on one thread (ms per image, per stage from the ledger's timings);
2. a 12 MP 16-bit TIFF through ImageProcessor on one thread, against the same decode + encode + write alone with the
   same codec, side by side in one run (median of --repeat): what the model, hashing, metadata and bookkeeping add.

    python benchmarks/fixed_cost.py [--images 2000] [--repeat 5] > benchmarks/fixed-cost.txt
Needs ../shared/data/photos.
"""
from __future__ import annotations

import argparse
import glob
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
PHOTOS = sorted(glob.glob(str(ROOT.parent / "shared" / "data" / "photos" / "*.jpg")))


def small_pngs(folder: Path, n: int) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    thumbs = [Image.open(p).convert("RGB").resize((64, 48), Image.LANCZOS) for p in PHOTOS]
    for i in range(n):
        thumbs[i % len(thumbs)].save(folder / f"{i:06d}.png")
    manifest = folder.parent / "small.csv"
    manifest.write_text("path\n" + "".join(f"{folder.name}/{i:06d}.png\n" for i in range(n)))
    return manifest


def stage_medians(rows) -> str:
    stages: dict[str, list[float]] = {}
    for r in rows:
        for k, v in json.loads(r.timings or "{}").items():
            stages.setdefault(k, []).append(v)
    return ", ".join(f"{k} {1000 * statistics.median(v):.1f}" for k, v in stages.items())


def processor(threads: int = 1, fmt: str = "png"):
    import torch
    torch.set_num_threads(threads)
    from jobs.worker import ImageProcessor, RenderSettings, WorkerConfig
    p = ImageProcessor(WorkerConfig(weights=None, settings=RenderSettings(output_format=fmt), threads=threads))
    p.retoucher.warm_up()
    return p


def in_process_small(folder: Path, out: Path, n: int) -> str:
    from jobs.worker import ImageTask
    p = processor()
    tasks = [ImageTask(f.name, str(f), str(out / f.name)) for f in sorted(folder.glob("*.png"))[:n]]
    out.mkdir(parents=True, exist_ok=True)
    for t in tasks[:20]:  # warm
        p.process(t)
    t0 = time.perf_counter()
    rows = [p.process(t) for t in tasks]
    ms = 1000 * (time.perf_counter() - t0) / len(tasks)
    assert all(r.status == "ok" for r in rows), [r.error for r in rows if r.status != "ok"][:3]
    return f"{ms:.1f} ms per image on one thread ({1000 / ms:.0f} images/s per core); stage medians ms: " \
           f"{stage_medians(rows)}"


def twelve_mp(tmp: Path, repeat: int) -> str:
    import tifffile
    from jobs.worker import ImageTask
    from pipeline.imageio import decode, encode_to, write_atomic
    src = tmp / "12mp.tif"
    img = np.asarray(Image.open(PHOTOS[0]).convert("RGB").resize((4240, 2832), Image.BILINEAR), np.uint16) * 257
    tifffile.imwrite(src, img, photometric="rgb")
    p = processor(fmt="tiff16")
    alone, full, stages = [], [], []
    for i in range(repeat + 1):
        t0 = time.perf_counter()
        px = decode(str(src)).pixels
        write_atomic(str(tmp / "plain.tif"), lambda f: encode_to(f, px, "tiff16", tiff_compression="none"))
        t1 = time.perf_counter()
        row = p.process(ImageTask("12mp", str(src), str(tmp / f"full{i}.tif")))
        t2 = time.perf_counter()
        assert row.status == "ok", row.error
        if i:  # the first pair warms caches
            alone.append(t1 - t0)
            full.append(t2 - t1)
            stages.append(row)
        os.unlink(tmp / f"full{i}.tif")
    a, f = statistics.median(alone), statistics.median(full)
    return (f"12 MP 16-bit TIFF, one thread: decode + encode + write alone {a:.3f} s, whole image in the worker "
            f"{f:.3f} s: +{f - a:.3f} s (median of {repeat}); worker stage medians ms: {stage_medians(stages)}")


def on_ray(manifest: Path, out: Path) -> str:
    r = subprocess.run([sys.executable, str(ROOT / "cli.py"), "run", str(manifest), "--out", str(out), "--workers",
                        "2", "--executor", "ray", "--format", "png", "--no-progress"], capture_output=True, text=True)
    if r.returncode:
        sys.exit(r.stderr or r.stdout)
    from jobs.ledger import read_ledger
    summary = r.stdout.strip().splitlines()[-1].split(";")[0]
    return f"{summary}; stage medians ms: {stage_medians(read_ledger(out / 'ledger'))}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=2000)
    ap.add_argument("--repeat", type=int, default=5)
    a = ap.parse_args()
    print(f"# python benchmarks/fixed_cost.py --images {a.images} --repeat {a.repeat}")
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        manifest = small_pngs(tmp / "small", a.images)
        os.sync()
        print(f"{a.images} x 64x48 PNG -> PNG, Ray, 2 workers x 1 core: {on_ray(manifest, tmp / 'ray')}", flush=True)
        print(f"{min(a.images, 500)} x 64x48 PNG -> PNG, in process: "
              f"{in_process_small(tmp / 'small', tmp / 'local', min(a.images, 500))}", flush=True)
        print(twelve_mp(tmp, a.repeat), flush=True)


if __name__ == "__main__":
    main()
