"""24 MP (or any size) DNGs for benchmarks, built from a real sensor's Bayer data: no RAW that large is in ../shared.

    python benchmarks/large_dng.py OUT_DIR [--count 16] [--megapixels 24] [--compression ljpeg|none]

The mosaic of ../shared/data/raw/good/imageio_Blackmagic.dng (9 MP, Blackmagic Pocket 4K) is cropped to its
default crop, then mirrored outwards in whole 2x2 Bayer blocks (so the colour filter phase never breaks) to a 3:2
frame; image k is that frame rolled by k x 250 blocks, so no two files are the same. The camera's colour tags
(CFA pattern, black and white levels, colour matrices, as-shot neutral) are copied over. ``ljpeg`` writes
256 x 256 tiles in lossless JPEG, the compression the source camera uses and the kind most camera RAWs carry;
``none`` writes the samples as they are. LibRaw reads both back bit-exactly (checked on writing).
Also writes OUT_DIR/manifest.csv listing the files.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

SOURCE = Path(__file__).resolve().parents[2] / "shared" / "data" / "raw" / "good" / "imageio_Blackmagic.dng"
# TIFF/DNG tags that say how to read the mosaic and its colour; geometry and compression tags are written anew
CARRIED_TAGS = (33421, 33422, 37398, 50706, 50708, 50713, 50714, 50717, 50721, 50722, 50727, 50728, 50778,
                50779, 50936, 50964, 50965)
TILE = 256


def source_mosaic() -> tuple[np.ndarray, list]:
    """The source's (H, W) uint16 Bayer mosaic inside its default crop, and its colour tags as tifffile extratags."""
    import rawpy
    import tifffile

    with tifffile.TiffFile(SOURCE) as tif:
        page = tif.pages[0]
        extratags = [(c, page.tags[c].dtype, page.tags[c].count, page.tags[c].value, True) for c in CARRIED_TAGS]
        top, left = (int(v) for v in reversed(page.tags[50719].value))  # DefaultCropOrigin is (x, y)
        width, height = (int(v) for v in page.tags[50720].value)
    with rawpy.imread(str(SOURCE)) as raw:  # after the file's linearization table, as LibRaw would use it
        mosaic = raw.raw_image[top:top + height, left:left + width].copy()
    return mosaic, extratags


def frame_geometry(mosaic_shape: tuple[int, int], megapixels: float) -> tuple[int, int, int, int]:
    """(height, width, top, left) of the 3:2 frame of about ``megapixels``, and where the mosaic's first pixel lands
    in it (negative: the frame is a centre crop of the mosaic). All even, so the Bayer phase is kept."""
    width = round((megapixels * 1e6 * 1.5) ** 0.5) // 2 * 2
    height = round(width / 1.5) // 2 * 2
    top = (height // 2 - mosaic_shape[0] // 2) // 2 * 2
    left = (width // 2 - mosaic_shape[1] // 2) // 2 * 2
    return height, width, top, left


def mirrored_frame(mosaic: np.ndarray, megapixels: float, roll_blocks: int = 0) -> np.ndarray:
    """``mosaic`` mirrored outwards in 2x2 blocks (or centre-cropped) to a 3:2 frame of about ``megapixels``, then
    rolled sideways by ``roll_blocks`` blocks."""
    height, width, top, left = frame_geometry(mosaic.shape, megapixels)
    h, w = mosaic.shape
    blocks = mosaic.reshape(h // 2, 2, w // 2, 2).transpose(0, 2, 1, 3)  # (rows, cols, 2, 2)
    before = (max(0, top) // 2, max(0, left) // 2)
    after = (max(0, height - h - top) // 2, max(0, width - w - left) // 2)
    blocks = np.pad(blocks, (*zip(before, after), (0, 0), (0, 0)), mode="symmetric")
    y0, x0 = max(0, -top) // 2, max(0, -left) // 2
    blocks = np.roll(blocks[y0:y0 + height // 2, x0:x0 + width // 2], roll_blocks, axis=1)
    return np.ascontiguousarray(blocks.transpose(0, 2, 1, 3).reshape(height, width))


def write_dng(path: Path, mosaic: np.ndarray, extratags: list, compression: str) -> None:
    import imagecodecs
    import tifffile

    common = {"photometric": 32803, "extratags": extratags, "metadata": None, "tile": (TILE, TILE)}
    if compression == "none":
        tifffile.imwrite(path, mosaic, **common)
        return
    h, w = mosaic.shape
    # every tile is encoded whole: edge tiles are padded, as a TIFF reader expects full tiles
    padded = np.pad(mosaic, ((0, -h % TILE), (0, -w % TILE)), mode="edge")
    tiles = (imagecodecs.ljpeg_encode(padded[y:y + TILE, x:x + TILE], bitspersample=16)
             for y in range(0, h, TILE) for x in range(0, w, TILE))
    tifffile.imwrite(path, tiles, shape=mosaic.shape, dtype=np.uint16, compression=7, **common)


def make(out_dir: str | Path, count: int, megapixels: float = 24, compression: str = "ljpeg") -> list[Path]:
    import rawpy

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    mosaic, extratags = source_mosaic()
    paths = []
    for k in range(count):
        frame = mirrored_frame(mosaic, megapixels, roll_blocks=250 * k)
        path = out / f"large{k:02d}-{compression}.dng"
        write_dng(path, frame, extratags, compression)
        with rawpy.imread(str(path)) as raw:
            if not np.array_equal(raw.raw_image, frame):
                raise SystemExit(f"{path}: LibRaw does not read back the mosaic written")
        paths.append(path)
    (out / "manifest.csv").write_text("path\n" + "".join(f"{p.name}\n" for p in paths))
    return paths


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("out_dir")
    ap.add_argument("--count", type=int, default=1)
    ap.add_argument("--megapixels", type=float, default=24)
    ap.add_argument("--compression", choices=("ljpeg", "none"), default="ljpeg")
    args = ap.parse_args()
    for p in make(args.out_dir, args.count, args.megapixels, args.compression):
        print(p)


if __name__ == "__main__":
    main()
