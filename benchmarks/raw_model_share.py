"""Share of the model (predict + bake + apply) in the worker's time per real RAW file, as a 1-core worker runs it.

    python benchmarks/raw_model_share.py        (the RAWs in ../shared/data/raw/good; best of 3 per file)
"""
import glob
import json
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from jobs.worker import ImageProcessor, ImageTask, WorkerConfig  # noqa: E402

MODEL_STAGES = ("predict", "bake", "apply")

processor = ImageProcessor(WorkerConfig(weights=None, threads=1))
processor.retoucher.warm_up()
with tempfile.TemporaryDirectory() as out:
    for path in sorted(glob.glob(str(ROOT.parent / "shared" / "data" / "raw" / "good" / "*"))):
        best = None
        for _ in range(3):
            row = processor.process(ImageTask("x", path, f"{out}/{Path(path).stem}.tif"))
            if row.status != "ok":
                sys.exit(row.error)
            t = json.loads(row.timings)
            if best is None or sum(t.values()) < sum(best.values()):
                best = t
        total = sum(best.values())
        model = sum(best[k] for k in MODEL_STAGES)
        stages = ", ".join(f"{k} {v:.3f}" for k, v in best.items())
        print(f"{Path(path).name} ({row.width}x{row.height}, {row.width * row.height / 1e6:.1f} MP): {stages} s; "
              f"model {model:.3f} of {total:.3f} s = {100 * model / total:.1f} %")
