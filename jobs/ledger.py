"""The ledger: an append-only, hive-partitioned Parquet dataset, one row per image per run.

Layout: ``<ledger>/run_id=<run>/part-<seq>-<uuid>.parquet``, one part file per flushed batch, never rewritten.
A part file is written under a temporary name and renamed, so a reader never sees a truncated ``.parquet``.
``compact`` merges a run's parts into one ``compact-<seq>-<uuid>.parquet`` that names the parts it replaces.
``run_id`` lives in the partition path only (pyarrow and DuckDB add it back when reading with hive partitioning).
"""
from __future__ import annotations

import json
import os
import time
import uuid
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field, fields
from datetime import datetime, timezone
from pathlib import Path

import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.parquet as pq

SCHEMA_VERSION = "1"
STATUSES = ("ok", "error", "skipped")
RUNS_DIR = "_runs"  # run records (JSON): settings, started/finished; not part of the Parquet dataset
# a ledger is many small part files: pre-buffering each one's column chunks costs more than it saves
# (3,000 parts of 33 rows: 7.9 s to read with it, 4.9 s without; benchmarks/ledger-scale.txt)
PART_FORMAT = pads.ParquetFileFormat(default_fragment_scan_options=pads.ParquetFragmentScanOptions(pre_buffer=False))


@dataclass
class LedgerRow:
    image_id: str
    source_path: str
    status: str  # ok / error / skipped
    run_id: str = ""
    source_sha256: str | None = None
    output_path: str | None = None
    output_sha256: str | None = None
    model: str | None = None
    model_version: str | None = None
    weights_sha256: str | None = None
    operators: list[str] = field(default_factory=list)
    strengths: list[float] = field(default_factory=list)
    error: str | None = None
    created_at: datetime | None = None
    width: int | None = None
    height: int | None = None
    output_format: str | None = None
    render_settings: str | None = None  # JSON of everything besides the strengths that changes the output bytes
    parent_run_id: str | None = None  # rerender: the run whose strengths were replayed
    command: str = "run"  # run / rerender
    attempts: int = 1
    seconds: float | None = None
    timings: str | None = None  # JSON {stage: seconds}
    prediction: str | None = None  # JSON of what a retoucher's prediction recorded besides the strengths
    warning: str | None = None  # an ok image's problem that lost nothing of the image (unreadable metadata)


SCHEMA = pa.schema([
    ("image_id", pa.string()), ("source_path", pa.string()), ("status", pa.string()),
    ("source_sha256", pa.string()), ("output_path", pa.string()), ("output_sha256", pa.string()),
    ("model", pa.string()), ("model_version", pa.string()), ("weights_sha256", pa.string()),
    ("operators", pa.list_(pa.string())), ("strengths", pa.list_(pa.float64())), ("error", pa.string()),
    ("created_at", pa.timestamp("us", tz="UTC")), ("width", pa.int64()), ("height", pa.int64()),
    ("output_format", pa.string()), ("render_settings", pa.string()), ("parent_run_id", pa.string()),
    ("command", pa.string()), ("attempts", pa.int64()), ("seconds", pa.float64()), ("timings", pa.string()),
    ("prediction", pa.string()), ("warning", pa.string()),
], metadata={"ledger_schema_version": SCHEMA_VERSION, "writer": "retouch-batch"})

assert [f.name for f in fields(LedgerRow) if f.name != "run_id"] == SCHEMA.names


def now() -> datetime:
    return datetime.now(timezone.utc)


def new_run_id() -> str:
    return datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S") + "-" + uuid.uuid4().hex[:6]


class LedgerWriter:
    """Buffers rows of one run and writes them as part files: after ``flush_rows`` rows, but at most one file per
    ``min_flush_seconds`` (a fast job would otherwise write a file per few dozen images: 10^7 images, 300k files),
    and after ``flush_seconds`` at the latest. A crash loses at most the buffered rows; their images are redone."""

    def __init__(self, root: str | os.PathLike, run_id: str, flush_rows: int = 32, flush_seconds: float = 10.0,
                 min_flush_seconds: float = 5.0):
        self.root = Path(root)
        self.run_id = run_id
        self.dir = self.root / f"run_id={run_id}"
        self.flush_rows = flush_rows
        self.flush_seconds = flush_seconds
        self.min_flush_seconds = min_flush_seconds
        self.buffer: list[LedgerRow] = []
        self.last_flush = time.monotonic()
        self.rows_written = 0

    def add(self, row: LedgerRow) -> None:
        row.run_id = self.run_id
        self.buffer.append(row)
        waited = time.monotonic() - self.last_flush
        if waited >= self.flush_seconds or (len(self.buffer) >= self.flush_rows and waited >= self.min_flush_seconds):
            self.flush()

    def flush(self) -> None:
        self.last_flush = time.monotonic()
        if not self.buffer:
            return
        rows, self.buffer = self.buffer, []
        table = rows_to_table(rows)
        self.dir.mkdir(parents=True, exist_ok=True)
        name = f"part-{time.time_ns():020d}-{uuid.uuid4().hex[:8]}.parquet"
        tmp = self.dir / f".{name}.tmp"
        pq.write_table(table, tmp, compression="zstd")
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, self.dir / name)
        self.rows_written += len(rows)


def rows_to_table(rows: list[LedgerRow]) -> pa.Table:
    cols = {name: [] for name in SCHEMA.names}
    for r in rows:
        d = asdict(r)
        for name in SCHEMA.names:
            cols[name].append(d[name])
    return pa.table(cols, schema=SCHEMA)


COMPACT_PREFIX = "compact-"
COMPACT_ROW_GROUP = 1 << 16
REPLACES_KEY = b"replaces"  # a compacted file's key/value metadata: the names of the part files it holds


def ledger_files(root: str | os.PathLike) -> list[Path]:
    """The ledger's live part files: temporary and hidden files, and parts that a compacted file replaces (left
    behind if compaction was interrupted before it removed them), are not part of it."""
    files = sorted(p for p in Path(root).glob("run_id=*/*.parquet") if not p.name.startswith("."))
    replaced = set()
    for p in files:
        if p.name.startswith(COMPACT_PREFIX):
            names = json.loads((pq.read_schema(p).metadata or {}).get(REPLACES_KEY, b"[]"))
            replaced.update(p.parent / n for n in names)
    return [p for p in files if p not in replaced]


def read_table(root: str | os.PathLike, columns: list[str] | None = None, dictionary: tuple[str, ...] = ()
               ) -> pa.Table:
    """The ledger as one Arrow table (``run_id`` included), only ``columns`` if given: for readers that summarize
    millions of rows without making a Python object of each. ``dictionary``: string columns with few distinct values
    (settings, hashes of weights) read dictionary-encoded, held once instead of once per row."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: no ledger here (expected a folder of run_id=... partitions)")
    schema = SCHEMA.append(pa.field("run_id", pa.string()))
    files = [str(p) for p in ledger_files(root)]
    if not files:
        return schema.empty_table().select(columns) if columns else schema.empty_table()
    # parts written before a column was added lack it: read under today's schema, which fills it with nulls (and
    # spares reading every footer twice, which dominates for tens of thousands of small parts)
    fmt = PART_FORMAT if not dictionary else pads.ParquetFileFormat(
        read_options={"dictionary_columns": list(dictionary)},
        default_fragment_scan_options=PART_FORMAT.default_fragment_scan_options)
    if dictionary:
        schema = pa.schema([pa.field(f.name, pa.dictionary(pa.int32(), f.type)) if f.name in dictionary else f
                            for f in schema], metadata=schema.metadata)
    dataset = pads.dataset(files, schema=schema, format=fmt, partitioning="hive", partition_base_dir=str(root))
    return dataset.to_table(columns=columns)


def read_ledger(root: str | os.PathLike) -> list[LedgerRow]:
    """Every row of a ledger dataset (temporary and hidden files ignored), oldest first."""
    table = read_table(root)
    if table.num_rows == 0:
        return []
    rows = _records(table)
    rows.sort(key=lambda r: (r.created_at or datetime.min.replace(tzinfo=timezone.utc)))
    return rows


@dataclass
class Compaction:
    run_id: str
    parts: int  # live part files before
    rows: int
    file: str  # the one file that holds them now
    orphans_removed: int = 0


def compact(root: str | os.PathLike, log=print) -> list[Compaction]:
    """Merge each run's part files into one file, without losing or changing a row.

    The new file is written under a temporary name, fsynced, checked (row count) and renamed into place; it names the
    parts it replaces in its metadata, so readers skip them from that moment. Only then are they removed. An
    interrupted compaction leaves either nothing or replaced parts that readers ignore and the next one removes.
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: no ledger here (expected a folder of run_id=... partitions)")
    done = []
    live_all = set(ledger_files(root))
    for d in sorted(p for p in root.glob("run_id=*") if p.is_dir()):
        present = sorted(p for p in d.glob("*.parquet") if not p.name.startswith("."))
        orphans = [p for p in present if p not in live_all]
        for p in orphans:  # a former compaction's leftovers, already held by its file
            p.unlink()
        live = [p for p in present if p in live_all]
        if len(live) < 2:
            if orphans:
                _fsync_dir(d)
                done.append(Compaction(d.name.split("=", 1)[1], len(live), -1, str(live[0]) if live else "",
                                       len(orphans)))
            continue
        # one chunk per column: writing 30,000 chunks costs twice as long as joining them first
        table = pads.dataset([str(p) for p in live], schema=SCHEMA, format=PART_FORMAT).to_table().combine_chunks()
        meta = dict(SCHEMA.metadata or {})
        meta[REPLACES_KEY] = json.dumps([p.name for p in live]).encode()
        name = f"{COMPACT_PREFIX}{time.time_ns():020d}-{uuid.uuid4().hex[:8]}.parquet"
        tmp = d / f".{name}.tmp"
        # row groups of 64k rows: readers (resume, audit) decode a compacted file a bounded piece at a time
        pq.write_table(table.replace_schema_metadata(meta), tmp, compression="zstd", row_group_size=COMPACT_ROW_GROUP)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        if pq.read_metadata(tmp).num_rows != table.num_rows:
            tmp.unlink()
            raise RuntimeError(f"{d}: compacted file does not hold every row; nothing was changed")
        os.replace(tmp, d / name)
        _fsync_dir(d)  # the new file is durable before any part it replaces goes
        for p in live:
            p.unlink()
        _fsync_dir(d)
        c = Compaction(d.name.split("=", 1)[1], len(live), table.num_rows, str(d / name), len(orphans))
        log(f"run {c.run_id}: {c.parts} part files -> 1 ({c.rows} rows)")
        done.append(c)
    return done


def _fsync_dir(d: Path) -> None:
    fd = os.open(d, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class LedgerIndex:
    """The newest row per image (among some statuses, in one run or all), held as Arrow columns and looked up a
    batch of images at a time: resuming a job of millions of images makes Python objects of one batch's rows only.
    It holds what deciding to skip an image needs (``COLUMNS``); ``created_at`` and ``run_id`` only choose rows."""

    COLUMNS = ("image_id", "source_path", "status", "source_sha256", "output_path", "output_sha256", "weights_sha256",
               "strengths", "error", "width", "height", "render_settings")
    DICTIONARY = ("render_settings", "weights_sha256", "status")

    def __init__(self, table: pa.Table):
        self.table = table  # one row per image_id
        self.ids = table.column("image_id").combine_chunks() if table.num_rows else pa.array([], pa.string())

    @classmethod
    def read(cls, root: str | os.PathLike) -> pa.Table:
        """The ledger's columns an index needs (an empty table where there is no ledger yet)."""
        columns = [*cls.COLUMNS, "created_at", "run_id"]
        if not Path(root).is_dir():
            return SCHEMA.append(pa.field("run_id", pa.string())).empty_table().select(columns)
        return read_table(root, columns, dictionary=cls.DICTIONARY)

    @classmethod
    def newest(cls, table: pa.Table, statuses: tuple[str, ...] = STATUSES, run_id: str | None = None,
               columns: tuple[str, ...] = COLUMNS) -> "LedgerIndex":
        """From a table of ``read``: the newest row per image among rows of ``statuses`` (and of ``run_id``).
        The rows are chosen on a few columns and taken once (no copy at all when every row is its image's newest)."""
        import numpy as np
        import pyarrow.compute as pc
        if not table.num_rows:
            return cls(table.select(list(columns)))
        keep = pc.is_in(table.column("status").cast(pa.string()), value_set=pa.array(statuses, pa.string()))
        if run_id is not None:
            keep = pc.and_(keep, pc.equal(table.column("run_id").cast(pa.string()), run_id))
        chosen = np.flatnonzero(keep.to_numpy(zero_copy_only=False))
        times = table.column("created_at").cast(pa.int64()).fill_null(np.iinfo(np.int64).min).to_numpy()[chosen]
        # newest first (equal times: the later row first, as read_ledger's order leaves it last), then each
        # image's first row
        ranked = chosen[np.argsort(times, kind="stable")[::-1]]
        codes = table.column("image_id").take(pa.array(ranked)).combine_chunks().dictionary_encode().indices
        newest = np.sort(ranked[np.unique(codes.to_numpy(), return_index=True)[1]])
        table = table.select(list(columns))
        if len(newest) == table.num_rows:  # every row is its image's newest: nothing to copy
            return cls(table)
        return cls(table.take(pa.array(newest)))

    def __len__(self) -> int:
        return self.table.num_rows

    def __contains__(self, image_id: object) -> bool:
        return isinstance(image_id, str) and bool(self.contains([image_id])[0])

    def batches(self, size: int = 10_000) -> Iterator[list[LedgerRow]]:
        """Every row as records, ``size`` at a time, in the index's order."""
        for start in range(0, len(self), size):
            yield _records(self.table.slice(start, size))

    def contains(self, image_ids: list[str]):
        """Which of ``image_ids`` have a row here: a numpy bool array."""
        import pyarrow.compute as pc
        return pc.is_in(pa.array(image_ids, pa.string()), value_set=self.ids).to_numpy(zero_copy_only=False)

    def rows(self, image_ids: list[str]) -> dict[str, LedgerRow]:
        """The rows of those of ``image_ids`` that have one, as records."""
        import pyarrow.compute as pc
        if not len(self):
            return {}
        at = pc.index_in(pa.array(image_ids, pa.string()), value_set=self.ids).drop_null()
        return {r.image_id: r for r in _records(self.table.take(at))}

    def counts(self) -> dict[str, int]:
        """Rows per status."""
        import pyarrow.compute as pc
        if not len(self):
            return {}
        return {d["values"]: d["counts"] for d in pc.value_counts(self.table.column("status").cast(pa.string()))
                .to_pylist()}

    def errors(self) -> list[LedgerRow]:
        import pyarrow.compute as pc
        if not len(self):
            return []
        return _records(self.table.filter(pc.equal(self.table.column("status").cast(pa.string()), "error")))


def _records(table: pa.Table) -> list[LedgerRow]:
    """Rows as records, column by column (a third of the time of Arrow's row dicts)."""
    names = [n for n in table.column_names if n in _ROW_FIELDS]
    columns = [table.column(n).to_pylist() for n in names]
    rows = [LedgerRow(**dict(zip(names, values))) for values in zip(*columns)]
    for r in rows:
        r.run_id = str(r.run_id)
        r.operators = list(r.operators or [])
        r.strengths = list(r.strengths or [])
    return rows


_ROW_FIELDS = {f.name for f in fields(LedgerRow)}


def latest_by_image(rows: list[LedgerRow], statuses: tuple[str, ...] = STATUSES) -> dict[str, LedgerRow]:
    """Newest row per image_id among rows whose status is in ``statuses``."""
    out: dict[str, LedgerRow] = {}
    for r in rows:  # oldest first
        if r.status in statuses:
            out[r.image_id] = r
    return out


# ------------------------------------------------------------------------------------------------ run records

@dataclass
class RunRecord:
    run_id: str
    command: str
    settings_key: str  # sha256 of what defines the job: manifest content, model, render settings
    started_at: str
    images: int
    finished_at: str | None = None
    parent_run_id: str | None = None
    weights_path: str | None = None
    weights_sha256: str | None = None
    out: str | None = None


def write_run_record(root: str | os.PathLike, rec: RunRecord) -> None:
    d = Path(root) / RUNS_DIR
    d.mkdir(parents=True, exist_ok=True)
    tmp = d / f".{rec.run_id}.json.tmp"
    tmp.write_text(json.dumps(asdict(rec), indent=1))
    os.replace(tmp, d / f"{rec.run_id}.json")


def read_run_records(root: str | os.PathLike) -> list[RunRecord]:
    d = Path(root) / RUNS_DIR
    out = []
    for p in sorted(d.glob("*.json")) if d.is_dir() else []:
        try:
            out.append(RunRecord(**json.loads(p.read_text())))
        except (ValueError, TypeError):
            continue  # a record from an interrupted write is ignored, not fatal
    return sorted(out, key=lambda r: r.started_at)
