"""The HTML report and the slider editor: their data for every retoucher, and a real browser (Debian chromium,
driven by Playwright) looking at both."""
import base64
import re
import io
import os
import shutil
import threading
from pathlib import Path

import pytest
from click.testing import CliRunner
from PIL import Image

from cli import main
from jobs.editor import EditSession, create_app, serve
from jobs.ledger import LedgerRow, LedgerWriter, RunRecord, now, read_ledger, write_run_record
from jobs.report import build_report, outlier_flags, render_html
from jobs.worker import ImageProcessor, ImageTask, RenderSettings, WorkerConfig
from pipeline.models import params_of, registered_models

from conftest import need_shared, output_pixels

ARTIFACTS = Path(os.environ.get("RETOUCH_TEST_ARTIFACTS", Path(__file__).resolve().parent.parent / "test-artifacts"))
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def test_outliers_are_strengths_at_a_range_end_or_far_from_the_run_mean():
    rows = [LedgerRow(f"i{k}", "s", "ok", operators=["ex"], strengths=[v])
            for k, v in enumerate([0.0, 0.05, -0.05, 0.02, -0.02, 0.01, -0.01, 0.03, -0.03, 0.6, 0.995])]
    flags = outlier_flags(rows, {"ex": (-1.0, 1.0)})
    assert set(flags) == {9, 10}
    assert "far from the run's median" in flags[9][0] and "range's end" in flags[10][0]


@pytest.fixture(scope="module")
def reviewed(tmp_path_factory, ray_cluster):
    """A real run (JPEG outputs) of two photos and a broken file, through the CLI."""
    d = tmp_path_factory.mktemp("review")
    Image.open(need_shared("data", "photos", "Storm.jpg")).save(d / "storm.jpg", quality=92)
    Image.open(need_shared("data", "photos", "Dune.jpg")).resize((640, 427)).save(d / "dune.jpg", quality=92)
    (d / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a JPEG")
    (d / "manifest.csv").write_text("path\nstorm.jpg\ndune.jpg\nbroken.jpg\n")
    out = d / "out"
    r = CliRunner().invoke(main, ["run", str(d / "manifest.csv"), "--out", str(out), "--format", "jpeg",
                                  "--workers", "1", "--no-progress"])
    assert r.exit_code == 1 and "2 ok, 1 failed" in r.output, r.output
    return d, out


def test_report_holds_thumbnails_histograms_and_errors(reviewed):
    d, out = reviewed
    report = build_report(str(out / "ledger"))
    assert len(report.runs) == 1 and report.runs[0].counts == {"ok": 2, "error": 1, "skipped": 0}
    assert set(report.runs[0].histograms) == {"bc", "ex", "vb"}
    assert all(svg.startswith("<svg") for svg in report.runs[0].histograms.values())
    assert report.runs[0].errors[0][0] == "broken.jpg" and "broken.jpg" in report.runs[0].errors[0][1]
    for card in report.cards:
        if card.status == "ok":
            for b64 in (card.before, card.after):
                im = Image.open(io.BytesIO(base64.b64decode(b64)))
                assert im.format == "JPEG" and max(im.size) <= 112
            assert card.before != card.after  # the after thumbnail is the output, not the source again
        else:
            assert card.after is None and card.error
    page = render_html(report)
    assert "<script" in page and "broken.jpg" in page
    assert re.search(r"""(src|href)=["']?https?:|url\(\s*["']?https?:|fetch\(""", page) is None  # nothing fetched


def _retoucher_ledger(model: str, folder: Path) -> Path:
    """One real photo through ``model``'s shipped weights by the worker code, recorded in a real ledger."""
    src = folder / "photo.png"
    Image.open(need_shared("data", "photos", "Dune.jpg")).resize((192, 128)).save(src)
    from pipeline.checkpoint import load_checkpoint, save_checkpoint
    from pipeline.models import model_class
    if getattr(model_class(model), "default_weights", None):
        weights = load_checkpoint(None, model=model).weights_path
    else:  # learned per user (style-look): an untrained one serves the same interface
        from pipeline.checkpoint import ModelInfo
        weights = folder / "own.pt"
        cls = model_class(model)
        save_checkpoint(weights, cls(), ModelInfo(model=model, model_version=str(cls.version),
                                                  operators=tuple(p.name for p in cls.params)))
    proc = ImageProcessor(WorkerConfig(weights=weights, settings=RenderSettings(output_format="png"), run_id="r1"))
    row = proc.process(ImageTask("photo.png", str(src), str(folder / "out" / "photo.png")))
    assert row.status == "ok", row.error
    writer = LedgerWriter(folder / "ledger", "r1")
    writer.add(row)
    writer.flush()
    write_run_record(folder / "ledger", RunRecord("r1", "run", "", now().isoformat(), 1, weights_path=str(weights),
                                                  weights_sha256=row.weights_sha256, out=str(folder / "out")))
    return folder / "ledger"


@pytest.mark.parametrize("model", registered_models())
def test_report_and_editor_serve_every_retoucher(model, tmp_path):
    ledger = _retoucher_ledger(model, tmp_path)
    report = build_report(str(ledger))
    assert [c.status for c in report.cards] == ["ok"] and report.cards[0].after
    assert set(report.runs[0].histograms) == {p.name for p in params_of(model)}
    session = EditSession(str(ledger), edits_path=str(tmp_path / "edits.csv"))
    client = create_app(session).test_client()
    listing = client.get("/api/images").get_json()
    assert [p["name"] for p in listing[0]["params"]] == [p.name for p in params_of(model)]
    assert Image.open(io.BytesIO(client.get("/api/images/0/before.jpg").data)).format == "JPEG"
    ledger_values = listing[0]["strengths"]
    if client.get("/api/images/0/mode").get_json()["lut"]:
        lut = client.get("/api/images/0/lut?s=" + ",".join(map(str, ledger_values)))
        n = int(lut.headers["X-LUT-Size"])
        assert len(lut.data) == n ** 3 * 4
    else:
        shown = client.get("/api/images/0/render.jpg?s=" + ",".join(map(str, ledger_values)))
        assert Image.open(io.BytesIO(shown.data)).format == "JPEG"
    assert client.get("/api/images/5/before.jpg").status_code == 404


# ------------------------------------------------------------------------------------------ a real browser

@pytest.fixture(scope="module")
def browser():
    if CHROMIUM is None:
        pytest.skip("no chromium installed (Debian package chromium; .ci/run installs it)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is a test dependency (pip install -e .[test])")
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--enable-unsafe-swiftshader",
                                                               "--use-angle=swiftshader"])
        yield b
        b.close()


def test_report_renders_in_the_browser(reviewed, browser):
    d, out = reviewed
    html_path = d / "report.html"
    r = CliRunner().invoke(main, ["report", str(out / "ledger"), "-o", str(html_path), "--no-progress"])
    assert r.exit_code == 0, r.output
    page = browser.new_page(viewport={"width": 1200, "height": 900})
    page.goto(html_path.as_uri())
    page.wait_for_function("() => [...document.images].every(i => i.complete)")
    sizes = page.evaluate("() => [...document.querySelectorAll('.card img')].map(i => i.naturalWidth)")
    assert len(sizes) == 2 * 2 and all(w > 0 for w in sizes)  # two images x before/after
    assert page.locator(".card.error .missing").count() == 2  # the broken file has neither
    assert page.locator("figure.hist svg").count() == 3
    assert page.locator(".card.error").count() == 1
    page.select_option("#sort", "op:ex")  # sortable by strength
    page.select_option("#dir", "-1")
    ids = page.evaluate("() => [...document.querySelectorAll('.card .id')].map(e => e.textContent)")
    ex = {c.image_id: c.strengths[1] for c in build_report(str(out / "ledger")).cards if c.strengths}
    ordered = [i.split(" ")[0] for i in ids if i.split(" ")[0] in ex]
    assert ordered == sorted(ex, key=ex.get, reverse=True)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "report.png"), full_page=True)
    assert (ARTIFACTS / "report.png").stat().st_size > 10_000
    page.close()


def test_editor_slider_preview_save_and_rerender(reviewed, browser, tmp_path):
    d, out = reviewed
    session = EditSession(str(out / "ledger"), edits_path=str(tmp_path / "edits.csv"))
    server = serve(session, 0)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        page = browser.new_page(viewport={"width": 1400, "height": 900})
        page.goto(f"http://127.0.0.1:{server.port}/")
        # sorted by id: the broken file comes first, shown with its error and nothing to edit
        page.wait_for_function("() => document.querySelector('#status').textContent.includes('failed')")
        assert page.text_content("#name") == "broken.jpg" and "broken.jpg" in page.text_content("#err")
        page.keyboard.press("ArrowRight")
        page.wait_for_function("() => document.querySelector('#name').textContent === 'dune.jpg'")
        page.wait_for_function("() => window.previewDrawn >= 1", timeout=60_000)
        before = page.evaluate("() => window.previewMean()")
        drawn = page.evaluate("() => window.previewDrawn")
        page.evaluate("""() => { const s = document.querySelector('input[data-op="ex"]');
            s.value = Math.min(+s.max, +s.value + 0.5); s.dispatchEvent(new Event('input'));
            s.dispatchEvent(new Event('change')); }""")
        page.wait_for_function(f"() => window.previewDrawn > {drawn}", timeout=30_000)
        after = page.evaluate("() => window.previewMean()")
        assert after > before + 5, (before, after)
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "editor.png"))
        page.wait_for_function("() => document.querySelectorAll('#sliders input').length === 3")
        page.click("#save")
        page.wait_for_function("() => document.querySelector('#status').textContent.startsWith('saved 1')")
        page.close()
    finally:
        server.shutdown()
    edits = (tmp_path / "edits.csv").read_text().splitlines()
    assert edits[0] == "image_id,bc,ex,vb" and edits[1].startswith("dune.jpg,")
    again = tmp_path / "again"
    r = CliRunner().invoke(main, ["rerender", str(out / "ledger"), "--out", str(again), "--edits",
                                  str(tmp_path / "edits.csv"), "--workers", "1", "--no-progress"])
    assert r.exit_code == 0, r.output
    first = {x.image_id: x for x in read_ledger(out / "ledger")}
    second = {x.image_id: x for x in read_ledger(again / "ledger")}
    assert second["dune.jpg"].strengths[1] == pytest.approx(min(1.0, first["dune.jpg"].strengths[1] + 0.5), abs=3e-3)
    assert output_pixels(second["dune.jpg"].output_path).mean() > output_pixels(first["dune.jpg"].output_path).mean()
    assert second["storm.jpg"].strengths == first["storm.jpg"].strengths  # not edited: kept
    rerendered = build_report(str(again / "ledger"))  # a rerender's ledger serves both tools as well
    assert rerendered.runs[0].command == "rerender" and all(c.before and c.after for c in rerendered.cards)
    assert rerendered.runs[0].parent_run_id == first["storm.jpg"].run_id
    assert len(EditSession(str(again / "ledger"), edits_path=str(tmp_path / "e2.csv")).images) == 2
