"""`retouch-batch audit`: what ran, with which model and strengths, and whether the files still match."""
from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass, field

from pipeline.checkpoint import file_sha256
from pipeline.models import parameter_ranges

from .ledger import LedgerRow, read_ledger, read_run_records

OUTLIER_Z = 3.0
SATURATED = 0.98  # a strength within 1 % of its range's end means the predictor hit that end


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


def _stats(values: list[float]) -> OperatorStats:
    n = len(values)
    mean = sum(values) / n
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else 0.0
    return OperatorStats(n, round(mean, 4), round(std, 4), round(min(values), 4), round(max(values), 4))


def _audit_run(run_id: str, rows: list[LedgerRow], records: dict) -> RunAudit:
    rec = records.get(run_id)
    count = {s: sum(r.status == s for r in rows) for s in ("ok", "error", "skipped")}
    rendered = [r for r in rows if r.status in ("ok", "skipped") and r.strengths]
    per_op: dict[str, list[tuple[str, float]]] = {}
    for r in rendered:
        for op, v in zip(r.operators, r.strengths):
            per_op.setdefault(op, []).append((r.image_id, float(v)))
    stats = {op: _stats([v for _, v in vals]) for op, vals in per_op.items()}
    ranges = parameter_ranges(rendered[0].model if rendered else None, list(per_op))
    outliers = []
    for op, vals in per_op.items():
        st = stats[op]
        lo, hi = ranges[op]
        mid, half = (lo + hi) / 2, (hi - lo) / 2
        for image_id, v in vals:
            z = (v - st.mean) / st.std if st.std > 0 and st.n >= 5 else 0.0
            saturated = abs(v - mid) >= SATURATED * half
            if abs(z) >= OUTLIER_Z or saturated:
                outliers.append({"image_id": image_id, "operator": op, "strength": round(v, 4),
                                 "z": round(z, 2), "why": "saturated" if saturated else f"|z| >= {OUTLIER_Z}"})
    models = sorted({f"{r.model} v{r.model_version}" for r in rows if r.model})
    return RunAudit(run_id, rows[0].command, rows[0].parent_run_id, rec.started_at if rec else None,
                    (rec.finished_at is not None) if rec else None, len({r.image_id for r in rows}),
                    count["ok"], count["error"], count["skipped"], models,
                    sorted({r.weights_sha256 for r in rows if r.weights_sha256}), stats, outliers)


def audit(ledger: str, verify: bool = False) -> AuditReport:
    ledger = os.path.abspath(ledger)
    rows = read_ledger(ledger)
    records = {r.run_id: r for r in read_run_records(ledger)}
    by_run: dict[str, list[LedgerRow]] = {}
    for r in rows:
        by_run.setdefault(r.run_id, []).append(r)
    runs = [_audit_run(run_id, rs, records) for run_id, rs in by_run.items()]
    runs.sort(key=lambda a: a.started_at or "")
    report = AuditReport(ledger, len(rows), runs)
    if verify:
        _verify(rows, report)
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
