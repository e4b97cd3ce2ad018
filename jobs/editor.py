"""`retouch-batch edit`: a local web page to review a ledger's images and re-edit their strengths by eye.

Flask serves, on 127.0.0.1 only, one page and a small JSON API. For a retoucher that is a global colour function
(the LUT retouchers, coarse-to-fine at refine 0) a slider move fetches the image's LUT for the new strengths and the
browser applies it to the preview with WebGL2: a 17^3 draft while the slider moves (baked in ~6 ms against ~35 ms
for 33^3), the 33^3 LUT the run renders with once it is let go. For local retouchers the server renders the
preview. Save writes an edits file (image_id plus one column per operator, blank = keep) for `rerender --edits`.
"""
from __future__ import annotations

import csv
import io
import json
import os
import threading
from collections import OrderedDict
from dataclasses import dataclass, field

import numpy as np

from .ledger import LedgerRow, latest_by_image, read_ledger, read_run_records

PREVIEW_LUT_SIZE = 33  # when a slider is let go: the size runs render with
DRAFT_LUT_SIZE = 17  # while a slider moves
PREVIEW_QUALITY = 90
CACHED_PREVIEWS = 16


@dataclass
class EditorImage:
    index: int
    row: LedgerRow
    flags: list[str] = field(default_factory=list)


class EditSession:
    """The ledger's images (each one's newest row, or a run's), their models, previews and the edits made."""

    def __init__(self, ledger: str, run_id: str | None = None, edits_path: str = "edits.csv",
                 weights: str | None = None):
        from pipeline.models import parameter_ranges

        from .report import outlier_flags
        self.ledger = os.path.abspath(ledger)
        rows = read_ledger(self.ledger)
        if run_id:
            rows = [r for r in rows if r.run_id == run_id]
        latest = list(latest_by_image(rows).values())
        if not latest:
            raise ValueError(f"{self.ledger}: no images" + (f" in run {run_id}" if run_id else ""))
        self.images: list[EditorImage] = []
        by_run: dict[str, list[LedgerRow]] = {}
        for r in latest:
            by_run.setdefault(r.run_id, []).append(r)
        for run_rows in by_run.values():
            model_row = next((r for r in run_rows if r.operators), run_rows[0])
            flags = outlier_flags(run_rows, parameter_ranges(model_row.model, list(model_row.operators)))
            for i, r in enumerate(run_rows):
                self.images.append(EditorImage(0, r, flags.get(i, [])))
        self.images.sort(key=lambda im: im.row.image_id)
        for i, im in enumerate(self.images):
            im.index = i
        self.records = {r.run_id: r for r in read_run_records(self.ledger)}
        self.weights = weights
        self.edits_path = os.path.abspath(edits_path)
        self.edits: dict[str, dict[str, float]] = {}
        self._retouchers: dict[str, object] = {}
        self._previews: OrderedDict[int, np.ndarray] = OrderedDict()
        self._lock = threading.Lock()  # one model call at a time; torch and the caches are shared

    # --------------------------------------------------------------------------------------------- models

    def retoucher(self, row: LedgerRow):
        sha = row.weights_sha256
        if sha not in self._retouchers:
            from pipeline.render import open_retoucher

            from .rerender import find_weights
            loaded = find_weights(self.weights, sha, self.records, row.model)
            self._retouchers[sha] = open_retoucher(loaded, lut_size=PREVIEW_LUT_SIZE)
        return self._retouchers[sha]

    def params(self, row: LedgerRow) -> list[dict]:
        from pipeline.models import params_of
        try:
            declared = {p.name: p for p in params_of(row.model or "")}
        except KeyError:
            declared = {}
        out = []
        for op in row.operators:
            p = declared.get(op)
            out.append({"name": op, "label": p.label if p else op, "low": p.low if p else -1.0,
                        "high": p.high if p else 1.0, "default": p.default if p else 0.0,
                        "unit": p.unit if p else ""})
        return out

    def lut_mode(self, row: LedgerRow, strengths) -> bool:
        """Whether the browser can render these strengths from a LUT (a global colour function)."""
        from .export_luts import not_a_colour_function
        return not_a_colour_function(self.retoucher(row).model, strengths) is None

    # --------------------------------------------------------------------------------------------- API

    def listing(self) -> list[dict]:
        out = []
        for im in self.images:
            r = im.row
            out.append({"index": im.index, "image_id": r.image_id, "run_id": r.run_id, "status": r.status,
                        "error": r.error, "warning": r.warning, "model": r.model, "operators": list(r.operators),
                        "strengths": list(r.strengths), "edited": self.edits.get(r.image_id),
                        "flags": im.flags, "params": self.params(r) if r.operators else []})
        return out

    def preview(self, index: int) -> np.ndarray:
        """The source as the model sees it, at most PREVIEW_PIXELS, uint16 (cached for a few images)."""
        from pipeline.imageio import decode
        from pipeline.preview import PREVIEW_PIXELS, reduce_u16
        with self._lock:
            if index in self._previews:
                self._previews.move_to_end(index)
                return self._previews[index]
        row = self.images[index].row
        rendition = self.retoucher(row).info.rendition if row.weights_sha256 else None
        px = reduce_u16(decode(row.source_path, rendition=rendition, half_size=True).pixels, PREVIEW_PIXELS)
        with self._lock:
            self._previews[index] = px
            while len(self._previews) > CACHED_PREVIEWS:
                self._previews.popitem(last=False)
        return px

    def before_jpeg(self, index: int) -> bytes:
        from pipeline.imageio import to_uint8
        return _jpeg(to_uint8(self.preview(index)))

    def lut_bytes(self, index: int, strengths: list[float], size: int = PREVIEW_LUT_SIZE) -> bytes:
        """The ``size``^3 LUT for ``strengths`` as RGBA8, red fastest (a WebGL2 3D texture's layout)."""
        from pipeline.lut import bake_lut
        row = self.images[index].row
        import torch
        with self._lock:
            threads = torch.get_num_threads()
            torch.set_num_threads(1)  # a bake is small: one thread is steady, more jitter against the browser's
            try:
                lut = bake_lut(self.retoucher(row).model, self._clipped(row, strengths), size)
            finally:
                torch.set_num_threads(threads)
        n = lut.shape[0]
        rgba = np.empty((n, n, n, 4), np.uint8)
        rgba[..., :3] = np.clip(lut.transpose(2, 1, 0, 3) * 255.0 + 0.5, 0, 255)  # [b][g][r]: red fastest
        rgba[..., 3] = 255
        return rgba.tobytes()

    def rendered_jpeg(self, index: int, strengths: list[float], draft: bool = False) -> bytes:
        """The preview rendered on the server (local retouchers); a draft, while a slider moves, has a sixteenth
        of the pixels (the local operators' own cost dominates: BENCHMARKS.md)."""
        from pipeline.imageio import to_uint8
        from pipeline.preview import PREVIEW_PIXELS, reduce_u16
        row = self.images[index].row
        px = self.preview(index)
        px = reduce_u16(px, PREVIEW_PIXELS // 16) if draft else px.copy()
        with self._lock:
            out = self.retoucher(row).render(px, self._clipped(row, strengths), out=px)
        return _jpeg(to_uint8(out))

    def _clipped(self, row: LedgerRow, strengths: list[float]) -> list[float]:
        if len(strengths) != len(row.operators):
            raise ValueError(f"{row.image_id}: expected {len(row.operators)} strengths, got {len(strengths)}")
        return [min(max(float(v), p["low"]), p["high"]) for v, p in zip(strengths, self.params(row))]

    def set_edit(self, image_id: str, values: dict[str, float] | None) -> None:
        if values is None:
            self.edits.pop(image_id, None)
        else:
            self.edits[image_id] = {k: float(v) for k, v in values.items()}

    def save(self) -> tuple[str, int]:
        """Write the edits file that `rerender --edits` applies; (its path, images in it)."""
        from pipeline.imageio import write_atomic
        operators = []
        for values in self.edits.values():
            operators += [op for op in values if op not in operators]
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(["image_id", *operators])
        for image_id in sorted(self.edits):
            values = self.edits[image_id]
            w.writerow([image_id, *[repr(values[op]) if op in values else "" for op in operators]])
        write_atomic(self.edits_path, buf.getvalue().encode())
        return self.edits_path, len(self.edits)


def _jpeg(eight: np.ndarray) -> bytes:
    from PIL import Image
    buf = io.BytesIO()
    Image.fromarray(eight, "RGB").save(buf, "JPEG", quality=PREVIEW_QUALITY)
    return buf.getvalue()


def create_app(session: EditSession):
    from flask import Flask, Response, abort, jsonify, request

    app = Flask("retouch-batch-edit")

    def image_index(index: int) -> int:
        if not 0 <= index < len(session.images):
            abort(404)
        return index

    def strengths_arg() -> list[float]:
        try:
            return [float(x) for x in request.args.get("s", "").split(",") if x != ""]
        except ValueError:
            abort(400)

    @app.get("/")
    def page():
        return Response(PAGE.replace("{{LEDGER}}", json.dumps(session.ledger))
                        .replace("{{EDITS}}", json.dumps(session.edits_path)), mimetype="text/html")

    @app.get("/api/images")
    def images():
        return jsonify(session.listing())

    @app.get("/api/images/<int:index>/mode")
    def mode(index):
        row = session.images[image_index(index)].row
        return jsonify({"lut": bool(row.operators) and session.lut_mode(row, strengths_arg() or row.strengths)})

    @app.get("/api/images/<int:index>/before.jpg")
    def before(index):
        return Response(session.before_jpeg(image_index(index)), mimetype="image/jpeg")

    @app.get("/api/images/<int:index>/lut")
    def lut(index):
        size = DRAFT_LUT_SIZE if request.args.get("draft") else PREVIEW_LUT_SIZE
        return Response(session.lut_bytes(image_index(index), strengths_arg(), size),
                        mimetype="application/octet-stream", headers={"X-LUT-Size": str(size)})

    @app.get("/api/images/<int:index>/render.jpg")
    def render(index):
        return Response(session.rendered_jpeg(image_index(index), strengths_arg(), bool(request.args.get("draft"))),
                        mimetype="image/jpeg")

    @app.post("/api/images/<int:index>/edit")
    def edit(index):
        row = session.images[image_index(index)].row
        values = (request.get_json(silent=True) or {}).get("values")
        if values is not None and set(values) - set(row.operators):
            abort(400)
        session.set_edit(row.image_id, values)
        return jsonify({"edited": session.edits.get(row.image_id)})

    @app.post("/api/save")
    def save():
        path, n = session.save()
        return jsonify({"path": path, "images": n})

    @app.errorhandler(Exception)
    def failed(e):
        from werkzeug.exceptions import HTTPException
        if isinstance(e, HTTPException):
            return e
        return jsonify({"error": f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"}), 500

    return app


def serve(session: EditSession, port: int = 0):
    """A threaded server for the app on 127.0.0.1 (never other interfaces); ``port`` 0 picks a free one."""
    from werkzeug.serving import WSGIRequestHandler, make_server

    class KeepAlive(WSGIRequestHandler):
        protocol_version = "HTTP/1.1"  # one connection for a slider's stream of requests
    return make_server("127.0.0.1", port, create_app(session), threaded=True, request_handler=KeepAlive)


PAGE = r"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>retouch-batch edit</title>
<style>
body{font:14px system-ui,sans-serif;margin:0;display:flex;height:100vh;color:#222}
#side{width:290px;padding:12px;border-right:1px solid #ddd;overflow:auto;box-sizing:border-box}
#main{flex:1;display:flex;flex-direction:column;min-width:0}
#views{flex:1;display:flex;gap:8px;padding:8px;min-height:0;background:#333}
.view{flex:1;display:flex;flex-direction:column;align-items:center;min-width:0}
.view span{color:#ccc;font-size:12px}
.view canvas,.view img{max-width:100%;max-height:calc(100vh - 140px);object-fit:contain}
#bar{padding:8px;border-top:1px solid #ddd;display:flex;gap:10px;align-items:center;flex-wrap:wrap}
.slider{margin:10px 0}.slider label{display:flex;justify-content:space-between}
.slider input{width:100%}#flags{color:#b35c00;font-size:12px}#err{color:#c0392b;font-size:12px}
#status{font-size:12px;color:#555}
</style></head>
<body>
<div id="side">
 <div><b id="name"></b> <span id="pos"></span></div>
 <div id="meta" style="font-size:12px;color:#555"></div>
 <div id="flags"></div><div id="err"></div>
 <div id="sliders"></div>
 <button id="reset">ledger values</button>
 <p style="font-size:12px;color:#555">&larr; / &rarr; (or j / k): previous / next image.
  Edits go to <code id="edits"></code> on Save; apply them with <code>rerender --edits</code>.</p>
</div>
<div id="main">
 <div id="views">
  <div class="view"><span>before</span><img id="before" alt="before"></div>
  <div class="view"><span>after</span><canvas id="after"></canvas><img id="afterImg" alt="after" style="display:none"></div>
 </div>
 <div id="bar">
  show <select id="filter"><option value="all">all</option><option value="error">errors</option>
  <option value="flagged">outliers</option><option value="edited">edited</option></select>
  <button id="prev">&larr;</button><button id="next">&rarr;</button>
  <button id="save">Save</button><span id="status"></span>
 </div>
</div>
<script>
"use strict";
const LEDGER = {{LEDGER}}, EDITS = {{EDITS}};
document.getElementById("edits").textContent = EDITS;
let images = [], shown = [], pos = 0, current = null, values = [], lutMode = false;
let inflight = false, pending = false, lastInput = 0;
window.previewLatencies = []; window.previewStages = [];
const canvas = document.getElementById("after");
const gl = canvas.getContext("webgl2", {preserveDrawingBuffer: true});
let program, imgTex, lutTex;
function setupGL() {
  const vs = `#version 300 es
  in vec2 p; out vec2 uv; void main(){ uv = vec2((p.x+1.0)/2.0, (1.0-p.y)/2.0); gl_Position = vec4(p,0,1); }`;
  const fs = `#version 300 es
  precision highp float; precision highp sampler3D;
  uniform sampler2D img; uniform sampler3D lut; uniform float n; in vec2 uv; out vec4 o;
  void main(){ vec3 c = texture(img, uv).rgb; o = vec4(texture(lut, c*(n-1.0)/n + 0.5/n).rgb, 1.0); }`;
  const sh = (t, s) => { const x = gl.createShader(t); gl.shaderSource(x, s); gl.compileShader(x);
    if (!gl.getShaderParameter(x, gl.COMPILE_STATUS)) throw gl.getShaderInfoLog(x); return x; };
  program = gl.createProgram();
  gl.attachShader(program, sh(gl.VERTEX_SHADER, vs)); gl.attachShader(program, sh(gl.FRAGMENT_SHADER, fs));
  gl.linkProgram(program); gl.useProgram(program);
  const buf = gl.createBuffer(); gl.bindBuffer(gl.ARRAY_BUFFER, buf);
  gl.bufferData(gl.ARRAY_BUFFER, new Float32Array([-1,-1, 1,-1, -1,1, 1,1]), gl.STATIC_DRAW);
  const loc = gl.getAttribLocation(program, "p"); gl.enableVertexAttribArray(loc);
  gl.vertexAttribPointer(loc, 2, gl.FLOAT, false, 0, 0);
  imgTex = gl.createTexture(); lutTex = gl.createTexture();
  gl.uniform1i(gl.getUniformLocation(program, "img"), 0); gl.uniform1i(gl.getUniformLocation(program, "lut"), 1);
}
function drawLut(bytes, n) {
  gl.activeTexture(gl.TEXTURE1); gl.bindTexture(gl.TEXTURE_3D, lutTex);
  gl.pixelStorei(gl.UNPACK_ALIGNMENT, 1);
  gl.texImage3D(gl.TEXTURE_3D, 0, gl.RGBA8, n, n, n, 0, gl.RGBA, gl.UNSIGNED_BYTE, bytes);
  for (const [k, v] of [[gl.TEXTURE_MIN_FILTER, gl.LINEAR], [gl.TEXTURE_MAG_FILTER, gl.LINEAR],
      [gl.TEXTURE_WRAP_S, gl.CLAMP_TO_EDGE], [gl.TEXTURE_WRAP_T, gl.CLAMP_TO_EDGE], [gl.TEXTURE_WRAP_R, gl.CLAMP_TO_EDGE]])
    gl.texParameteri(gl.TEXTURE_3D, k, v);
  gl.uniform1f(gl.getUniformLocation(program, "n"), n);
  gl.viewport(0, 0, canvas.width, canvas.height);
  gl.drawArrays(gl.TRIANGLE_STRIP, 0, 4);
}
async function api(path, opts) {
  const r = await fetch(path, opts);
  if (!r.ok) { const t = await r.text(); throw new Error(t); }
  return r;
}
async function load() {
  images = await (await api("/api/images")).json();
  applyFilter();
}
function applyFilter() {
  const f = document.getElementById("filter").value;
  shown = images.filter(im => f === "all" || (f === "error" ? im.status === "error" :
    f === "flagged" ? im.flags.length > 0 : !!im.edited));
  pos = 0; show();
}
async function show() {
  const st = document.getElementById("status");
  if (!shown.length) { st.textContent = "no images match"; return; }
  current = shown[pos];
  document.getElementById("name").textContent = current.image_id;
  document.getElementById("pos").textContent = `(${pos + 1} / ${shown.length})`;
  document.getElementById("meta").textContent = `${current.model || ""} · run ${current.run_id} · ${current.status}`;
  document.getElementById("flags").textContent = current.flags.join("; ") + (current.warning ? " " + current.warning : "");
  document.getElementById("err").textContent = current.error || "";
  values = current.operators.map((op, i) => current.edited && op in current.edited ? current.edited[op] : current.strengths[i]);
  const box = document.getElementById("sliders"); box.innerHTML = "";
  current.params.forEach((p, i) => {
    const d = document.createElement("div"); d.className = "slider";
    const step = (p.high - p.low) / 400;
    d.innerHTML = `<label><span>${p.label} (${p.name})</span><span class="v"></span></label>
      <input type="range" min="${p.low}" max="${p.high}" step="${step}" value="${values[i]}" data-op="${p.name}">`;
    const input = d.querySelector("input"), out = d.querySelector(".v");
    out.textContent = (+values[i]).toFixed(3);
    input.addEventListener("input", () => { values[i] = +input.value; out.textContent = values[i].toFixed(3);
      lastInput = performance.now(); request(true); });
    input.addEventListener("change", () => { remember(); request(false); });
    input.title = `double-click: ${p.default} (leaves the image as the operator found it)`;
    input.addEventListener("dblclick", () => { input.value = p.default; values[i] = p.default;
      out.textContent = (+p.default).toFixed(3); lastInput = performance.now(); remember(); request(false); });
    box.appendChild(d);
  });
  if (current.status === "error") { st.textContent = "this image failed; nothing to edit"; return; }
  const before = document.getElementById("before");
  await new Promise((ok, bad) => { before.onload = ok; before.onerror = bad; before.src = `/api/images/${current.index}/before.jpg`; });
  lutMode = (await (await api(`/api/images/${current.index}/mode?s=${values.join(",")}`)).json()).lut && !!gl;
  canvas.style.display = lutMode ? "" : "none";
  document.getElementById("afterImg").style.display = lutMode ? "none" : "";
  if (lutMode) {
    canvas.width = before.naturalWidth; canvas.height = before.naturalHeight;
    gl.activeTexture(gl.TEXTURE0); gl.bindTexture(gl.TEXTURE_2D, imgTex);
    gl.pixelStorei(gl.UNPACK_FLIP_Y_WEBGL, false);
    gl.texImage2D(gl.TEXTURE_2D, 0, gl.RGBA8, gl.RGBA, gl.UNSIGNED_BYTE, before);
    gl.texParameteri(gl.TEXTURE_2D, gl.TEXTURE_MIN_FILTER, gl.LINEAR);
    gl.texParameteri(gl.TEXTURE_2D, gl.TEXTURE_WRAP_S, gl.CLAMP_TO_EDGE);
    gl.texParameteri(gl.TEXTURE_2D, gl.TEXTURE_WRAP_T, gl.CLAMP_TO_EDGE);
  }
  st.textContent = ""; lastInput = performance.now(); await request(false);
}
// one request at a time; moves made meanwhile collapse into one more. draft: a 17^3 LUT while a slider moves
let draftNext = false;
async function request(draft) {
  if (inflight) { pending = true; draftNext = draft; return; }
  inflight = true;
  try {
    do {
      if (pending) draft = draftNext;
      pending = false;
      const t0 = lastInput, s = values.join(","), i = current.index;
      let fetched = null;
      if (lutMode) {
        const r = await api(`/api/images/${i}/lut?s=${s}${draft ? "&draft=1" : ""}`);
        const n = +r.headers.get("X-LUT-Size"), bytes = new Uint8Array(await r.arrayBuffer());
        if (current.index !== i) break;
        fetched = performance.now();
        drawLut(bytes, n);
      } else {
        const img = document.getElementById("afterImg");
        await new Promise((ok, bad) => { img.onload = ok; img.onerror = bad; img.src = `/api/images/${i}/render.jpg?s=${s}${draft ? "&draft=1" : ""}`; });
      }
      await new Promise(requestAnimationFrame);
      if (draft) {
        const t = performance.now();
        window.previewLatencies.push(t - t0);
        if (fetched !== null) window.previewStages.push({fetch: fetched - t0, draw: t - fetched});
      }
      window.previewDrawn = (window.previewDrawn || 0) + 1;
    } while (pending);
  } catch (e) { document.getElementById("status").textContent = "preview failed: " + e.message; }
  finally { inflight = false; }
}
window.previewMean = function () {
  const el = lutMode ? canvas : document.getElementById("afterImg");
  const c = document.createElement("canvas"); c.width = 64; c.height = 64;
  const ctx = c.getContext("2d"); ctx.drawImage(el, 0, 0, 64, 64);
  const d = ctx.getImageData(0, 0, 64, 64).data; let s = 0;
  for (let k = 0; k < d.length; k += 4) s += d[k] + d[k + 1] + d[k + 2];
  return s / (64 * 64 * 3);
};
async function remember() {
  const changed = current.operators.some((op, i) => Math.abs(values[i] - current.strengths[i]) > 1e-9);
  const body = {values: changed ? Object.fromEntries(current.operators.map((op, i) => [op, values[i]])) : null};
  current.edited = (await (await api(`/api/images/${current.index}/edit`, {method: "POST",
    headers: {"Content-Type": "application/json"}, body: JSON.stringify(body)})).json()).edited;
}
document.getElementById("reset").onclick = async () => {
  values = current.strengths.slice();
  document.querySelectorAll("#sliders input").forEach((el, i) => { el.value = values[i]; });
  await remember(); await show();
};
document.getElementById("save").onclick = async () => {
  const r = await (await api("/api/save", {method: "POST"})).json();
  document.getElementById("status").textContent = `saved ${r.images} edited image(s) to ${r.path}`;
};
document.getElementById("filter").onchange = applyFilter;
const step = d => { if (shown.length) { pos = (pos + d + shown.length) % shown.length; show(); } };
document.getElementById("prev").onclick = () => step(-1);
document.getElementById("next").onclick = () => step(1);
document.addEventListener("keydown", e => {
  // a focused slider keeps its arrow keys; j / k always move through the archive
  if ((e.target.tagName === "SELECT" || e.target.tagName === "INPUT") && e.key !== "j" && e.key !== "k") return;
  if (e.key === "ArrowRight" || e.key === "k") { e.preventDefault(); step(1); }
  if (e.key === "ArrowLeft" || e.key === "j") { e.preventDefault(); step(-1); }
});
if (gl) setupGL();
load();
</script>
</body></html>
"""
