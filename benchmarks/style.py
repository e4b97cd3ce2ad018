"""How well a user's photographic style is learned from k before/after pairs.

    python benchmarks/style.py [--k 1,3,10] [--styles pop1,film,auto-warm,auto-matte]
                               [--rows input,default,lut,learned,bilateral,neurop-tuned,bilateral-tuned]
                               [--draws 1] [--seed 0] [--verify]

A "user" is simulated with RawTherapee: the user's style is a list of RawTherapee processing profiles (.pp3,
applied on top of each other), and the user's before/after pairs are (photo, ``rawtherapee-cli`` rendering of the
photo with those profiles). Styles: two bundled fixed looks (``pop1``: Pop/Pop 1.pp3, local tone mapping,
vignette and CIECAM; ``film``: Standard Film Curve - ISO Low.pp3) and two adaptive ones written here, exposure
corrected per photo (RawTherapee's auto exposure) followed by a fixed look (``auto-warm``, ``auto-matte``).

Photos: the 33 of ../shared/data/photos and the 13 inputs of ../shared/data/fivek-pairs/input (beside the project
root), long side 512 (Pillow LANCZOS, EXIF orientation applied, embedded ICC converted to sRGB), 8-bit sRGB TIFFs
in the work folder (``--work``). Targets are rendered once per style into that folder, under a hash of the
profiles' text (re-used while the text is unchanged). Every target must keep its input's size.

Split, per draw (seeds ``--seed`` .. ``--seed + --draws - 1``): a seeded shuffle of the photo ids; the first 10
are the training pool, the other 36 the test photos for every k; the training pairs for k are the first k of
the pool. Rows, each scored on the test photos (PSNR / SSIM / dE76 of pipeline.metrics per photo, then the mean):

- ``input``: the input itself against the target;
- ``default``: the shipped default weights (``pipeline.evaluate.evaluate(test_pairs, weights=None)``);
- ``lut``: a global 33^3 colour LUT fitted on the k training pairs (``pipeline.lutfit.fit_lut``);
- ``learned``: ``retouch-batch train --pairs <k pairs> --out <run>`` (timed), then its best.pt (else last.pt);
- ``bilateral``: the shipped bilateral retoucher (``--model bilateral``);
- ``neurop-tuned``, ``bilateral-tuned``: the shipped NeurOp / bilateral weights fine-tuned on the k pairs
  (``train --init <shipped> --iters 300 --lr 2e-4 --train-size 256``, timed), then their last.pt.

The default ``--rows`` are the first four; the last three are asked for by name.

Prints a table per style, writes everything (per-photo scores, profile texts, seconds) to ``--json`` (an infinite
PSNR, identical images, as null) and a markdown report to ``--markdown``. ``--verify`` also checks the styles
themselves on 8 photos: what leaving out each section of each profile changes (a RAW-only tool does nothing on
these TIFFs), and how each style responds to a photo darkened by 1 EV (an adaptive style should render it close to
the undarkened photo's rendering, a fixed look should not).
"""
from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import random
import re
import shlex
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timezone
from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image, ImageCms, ImageOps

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
sys.path.insert(0, str(ROOT))
from pipeline.evaluate import evaluate, load_float  # noqa: E402
from pipeline.metrics import delta_e76, psnr, ssim  # noqa: E402

PHOTO_FOLDERS = ("data/photos", "data/fivek-pairs/input")
PHOTO_EXTENSIONS = {".jpg", ".jpeg", ".png", ".tif", ".tiff"}
LONG_SIDE = 512
POOL_SIZE = 10
LUT_SIZE = 33
RT_PROFILES = Path("/usr/share/rawtherapee/profiles")
DEFAULT_WORK = Path("/tmp/retouch-style-bench")
VERIFY_PHOTOS = 8

# exposure set per photo from its histogram (RawTherapee's "Auto Levels": compensation, black, brightness,
# contrast, highlight compression), at most 0.02 % of the pixels clipped
AUTO_EXPOSURE = """[Exposure]
Auto=true
Clip=0.02
"""
# warmer white balance, more vibrance, a gentle S tone curve
WARM_LOOK = """[Exposure]
CurveMode=Standard
Curve=1;0;0;0.25;0.22;0.75;0.79;1;1;

[White Balance]
Enabled=true
Setting=Custom
Temperature=7000
Green=1

[Vibrance]
Enabled=true
Pastels=25
Saturated=10
"""
# cooler white balance, blacks lifted and whites lowered by the tone curve, less chroma
MATTE_LOOK = """[Exposure]
CurveMode=Standard
Curve=1;0;0.12;0.5;0.53;1;0.94;

[White Balance]
Enabled=true
Setting=Custom
Temperature=5900
Green=1

[Luminance Curve]
Enabled=true
Chromaticity=-25
"""

ROW_LABELS = {"input": "input", "default": "default", "lut": "global LUT", "learned": "learned",
              "bilateral": "bilateral", "neurop-tuned": "NeurOp tuned", "bilateral-tuned": "bilateral tuned"}
METRICS = ("psnr", "ssim", "delta_e")


# ----------------------------------------------------------------------------------------------------- styles


@dataclass(frozen=True)
class Profile:
    name: str
    text: str
    source: str  # the bundled file, or "written by benchmarks/style.py"


@dataclass(frozen=True)
class Style:
    name: str
    profiles: tuple[Profile, ...]

    @property
    def digest(self) -> str:
        """Hash of the profiles' names and text: the cache key of the style's renderings."""
        h = hashlib.sha256()
        for p in self.profiles:
            h.update(f"{p.name}\0{p.text}\0".encode())
        return h.hexdigest()[:12]

    @property
    def key(self) -> str:
        """Folder name of the style's renderings."""
        return re.sub(r"[^A-Za-z0-9._-]+", "-", self.name).strip("-") + f"-{self.digest}"


def bundled(name: str, relpath: str) -> Profile:
    path = RT_PROFILES / relpath
    return Profile(name, path.read_text(), str(path))


def written(name: str, text: str) -> Profile:
    return Profile(name, text, "written by benchmarks/style.py")


def define_styles() -> dict[str, Style]:
    auto = written("auto-exposure", AUTO_EXPOSURE)
    styles = [
        Style("pop1", (bundled("pop1", "Pop/Pop 1.pp3"),)),
        Style("film", (bundled("film", "Standard Film Curve - ISO Low.pp3"),)),
        Style("auto-warm", (auto, written("warm-look", WARM_LOOK))),
        Style("auto-matte", (auto, written("matte-look", MATTE_LOOK))),
    ]
    return {s.name: s for s in styles}


def pp3_sections(text: str) -> list[tuple[str, str]]:
    """(header, block) per ``[Section]`` of a .pp3 text, in order."""
    out: list[tuple[str, str]] = []
    for line in text.splitlines(keepends=True):
        if line.startswith("["):
            out.append((line.strip(), ""))
        if out:
            out[-1] = (out[-1][0], out[-1][1] + line)
    return out


def without_section(style: Style, profile_index: int, header: str) -> Style:
    """The style with one section of one of its profiles left out."""
    profiles = list(style.profiles)
    p = profiles[profile_index]
    text = "".join(block for h, block in pp3_sections(p.text) if h != header)
    profiles[profile_index] = Profile(p.name, text, p.source)
    return Style(f"{style.name} without {p.name} {header}", tuple(profiles))


def rawtherapee_version() -> str:
    out = subprocess.run(["rawtherapee-cli", "-v"], capture_output=True, text=True).stdout
    found = re.search(r"version ([\w.+-]+)", out)
    return f"RawTherapee {found.group(1)}" if found else "RawTherapee (version unknown)"


# ----------------------------------------------------------------------------------------------------- photos


def shared_dir() -> Path:
    if not SHARED.is_dir():
        sys.exit(f"style.py: the shared data folder {SHARED} (../shared beside the project root) is absent")
    return SHARED


def source_photos(shared: Path) -> dict[str, Path]:
    """id (file stem) -> source file, over the photo folders; ids must be unique."""
    photos: dict[str, Path] = {}
    for folder in PHOTO_FOLDERS:
        for f in sorted((shared / folder).iterdir()):
            if f.suffix.lower() not in PHOTO_EXTENSIONS:
                continue
            if f.stem in photos:
                sys.exit(f"style.py: photo id {f.stem} is both {photos[f.stem]} and {f}")
            photos[f.stem] = f
    return photos


def to_srgb(im: Image.Image) -> Image.Image:
    """RGB, with an embedded non-sRGB ICC profile converted to sRGB (untagged images are taken as sRGB)."""
    icc = im.info.get("icc_profile")
    im = im.convert("RGB")
    if not icc:
        return im
    source = ImageCms.ImageCmsProfile(io.BytesIO(icc))
    if ImageCms.getProfileDescription(source).strip().startswith("sRGB"):
        return im
    return ImageCms.profileToProfile(im, source, ImageCms.createProfile("sRGB"), outputMode="RGB")


def prepare_input(source: Path, dest: Path) -> None:
    """The photo, oriented, in sRGB, long side LONG_SIDE (LANCZOS), as an 8-bit TIFF (written atomically)."""
    with Image.open(source) as im:
        icc = im.info.get("icc_profile")
        im = ImageOps.exif_transpose(im)
        im.info["icc_profile"] = icc
        im = to_srgb(im)
    scale = LONG_SIDE / max(im.size)
    im = im.resize((round(im.width * scale), round(im.height * scale)), Image.LANCZOS)
    partial = dest.with_name(f".{dest.name}.partial")
    im.save(partial, format="TIFF")
    os.replace(partial, dest)


def prepare_inputs(photos: dict[str, Path], work: Path) -> dict[str, Path]:
    folder = work / "inputs"
    folder.mkdir(parents=True, exist_ok=True)
    out = {}
    for image_id, source in photos.items():
        out[image_id] = folder / f"{image_id}.tif"
        if not out[image_id].exists():
            prepare_input(source, out[image_id])
    return out


def darken(source: Path, dest: Path, ev: float = 1.0) -> None:
    """The 8-bit sRGB image with its linear light scaled by 2^-ev."""
    a = np.asarray(Image.open(source).convert("RGB"), dtype=np.float64) / 255.0
    lin = np.where(a <= 0.04045, a / 12.92, ((a + 0.055) / 1.055) ** 2.4) * 2.0 ** -ev
    b = np.where(lin <= 0.0031308, 12.92 * lin, 1.055 * np.power(lin, 1 / 2.4) - 0.055)
    Image.fromarray(np.round(b * 255.0).astype(np.uint8)).save(dest, format="TIFF")


# --------------------------------------------------------------------------------------------------- rendering


def write_profiles(style: Style, folder: Path) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, p in enumerate(style.profiles):
        paths.append(folder / f"{i}-{p.name}.pp3")
        paths[-1].write_text(p.text)
    return paths


def render(source: Path, dest: Path, profiles: list[Path]) -> None:
    """``rawtherapee-cli`` with the profiles on top of each other, 8-bit TIFF; refuses a change of size."""
    partial = dest.with_name(f".{dest.stem}.partial.tif")
    cmd = ["rawtherapee-cli", "-q", "-Y", "-o", str(partial), "-t", "-b8"]
    for p in profiles:
        cmd += ["-p", str(p)]
    done = subprocess.run(cmd + ["-c", str(source)], capture_output=True, text=True)
    if done.returncode != 0 or not partial.exists():
        raise RuntimeError(f"{shlex.join(cmd)} -c {source} failed ({done.returncode}): {done.stderr.strip()}")
    with Image.open(source) as a, Image.open(partial) as b:
        if a.size != b.size:
            partial.unlink()
            raise RuntimeError(f"{profiles}: {source.name} rendered at {b.size}, not {a.size} (profile changes "
                               "geometry)")
    os.replace(partial, dest)


def render_style(style: Style, inputs: dict[str, Path], folder: Path, jobs: int) -> tuple[dict[str, Path], dict]:
    """Targets id -> path under ``folder/<style key>/``, rendered where missing; (targets, timing info)."""
    base = folder / style.key
    profiles = write_profiles(style, base / "profiles")
    (base / "target").mkdir(parents=True, exist_ok=True)
    targets = {i: base / "target" / f"{i}.tif" for i in inputs}
    missing = [i for i in inputs if not targets[i].exists()]
    start = time.monotonic()
    with ThreadPoolExecutor(max(1, jobs)) as pool:
        list(pool.map(lambda i: render(inputs[i], targets[i], profiles), missing))
    seconds = time.monotonic() - start
    return targets, {"rendered": len(missing), "cached": len(inputs) - len(missing), "seconds": seconds}


# ------------------------------------------------------------------------------------------------------ scores


@lru_cache(maxsize=128)
def load(path: Path) -> np.ndarray:
    """pipeline.evaluate.load_float, cached (callers must not modify the array)."""
    return load_float(str(path))


def score(output: np.ndarray, target: np.ndarray) -> dict[str, float]:
    return {"psnr": psnr(output, target), "ssim": ssim(output, target), "delta_e": delta_e76(output, target)}


def mean_of(records: list[dict], keys=METRICS) -> dict[str, float]:
    return {k: float(np.mean([r[k] for r in records])) for k in keys if all(k in r for r in records)}


# -------------------------------------------------------------------------------------------------------- rows
# Each row: (train pairs, test pairs, scratch folder) -> (per-photo scores, extra fields); pairs are
# (id, input path, target path).


def row_input(train, test, scratch):
    return [{"id": i, **score(load(a), load(b))} for i, a, b in test], {}


def per_photo(result) -> list[dict]:
    return [{"id": s.id, "psnr": s.psnr, "ssim": s.ssim, "delta_e": s.delta_e} for s in result.per_image]


def as_str_pairs(pairs) -> list[tuple[str, str, str]]:
    return [(i, str(a), str(b)) for i, a, b in pairs]


def row_default(train, test, scratch):
    return per_photo(evaluate(as_str_pairs(test), weights=None)), {}


def row_lut(train, test, scratch):
    from pipeline.lut import apply_lut_f32
    from pipeline.lutfit import fit_lut
    start = time.monotonic()
    lut = fit_lut([load(a) for _, a, _ in train], [load(b) for _, _, b in train], size=LUT_SIZE)
    fit_seconds = time.monotonic() - start
    return [{"id": i, **score(apply_lut_f32(load(a), lut), load(b))} for i, a, b in test], \
        {"fit_seconds": fit_seconds}


def write_pairs(pairs, folder: Path) -> None:
    for sub in ("input", "target"):
        (folder / sub).mkdir(parents=True)
    for i, a, b in pairs:
        shutil.copyfile(a, folder / "input" / f"{i}.tif")
        shutil.copyfile(b, folder / "target" / f"{i}.tif")


def retouch_batch() -> str:
    beside = Path(sys.executable).parent / "retouch-batch"
    return str(beside) if beside.exists() else (shutil.which("retouch-batch") or "retouch-batch")


def train(pairs_dir: Path, run: Path, options: list[str] = ()) -> float:
    """``retouch-batch train --pairs DIR --out RUN [options]``, its output in RUN.log; the seconds it took."""
    cmd = [retouch_batch(), "train", "--pairs", str(pairs_dir), "--out", str(run), *options]
    log = run.with_name(run.name + ".log")
    start = time.monotonic()
    with open(log, "w") as f:
        code = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT).returncode
    seconds = time.monotonic() - start
    if code != 0:
        tail = "".join(log.read_text().splitlines(keepends=True)[-15:])
        raise RuntimeError(f"{shlex.join(cmd)} failed ({code}), end of {log}:\n{tail}")
    return seconds


def row_learned(train_pairs, test, scratch: Path):
    if scratch.exists():
        shutil.rmtree(scratch)
    write_pairs(train_pairs, scratch / "pairs")
    run = scratch / "run"
    seconds = train(scratch / "pairs", run)
    weights = run / "best.pt" if (run / "best.pt").exists() else run / "last.pt"
    return per_photo(evaluate(as_str_pairs(test), weights=str(weights))), \
        {"train_seconds": seconds, "weights": str(weights)}


def row_bilateral(train, test, scratch):
    return per_photo(evaluate(as_str_pairs(test), retoucher="bilateral")), {}


TUNE_ITERS = 300  # fine-tuning budget of the *-tuned rows (all parameters, lr TUNE_LR, one pair per iteration)
TUNE_LR = 2e-4
TUNE_SIZE = 256  # long side the pairs are tuned at (scored at full size)


def tuned_row(model: str):
    """``retouch-batch train --pairs <k pairs> --init <model's shipped weights> --iters TUNE_ITERS --lr TUNE_LR``,
    scored with its last.pt: the shipped retoucher adapted to the user's pairs."""
    def row(train_pairs, test, scratch: Path):
        from pipeline.checkpoint import shipped_weights
        if scratch.exists():
            shutil.rmtree(scratch)
        write_pairs(train_pairs, scratch / "pairs")
        run = scratch / "run"
        seconds = train(scratch / "pairs", run, ["--init", str(shipped_weights(model)), "--iters", str(TUNE_ITERS),
                                                  "--lr", str(TUNE_LR), "--eval-every", str(TUNE_ITERS),
                                                  "--train-size", str(TUNE_SIZE)])
        return per_photo(evaluate(as_str_pairs(test), weights=str(run / "last.pt"))), \
            {"train_seconds": seconds, "weights": str(run / "last.pt")}
    return row


ROWS = {"input": row_input, "default": row_default, "lut": row_lut, "learned": row_learned,
        "bilateral": row_bilateral, "neurop-tuned": tuned_row("neurop"), "bilateral-tuned": tuned_row("bilateral")}
DEFAULT_ROWS = ("input", "default", "lut", "learned")
ROWS_WITHOUT_K = {"input", "default", "bilateral"}  # scored once per draw, the same for every k


def split(ids: list[str], seed: int) -> tuple[list[str], list[str]]:
    """(training pool, test photos) of a seeded shuffle of the sorted ids."""
    order = sorted(ids)
    random.Random(seed).shuffle(order)
    return order[:POOL_SIZE], order[POOL_SIZE:]


def score_style(style: Style, inputs, targets, rows, ks, seeds, work: Path) -> list[dict]:
    """One record per (row, k, seed): mean scores, seconds, per-photo scores and the row's extra fields."""
    records = []
    pairs = {i: (i, inputs[i], targets[i]) for i in inputs}
    for seed in seeds:
        pool, test = split(list(inputs), seed)
        test_pairs = [pairs[i] for i in test]
        for row in rows:
            once = None
            for k in ks:
                if once is None or row not in ROWS_WITHOUT_K:
                    scratch = work / "learned" / style.key / f"seed{seed}-k{k}"
                    start = time.monotonic()
                    per_image, extra = ROWS[row]([pairs[i] for i in pool[:k]], test_pairs, scratch)
                    once = (per_image, extra, time.monotonic() - start)
                per_image, extra, seconds = once
                records.append({"row": row, "k": k, "seed": seed, **mean_of(per_image), "seconds": seconds,
                                **extra, "per_image": per_image})
                print(f"  {style.name:<11} {ROW_LABELS[row]:<10} k={k:<2} seed={seed}: "
                      f"{cell(records[-1])}  ({seconds:.1f} s)", flush=True)
    return records


def summarize(records: list[dict], rows, ks) -> dict:
    """row -> k -> means over draws of the scores and seconds."""
    keys = METRICS + ("seconds", "train_seconds", "fit_seconds")
    return {row: {k: mean_of([r for r in records if r["row"] == row and r["k"] == k], keys) for k in ks}
            for row in rows}


# ---------------------------------------------------------------------------------------------- verification


def verify_ids(ids: list[str]) -> list[str]:
    order = sorted(ids)
    return order[:: max(1, len(order) // VERIFY_PHOTOS)][:VERIFY_PHOTOS]


def mean_psnr(a: dict[str, Path], b: dict[str, Path]) -> float:
    return float(np.mean([psnr(load(a[i]), load(b[i])) for i in a]))


def verify_sections(style: Style, inputs, targets, work: Path, jobs: int) -> list[dict]:
    """Per section of each profile: PSNR of the rendering without it against the full rendering (inf: the section
    does nothing on these 8-bit TIFFs, e.g. a RAW-only tool)."""
    out = []
    for index, p in enumerate(style.profiles):
        for header, _ in pp3_sections(p.text):
            ablated, _ = render_style(without_section(style, index, header), inputs, work / "verify", jobs)
            out.append({"profile": p.name, "section": header,
                        "psnr_without_vs_with": mean_psnr(ablated, {i: targets[i] for i in inputs})})
    return out


def verify_adaptivity(style: Style, inputs, targets, work: Path, jobs: int) -> dict:
    """Mean PSNR of the 1-EV-darker photos against the photos, and of the style's renderings of both."""
    folder = work / "verify" / "dark-inputs"
    folder.mkdir(parents=True, exist_ok=True)
    dark = {i: folder / f"{i}.tif" for i in inputs}
    for i in inputs:
        if not dark[i].exists():
            darken(inputs[i], dark[i])
    rendered, _ = render_style(style, dark, work / "verify" / "dark", jobs)
    return {"photos": list(inputs), "psnr_dark_input_vs_input": mean_psnr(dark, inputs),
            "psnr_style_of_dark_vs_style": mean_psnr(rendered, {i: targets[i] for i in inputs}),
            "psnr_target_vs_input": mean_psnr(inputs, {i: targets[i] for i in inputs})}


def verify_style(style: Style, inputs, targets, work: Path, jobs: int) -> dict:
    subset = {i: inputs[i] for i in verify_ids(list(inputs))}
    result = {"adaptivity": verify_adaptivity(style, subset, targets, work, jobs),
              "sections": verify_sections(style, subset, targets, work, jobs)}
    print_verification(style.name, result)
    return result


def db(value: float) -> str:
    return f"{value:.2f} dB" if np.isfinite(value) else "inf dB (identical)"


def print_verification(name: str, result: dict) -> None:
    a = result["adaptivity"]
    print(f"  verify {name}: target vs input {a['psnr_target_vs_input']:.2f} dB; 1 EV darker input vs input "
          f"{a['psnr_dark_input_vs_input']:.2f} dB, {name} of it vs {name} of the input "
          f"{a['psnr_style_of_dark_vs_style']:.2f} dB")
    for s in result["sections"]:
        print(f"    without {s['profile']} {s['section']}: {db(s['psnr_without_vs_with'])} from the full style")


# ------------------------------------------------------------------------------------------------------ output


def cell(scores: dict) -> str:
    if not scores:
        return "-"
    return f"{scores['psnr']:.2f} / {scores['ssim']:.4f} / {scores['delta_e']:.2f}"


def style_table(summary: dict, rows, ks) -> tuple[list[str], list[list[str]]]:
    """(header, lines) of one style: a line per row, a column per k; training seconds when learned is in."""
    header = ["row"] + [f"k={k} PSNR / SSIM / dE76" for k in ks]
    lines = [[ROW_LABELS[row]] + [cell(summary[row][k]) for k in ks] for row in rows]
    for row in ("learned", "neurop-tuned", "bilateral-tuned"):
        if row in rows:
            lines.append([f"training s ({ROW_LABELS[row]})"]
                         + [f"{summary[row][k].get('train_seconds', float('nan')):.0f}" for k in ks])
    return header, lines


def timing_line(summary: dict, rows, ks) -> str:
    """Seconds per row and k (means over draws); rows scored once per draw show one figure."""
    parts = []
    for row in rows:
        seconds = [f"{summary[row][k]['seconds']:.1f}" for k in ks]
        parts.append(f"{ROW_LABELS[row]} {seconds[0] if row in ROWS_WITHOUT_K else ' / '.join(seconds)}")
    return "seconds per row" + ("" if set(rows) <= ROWS_WITHOUT_K else f" (k = {', '.join(map(str, ks))})") + \
        ": " + "; ".join(parts)


def as_text(header: list[str], lines: list[list[str]]) -> str:
    widths = [max(len(r[c]) for r in [header] + lines) for c in range(len(header))]
    fmt = lambda r: "  ".join(v.ljust(w) for v, w in zip(r, widths)).rstrip()  # noqa: E731
    return "\n".join([fmt(header), fmt(["-" * w for w in widths])] + [fmt(r) for r in lines])


def as_markdown(header: list[str], lines: list[list[str]]) -> str:
    rows = [header, ["---"] + ["---:"] * (len(header) - 1)] + lines
    return "\n".join("| " + " | ".join(r) + " |" for r in rows)


def markdown_report(report: dict) -> str:
    out = [
        "# Learning a photographic style from k before/after pairs",
        "",
        f"Made by `{report['command']}` on {report['created']} ({report['rawtherapee']}).",
        "",
        f"Photos: {report['photos']['count']} ({report['photos']['description']}). Targets: each style's "
        "profiles rendered by `rawtherapee-cli -q -Y -o OUT.tif -t -b8 -p P1 [-p P2] -c IN.tif`.",
        "",
        f"Split: per draw (seeds {', '.join(str(s['seed']) for s in report['splits'])}) a seeded shuffle of the "
        f"ids; the first {POOL_SIZE} are the training pool, the other {report['photos']['count'] - POOL_SIZE} the "
        "test photos for every k; k training pairs = the first k of the pool. Scores: means over the test photos "
        "(then over draws) of PSNR (dB) / SSIM / dE76, the metrics of `pipeline.metrics`. Rows: the input "
        "itself; the shipped default weights; a global 33^3 LUT fitted on the k pairs "
        "(`pipeline.lutfit.fit_lut`); `retouch-batch train --pairs <k pairs> --out <run>` (its best.pt).",
        "",
    ]
    out += [f"- seed {s['seed']}: pool {', '.join(s['pool'])}" for s in report["splits"]]
    for name, s in report["styles"].items():
        out += ["", f"## {name}", "", as_markdown(*style_table(s["summary"], report["rows"], report["k"])), "",
                f"Rendering: {s['render']['rendered']} rendered in {s['render']['seconds']:.1f} s, "
                f"{s['render']['cached']} from the cache; "
                + timing_line(s["summary"], report["rows"], report["k"]) + ".", ""]
        for p in s["profiles"]:
            if p["source"].startswith("written"):
                out += [f"`{p['name']}.pp3` ({p['source']}):", "", "```ini", p["text"].rstrip(), "```", ""]
            else:
                out += [f"`{p['name']}`: {p['source']}", ""]
        if "verify" in s:
            a = s["verify"]["adaptivity"]
            out += [f"Checks on {len(a['photos'])} photos (mean PSNR):", "",
                    f"- target vs input: {a['psnr_target_vs_input']:.2f} dB",
                    f"- a 1 EV darker input vs the input: {a['psnr_dark_input_vs_input']:.2f} dB; the style's "
                    f"rendering of it vs its rendering of the input: {a['psnr_style_of_dark_vs_style']:.2f} dB"]
            out += [f"- without {v['profile']} {v['section']} vs the full style: {db(v['psnr_without_vs_with'])}"
                    for v in s["verify"]["sections"]]
    return "\n".join(out).rstrip() + "\n"


def finite(value):
    """The report with non-finite floats (the PSNR of identical images) as None: strict JSON."""
    if isinstance(value, dict):
        return {k: finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [finite(v) for v in value]
    return None if isinstance(value, float) and not np.isfinite(value) else value


def write_outputs(report: dict, json_path: Path, markdown_path: Path) -> None:
    json_path.write_text(json.dumps(finite(report), indent=1, allow_nan=False) + "\n")
    markdown_path.write_text(markdown_report(report))


# -------------------------------------------------------------------------------------------------------- main


def comma_list(value: str) -> list[str]:
    return [v.strip() for v in value.split(",") if v.strip()]


def parse_args(argv=None) -> argparse.Namespace:
    styles = list(define_styles())
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--k", default="1,3,10", help=f"training pair counts, each 1..{POOL_SIZE} (default 1,3,10)")
    ap.add_argument("--styles", default=",".join(styles), help=f"subset of {','.join(styles)}")
    ap.add_argument("--rows", default=",".join(DEFAULT_ROWS), help=f"subset of {','.join(ROWS)}")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--draws", type=int, default=1, help="splits with seeds seed .. seed+draws-1; means reported")
    ap.add_argument("--work", type=Path, default=DEFAULT_WORK, help=f"cache and scratch folder ({DEFAULT_WORK})")
    ap.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="rawtherapee-cli processes at once")
    ap.add_argument("--verify", action="store_true", help="also check the styles (sections, 1 EV darker photos)")
    ap.add_argument("--json", type=Path, default=ROOT / "benchmarks" / "style.json")
    ap.add_argument("--markdown", type=Path, default=ROOT / "benchmarks" / "style.md")
    args = ap.parse_args(argv)
    args.k = [int(k) for k in comma_list(args.k)]
    args.styles, args.rows = comma_list(args.styles), comma_list(args.rows)
    if not args.k or any(not 1 <= k <= POOL_SIZE for k in args.k):
        ap.error(f"--k: each value must be in 1..{POOL_SIZE}")
    if not args.styles or set(args.styles) - set(styles):
        ap.error(f"--styles: choose from {','.join(styles)}")
    if not args.rows or set(args.rows) - set(ROWS):
        ap.error(f"--rows: choose from {','.join(ROWS)}")
    if args.draws < 1:
        ap.error("--draws must be at least 1")
    return args


def check_tools(rows) -> None:
    if shutil.which("rawtherapee-cli") is None:
        sys.exit("style.py: rawtherapee-cli not found (Debian package rawtherapee)")
    if "lut" in rows and not (ROOT / "pipeline" / "lutfit.py").exists():
        sys.exit("style.py: pipeline/lutfit.py is absent; leave the row out with --rows input,default,learned")
    if "lut" in rows:  # compile the LUT kernel now, not inside the first timed row
        from pipeline.lut import apply_lut_f32, identity_grid
        apply_lut_f32(np.zeros((2, 2, 3), np.float32), identity_grid(2).reshape(2, 2, 2, 3).numpy())


def main(argv=None) -> None:
    args = parse_args(argv)
    check_tools(args.rows)
    photos = source_photos(shared_dir())
    if len(photos) <= POOL_SIZE:
        sys.exit(f"style.py: {len(photos)} photos, need more than the {POOL_SIZE} of the training pool")
    start = time.monotonic()
    inputs = prepare_inputs(photos, args.work)
    print(f"{len(inputs)} photos ready in {args.work / 'inputs'} ({time.monotonic() - start:.1f} s)")
    seeds = list(range(args.seed, args.seed + args.draws))
    report = {
        "command": shlex.join(["python", "benchmarks/style.py", *(sys.argv[1:] if argv is None else argv)]),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "rawtherapee": rawtherapee_version(), "k": args.k, "rows": args.rows, "seeds": seeds,
        "photos": {"count": len(photos), "ids": sorted(photos),
                   "sources": {i: str(p.relative_to(SHARED.parent)) for i, p in photos.items()},
                   "description": f"{', '.join('../shared/' + f for f in PHOTO_FOLDERS)}; long side {LONG_SIDE}, "
                                  "Pillow LANCZOS, sRGB, 8-bit TIFF"},
        "splits": [dict(zip(("seed", "pool", "test"), (s, *split(list(photos), s)))) for s in seeds],
        "styles": {},
    }
    styles = define_styles()
    for name in args.styles:
        style = styles[name]
        targets, render_info = render_style(style, inputs, args.work / "targets", args.jobs)
        print(f"{name}: {render_info['rendered']} targets rendered in {render_info['seconds']:.1f} s, "
              f"{render_info['cached']} cached")
        entry = {"key": style.key, "profiles": [vars(p) for p in style.profiles], "render": render_info}
        if args.verify:
            entry["verify"] = verify_style(style, inputs, targets, args.work, args.jobs)
        records = score_style(style, inputs, targets, args.rows, args.k, seeds, args.work)
        entry.update(summary=summarize(records, args.rows, args.k), records=records)
        report["styles"][name] = entry
        print(f"\n{name} (means over {len(seeds)} draw(s), {len(photos) - POOL_SIZE} test photos)\n"
              + as_text(*style_table(entry["summary"], args.rows, args.k)) + "\n"
              + timing_line(entry["summary"], args.rows, args.k) + "\n")
        write_outputs(report, args.json, args.markdown)
    print(f"wrote {args.json} and {args.markdown}")


if __name__ == "__main__":
    main()
