"""`retouch-batch audit`: what ran, with which model and strengths, and whether the files still match."""
from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field, replace

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipeline.checkpoint import file_sha256
from pipeline.models import parameter_ranges

from .ledger import LedgerRow, read_ledger, read_run_records, read_table

OUTLIER_Z = 3.5  # robust z-score (median and MAD of the run) beyond which a strength is an outlier (Iglewicz-Hoaglin)
SATURATED = 0.98  # a strength within 1 % of its range's end means the predictor hit that end
MIN_IMAGES_FOR_Z = 5


@dataclass
class OperatorStats:
    n: int
    mean: float
    std: float
    min: float
    max: float


@dataclass
class RunAudit:
    run_id: str
    command: str
    parent_run_id: str | None
    started_at: str | None
    finished: bool | None
    images: int
    ok: int
    error: int
    skipped: int
    models: list[str]
    weights_sha256: list[str]
    strengths: dict[str, OperatorStats]
    outliers: list[dict]


@dataclass
class AuditReport:
    ledger: str
    rows: int
    runs: list[RunAudit]
    verified: bool = False
    checked_outputs: int = 0
    checked_sources: int = 0
    problems: list[dict] = field(default_factory=list)

    @property
    def consistent(self) -> bool:
        return not self.problems

    def to_dict(self) -> dict:
        d = asdict(self)
        d["consistent"] = self.consistent
        return d


@dataclass(frozen=True)
class Outlier:
    index: int  # in the rows given
    image_id: str
    operator: str
    strength: float
    z: float
    why: str  # "saturated" or "|z| >= 3.5"

    def to_dict(self) -> dict:
        return {"image_id": self.image_id, "operator": self.operator, "strength": round(self.strength, 4),
                "z": round(self.z, 2), "why": self.why}


def find_outliers(rows: list[LedgerRow], ranges: dict[str, tuple[float, float]]) -> list[Outlier]:
    """A run's images whose strength hit its range's end, or stands far from the run's others (see
    ``outliers_of``); ``index`` is the row's position in ``rows``."""
    rendered = [(i, r) for i, r in enumerate(rows) if r.status in ("ok", "skipped") and r.strengths]
    if not rendered:
        return []
    operators = list(rendered[0][1].operators)
    rendered = [(i, r) for i, r in rendered if len(r.strengths) == len(operators)]
    found = outliers_of([r.image_id for _, r in rendered], operators,
                        np.array([r.strengths for _, r in rendered], dtype=np.float64), ranges)
    return [replace(o, index=rendered[o.index][0]) for o in found]


def outliers_of(image_ids: list[str], operators: list[str], values: np.ndarray,
                ranges: dict[str, tuple[float, float]]) -> list[Outlier]:
    """Outliers among ``values`` (images x operators). Median and MAD, not mean and standard deviation: the outliers
    themselves would inflate a standard deviation and hide."""
    out = []
    n = values.shape[0]
    for j, op in enumerate(operators):
        v = values[:, j]
        centre = float(np.median(v))
        scale = 1.4826 * float(np.median(np.abs(v - centre))) if n >= MIN_IMAGES_FOR_Z else 0.0
        z = (v - centre) / scale if scale > 1e-9 else np.zeros_like(v)
        lo, hi = ranges.get(op, (-1.0, 1.0))
        saturated = np.abs(v - (lo + hi) / 2) >= SATURATED * (hi - lo) / 2
        for i in np.nonzero(saturated | (np.abs(z) >= OUTLIER_Z))[0]:
            out.append(Outlier(int(i), image_ids[i], op, float(v[i]), float(z[i]),
                               "saturated" if saturated[i] else f"|z| >= {OUTLIER_Z}"))
    return out


AUDIT_COLUMNS = ["run_id", "image_id", "status", "model", "model_version", "weights_sha256", "operators",
                 "strengths", "command", "parent_run_id"]


def _audit_run(run_id: str, t: pa.Table, records: dict) -> RunAudit:
    """One run's summary from its rows as an Arrow table: counts and statistics in Arrow and numpy, so that a
    million rows never become a million Python objects."""
    rec = records.get(run_id)
    status = t["status"]
    count = {s: int(pc.sum(pc.equal(status, s)).as_py() or 0) for s in ("ok", "error", "skipped")}
    rendered = t.filter(pc.and_(pc.is_in(status, pa.array(["ok", "skipped"])),
                                pc.greater(pc.list_value_length(t["strengths"]), 0)))
    stats, outliers = {}, []
    if rendered.num_rows:
        operators = rendered["operators"][0].as_py()
        same = pc.equal(pc.list_value_length(rendered["strengths"]), len(operators))
        rendered = rendered.filter(same)
        values = pc.list_flatten(rendered["strengths"]).to_numpy(zero_copy_only=False).reshape(-1, len(operators))
        for j, op in enumerate(operators):
            v = values[:, j]
            stats[op] = OperatorStats(len(v), round(float(v.mean()), 4),
                                      round(float(v.std(ddof=1)) if len(v) > 1 else 0.0, 4),
                                      round(float(v.min()), 4), round(float(v.max()), 4))
        ranges = parameter_ranges(rendered["model"][0].as_py(), operators)
        outliers = [o.to_dict() for o in outliers_of(rendered["image_id"].to_pylist(), operators, values, ranges)]
    models = sorted(f"{r['model']} v{r['model_version']}" for r in
                    t.select(["model", "model_version"]).group_by(["model", "model_version"]).aggregate([]).to_pylist()
                    if r["model"])
    weights = sorted(w for w in pc.unique(t["weights_sha256"]).to_pylist() if w)
    return RunAudit(run_id, t["command"][0].as_py(), t["parent_run_id"][0].as_py(),
                    rec.started_at if rec else None, (rec.finished_at is not None) if rec else None,
                    int(pc.count_distinct(t["image_id"]).as_py()), count["ok"], count["error"], count["skipped"],
                    models, weights, stats, outliers)


def audit(ledger: str, verify: bool = False) -> AuditReport:
    ledger = os.path.abspath(ledger)
    table = read_table(ledger, AUDIT_COLUMNS)
    records = {r.run_id: r for r in read_run_records(ledger)}
    runs = [_audit_run(run_id, table.filter(pc.equal(table["run_id"], run_id)), records)
            for run_id in pc.unique(table["run_id"]).to_pylist()]
    runs.sort(key=lambda a: a.started_at or "")
    report = AuditReport(ledger, table.num_rows, runs)
    if verify:
        _verify(read_ledger(ledger), report)
    return report


def _verify(rows: list[LedgerRow], report: AuditReport) -> None:
    """Re-hash what the newest row for each output and each source says should be on disk."""
    report.verified = True
    outputs: dict[str, LedgerRow] = {}
    sources: dict[str, LedgerRow] = {}
    for r in rows:  # oldest first: the newest row for a path wins
        if r.status in ("ok", "skipped") and r.output_path:
            outputs[r.output_path] = r
        if r.source_sha256:
            sources[r.source_path] = r
    for path, r in outputs.items():
        report.checked_outputs += 1
        problem = _check(path, r.output_sha256)
        if problem:
            report.problems.append({"kind": "output", "image_id": r.image_id, "path": path, "run_id": r.run_id,
                                    "problem": problem})
    for path, r in sources.items():
        report.checked_sources += 1
        problem = _check(path, r.source_sha256)
        if problem:
            report.problems.append({"kind": "source", "image_id": r.image_id, "path": path, "run_id": r.run_id,
                                    "problem": problem})


def _check(path: str, expected: str | None) -> str | None:
    if not os.path.exists(path):
        return "missing"
    try:
        actual = file_sha256(path)
    except OSError as e:
        return f"unreadable ({e.strerror})"
    return None if actual == expected else "changed (sha256 differs from the ledger)"


def format_report(report: AuditReport) -> str:
    lines = [f"ledger {report.ledger}: {report.rows} rows, {len(report.runs)} run(s)"]
    for a in report.runs:
        state = "" if a.finished in (None, True) else "  UNFINISHED (run the same command again to resume)"
        parent = f" from {a.parent_run_id}" if a.parent_run_id else ""
        lines.append(f"\nrun {a.run_id} ({a.command}{parent}){state}")
        lines.append(f"  images {a.images}: ok {a.ok}, error {a.error}, skipped {a.skipped}")
        lines.append(f"  model {', '.join(a.models) or '-'}; weights {', '.join(w[:16] for w in a.weights_sha256) or '-'}")
        for op, s in a.strengths.items():
            lines.append(f"  {op:>4}: mean {s.mean:+.3f}  std {s.std:.3f}  min {s.min:+.3f}  max {s.max:+.3f}  (n={s.n})")
        for o in a.outliers[:20]:
            lines.append(f"  outlier: {o['image_id']} {o['operator']}={o['strength']:+.3f} ({o['why']})")
        if len(a.outliers) > 20:
            lines.append(f"  ... {len(a.outliers) - 20} more outliers (see --json)")
    if report.verified:
        lines.append(f"\nverified {report.checked_outputs} outputs and {report.checked_sources} sources: "
                     + ("all match the ledger" if report.consistent else f"{len(report.problems)} problem(s)"))
        for p in report.problems:
            lines.append(f"  {p['kind']} {p['path']}: {p['problem']} (image {p['image_id']}, run {p['run_id']})")
    return "\n".join(lines)
