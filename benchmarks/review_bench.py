"""The review tools measured in a real browser (Debian chromium driven by Playwright), and the README screenshots.

1. Editor preview latency (`retouch-batch edit` in its own process, as a user runs it): from a slider's input
   event to the after-canvas redrawn (the page's own
   performance.now() stamps: input -> LUT fetched -> WebGL draw -> next animation frame), on a 2 MP preview of a
   real photo, for a global colour retoucher (neurop: LUT in the browser) and a local one (bilateral: rendered by
   the server). 30 slider moves each, one at a time.
2. Report at scale: a ledger of N images (distinct 400x300 crops of the shared photos, each with an edited
   output), the report's build time and size, and the browser's time to load it and draw the first page.

    python benchmarks/review_bench.py [--images 10000] > benchmarks/review-bench.txt
"""
from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
SHARED = ROOT.parent / "shared" / "data" / "photos"
DOCS = ROOT / "docs"
MOVES = 30
GAP_MS = 100


def browser(p):
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        sys.exit("needs chromium (Debian package chromium)")
    return p.chromium.launch(executable_path=chromium, args=["--no-sandbox", "--enable-unsafe-swiftshader",
                                                              "--use-angle=swiftshader"])


def small_ledger(folder: Path, model: str, photos: list[str], size=(1732, 1155)) -> Path:
    """``photos`` (2 MP each) through ``model``'s shipped weights by the worker code, in a real ledger."""
    from PIL import Image

    from jobs.ledger import LedgerWriter
    from jobs.worker import ImageProcessor, ImageTask, RenderSettings, WorkerConfig
    from pipeline.checkpoint import load_checkpoint
    weights = load_checkpoint(None, model=model).weights_path
    proc = ImageProcessor(WorkerConfig(weights=weights, settings=RenderSettings(output_format="jpeg"), run_id="bench"))
    writer = LedgerWriter(folder / "ledger", "bench")
    for name in photos:
        src = folder / name
        Image.open(SHARED / name).convert("RGB").resize(size).save(src, quality=92)
        row = proc.process(ImageTask(name, str(src), str(folder / "out" / name)))
        assert row.status == "ok", row.error
        writer.add(row)
    writer.flush()
    return folder / "ledger"


def editor_latency(p, model: str, screenshot: Path | None) -> tuple[list[float], list[dict]]:
    """The editor as a user runs it (`retouch-batch edit` in its own process), driven from the browser."""
    with tempfile.TemporaryDirectory() as d:
        ledger = small_ledger(Path(d), model, ["Storm.jpg", "GreenMeadow.jpg", "Aqua.jpg"])
        port = _free_port()
        server = subprocess.Popen([sys.executable, "-u", "-c", "import sys; from cli import main; main()", "edit",
                                   str(ledger), "--port", str(port), "--edits", os.path.join(d, "edits.csv")],
                                  cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        server.stdout.readline()  # "editing N images ...": listening
        b = browser(p)
        try:
            page = b.new_page(viewport={"width": 1400, "height": 820})
            page.goto(f"http://127.0.0.1:{port}/")
            page.wait_for_function("() => window.previewDrawn >= 1", timeout=120_000)
            page.evaluate("() => { window.previewLatencies = []; window.previewStages = []; }")
            for k in range(MOVES):
                page.wait_for_timeout(GAP_MS)  # the previous frame composited, as between a person's moves
                drawn = page.evaluate("() => window.previewDrawn")
                page.evaluate(f"""() => {{ const s = document.querySelector('#sliders input');
                    s.value = +s.min + (+s.max - +s.min) * {0.2 + 0.6 * k / (MOVES - 1)};
                    s.dispatchEvent(new Event('input')); }}""")
                page.wait_for_function(f"() => window.previewDrawn > {drawn}", timeout=60_000)
            latencies = page.evaluate("() => window.previewLatencies")
            stages = page.evaluate("() => window.previewStages")
            if screenshot is not None:
                screenshot.parent.mkdir(parents=True, exist_ok=True)
                page.screenshot(path=str(screenshot))
        finally:
            b.close()
            server.terminate()
            server.wait(timeout=30)
    return latencies, stages


def _free_port() -> int:
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def scaled_ledger(folder: Path, n: int) -> Path:
    """n rows whose sources and outputs are distinct real-photo crops (the output a brighter copy)."""
    from PIL import Image

    from jobs.ledger import LedgerRow, LedgerWriter, RunRecord, now, write_run_record
    rng = np.random.default_rng(0)
    photos = [np.asarray(Image.open(p).convert("RGB")) for p in sorted(SHARED.glob("*.jpg"))]
    writer = LedgerWriter(folder / "ledger", "scale", flush_rows=1000)
    for i in range(n):
        a = photos[i % len(photos)]
        y, x = rng.integers(0, a.shape[0] - 300), rng.integers(0, a.shape[1] - 400)
        crop = a[y:y + 300, x:x + 400]
        src, out = folder / "in" / f"{i:05d}.jpg", folder / "out" / f"{i:05d}.jpg"
        src.parent.mkdir(exist_ok=True)
        out.parent.mkdir(exist_ok=True)
        Image.fromarray(crop).save(src, quality=85)
        Image.fromarray(np.clip(crop * 1.15 + 8, 0, 255).astype(np.uint8)).save(out, quality=85)
        s = rng.normal(0, 0.25, 3).clip(-1, 1).tolist()
        writer.add(LedgerRow(f"in/{i:05d}.jpg", str(src), "ok" if i % 500 else "error", model="neurop",
                             model_version="1", weights_sha256="0" * 64, operators=["bc", "ex", "vb"],
                             strengths=s if i % 500 else [], output_path=str(out) if i % 500 else None,
                             error=None if i % 500 else f"{src}: corrupt or unreadable image", created_at=now(),
                             seconds=0.1, timings='{"decode": 0.01, "predict": 0.04}'))
    writer.flush()
    write_run_record(folder / "ledger", RunRecord("scale", "run", "", now().isoformat(), n,
                                                  finished_at=now().isoformat(), out=str(folder / "out")))
    return folder / "ledger"


def report_at_scale(p, n: int, screenshot: Path | None) -> dict:
    from jobs.report import write_report
    with tempfile.TemporaryDirectory() as d:
        t = time.perf_counter()
        ledger = scaled_ledger(Path(d), n)
        made = time.perf_counter() - t
        t = time.perf_counter()
        write_report(str(ledger), os.path.join(d, "report.html"), log=lambda m: None, show_progress=False)
        built = time.perf_counter() - t
        size = os.path.getsize(os.path.join(d, "report.html"))
        b = browser(p)
        try:
            page = b.new_page(viewport={"width": 1400, "height": 900})
            t = time.perf_counter()
            page.goto(Path(d, "report.html").as_uri(), wait_until="load", timeout=120_000)
            page.wait_for_function("() => document.querySelectorAll('.card').length > 0")
            page.wait_for_function("() => [...document.images].every(i => i.complete)")
            loaded = time.perf_counter() - t
            if screenshot is not None:
                page.screenshot(path=str(screenshot))
            t = time.perf_counter()
            page.click("#next")
            page.wait_for_function("() => [...document.images].every(i => i.complete)")
            next_page = time.perf_counter() - t
        finally:
            b.close()
    return {"images": n, "ledger_seconds": made, "build_seconds": built, "megabytes": size / 1e6,
            "load_seconds": loaded, "next_page_seconds": next_page}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, default=10_000)
    args = ap.parse_args()
    from playwright.sync_api import sync_playwright
    print(f"# python benchmarks/review_bench.py --images {args.images}; {os.cpu_count()} cores, headless chromium "
          "(SwiftShader WebGL, no GPU)")
    with sync_playwright() as p:
        print("\n## editor: slider input -> preview redrawn, 2 MP preview (draft: 17^3 LUT / 1/16-size "
              f"server render), {MOVES} distinct moves {GAP_MS} ms apart (ms)")
        print(f"{'model':10} {'median':>8} {'p90':>8} {'max':>8}  median of the LUT path's stages")
        for model, shot in (("neurop", DOCS / "editor.png"), ("bilateral", None)):
            lat, stages = editor_latency(p, model, shot)
            lat = sorted(lat)
            split = (f"  fetch {statistics.median(s['fetch'] for s in stages):.1f}, draw + frame "
                     f"{statistics.median(s['draw'] for s in stages):.1f}") if stages else "  (server-rendered)"
            print(f"{model:10} {statistics.median(lat):8.1f} {lat[int(0.9 * len(lat)) - 1]:8.1f} {lat[-1]:8.1f}{split}")
        if args.images == 0:
            return
        r = report_at_scale(p, args.images, DOCS / "report.png")
        print(f"\n## report of {r['images']} images (distinct 400x300 photo crops; 1 in 500 an error row)")
        print(f"ledger and files made in {r['ledger_seconds']:.1f} s (not part of the report)")
        print(f"report built in {r['build_seconds']:.1f} s, {r['megabytes']:.1f} MB")
        print(f"browser: loaded and first page of 100 cards drawn in {r['load_seconds']:.2f} s, "
              f"next page in {r['next_page_seconds']:.2f} s")


if __name__ == "__main__":
    main()
