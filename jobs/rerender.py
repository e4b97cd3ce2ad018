"""`retouch-batch rerender`: replay a ledger's strengths, adjusted by the user, without re-predicting them."""
from __future__ import annotations

import csv
import math
import os
from collections.abc import Container
from dataclasses import dataclass, replace

import pyarrow as pa

from pipeline.checkpoint import CheckpointError, load_checkpoint
from pipeline.models import DEFAULT_RANGE, parameter_ranges

from .ledger import LedgerIndex, LedgerRow, RunRecord, new_run_id, now, read_run_records, read_table
from .lock import OutputLock
from .run import JobOptions, JobResult, launch, remove_stale_temporaries
from .worker import ImageTask, RenderSettings



class EditError(ValueError):
    pass


@dataclass(frozen=True)
class StrengthEdits:
    set: dict[str, float]
    shift: dict[str, float]
    per_image: dict[str, dict[str, float]]  # image_id -> {operator: value} from an edits file
    ranges: dict[str, tuple[float, float]]  # operator -> the retoucher's declared range; results are clipped to it

    def apply(self, image_id: str, operators: list[str], strengths: list[float]) -> list[float]:
        out = []
        for op, v in zip(operators, strengths):
            v = self.per_image.get(image_id, {}).get(op, self.set.get(op, v))
            v += self.shift.get(op, 0.0)
            lo, hi = self.ranges.get(op, DEFAULT_RANGE)
            out.append(min(max(v, lo), hi))
        return out


def parse_assignments(items: tuple[str, ...], what: str, operators: list[str],
                      ranges: dict[str, tuple[float, float]] | None = None) -> dict[str, float]:
    out = {}
    for item in items:
        if "=" not in item:
            raise EditError(f"{what} {item!r}: expected OP=VALUE")
        op, _, value = item.partition("=")
        op = op.strip()
        out[op] = _number(value, f"{what} {item!r}")
        _check_operator(op, operators, f"{what} {item!r}")
        if what == "--set":
            _check_range(out[op], f"{what} {item!r}", (ranges or {}).get(op, DEFAULT_RANGE))
    return out


def _number(text: str, where: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise EditError(f"{where}: {text.strip()!r} is not a number") from None
    if not math.isfinite(v):
        raise EditError(f"{where}: {text.strip()!r} is not a finite number")
    return v


def _check_operator(op: str, operators: list[str], where: str) -> None:
    if op not in operators:
        raise EditError(f"{where}: unknown operator {op!r}; this ledger's operators are {', '.join(operators)}")


def _check_range(v: float, where: str, limits: tuple[float, float] = DEFAULT_RANGE) -> None:
    lo, hi = limits
    if not lo <= v <= hi:
        raise EditError(f"{where}: {v} is outside the strength range [{lo}, {hi}]")


def read_edits_file(path: str, operators: list[str], image_ids: Container[str],
                    ranges: dict[str, tuple[float, float]] | None = None) -> dict[str, dict[str, float]]:
    """An edits CSV: an image_id column plus one column per operator (blank = keep the ledger's value)."""
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            cols = [c.strip() for c in reader.fieldnames or []]
            rows = list(reader)
    except OSError as e:
        raise EditError(f"{path}: cannot read edits file ({e.strerror})") from None
    if "image_id" not in cols:
        raise EditError(f"{path}: no 'image_id' column")
    for c in cols:
        if c != "image_id":
            _check_operator(c, operators, f"{path}: column")
    out: dict[str, dict[str, float]] = {}
    for line, r in enumerate(rows, start=2):
        image_id = (r.get("image_id") or "").strip()
        if image_id not in image_ids:
            raise EditError(f"{path}: line {line}: image_id {image_id!r} is not in the ledger")
        if image_id in out:
            raise EditError(f"{path}: line {line}: image_id {image_id!r} appears twice")
        vals = {}
        for op in cols:
            if op != "image_id" and (r.get(op) or "").strip():
                vals[op] = _number(r[op], f"{path}: line {line}, {op}")
                _check_range(vals[op], f"{path}: line {line}, {op}", (ranges or {}).get(op, DEFAULT_RANGE))
        out[image_id] = vals
    return out


# what re-rendering needs of each image's newest ok row
SOURCE_COLUMNS = ("image_id", "source_path", "status", "output_path", "weights_sha256", "model", "operators",
                  "strengths", "render_settings", "command", "run_id")


def source_index(ledger: str, run_id: str | None = None) -> LedgerIndex:
    """The newest ok or skipped row per image (of run ``run_id`` if given), as Arrow columns: a re-render of
    millions of images makes records of one batch at a time."""
    import pyarrow.compute as pc
    table = read_table(ledger, [*SOURCE_COLUMNS, "created_at"], dictionary=LedgerIndex.DICTIONARY + ("model",
                                                                                                       "command"))
    if run_id and not pc.any(pc.equal(table.column("run_id"), run_id)).as_py():
        raise EditError(f"{ledger}: no rows for run {run_id}")
    index = LedgerIndex.newest(table, ("ok", "skipped"), run_id=run_id, columns=SOURCE_COLUMNS)
    if not len(index):
        raise EditError(f"{ledger}: no successfully rendered images to re-render")
    return index


def source_rows(ledger: str, run_id: str | None = None) -> list[LedgerRow]:
    return [r for batch in source_index(ledger, run_id).batches() for r in batch]


def rerender_job(ledger: str, opts: JobOptions, set_ops: tuple[str, ...] = (), shift_ops: tuple[str, ...] = (),
                 edits_file: str | None = None, run_id: str | None = None, output_format: str | None = None,
                 log=print) -> JobResult:
    import pyarrow.compute as pc
    ledger = os.path.abspath(ledger)
    index = source_index(ledger, run_id)
    weights = pc.unique(index.table.column("weights_sha256").cast(pa.string())).to_pylist()
    if len(weights) > 1:
        raise EditError(f"{ledger}: images were rendered with {len(weights)} different weights; "
                        "re-render one run at a time with --run RUN_ID")
    first = next(index.batches(1))[0]
    operators = list(first.operators)
    ranges = parameter_ranges(first.model, operators)
    edits = StrengthEdits(parse_assignments(set_ops, "--set", operators, ranges),
                          parse_assignments(shift_ops, "--shift", operators),
                          read_edits_file(edits_file, operators, index, ranges) if edits_file else {}, ranges)
    records = {r.run_id: r for r in read_run_records(ledger)}
    loaded = find_weights(opts.weights, first.weights_sha256, records, first.model)
    settings = RenderSettings.from_json(first.render_settings) if first.render_settings else RenderSettings()
    if output_format:
        settings = replace(settings, output_format=output_format)
    opts = replace(opts, settings=settings)
    out = os.path.abspath(opts.out)
    os.makedirs(out, exist_ok=True)
    from pipeline.imageio import OUTPUT_FORMATS

    def tasks():
        for batch in index.batches():
            for r in batch:
                rec = records.get(r.run_id)
                rel = os.path.relpath(r.output_path, rec.out) if rec and rec.out and r.output_path else \
                    os.path.basename(r.output_path or r.source_path)
                rel = os.path.splitext(rel)[0] + OUTPUT_FORMATS[settings.output_format]
                strengths = edits.apply(r.image_id, operators, list(r.strengths))
                # unchanged strengths keep their run in the output's edit record: the re-render is then
                # byte-identical
                yield ImageTask(r.image_id, r.source_path, os.path.join(out, rel), strengths=strengths,
                                parent_run_id=r.run_id, command="rerender", overwrite=True,
                                strengths_run_id=_strengths_run(r) if strengths == list(r.strengths) else None)
    parents = sorted(pc.unique(index.table.column("run_id").cast(pa.string())).to_pylist())
    with OutputLock(out):
        remove_stale_temporaries(out)
        ledger_out = os.path.abspath(opts.ledger_dir)
        new_id = new_run_id()
        rec = RunRecord(new_id, "rerender", "", now().isoformat(), len(index), parent_run_id=",".join(parents),
                        weights_path=loaded.weights_path, weights_sha256=loaded.weights_sha256, out=out)
        outcome = launch(tasks(), loaded.weights_path, opts, rec, ledger_out, log, total=len(index))
    return JobResult(new_id, outcome, False, ledger_out, [])


def _strengths_run(row: LedgerRow) -> str:
    """The run whose strengths ``row`` holds: a run's own; for a skipped row or a re-render's, the run its output's
    edit record names (the run that wrote the output it kept, or the one a re-render replayed unchanged)."""
    if (row.command != "rerender" and row.status != "skipped") or not row.output_path:
        return row.run_id
    from pipeline.metadata import read_edit_run
    return read_edit_run(row.output_path) or row.run_id


def find_weights(explicit: str | None, sha: str, records: dict[str, RunRecord], model: str | None = None):
    """The weights the ledger's strengths were made for: --weights, the path the run recorded, or the shipped
    weights of the ledger's model (or of the default model)."""
    candidates = [explicit] if explicit else [r.weights_path for r in records.values() if r.weights_sha256 == sha]
    candidates = [(c, None) for c in candidates if c]
    if not explicit:
        candidates += [(None, model)] if model else []
        candidates += [(None, None)]
    for path, name in candidates:
        try:
            loaded = load_checkpoint(path, model=name)
        except (CheckpointError, KeyError, ValueError):
            continue
        if loaded.weights_sha256 == sha:
            return loaded
    if explicit:
        raise EditError(f"{explicit}: these weights (sha256 differs) are not the ones the ledger's strengths were "
                        f"made with ({sha[:12]}...)")
    raise EditError(f"cannot find the weights with sha256 {sha[:12]}... that this ledger used; pass --weights")
