"""Manifests: a CSV or Parquet table with a required ``path`` column and optional ``id`` and ``output`` columns.

Relative paths resolve against the manifest's folder. Validation happens before any work: a manifest that would
make the job read or write where it should not is refused as a whole, with a one-line reason.
"""
from __future__ import annotations

import csv
import os
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from pipeline.imageio import IMAGE_EXTENSIONS, OUTPUT_FORMATS

COLUMNS = ("path", "id", "output")


class ManifestError(ValueError):
    pass


@dataclass(frozen=True)
class ManifestEntry:
    image_id: str
    source: str  # absolute path
    output: str  # path relative to the output folder, extension included


@dataclass
class Manifest:
    path: str
    entries: list[ManifestEntry]
    warnings: list[str]


def read_table(path: str) -> tuple[list[str], list[dict[str, str]]]:
    p = Path(path)
    if not p.is_file():
        raise ManifestError(f"{path}: manifest not found")
    if p.suffix.lower() == ".parquet":
        import pyarrow.parquet as pq
        try:
            t = pq.read_table(p)
        except Exception as e:
            raise ManifestError(f"{path}: unreadable Parquet manifest ({e})") from None
        cols = t.column_names
        return cols, [{k: ("" if v is None else str(v)) for k, v in row.items()} for row in t.to_pylist()]
    try:
        with open(p, newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            cols = [c.strip() for c in (reader.fieldnames or [])]
            rows = [{(k or "").strip(): (v or "").strip() for k, v in r.items() if k is not None} for r in reader]
    except (UnicodeDecodeError, csv.Error) as e:
        raise ManifestError(f"{path}: not a readable CSV manifest ({e})") from None
    return cols, rows


def default_output_names(rel_paths: list[PurePosixPath], ext: str) -> list[str]:
    """Output names mirror the source tree; sources sharing a stem (RAW + JPEG pairs) keep their extension."""
    stems = [str(p.with_suffix("")) for p in rel_paths]
    counts: dict[str, int] = {}
    for s in stems:
        counts[s.lower()] = counts.get(s.lower(), 0) + 1
    names = []
    for p, s in zip(rel_paths, stems):
        if counts[s.lower()] > 1:
            s = f"{s}_{p.suffix.lstrip('.').lower()}"
        names.append(s + ext)
    return names


def _relative_to(path: Path, base: Path) -> PurePosixPath | None:
    try:
        return PurePosixPath(path.relative_to(base).as_posix())
    except ValueError:
        return None


def check_output_name(name: str, out_dir: str) -> str:
    """A manifest ``output`` must stay inside the output folder: relative, no '..', no symlink leading out."""
    if not name:
        raise ManifestError("empty output name")
    if os.path.isabs(name) or name.startswith(("/", "\\")) or (len(name) > 1 and name[1] == ":"):
        raise ManifestError(f"output {name!r} is an absolute path; outputs must be relative to --out")
    parts = PurePosixPath(name.replace("\\", "/")).parts
    if ".." in parts:
        raise ManifestError(f"output {name!r} escapes the output folder ('..')")
    root = os.path.realpath(out_dir)
    target = os.path.realpath(os.path.join(out_dir, name))
    if os.path.commonpath([root, target]) != root:
        raise ManifestError(f"output {name!r} leads outside the output folder through a symlink")
    return name


def load_manifest(path: str, out_dir: str, output_format: str = "tiff16") -> Manifest:
    cols, rows = read_table(path)
    if not cols and not rows:
        raise ManifestError(f"{path}: empty manifest (no header, no rows)")
    if "path" not in cols:
        raise ManifestError(f"{path}: no 'path' column (columns: {', '.join(cols) or 'none'})")
    warnings = [f"{path}: unknown column {c!r} ignored" for c in cols if c not in COLUMNS]
    if not rows:
        raise ManifestError(f"{path}: the manifest has a header but no rows")
    base = Path(path).resolve().parent
    ext = OUTPUT_FORMATS[output_format]
    sources, rels = [], []
    for i, r in enumerate(rows, start=2):
        raw = r.get("path", "")
        if not raw:
            raise ManifestError(f"{path}: line {i}: empty path")
        p = Path(os.path.expanduser(raw))
        src = Path(os.path.normpath(p if p.is_absolute() else base / p))
        if src.is_dir():
            raise ManifestError(f"{path}: line {i}: {raw!r} is a folder, not an image (make a manifest of a folder "
                                "with `retouch-batch manifest FOLDER`)")
        sources.append(src)
        rels.append(_relative_to(src, base) or PurePosixPath(src.name))
    ids = [r.get("id") or rel.as_posix() for r, rel in zip(rows, rels)]
    seen: dict[str, int] = {}
    for i, image_id in enumerate(ids, start=2):
        if image_id in seen:
            raise ManifestError(f"{path}: duplicate id {image_id!r} (lines {seen[image_id]} and {i})")
        seen[image_id] = i
    defaults = default_output_names(rels, ext)
    outputs = []
    for r, d in zip(rows, defaults):
        name = r.get("output") or d
        if r.get("output") and not Path(name).suffix:
            name += ext
        outputs.append(check_output_name(name, out_dir).replace("\\", "/"))
    seen_out: dict[str, int] = {}
    for i, o in enumerate(outputs, start=2):
        key = os.path.normcase(os.path.normpath(o))
        if key in seen_out:
            raise ManifestError(f"{path}: duplicate output {o!r} (lines {seen_out[key]} and {i})")
        seen_out[key] = i
    real_sources = {os.path.realpath(s) for s in sources}
    for o in outputs:
        if os.path.realpath(os.path.join(out_dir, o)) in real_sources:
            raise ManifestError(f"{path}: output {o!r} would overwrite a source image")
    entries = [ManifestEntry(i, str(s), o) for i, s, o in zip(ids, sources, outputs)]
    return Manifest(str(path), entries, warnings)


def scan_folder(folder: str, recursive: bool = True) -> list[str]:
    """Image files under ``folder`` that the pipeline reads, sorted, hidden files skipped."""
    root = Path(folder)
    if not root.is_dir():
        raise ManifestError(f"{folder}: not a folder")
    found = []
    walker = os.walk(root) if recursive else [(str(root), [], os.listdir(root))]
    for d, dirs, files in walker:
        dirs[:] = sorted(x for x in dirs if not x.startswith("."))
        for f in sorted(files):
            if not f.startswith(".") and Path(f).suffix.lower() in IMAGE_EXTENSIONS:
                found.append(os.path.join(d, f))
    return sorted(found)


def write_manifest(paths: list[str], dest: str, named: bool = False) -> int:
    """Write a CSV manifest whose paths are relative to its own folder where possible.

    ``named``: also write ``id`` and ``output`` columns from the file names (for files from deep, odd places).
    """
    base = Path(dest).resolve().parent
    base.mkdir(parents=True, exist_ok=True)
    with open(dest, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", "id", "output"] if named else ["path"])
        for p in paths:
            rp = Path(p).resolve()
            rel = os.path.relpath(rp, base) if _relative_to(rp, base) is not None else str(rp)
            w.writerow([rel, rp.stem, rp.stem] if named else [rel])
    return len(paths)


EXAMPLE_PHOTOS = ("astronaut.png", "chelsea.png", "coffee.png", "rocket.jpg", "motorcycle_left.png",
                  "hubble_deep_field.jpg", "retina.jpg")


def example_photo_paths() -> list[str]:
    """Real photographs that scikit-image ships in its wheel (public domain / CC0), for a first run."""
    import skimage
    d = Path(skimage.__file__).parent / "data"
    return [str(d / n) for n in EXAMPLE_PHOTOS if (d / n).is_file()]
