"""`retouch-batch report`: one self-contained HTML page to review a ledger.

Per run: what ran (model, weights, counts, timings), a histogram per operator (matplotlib SVG), the errors with their
causes. Then a contact sheet of every image: before/after thumbnails embedded as small JPEGs, its strengths, and
flags for outliers (a strength at its range's end, or far from its run's mean). The sheet is drawn by the page a
page at a time from embedded JSON, so 10,000 images stay a light page (BENCHMARKS.md: size and load time).
"""
from __future__ import annotations

import base64
import html
import io
import json
import os
import statistics
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field

from pipeline.models import parameter_ranges

from .audit import find_outliers
from .ledger import LedgerRow, read_ledger, read_run_records

THUMB_LONG_SIDE = 112  # pixels: 10,000 images x 2 thumbnails stay under 60 MB (about 1.8 KB each)
THUMB_QUALITY = 65
HISTOGRAM_BINS = 30
ERRORS_SHOWN_OPEN = 10  # a longer error list starts folded


@dataclass
class Card:
    """One image of one run on the contact sheet."""
    image_id: str
    run_id: str
    status: str
    operators: list[str]
    strengths: list[float]
    seconds: float | None
    error: str | None
    warning: str | None
    flags: list[str] = field(default_factory=list)
    before: str | None = None  # base64 JPEG
    after: str | None = None


@dataclass
class RunSection:
    run_id: str
    command: str
    model: str | None
    model_version: str | None
    weights_sha256: str | None
    started_at: str | None
    finished_at: str | None
    parent_run_id: str | None
    counts: dict[str, int]
    seconds_total: float
    seconds_median: float | None
    stage_medians: dict[str, float]
    operators: list[str]
    ranges: dict[str, tuple[float, float]]
    histograms: dict[str, str]  # operator -> inline SVG
    errors: list[tuple[str, str]]  # (image id, cause)


@dataclass
class Report:
    ledger: str
    runs: list[RunSection]
    cards: list[Card]


def outlier_flags(rows: list[LedgerRow], ranges: dict[str, tuple[float, float]]) -> dict[int, list[str]]:
    """Index in ``rows`` -> why that image stands out among its run's (audit's definition of an outlier)."""
    flags: dict[int, list[str]] = {}
    for o in find_outliers(rows, ranges):
        why = (f"{o.operator} at its range's end ({o.strength:+.3g})" if o.why == "saturated"
               else f"{o.operator} far from the run's median (robust z = {o.z:+.1f})")
        flags.setdefault(o.index, []).append(why)
    return flags


def histogram_svg(values: list[float], low: float, high: float, title: str) -> str:
    """A small histogram as inline SVG (matplotlib; text as paths, so it looks the same in every browser)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    with matplotlib.rc_context({"svg.fonttype": "path", "font.size": 8, "svg.hashsalt": "retouch-batch"}):
        fig, ax = plt.subplots(figsize=(3.0, 1.6))
        ax.hist(values, bins=HISTOGRAM_BINS, range=(low, high), color="#4a78b5")
        ax.set_title(title, fontsize=9)
        ax.set_xlim(low, high)
        ax.tick_params(labelsize=7)
        for side in ("top", "right"):
            ax.spines[side].set_visible(False)
        fig.subplots_adjust(left=0.15, right=0.97, bottom=0.2, top=0.86)  # room for the tick labels
        buf = io.StringIO()
        fig.savefig(buf, format="svg")
        plt.close(fig)
    svg = buf.getvalue()
    return svg[svg.index("<svg"):]


def _median(xs: list[float]) -> float | None:
    return statistics.median(xs) if xs else None


def _thumb(path: str | None) -> str | None:
    from pipeline.imageio import DecodeError
    from pipeline.preview import jpeg_bytes, thumbnail
    if not path or not os.path.isfile(path):
        return None
    try:
        return base64.b64encode(jpeg_bytes(thumbnail(path, THUMB_LONG_SIDE), THUMB_QUALITY)).decode("ascii")
    except (DecodeError, OSError, ValueError):
        return None


def build_report(ledger: str, run_id: str | None = None, threads: int | None = None,
                 progress: Callable[[int, int], None] | None = None) -> Report:
    ledger = os.path.abspath(ledger)
    rows = read_ledger(ledger)
    if run_id:
        rows = [r for r in rows if r.run_id == run_id]
    if not rows:
        raise ValueError(f"{ledger}: no rows" + (f" for run {run_id}" if run_id else ""))
    records = {r.run_id: r for r in read_run_records(ledger)}
    by_run: dict[str, list[LedgerRow]] = {}
    for r in rows:
        by_run.setdefault(r.run_id, []).append(r)
    runs, cards = [], []
    paths: list[tuple[str, str | None]] = []  # each card's source and output
    for rid, run_rows in by_run.items():
        rec = records.get(rid)
        model_row = next((r for r in run_rows if r.operators), run_rows[0])
        operators = list(model_row.operators)
        ranges = parameter_ranges(model_row.model, operators)
        flags = outlier_flags(run_rows, ranges)
        stages: dict[str, list[float]] = {}
        for r in run_rows:
            for stage, sec in (json.loads(r.timings) if r.timings else {}).items():
                stages.setdefault(stage, []).append(sec)
        ok = [r for r in run_rows if r.status in ("ok", "skipped") and len(r.strengths) == len(operators)]
        histograms = {op: histogram_svg([r.strengths[j] for r in ok], *ranges[op], op)
                      for j, op in enumerate(operators)} if ok else {}
        counts = {s: sum(r.status == s for r in run_rows) for s in ("ok", "error", "skipped")}
        seconds = [r.seconds for r in run_rows if r.seconds is not None]
        runs.append(RunSection(
            rid, rec.command if rec else model_row.command, model_row.model, model_row.model_version,
            model_row.weights_sha256, rec.started_at if rec else None, rec.finished_at if rec else None,
            rec.parent_run_id if rec else model_row.parent_run_id, counts, round(sum(seconds), 3),
            _median(seconds), {k: round(statistics.median(v), 4) for k, v in stages.items()}, operators,
            ranges, histograms, [(r.image_id, r.error or "") for r in run_rows if r.status == "error"]))
        for i, r in enumerate(run_rows):
            cards.append(Card(r.image_id, rid, r.status, list(r.operators), [round(s, 4) for s in r.strengths],
                              r.seconds, r.error, r.warning, flags.get(i, [])))
            paths.append((r.source_path, r.output_path if r.status in ("ok", "skipped") else None))
    # thumbnails: decoders release the GIL, so threads keep the cores busy; one per distinct file
    distinct = sorted({p for pair in paths for p in pair if p})
    done = 0
    thumbs: dict[str, str | None] = {}
    with ThreadPoolExecutor(max_workers=threads or os.cpu_count() or 1) as pool:
        for path, thumb in zip(distinct, pool.map(_thumb, distinct)):
            thumbs[path] = thumb
            done += 1
            if progress is not None:
                progress(done, len(distinct))
    for card, (before, after) in zip(cards, paths):
        card.before, card.after = thumbs.get(before), thumbs.get(after) if after else None
    return Report(ledger, runs, cards)


def render_html(report: Report) -> str:
    runs_html = "\n".join(_run_html(r) for r in report.runs)
    data = json.dumps([asdict(c) for c in report.cards], separators=(",", ":"))
    operators = sorted({op for r in report.runs for op in r.operators})
    return (PAGE.replace("{{TITLE}}", html.escape(f"retouch-batch report: {report.ledger}"))
            .replace("{{LEDGER}}", html.escape(report.ledger))
            .replace("{{RUNS}}", runs_html)
            .replace("{{OPERATORS}}", json.dumps(operators))
            .replace("{{DATA}}", data.replace("</", "<\\/")))


def _run_html(r: RunSection) -> str:
    e = html.escape
    stages = ", ".join(f"{k} {v:.3f} s" for k, v in r.stage_medians.items()) or "-"
    errors = "".join(f"<tr><td>{e(i)}</td><td>{e(c)}</td></tr>" for i, c in r.errors)
    median = f"{r.seconds_median:.3f} s" if r.seconds_median is not None else "-"
    return f"""<section class="run" id="run-{e(r.run_id)}">
<h2>{e(r.command)} {e(r.run_id)}</h2>
<table class="facts">
<tr><th>model</th><td>{e(str(r.model))} v{e(str(r.model_version))}</td></tr>
<tr><th>weights sha256</th><td><code>{e(str(r.weights_sha256))}</code></td></tr>
<tr><th>images</th><td>{r.counts['ok']} ok, {r.counts['error']} failed, {r.counts['skipped']} skipped</td></tr>
<tr><th>started / finished</th><td>{e(str(r.started_at))} / {e(str(r.finished_at))}</td></tr>
{f'<tr><th>re-rendered from</th><td>{e(r.parent_run_id)}</td></tr>' if r.parent_run_id else ''}
<tr><th>seconds per image</th><td>median {median}, total {r.seconds_total:.1f} s; median per stage: {e(stages)}</td></tr>
</table>
<div class="histograms">{''.join(f'<figure class="hist" data-op="{e(op)}">{svg}</figure>' for op, svg in r.histograms.items())}</div>
{f'<details{" open" if len(r.errors) <= ERRORS_SHOWN_OPEN else ""}><summary>Errors ({len(r.errors)})</summary><table class="errors"><tr><th>image</th><th>cause</th></tr>{errors}</table></details>' if r.errors else ''}
</section>"""


def write_report(ledger: str, dest: str, run_id: str | None = None, log=print, show_progress: bool = True) -> Report:
    from .progress import Progress
    bar: list[Progress] = []

    def progress(done: int, total: int) -> None:
        if not bar:
            bar.append(Progress(total, label="thumbnails", enabled=show_progress))
        bar[0].update("ok")
    try:
        report = build_report(ledger, run_id, progress=progress)
    finally:
        if bar:
            bar[0].close()
    page = render_html(report)
    from pipeline.imageio import write_atomic
    write_atomic(dest, page.encode("utf-8"))
    log(f"{len(report.cards)} images in {len(report.runs)} run(s) -> {dest} ({len(page) / 1e6:.1f} MB)")
    return report


PAGE = r"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{{TITLE}}</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>
body{font:14px system-ui,sans-serif;margin:1.5em;color:#222;background:#fafafa}
h1{font-size:1.4em}h2{font-size:1.15em;margin-top:1.5em}
table{border-collapse:collapse}th,td{text-align:left;padding:2px 8px;vertical-align:top}
.facts th{color:#555;font-weight:normal}.errors td{border-top:1px solid #ddd}
summary{font-weight:bold;margin:1em 0 .5em;cursor:pointer}
.histograms{display:flex;flex-wrap:wrap;gap:8px}.hist{margin:0;background:#fff;border:1px solid #e3e3e3}
.hist svg{width:300px;height:160px}
#controls{position:sticky;top:0;background:#fafafa;padding:8px 0;border-bottom:1px solid #ddd;z-index:1}
#sheet{display:flex;flex-wrap:wrap;gap:10px;margin-top:10px}
.card{background:#fff;border:1px solid #ddd;padding:6px;width:240px}
.card.flagged{border-color:#d9822b}.card.error{border-color:#c0392b}
.pair{display:flex;gap:4px;height:112px;align-items:center;justify-content:center}
.pair img{max-width:116px;max-height:112px}.missing{width:116px;color:#999;text-align:center;font-size:12px}
.id{font-size:12px;word-break:break-all;margin-top:4px}.s{font:12px ui-monospace,monospace}
.flag{color:#b35c00;font-size:12px}.err{color:#c0392b;font-size:12px}
</style></head>
<body>
<h1>retouch-batch report</h1>
<p>Ledger <code>{{LEDGER}}</code></p>
{{RUNS}}
<h2>Images</h2>
<div id="controls">
 sort <select id="sort"></select>
 <select id="dir"><option value="1">ascending</option><option value="-1">descending</option></select>
 show <select id="filter"><option value="all">all</option><option value="flagged">outliers</option>
 <option value="error">errors</option><option value="warning">warnings</option></select>
 <button id="prev">&larr;</button> <span id="page"></span> <button id="next">&rarr;</button>
</div>
<div id="sheet"></div>
<script id="data" type="application/json">{{DATA}}</script>
<script>
"use strict";
const PAGE = 100;
const cards = JSON.parse(document.getElementById("data").textContent);
const operators = {{OPERATORS}};
const sortSel = document.getElementById("sort");
[["image", "image id"], ["run", "run"], ["seconds", "seconds"]].concat(operators.map(o => ["op:" + o, o]))
  .forEach(([v, label]) => sortSel.add(new Option(label, v)));
let page = 0, view = cards;
function key(c, k) {
  if (k === "image") return c.image_id;
  if (k === "run") return c.run_id;
  if (k === "seconds") return c.seconds ?? Infinity;
  const i = c.operators.indexOf(k.slice(3));
  return i < 0 || i >= c.strengths.length ? Infinity : c.strengths[i];
}
function refresh() {
  const f = document.getElementById("filter").value, k = sortSel.value, d = +document.getElementById("dir").value;
  view = cards.filter(c => f === "all" || (f === "flagged" ? c.flags.length > 0 : f === "error" ? c.status === "error" : !!c.warning));
  view.sort((a, b) => { const x = key(a, k), y = key(b, k); return (x < y ? -1 : x > y ? 1 : 0) * d; });
  page = Math.min(page, Math.max(0, Math.ceil(view.length / PAGE) - 1));
  draw();
}
function img(b64, alt) {
  return b64 ? `<img alt="${alt}" src="data:image/jpeg;base64,${b64}">` : `<div class="missing">no ${alt}</div>`;
}
function esc(s) { return String(s).replace(/[&<>"]/g, ch => ({"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;"})[ch]); }
function draw() {
  const part = view.slice(page * PAGE, (page + 1) * PAGE);
  document.getElementById("sheet").innerHTML = part.map(c => `<div class="card ${c.status === "error" ? "error" : c.flags.length ? "flagged" : ""}">
    <div class="pair">${img(c.before, "before")}${img(c.after, "after")}</div>
    <div class="id">${esc(c.image_id)} <span class="s">[${esc(c.status)}]</span></div>
    <div class="s">${c.strengths.map((v, i) => `${esc(c.operators[i])} ${v >= 0 ? "+" : ""}${v.toFixed(3)}`).join(" &nbsp;")}</div>
    ${c.flags.map(f => `<div class="flag">${esc(f)}</div>`).join("")}
    ${c.error ? `<div class="err">${esc(c.error)}</div>` : ""}${c.warning ? `<div class="flag">${esc(c.warning)}</div>` : ""}
  </div>`).join("");
  document.getElementById("page").textContent =
    `${view.length ? page * PAGE + 1 : 0}-${Math.min((page + 1) * PAGE, view.length)} of ${view.length}`;
}
document.getElementById("prev").onclick = () => { if (page > 0) { page--; draw(); } };
document.getElementById("next").onclick = () => { if ((page + 1) * PAGE < view.length) { page++; draw(); } };
for (const id of ["sort", "dir", "filter"]) document.getElementById(id).onchange = () => { page = 0; refresh(); };
refresh();
</script>
</body></html>
"""
