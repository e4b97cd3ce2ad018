"""`retouch-batch export-luts`: each image's edit as a .cube 3D LUT, for tools that read them (ffmpeg, Resolve,
Photoshop, darktable's lut 3D module).

For a retoucher that is a global colour function for fixed parameters (``rendering = "lut"``, and coarse-to-fine
with ``refine`` at 0), the LUT is that function for the image's ledger strengths, sampled on an N^3 grid of the
decoded source's encoding (the same table the run rendered through, at the size asked for). Local retouchers have no
such function: their images are listed as skipped, with the reason.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

from pipeline.lut import bake_lut

from .ledger import read_run_records
from .rerender import find_weights, source_rows


@dataclass(frozen=True)
class ExportResult:
    written: list[str]
    skipped: list[tuple[str, str]]  # (image id, reason)


def write_cube(path: str, lut: np.ndarray, title: str, comments: list[str]) -> None:
    """Adobe/IRIDAS .cube: LUT_3D_SIZE N, then N^3 lines "r g b", red changing fastest. ``lut`` is (N, N, N, 3)
    indexed [r, g, b] over [0, 1] (pipeline.lut's layout)."""
    n = lut.shape[0]
    ordered = np.clip(lut, 0.0, 1.0).transpose(2, 1, 0, 3).reshape(-1, 3)  # b slowest, then g, r fastest
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    with open(path, "w", newline="\n") as f:
        for c in comments:
            f.write(f"# {c}\n")
        f.write(f'TITLE "{title}"\nLUT_3D_SIZE {n}\nDOMAIN_MIN 0 0 0\nDOMAIN_MAX 1 1 1\n')
        np.savetxt(f, ordered, fmt="%.6f")


def not_a_colour_function(model, strengths) -> str | None:
    """Why the model has no LUT for these strengths (None: it has one)."""
    if model.rendering == "lut":
        return None
    if model.name == "coarse-to-fine" and strengths[model.operators.index("refine")] == 0:
        return None
    if model.name == "coarse-to-fine":
        return "its local refinement (refine > 0) is not a colour function; rerender --set refine=0 first"
    return f"{model.name} is a local retoucher, not a colour function"


def export_luts(ledger: str, out: str, size: int = 33, run_id: str | None = None, weights: str | None = None,
                log=print) -> ExportResult:
    ledger = os.path.abspath(ledger)
    rows = [r for r in source_rows(ledger, run_id) if r.status == "ok"]
    records = {r.run_id: r for r in read_run_records(ledger)}
    written, skipped, loaded = [], [], {}
    for r in rows:
        if r.weights_sha256 not in loaded:
            loaded[r.weights_sha256] = find_weights(weights, r.weights_sha256, records, r.model)
        model_info = loaded[r.weights_sha256]
        model = model_info.model
        reason = not_a_colour_function(model, r.strengths)
        if reason:
            skipped.append((r.image_id, reason))
            log(f"skipped {r.image_id}: {reason}")
            continue
        rec = records.get(r.run_id)
        rel = (os.path.relpath(r.output_path, rec.out) if rec and rec.out and r.output_path
               else os.path.basename(r.output_path or r.source_path))
        path = os.path.join(out, os.path.splitext(rel)[0] + ".cube")
        rendition = model_info.info.rendition
        write_cube(path, bake_lut(model, r.strengths, size), f"{r.image_id} ({model.name})", [
            f"retouch-batch export-luts: {model.name} v{model.version}, weights sha256 {r.weights_sha256}",
            f"image {r.image_id}, run {r.run_id}, source sha256 {r.source_sha256}",
            "strengths " + ", ".join(f"{o}={v:.6g}" for o, v in zip(r.operators, r.strengths)),
            f"input colour space: {rendition.get('space', 'srgb')} with the {rendition.get('curve', 'srgb')} curve, "
            "RGB in [0, 1] (images as stored, converted to sRGB by their ICC profile; RAW demosaiced as retouch-batch "
            f"decodes it: {rendition})",
            f"output colour space: {rendition.get('space', 'srgb')}, the same encoding, as retouch-batch writes it",
        ])
        written.append(path)
    log(f"{len(written)} LUT(s) written to {out}" + (f", {len(skipped)} image(s) skipped" if skipped else ""))
    return ExportResult(written, skipped)
