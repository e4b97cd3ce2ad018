"""A huge manifest, fed the way `retouch-batch run` feeds its workers: validated in one streamed pass, then turned
into tasks a batch at a time (no worker runs: this measures the driver). Each size runs in a fresh process; its
peak memory (VmHWM) is the driver's.

    python benchmarks/manifest_scale.py --rows 100000,1000000,3000000 [--resume] > benchmarks/manifest-scale.txt

``--resume``: the output folder's ledger already holds a finished earlier run of every image (as `ledger_scale.py`
builds it, compacted), so every task carries its previous row - the resume lookups included.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def write_csv(path: Path, rows: int) -> None:
    """Paths as a camera archive names them: a folder per 1,000 frames, every tenth frame a RAW beside its JPEG."""
    with open(path, "w") as f:
        f.write("path\n")
        for i in range(rows):
            f.write(f"archive/{i // 1000:05d}/IMG_{i:08d}.{'dng' if i % 10 == 0 else 'jpg'}\n")


def measure(manifest: str, out: str) -> dict:
    """In this process: validate, then draw every task as the executor would."""
    from jobs.ledger import LedgerIndex
    from jobs.run import image_tasks
    from manifests.manifest import load_manifest
    t0 = time.perf_counter()
    m = load_manifest(manifest, out)
    validated = time.perf_counter() - t0
    table = LedgerIndex.read(os.path.join(out, "ledger"))
    previous = LedgerIndex.newest(table, ("ok", "skipped"))
    done = LedgerIndex.newest(table.slice(0, 0))
    del table
    indexed = time.perf_counter() - t0
    tasks = image_tasks(m, out, previous, done, overwrite=False)
    first = next(tasks)
    first_task = time.perf_counter() - t0
    n, with_previous = 1, int(first.previous is not None)
    for t in tasks:
        n += 1
        with_previous += t.previous is not None
    return {"rows": m.rows, "tasks": n, "with_previous": with_previous, "validated_s": round(validated, 2),
            "ledger_index_s": round(indexed - validated, 2), "first_task_s": round(first_task, 2),
            "all_tasks_s": round(time.perf_counter() - t0, 2),
            "peak_rss_mb": peak_rss_mb()}


def peak_rss_mb() -> int:
    """This process's peak resident memory (VmHWM: unlike ru_maxrss, not inherited from the parent across exec)."""
    with open("/proc/self/status") as f:
        return round(int(next(line for line in f if line.startswith("VmHWM:")).split()[1]) / 1024)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", default="100000,1000000")
    ap.add_argument("--resume", action="store_true")
    ap.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        print(json.dumps(measure(*a.child)))
        return
    print(f"# python benchmarks/manifest_scale.py --rows {a.rows}{' --resume' if a.resume else ''}")
    for rows in [int(x) for x in a.rows.split(",")]:
        with tempfile.TemporaryDirectory() as tmp:
            manifest = Path(tmp) / "m.csv"
            write_csv(manifest, rows)
            out = Path(tmp) / "out"
            if a.resume:
                sys.path.insert(0, str(ROOT / "benchmarks"))
                from ledger_scale import build
                from jobs.ledger import compact
                build(out / "ledger", rows, max(1, rows // 1000), ids=[f"archive/{i // 1000:05d}/IMG_{i:08d}."
                                                                      f"{'dng' if i % 10 == 0 else 'jpg'}"
                                                                      for i in range(rows)])
                compact(out / "ledger", log=lambda *_: None)
            r = subprocess.run([sys.executable, __file__, "--child", str(manifest), str(out)], capture_output=True,
                               text=True, check=True)
            res = json.loads(r.stdout)
            print(f"{rows:>9,} rows: validated in {res['validated_s']} s, ledger index {res['ledger_index_s']} s, "
                  f"first task after {res['first_task_s']} s, all {res['tasks']:,} tasks drawn after "
                  f"{res['all_tasks_s']} s ({res['with_previous']:,} with a previous row); "
                  f"driver peak memory {res['peak_rss_mb']} MB", flush=True)


if __name__ == "__main__":
    main()
