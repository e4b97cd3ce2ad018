"""What one job's driver costs per image, with thousands of images in flight: the real executor (`jobs.executor
.execute`: dispatch, wait, retries, ledger writes, progress) against stand-in workers that return a ledger row
after a fixed delay instead of processing an image. The job's rate is then the driver's own limit.

    python benchmarks/driver_scale.py [--images 20000] [--actors 8] [--held 200] [--delay 0.2]
        > benchmarks/driver-scale.txt

--actors x --held images in flight (8 x 200 stands for 1,600 one-image workers: 100 nodes of 16 cores). Also
prints the sizes of what travels per image (a task, a ledger row) and the ledger part files the job wrote.
"""
from __future__ import annotations

import argparse
import os
import pickle
import resource
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


class StandInWorker:
    """The actor's interface (jobs.executor._Worker) without a model: a row after ``delay`` seconds."""

    def __init__(self, config):
        self.config = config

    def ready(self) -> bool:
        return True

    def process_many(self, tasks):
        return [self.process(t) for t in tasks]

    def process(self, task):
        import json
        from jobs.ledger import LedgerRow, now
        time.sleep(float(os.environ.get("STAND_IN_DELAY", "0.2")))
        return LedgerRow(image_id=task.image_id, source_path=task.source, status="ok", output_path=task.output,
                         source_sha256="ab" * 32, output_sha256="cd" * 32, model="neurop", model_version="1",
                         weights_sha256="9c" * 32, operators=["bc", "ex", "vb"], strengths=[0.1, -0.2, 0.3],
                         created_at=now(), width=6000, height=4000, output_format="tiff16",
                         render_settings=self.config.settings.to_json(),
                         seconds=float(os.environ.get("STAND_IN_DELAY", "0.2")),
                         timings=json.dumps({"hash": 0.1, "decode": 0.3, "predict": 0.02, "prepare": 0.01,
                                             "apply": 0.2, "encode": 0.3, "write": 0.1}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=20000)
    ap.add_argument("--actors", type=int, default=8)
    ap.add_argument("--held", type=int, default=200)
    ap.add_argument("--delay", type=float, default=0.2)
    a = ap.parse_args()
    os.environ["STAND_IN_DELAY"] = str(a.delay)
    import ray
    import jobs.executor as executor
    from jobs.cluster import Placement, connect
    from jobs.ledger import LedgerWriter, ledger_files
    from jobs.progress import Progress
    from jobs.worker import ImageTask, RenderSettings, WorkerConfig
    executor._Worker = StandInWorker
    connect(None)
    placement = Placement(workers=a.actors, gpus_per_worker=0, cpus_per_worker=0.01, threads_per_worker=1,
                          device="cpu", images_per_worker=a.held)
    config = WorkerConfig(weights=None, settings=RenderSettings())
    tasks = (ImageTask(f"archive/{i:08d}.dng", f"/data/archive/{i:08d}.dng", f"/out/archive/{i:08d}.tif")
             for i in range(a.images))
    sample = ImageTask("archive/00000001.dng", "/data/archive/00000001.dng", "/out/archive/00000001.tif")
    os.environ["STAND_IN_DELAY"] = "0"
    row = StandInWorker(config).process(sample)
    os.environ["STAND_IN_DELAY"] = str(a.delay)
    with tempfile.TemporaryDirectory() as d:
        writer = LedgerWriter(d, "bench")
        cpu0 = resource.getrusage(resource.RUSAGE_SELF)
        t0 = time.perf_counter()
        outcome = executor.execute(tasks, a.images, config, placement, writer, Progress(a.images, enabled=False))
        wall = time.perf_counter() - t0
        cpu1 = resource.getrusage(resource.RUSAGE_SELF)
        parts = len(ledger_files(d))
    cpu = (cpu1.ru_utime - cpu0.ru_utime) + (cpu1.ru_stime - cpu0.ru_stime)
    in_flight = a.actors * (a.held + executor.QUEUED_PER_WORKER)
    ceiling = a.actors * a.held / a.delay
    print(f"# python benchmarks/driver_scale.py --images {a.images} --actors {a.actors} --held {a.held} "
          f"--delay {a.delay}; {os.cpu_count()} cores")
    print(f"{outcome.ok} images, up to {in_flight} in flight (stand-ins could do {ceiling:.0f} images/s): "
          f"{outcome.ok / outcome.seconds:.0f} images/s after start-up ({outcome.seconds:.1f} s), "
          f"driver CPU {1e3 * cpu / a.images:.2f} ms per image ({cpu:.1f} s over {wall:.1f} s wall), "
          f"driver peak memory {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB")
    print(f"per image through Ray: a task {len(pickle.dumps(sample))} bytes, a ledger row {len(pickle.dumps(row))} "
          f"bytes (pickled); ledger part files written: {parts} ({a.images / max(1, parts):.0f} rows each)")
    ray.shutdown()


if __name__ == "__main__":
    main()
