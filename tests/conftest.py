import os
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("RETOUCH_SHARED", ROOT.parent / "shared"))
OFFICIAL = SHARED / "weights" / "neurop-official"


def need_shared(*parts: str) -> Path:
    p = SHARED.joinpath(*parts)
    if not p.exists():
        pytest.skip(f"needs {p} (the shared data folder beside the project root); it is absent here")
    return p


@pytest.fixture(scope="session")
def lite_weights() -> Path:
    return need_shared("weights", "neurop-official", "neurop_fivek_lite.pth")


@pytest.fixture(scope="session")
def ray_cluster():
    """One embedded Ray for the whole session (2 CPUs), as the job itself would start."""
    import ray
    from jobs.cluster import connect
    connect(None)
    yield ray
    ray.shutdown()


@pytest.fixture
def photo16(tmp_path) -> Path:
    """A real photo as a 16-bit TIFF."""
    import tifffile
    from PIL import Image
    src = need_shared("data", "photos", "Storm.jpg")
    a = np.asarray(Image.open(src).convert("RGB").resize((480, 320)), dtype=np.uint16) * 257
    p = tmp_path / "storm16.tif"
    tifffile.imwrite(p, a, photometric="rgb")
    return p


def synthetic_photo(h: int = 96, w: int = 128, seed: int = 0) -> np.ndarray:
    """A smooth colourful (H, W, 3) uint16 image, for tests that need no shared data."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w] / max(h, w)
    base = np.stack([x, y, 1 - x * y], -1) * 0.8 + 0.1
    noise = rng.normal(0, 0.02, base.shape)
    return (np.clip(base + noise, 0, 1) * 65535).astype(np.uint16)


@pytest.fixture
def kill_corpus(tmp_path):
    """Ten real photos as 1500x1000 16-bit TIFFs and their manifest: enough work to interrupt."""
    import tifffile
    from PIL import Image
    photos = sorted(need_shared("data", "photos").glob("*.jpg"))[:10]
    src = tmp_path / "in"
    src.mkdir()
    for i, f in enumerate(photos):
        a = np.asarray(Image.open(f).convert("RGB").resize((1500, 1000)), dtype=np.uint16) * 257
        tifffile.imwrite(src / f"p{i:02d}.tif", a, photometric="rgb")
    _write_manifest(tmp_path / "m.csv", [f"in/p{i:02d}.tif" for i in range(len(photos))])
    return tmp_path, len(photos)


def _write_manifest(path, rows):
    import csv
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path"])
        for r in rows:
            w.writerow([r])


def run_three_formats(folder: Path, model: str) -> Path:
    """A real RAW, a 16-bit TIFF and a JPEG in a manifest under ``folder``, run with ``--model``; returns --out."""
    import csv
    import shutil

    import tifffile
    from click.testing import CliRunner
    from PIL import Image

    from cli import main
    src = folder / "in"
    src.mkdir()
    shutil.copy(need_shared("data", "raw", "good", "tinydng_colorchart.dng"), src)
    storm = Image.open(need_shared("data", "photos", "Storm.jpg")).convert("RGB").resize((420, 280))
    tifffile.imwrite(src / "storm16.tif", np.asarray(storm, dtype=np.uint16) * 257, photometric="rgb")
    Image.open(need_shared("data", "photos", "Dune.jpg")).convert("RGB").resize((300, 200)).save(src / "dune.jpg")
    with open(folder / "manifest.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path"])
        for name in ("tinydng_colorchart.dng", "storm16.tif", "dune.jpg"):
            w.writerow([f"in/{name}"])
    out = folder / "out"
    r = CliRunner().invoke(main, ["run", str(folder / "manifest.csv"), "--out", str(out), "--model", model,
                                  "--workers", "2", "--no-progress"])
    assert r.exit_code == 0, r.output
    return out


def ledger_rows(ledger) -> dict:
    from jobs.ledger import read_ledger
    return {x.image_id: x for x in read_ledger(ledger)}


def rerender_ledger(out: Path, dest: Path, *edits: str) -> tuple[dict, dict]:
    """`rerender` of the run in ``out`` into ``dest`` with ``edits`` (--set/--shift ...); (before, after) rows."""
    from click.testing import CliRunner

    from cli import main
    r = CliRunner().invoke(main, ["rerender", str(out / "ledger"), "--out", str(dest), *edits, "--workers", "2",
                                  "--no-progress"])
    assert r.exit_code == 0, r.output
    return ledger_rows(out / "ledger"), ledger_rows(dest / "ledger")


def output_pixels(path) -> np.ndarray:
    """An output's pixels as stored (16-bit TIFF or 8-bit JPEG/PNG), without our decoder's conversions."""
    import tifffile
    from PIL import Image
    if str(path).endswith(".tif"):
        return tifffile.imread(path)
    with Image.open(path) as im:
        return np.asarray(im)


def same_pixels(a, b) -> bool:
    """Two outputs hold the same image. Outputs of two separate runs differ in bytes (their embedded edit records name
    different runs), so they are compared on their pixels."""
    return np.array_equal(output_pixels(a), output_pixels(b))
