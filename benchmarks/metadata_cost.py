"""What carrying the source's metadata and the edit record costs per output, at 12 MP.

For each format: the output encoded and written (as the worker does, through write_atomic) without metadata and
with the metadata of a real camera JPEG (../shared/data/photos/Storm.jpg) plus an edit record; and, for 16-bit
TIFF, the alternative this project did not take: exiv2 rewriting the finished file. Each variant runs in its own
process so that its peak memory (ru_maxrss) can be compared.

    python benchmarks/metadata_cost.py > benchmarks/metadata-cost.txt
"""
from __future__ import annotations

import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
STORM = os.path.join(os.path.dirname(HERE), "..", "shared", "data", "photos", "Storm.jpg")
REPEATS = 5


def variant(fmt: str, how: str) -> tuple[float, float]:
    """Median seconds to encode and write one 12 MP output, and the process's peak RSS growth in MiB."""
    import numpy as np
    from pipeline import metadata
    from pipeline.imageio import encode_to, write_atomic
    from PIL import Image
    px = np.asarray(Image.open(STORM).convert("RGB").resize((4000, 3000), Image.BICUBIC), np.uint16) * 257
    edit = metadata.EditRecord("neurop", "1", "0" * 64, ("bc", "ex", "vb"), (0.1, -0.2, 0.3), "run", "img", "1" * 64)
    source, _ = metadata.read_source(STORM)
    meta = metadata.OutputMetadata.build(source, edit, fmt, 4000, 3000, metadata.software()) if how != "none" else None
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    times = []
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "out")
        for _ in range(REPEATS):
            t = time.perf_counter()
            if how == "exiv2-rewrite":  # the whole TIFF through exiv2 after it is written
                write_atomic(path, lambda f: encode_to(f, px, fmt, metadata=None))
                image = metadata._exiv2().ImageFactory.open(path)
                image.readMetadata()
                image.setExifData(meta.exif)
                image.setXmpData(meta.xmp)
                image.writeMetadata()
            else:
                write_atomic(path, lambda f: encode_to(f, px, fmt, metadata=meta))
            times.append(time.perf_counter() - t)
    return statistics.median(times), (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) / 1024


def main() -> None:
    if len(sys.argv) == 3:
        seconds, mib = variant(sys.argv[1], sys.argv[2])
        print(f"{seconds:.3f} {mib:.0f}")
        return
    rows = [("tiff16", "none"), ("tiff16", "metadata"), ("tiff16", "exiv2-rewrite"), ("jpeg", "none"),
            ("jpeg", "metadata"), ("png", "none"), ("png", "metadata")]
    print(f"# 12 MP output (Storm.jpg upscaled) encoded + written, median of {REPEATS}; metadata of {os.path.basename(STORM)} + edit record")
    print(f"# {os.cpu_count()} cores; command: python benchmarks/metadata_cost.py")
    print(f"{'format':8} {'metadata':15} {'seconds':>8} {'peak MiB':>9}")
    for fmt, how in rows:
        out = subprocess.run([sys.executable, __file__, fmt, how], capture_output=True, text=True, check=True)
        seconds, mib = out.stdout.split()
        print(f"{fmt:8} {how:15} {float(seconds):8.3f} {float(mib):9.0f}")


if __name__ == "__main__":
    main()
