"""Manifests: a CSV or Parquet table with a required ``path`` column and optional ``id`` and ``output`` columns.

Relative paths resolve against the manifest's folder. Validation happens before any work: a manifest that would
make the job read or write where it should not is refused as a whole, with a one-line reason.
"""
from __future__ import annotations

import csv
import hashlib
import os
from array import array
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

from pipeline.imageio import IMAGE_EXTENSIONS, OUTPUT_FORMATS

COLUMNS = ("path", "id", "output")
BATCH_ROWS = 10_000  # rows read, validated and turned into tasks at a time: the driver never holds the manifest


class ManifestError(ValueError):
    pass


@dataclass(frozen=True)
class ManifestEntry:
    image_id: str
    source: str  # absolute path
    output: str  # path relative to the output folder, extension included


class _Row(NamedTuple):
    """One manifest row resolved: everything about it that does not depend on the other rows."""
    index: int  # 0-based data row
    line: int  # CSV line, or Parquet row counted from 1 (see ``row_label``)
    image_id: str
    source: str
    output: str  # the row's own output name as given; "" for the default name
    stem: str  # default output name without extension: the source path relative to the manifest, no suffix
    suffix: str  # the source's extension, lower case, without the dot


def row_unit(path: str) -> str:
    """What messages call a manifest's rows: CSV lines, or Parquet rows."""
    return "row" if path.lower().endswith(".parquet") else "line"


def row_label(path: str, line: int) -> str:
    return f"{row_unit(path)} {line}"


@dataclass
class Manifest:
    """A validated manifest, read again batch by batch (``batches``) as the job feeds its workers.

    Validation keeps 8-byte hashes per row (ids, output names, stems), never the rows: ~55 MB per 10^6 rows with
    the sorting that finds repeats (benchmarks/manifest-scale.txt). Hashes are Python's own (per process): a
    collision costs one extra look at the two rows, never a wrong refusal.
    """
    path: str
    out_dir: str
    output_format: str
    rows: int
    warnings: list[str]
    digest: str  # sha256 of what the rows resolve from (see ``_digest``): the job's identity for resuming
    shared_stems: frozenset[int] = frozenset()  # hashes of stems that several sources share (RAW + JPEG pairs)

    def batches(self, size: int = BATCH_ROWS) -> Iterator[list[ManifestEntry]]:
        """The entries in manifest order, ``size`` at a time."""
        for rows in _resolved_batches(self.path, size):
            yield [ManifestEntry(r.image_id, r.source, self._output(r)) for r in rows]

    @property
    def entries(self) -> list[ManifestEntry]:
        """Every entry at once, for small manifests (training photo lists, tests)."""
        return [e for batch in self.batches() for e in batch]

    def _output(self, r: _Row) -> str:
        if r.output:
            return _given_output(r.output, self.ext)
        return default_output_name(r.stem, r.suffix, self.ext, hash(r.stem.lower()) in self.shared_stems)

    @property
    def ext(self) -> str:
        return OUTPUT_FORMATS[self.output_format]


def default_output_name(stem: str, suffix: str, ext: str, shared: bool) -> str:
    """Output names mirror the source tree; sources sharing a stem (RAW + JPEG pairs) keep their extension."""
    return f"{stem}_{suffix}{ext}" if shared else stem + ext


def _header(path: str) -> list[str]:
    p = Path(path)
    if not p.is_file():
        raise ManifestError(f"{path}: manifest not found")
    if p.suffix.lower() == ".parquet":
        import pyarrow.parquet as pq
        try:
            return list(pq.read_schema(p).names)
        except Exception as e:
            raise ManifestError(f"{path}: unreadable Parquet manifest ({e})") from None
    try:
        with open(p, newline="", encoding="utf-8-sig") as f:
            return [c.strip() for c in next(csv.reader(f), [])]
    except (UnicodeDecodeError, csv.Error) as e:
        raise ManifestError(f"{path}: not a readable CSV manifest ({e})") from None


def _raw_batches(path: str, size: int) -> Iterator[tuple[list[int], list[str], list[str], list[str]]]:
    """(line, path, id, output) columns of ``size`` rows at a time, as stripped strings ("" where absent)."""
    if Path(path).suffix.lower() == ".parquet":
        import pyarrow.parquet as pq
        try:
            f = pq.ParquetFile(path)
            names = f.schema_arrow.names
            first = 1
            for b in f.iter_batches(batch_size=size, columns=[c for c in COLUMNS if c in names]):
                n = b.num_rows
                cols = [["" if v is None else str(v).strip() for v in b.column(c).to_pylist()] if c in names
                        else [""] * n for c in COLUMNS]
                yield list(range(first, first + n)), *cols
                first += n
        except Exception as e:
            raise ManifestError(f"{path}: unreadable Parquet manifest ({e})") from None
        return
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            reader = csv.reader(f)
            header = [c.strip() for c in next(reader, [])]
            at = [header.index(c) if c in header else None for c in COLUMNS]
            lines: list[int] = []
            cols: tuple[list[str], ...] = ([], [], [])
            for rec in reader:
                if not rec:
                    continue  # a blank line
                lines.append(reader.line_num)
                for col, i in zip(cols, at):
                    col.append(rec[i].strip() if i is not None and i < len(rec) else "")
                if len(lines) >= size:
                    yield lines, *cols
                    lines, cols = [], ([], [], [])
            if lines:
                yield lines, *cols
    except (UnicodeDecodeError, csv.Error) as e:
        raise ManifestError(f"{path}: not a readable CSV manifest ({e})") from None


def _resolved_batches(path: str, size: int) -> Iterator[list[_Row]]:
    """Rows resolved, in batches: plain string operations per row (a million rows take seconds, not minutes).
    A path that names no image file by its extension is looked at on disk: a folder is refused here; any other
    unreadable source becomes that image's error row in the job."""
    base = str(Path(path).resolve().parent)
    prefix = base.rstrip("/") + "/"
    index = 0
    for lines, paths, ids, outputs in _raw_batches(path, size):
        rows = []
        for line, raw, given_id, given_out in zip(lines, paths, ids, outputs):
            if not raw:
                raise ManifestError(f"{path}: {row_label(path, line)}: empty path")
            p = os.path.expanduser(raw) if raw[0] == "~" else raw
            src = p if p[0] == "/" else prefix + p
            if "/." in src or "//" in src or src[-1] == "/":
                src = os.path.normpath(src)
            name = src.rpartition("/")[2]
            stem_name, dot, ext = name.rpartition(".")
            suffix = ext.lower() if dot and stem_name else ""
            if "." + suffix not in IMAGE_EXTENSIONS and os.path.isdir(src):
                raise ManifestError(f"{path}: {row_label(path, line)}: {raw!r} is a folder, not an image (make a "
                                    "manifest of a folder with `retouch-batch manifest FOLDER`)")
            rel = src[len(prefix):] if src.startswith(prefix) else name
            stem = rel[:len(rel) - len(suffix) - 1] if suffix else rel
            rows.append(_Row(index, line, given_id or rel, src, given_out, stem, suffix))
            index += 1
        yield rows


def check_output_name(name: str, out_dir: str, real_dirs: dict[str, bool] | None = None) -> str:
    """A manifest ``output`` must stay inside the output folder: relative, no '..', no symlink leading out.
    ``real_dirs`` caches the symlink check per folder (a manifest has millions of names in a few folders)."""
    if not name:
        raise ManifestError("empty output name")
    if os.path.isabs(name) or name.startswith(("/", "\\")) or (len(name) > 1 and name[1] == ":"):
        raise ManifestError(f"output {name!r} is an absolute path; outputs must be relative to --out")
    if ".." in name.replace("\\", "/").split("/"):
        raise ManifestError(f"output {name!r} escapes the output folder ('..')")
    folder = os.path.dirname(name.replace("\\", "/"))
    inside = None if real_dirs is None else real_dirs.get(folder)
    if inside is None:
        root = os.path.realpath(out_dir)
        target = os.path.realpath(os.path.join(out_dir, folder))
        inside = os.path.commonpath([root, target]) == root
        if real_dirs is not None:
            real_dirs[folder] = inside
    if not inside:
        raise ManifestError(f"output {name!r} leads outside the output folder through a symlink")
    return name


def load_manifest(path: str, out_dir: str, output_format: str = "tiff16") -> Manifest:
    """Validate the whole manifest in one streamed pass (a second only if a source lies in the output folder);
    entries come later, batch by batch, from ``Manifest.batches``."""
    import numpy as np
    cols = _header(path)
    if not cols:
        raise ManifestError(f"{path}: empty manifest (no header, no rows)")
    if "path" not in cols:
        raise ManifestError(f"{path}: no 'path' column (columns: {', '.join(cols) or 'none'})")
    warnings = [f"{path}: unknown column {c!r} ignored" for c in cols if c not in COLUMNS]
    ext = OUTPUT_FORMATS[output_format]
    out_real = os.path.realpath(out_dir)
    real_dirs: dict[str, bool] = {}  # output folder -> inside the output folder
    real_source_dirs: dict[str, bool] = {}  # source folder -> inside the output folder
    sources_in_out = False  # almost never: then a second pass checks that no output overwrites a source
    # 8 bytes per row and per hash, appended in place (no per-batch arrays to join later)
    ids, stems, plain, shared = array("q"), array("q"), array("q"), array("q")
    for rows in _resolved_batches(path, BATCH_ROWS):
        for r in rows:
            if r.output:
                name = _given_output(r.output, ext)
                check_output_name(name, out_dir, real_dirs)
                h = hash(name)
                plain.append(h)
                shared.append(h)
            else:
                if r.stem.rpartition("/")[0] not in real_dirs:
                    check_output_name(r.stem + ext, out_dir, real_dirs)
                plain.append(hash(r.stem + ext))
                shared.append(hash(f"{r.stem}_{r.suffix}{ext}"))
            folder = r.source.rpartition("/")[0]
            inside = real_source_dirs.get(folder)
            if inside is None:
                real = os.path.realpath(folder or "/")
                inside = real_source_dirs[folder] = real == out_real or real.startswith(out_real + os.sep)
                sources_in_out = sources_in_out or inside
            ids.append(hash(r.image_id))
            stems.append(hash(r.stem.lower()))
    if not ids:
        raise ManifestError(f"{path}: the manifest has a header but no rows")
    manifest = Manifest(str(path), out_dir, output_format, len(ids), warnings, _digest(path, output_format))
    _refuse_duplicates(manifest, np.frombuffer(ids, np.int64), "id", lambda r, e: e.image_id)
    del ids
    stem_h = np.frombuffer(stems, np.int64)
    values, counts = np.unique(stem_h, return_counts=True)
    manifest.shared_stems = frozenset(values[counts > 1].tolist())
    outputs = np.frombuffer(plain, np.int64)  # in place: an output is its shared-stem name where the stem is shared
    if manifest.shared_stems:
        np.copyto(outputs, np.frombuffer(shared, np.int64), where=np.isin(stem_h, values[counts > 1]))
    del values, counts, stem_h, stems, shared
    _refuse_duplicates(manifest, outputs, "output", lambda r, e: os.path.normpath(e.output))
    del outputs, plain
    if sources_in_out:
        real_sources = (os.path.realpath(e.source) for b in manifest.batches() for e in b)
        in_out = {real for real in real_sources if real.startswith(out_real + os.sep)}
        for batch in manifest.batches():
            for e in batch:
                if os.path.realpath(os.path.join(out_dir, e.output)) in in_out:
                    raise ManifestError(f"{path}: output {e.output!r} would overwrite a source image")
    return manifest


def _digest(path: str, output_format: str) -> str:
    """What the rows resolve to is decided by the file's bytes, its folder (relative paths) and the home folder
    ('~' paths): their hash names the manifest for resuming (with the output format, which names the outputs)."""
    h = hashlib.sha256()
    h.update(f"{Path(path).resolve().parent}\0{os.path.expanduser('~')}\0{output_format}\0".encode())
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def _given_output(name: str, ext: str) -> str:
    """A manifest's own output name, normalized, with the format's extension where it has none."""
    name = name.replace("\\", "/")
    if "." not in name.rpartition("/")[2]:
        name += ext
    return os.path.normpath(name) if ("/." in name or "//" in name or name.startswith("./")) else name


def _refuse_duplicates(manifest: Manifest, hashes, what: str, key) -> None:
    """Raise naming the first row that repeats an earlier one's ``what`` (hash matches are confirmed on the rows)."""
    import numpy as np
    ranked = np.sort(hashes)  # the common case, no repeat, costs one sorted copy
    if not (ranked[1:] == ranked[:-1]).any():
        return
    order = np.argsort(hashes, kind="stable")
    ranked = hashes[order]
    same = np.flatnonzero(ranked[1:] == ranked[:-1])
    candidates = sorted(zip(order[same + 1].tolist(), order[same].tolist()))  # (later row, an earlier one)
    wanted = {i for pair in candidates for i in pair}
    seen: dict[int, tuple[_Row, ManifestEntry]] = {}
    for rows in _resolved_batches(manifest.path, BATCH_ROWS):
        for r in rows:
            if r.index in wanted:
                seen[r.index] = (r, ManifestEntry(r.image_id, r.source, manifest._output(r)))
    for later, earlier in candidates:
        (r2, e2), (r1, e1) = seen[later], seen[earlier]
        if key(r1, e1) == key(r2, e2):
            value = e2.image_id if what == "id" else e2.output
            raise ManifestError(f"{manifest.path}: duplicate {what} {value!r} ({row_unit(manifest.path)}s "
                                f"{r1.line} and {r2.line})")


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
            rel = os.path.relpath(rp, base) if rp.is_relative_to(base) else str(rp)
            w.writerow([rel, rp.stem, rp.stem] if named else [rel])
    return len(paths)


EXAMPLE_PHOTOS = ("astronaut.png", "chelsea.png", "coffee.png", "rocket.jpg", "motorcycle_left.png",
                  "hubble_deep_field.jpg", "retina.jpg")


def example_photo_paths() -> list[str]:
    """Real photographs that scikit-image ships in its wheel (public domain / CC0), for a first run."""
    import skimage
    d = Path(skimage.__file__).parent / "data"
    return [str(d / n) for n in EXAMPLE_PHOTOS if (d / n).is_file()]
