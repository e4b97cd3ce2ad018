"""A big ledger: N rows in P part files (as a long job flushing small batches leaves them), then `ledger compact`,
reading it back, and `audit`, each timed.

    python benchmarks/ledger_scale.py --rows 1000000 --parts 30000 > benchmarks/ledger-scale.txt
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def build(root: Path, rows: int, parts: int, run_id: str = "20261203T000000-bench", ids: list[str] | None = None
          ) -> None:
    """The rows of one run (image ids ``ids``), written as ``parts`` part files the way LedgerWriter writes them."""
    from jobs.ledger import SCHEMA
    rng = np.random.default_rng(0)
    ids = ids or [f"archive/{i:08d}.dng" for i in range(rows)]
    strengths = rng.normal(0, 0.25, (rows, 3)).clip(-1, 1)
    now = np.datetime64("2026-12-03T00:00:00", "us") + np.arange(rows).astype("timedelta64[ms]")
    table = pa.table({
        "image_id": ids, "source_path": ["/data/" + i for i in ids], "status": ["ok"] * rows,
        "source_sha256": [f"{i:064x}" for i in range(rows)], "output_path": ["/out/" + i + ".tif" for i in ids],
        "output_sha256": [f"{i + 7:064x}" for i in range(rows)], "model": ["neurop"] * rows,
        "model_version": ["1"] * rows, "weights_sha256": ["9c" * 32] * rows,
        "operators": [["bc", "ex", "vb"]] * rows, "strengths": strengths.tolist(), "error": [None] * rows,
        "created_at": pa.array(now, pa.timestamp("us", tz="UTC")), "width": [6000] * rows, "height": [4000] * rows,
        "output_format": ["tiff16"] * rows, "render_settings": ['{"output_format": "tiff16"}'] * rows,
        "parent_run_id": [None] * rows, "command": ["run"] * rows, "attempts": [1] * rows,
        "seconds": rng.uniform(0.5, 2, rows), "timings": ['{"decode": 0.3}'] * rows, "prediction": [None] * rows,
        "warning": [None] * rows}, schema=SCHEMA)
    d = root / f"run_id={run_id}"
    d.mkdir(parents=True)
    bounds = np.linspace(0, rows, parts + 1).astype(int)
    for k in range(parts):
        pq.write_table(table.slice(bounds[k], bounds[k + 1] - bounds[k]), d / f"part-{k:020d}-bench.parquet",
                       compression="zstd")
    from jobs.ledger import RunRecord, write_run_record
    write_run_record(root, RunRecord(run_id, "run", "", "2026-12-03T00:00:00+00:00", rows,
                                     finished_at="2026-12-03T01:00:00+00:00"))


def timed(fn):
    t = time.perf_counter()
    out = fn()
    return time.perf_counter() - t, out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--parts", type=int, default=30_000)
    args = ap.parse_args()
    from jobs.audit import audit
    from jobs.ledger import compact, ledger_files, read_ledger
    with tempfile.TemporaryDirectory() as d:
        root = Path(d) / "ledger"
        made, _ = timed(lambda: build(root, args.rows, args.parts))
        size = sum(p.stat().st_size for p in root.rglob("*.parquet"))
        print(f"# python benchmarks/ledger_scale.py --rows {args.rows} --parts {args.parts}; {os.cpu_count()} cores")
        print(f"ledger of {args.rows} rows in {len(ledger_files(root))} part files ({size / 1e6:.0f} MB) "
              f"written in {made:.1f} s")
        before, _ = timed(lambda: audit(str(root)))
        print(f"audit before compaction: {before:.1f} s")
        seconds, done = timed(lambda: compact(root, log=lambda m: None))
        size = sum(p.stat().st_size for p in root.rglob("*.parquet"))
        print(f"ledger compact: {seconds:.1f} s -> {len(ledger_files(root))} file ({size / 1e6:.0f} MB), "
              f"{done[0].rows} rows")
        seconds, rows = timed(lambda: read_ledger(root))
        assert len(rows) == args.rows
        print(f"read_ledger (every row as a LedgerRow) after compaction: {seconds:.1f} s")
        seconds, report = timed(lambda: audit(str(root)))
        print(f"audit after compaction: {seconds:.1f} s "
              f"({json.dumps({k: report.runs[0].strengths[k].n for k in report.runs[0].strengths})} values)")


if __name__ == "__main__":
    main()
