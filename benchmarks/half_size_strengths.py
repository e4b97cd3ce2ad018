"""Effect of --half-size RAW decoding on the predicted strengths and on decode time (the real RAWs in
../shared/data/raw/good).   python benchmarks/half_size_strengths.py"""
import glob
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from pipeline.checkpoint import load_checkpoint  # noqa: E402
from pipeline.imageio import decode  # noqa: E402
from pipeline.render import open_retoucher  # noqa: E402

r = open_retoucher(load_checkpoint(None))
for f in sorted(glob.glob(str(ROOT.parent / "shared" / "data" / "raw" / "good" / "*"))):
    res = {}
    for half in (False, True):
        t = time.perf_counter()
        px = decode(f, half_size=half).pixels
        seconds = time.perf_counter() - t
        res[half] = (r.predict(px), seconds, px.shape)
    d = np.abs(res[False][0] - res[True][0])
    print(f"{Path(f).name}: full {res[False][2][1]}x{res[False][2][0]} decode {res[False][1]:.2f} s, half "
          f"{res[True][1]:.2f} s; strengths full {np.round(res[False][0], 3).tolist()} half "
          f"{np.round(res[True][0], 3).tolist()} max |diff| {d.max():.3f}")
