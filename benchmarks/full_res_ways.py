"""The network retouchers' two ways to full resolution, on held-out photos at their own resolution (up to 2 MP).

For each photo held out of training (every 5th of ../shared/data/photos, as `train` holds them out), a fixed
synthetic degradation at full resolution (coarse-to-fine: a colour cast and fading; deep-symmetric: 1-3 EV of
underexposure with sensor noise); then the shipped weights render it both ways:
- tiles: the network on every pixel, in overlapping tiles (exact);
- guided: the network on the 384-pixel working copy, carried to full resolution by a fitted bilateral grid.
Reports PSNR against the clean photo for the input and both ways, PSNR of guided against tiles, and model-stage
seconds (predict + prepare + apply) on this machine.

    python benchmarks/full_res_ways.py --json benchmarks/full-res-ways.json > benchmarks/full-res-ways.md
    python benchmarks/full_res_ways.py --models deep-symmetric --blend 1 --json benchmarks/full-res-ways-blend1.json \
        > benchmarks/full-res-ways-blend1.md
"""
from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline.checkpoint import load_checkpoint  # noqa: E402
from pipeline.guided import to_u16  # noqa: E402
from pipeline.metrics import psnr  # noqa: E402
from pipeline.models.coarse_to_fine import degrade  # noqa: E402
from pipeline.models.deep_symmetric import underexpose  # noqa: E402
from pipeline.render import open_retoucher  # noqa: E402

PHOTOS = Path(__file__).resolve().parents[2] / "shared" / "data" / "photos"
DEGRADE = {"coarse-to-fine": degrade, "deep-symmetric": underexpose}


def held_out_photos(max_mp: float) -> list[tuple[str, np.ndarray]]:
    """Every 5th photo by name (train's held-out fifth), shrunk to at most ``max_mp`` megapixels, uint16."""
    out = []
    for path in sorted(p for p in PHOTOS.iterdir() if p.suffix.lower() in (".jpg", ".png"))[::5]:
        im = Image.open(path).convert("RGB")
        scale = min(1.0, (max_mp * 1e6 / (im.width * im.height)) ** 0.5)
        if scale < 1:
            im = im.resize((round(im.width * scale), round(im.height * scale)), Image.LANCZOS)
        out.append((path.name, np.asarray(im, dtype=np.uint16) * 257))
    return out


def u16_psnr(a: np.ndarray, b: np.ndarray) -> float:
    return psnr(a.astype(np.float32) / 65535, b.astype(np.float32) / 65535)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--max-mp", type=float, default=2.0)
    ap.add_argument("--models", default="coarse-to-fine,deep-symmetric")
    ap.add_argument("--json", default=None)
    ap.add_argument("--blend", type=float, default=None,
                    help="deep-symmetric: render at this blend instead of the predicted (shipped) one")
    args = ap.parse_args()
    photos = held_out_photos(args.max_mp)
    rows = []
    for model in args.models.split(","):
        retouchers = {way: open_retoucher(load_checkpoint(model=model), options={"full_res": way})
                      for way in ("guided", "tiles")}
        for r in retouchers.values():
            r.warm_up()
        rng = random.Random(7)
        for name, good in photos:
            clean = torch.from_numpy(good.astype(np.float32) / 65535).permute(2, 0, 1)[None]
            bad = to_u16(DEGRADE[model](clean, rng))
            row = {"model": model, "photo": name, "size": f"{good.shape[1]}x{good.shape[0]}",
                   "input_psnr": u16_psnr(bad, good)}
            outs = {}
            for way, r in retouchers.items():
                t = time.perf_counter()
                params = r.predict(bad)
                if args.blend is not None and model == "deep-symmetric":
                    params[0] = args.blend
                outs[way] = r.render(bad, params)
                row[f"{way}_s"] = time.perf_counter() - t
                row[f"{way}_psnr"] = u16_psnr(outs[way], good)
            row["guided_vs_tiles_psnr"] = u16_psnr(outs["guided"], outs["tiles"])
            rows.append(row)
            print(json.dumps(row), file=sys.stderr)
    print(f"machine: {torch.get_num_threads()} threads, torch {torch.__version__}; photos up to {args.max_mp} MP"
          + (f"; deep-symmetric at blend {args.blend}" if args.blend is not None else "") + "\n")
    print("| model | photo | size | input dB | tiles dB | guided dB | guided vs tiles dB | tiles s | guided s |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['model']} | {r['photo']} | {r['size']} | {r['input_psnr']:.2f} | {r['tiles_psnr']:.2f} | "
              f"{r['guided_psnr']:.2f} | {r['guided_vs_tiles_psnr']:.2f} | {r['tiles_s']:.2f} | {r['guided_s']:.2f} |")
    for model in args.models.split(","):
        mine = [r for r in rows if r["model"] == model]
        mean = {k: float(np.mean([r[k] for r in mine])) for k in
                ("input_psnr", "tiles_psnr", "guided_psnr", "guided_vs_tiles_psnr", "tiles_s", "guided_s")}
        print(f"| **{model} mean** | {len(mine)} photos | | {mean['input_psnr']:.2f} | {mean['tiles_psnr']:.2f} | "
              f"{mean['guided_psnr']:.2f} | {mean['guided_vs_tiles_psnr']:.2f} | {mean['tiles_s']:.2f} | "
              f"{mean['guided_s']:.2f} |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
