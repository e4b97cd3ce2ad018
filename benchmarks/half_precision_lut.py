"""What half precision would cost the GPU render: the LUT applied with torch grid_sample in float32, bfloat16
and float16 (on the CPU device: the dtypes' precision is the same on a GPU), against float32 and the exact network.

    python benchmarks/half_precision_lut.py
"""
import sys
from pathlib import Path

import numpy as np
import skimage.data
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from pipeline.bench import photo_at_size  # noqa: E402
from pipeline.checkpoint import load_checkpoint  # noqa: E402
from pipeline.lut import apply_lut_torch  # noqa: E402
from pipeline.metrics import psnr  # noqa: E402
from pipeline.render import open_retoucher  # noqa: E402

r = open_retoucher(load_checkpoint(None))
px = photo_at_size(2, skimage.data.astronaut())
s = r.predict(px)
lut = torch.from_numpy(r.lut(s))
image = torch.from_numpy(px.astype(np.float32) / 65535).permute(2, 0, 1)[None]
reference = apply_lut_torch(image, lut)
exact = r.render_exact(px, s)
for dtype in (torch.float32, torch.bfloat16, torch.float16):
    out = apply_lut_torch(image.to(dtype), lut.to(dtype)).float()
    steps = float((out - reference).abs().max()) * 65535
    print(f"{str(dtype):15s} max difference from float32: {steps:6.1f} 16-bit steps; "
          f"PSNR against the exact network {psnr(out[0].permute(1, 2, 0).numpy(), exact):.1f} dB")
