"""Decoding RAW / TIFF / JPEG / PNG to 16-bit RGB in the model's rendition, and writing outputs atomically.

Everything decodes to an (H, W, 3) uint16 array in the working space (sRGB-encoded), orientation applied.
Errors are ``DecodeError`` with a one-line cause; callers add the file name.
"""
from __future__ import annotations

import errno
import functools
import io
import os
import shutil
import uuid
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np

from .defaults import DEFAULT_MAX_PIXELS, OUTPUT_FORMATS  # noqa: F401  (re-exported)

RAW_EXTENSIONS = frozenset(
    ".3fr .ari .arw .bay .braw .cap .cr2 .cr3 .crw .cs1 .dcr .dcs .dng .drf .eip .erf .fff .gpr .iiq .k25 .kdc "
    ".mdc .mef .mos .mrw .nef .nrw .orf .pef .ptx .pxn .r3d .raf .raw .rw2 .rwl .rwz .sr2 .srf .srw .x3f".split())
TIFF_EXTENSIONS = frozenset({".tif", ".tiff"})
PILLOW_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png"})
IMAGE_EXTENSIONS = RAW_EXTENSIONS | TIFF_EXTENSIONS | PILLOW_EXTENSIONS
MIN_RAW_BYTES_PER_PIXEL = 0.02



class DecodeError(Exception):
    """A source that cannot be turned into an RGB image; the message is the cause, in one line."""


@dataclass
class Decoded:
    pixels: np.ndarray  # (H, W, 3) uint16, sRGB-encoded, oriented


@functools.lru_cache(maxsize=1)
def srgb_icc_profile() -> bytes:
    """LittleCMS's sRGB profile with a fixed creation date, so equal pixels always give equal output bytes."""
    import struct
    from PIL import ImageCms
    icc = bytearray(ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes())
    icc[24:36] = struct.pack(">6H", 2000, 1, 1, 0, 0, 0)  # header dateTimeNumber
    icc[84:100] = bytes(16)  # profile ID (an MD5 that covers the date): zero means "not computed"
    return bytes(icc)


def sniff(path: str) -> str:
    """'jpeg', 'png', 'tiff' (TIFF-structured, including DNG/NEF/CR2) or 'other' from the first bytes."""
    with open(path, "rb") as f:
        head = f.read(8)
    if not head:
        raise DecodeError("empty file (0 bytes)")
    if head[:3] == b"\xff\xd8\xff":
        return "jpeg"
    if head[:8] == b"\x89PNG\r\n\x1a\n":
        return "png"
    if head[:4] in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"):
        return "tiff"
    return "other"


MAX_ASPECT_RATIO = 50  # beyond this the strength predictors' 256-high view would be absurdly wide


def check_pixels(width: int, height: int, max_pixels: int) -> None:
    if width < 1 or height < 1:
        raise DecodeError(f"image has no pixels ({width}x{height})")
    if max(width, height) > MAX_ASPECT_RATIO * min(width, height):
        raise DecodeError(f"extreme aspect ratio {width}x{height} (more than {MAX_ASPECT_RATIO}:1) is not supported")
    if width * height > max_pixels:
        raise DecodeError(f"{width}x{height} = {width * height / 1e6:.0f} MP exceeds the pixel limit of "
                          f"{max_pixels / 1e6:.0f} MP (--max-pixels)")


def decode(path: str, max_pixels: int = DEFAULT_MAX_PIXELS, rendition: dict | None = None,
           half_size: bool = False) -> Decoded:
    ext = Path(path).suffix.lower()
    kind = sniff(path)
    if kind in ("jpeg", "png"):
        return _decode_pillow(path, max_pixels)
    if ext in TIFF_EXTENSIONS:
        if kind != "tiff":
            raise DecodeError("not a TIFF file (the content does not start with a TIFF header)")
        return _decode_tiff(path, max_pixels)
    if ext in RAW_EXTENSIONS or kind == "tiff":
        return _decode_raw(path, max_pixels, rendition or {}, half_size)
    raise DecodeError(f"unsupported file type {ext or '(no extension)'}")


def _decode_raw(path: str, max_pixels: int, rendition: dict, half_size: bool) -> Decoded:
    import rawpy

    space = rendition.get("space", "srgb")
    colour = {"srgb": rawpy.ColorSpace.sRGB, "prophoto": rawpy.ColorSpace.ProPhoto,
              "adobe": rawpy.ColorSpace.Adobe}.get(space)
    if colour is None:
        raise DecodeError(f"the model expects rendition space {space!r}, which RAW decoding does not offer")
    gamma = (1.0, 1.0) if rendition.get("curve") == "linear" else (2.4, 12.92)  # LibRaw's form of the sRGB curve
    try:
        with rawpy.imread(path) as raw:
            s = raw.sizes
            check_pixels(s.width, s.height, max_pixels)
            # a sensor's data cannot fit in a few bytes per hundred pixels, whatever the compression: the file is
            # metadata only (or cut short), and LibRaw would return zeros or leftover memory for it
            size = os.path.getsize(path)
            if size < MIN_RAW_BYTES_PER_PIXEL * s.raw_width * s.raw_height:
                raise DecodeError(f"{size} bytes cannot hold the image data of a {s.raw_width}x{s.raw_height} "
                                  "sensor (metadata only or truncated)")
            rgb = raw.postprocess(use_camera_wb=rendition.get("white_balance", "camera") == "camera",
                                  no_auto_bright=not rendition.get("auto_bright", False), output_bps=16,
                                  output_color=colour, gamma=gamma, half_size=half_size)
    except DecodeError:
        raise
    except rawpy.LibRawFileUnsupportedError:
        raise DecodeError("not a RAW format LibRaw supports (unsupported camera or not a RAW file)") from None
    except rawpy.LibRawIOError:
        raise DecodeError("RAW file is truncated or unreadable (LibRaw I/O error)") from None
    except rawpy.LibRawTooBigError:
        raise DecodeError("RAW image too big for LibRaw") from None
    except rawpy.LibRawDataError:
        raise DecodeError("corrupt RAW data (LibRaw data error)") from None
    except rawpy.LibRawError as e:
        raise DecodeError(f"RAW decoding failed ({type(e).__name__}: {e})") from None
    if rgb.ndim != 3 or rgb.shape[2] != 3:
        raise DecodeError(f"RAW decoded to an unexpected shape {rgb.shape}")
    if not rgb.any():
        raise DecodeError("RAW decoded to an all-black image (no image data in the file)")
    return Decoded(np.ascontiguousarray(rgb))


def _to_uint16_rgb(a: np.ndarray, photometric: str | None = None) -> np.ndarray:
    """Any supported sample layout -> (H, W, 3) uint16; alpha dropped, grayscale replicated."""
    if a.ndim == 2:
        a = a[:, :, None]
    if a.ndim != 3:
        raise DecodeError(f"unsupported image layout with shape {a.shape}")
    channels = a.shape[2]
    if channels in (2, 4) and photometric != "separated":
        a = a[:, :, : channels - 1]  # drop alpha
    elif channels > 4 or channels == 4:
        raise DecodeError(f"{channels}-channel ({photometric or 'unknown'}) images are not supported (CMYK?)")
    if a.dtype == np.uint16:
        out = a
    elif a.dtype == np.uint8:
        out = a.astype(np.uint16) * 257
    elif a.dtype == bool:
        out = a.astype(np.uint16) * 65535
    elif a.dtype.kind == "f":
        f = np.nan_to_num(a.astype(np.float32), nan=0.0, posinf=1.0, neginf=0.0)
        out = np.round(np.clip(f, 0.0, 1.0) * 65535.0).astype(np.uint16)
    elif a.dtype in (np.uint32, np.int32, np.int16, np.int8):
        info = np.iinfo(a.dtype)
        f = (a.astype(np.float64) - max(info.min, 0)) / (info.max - max(info.min, 0))
        out = np.round(np.clip(f, 0, 1) * 65535).astype(np.uint16)
    else:
        raise DecodeError(f"unsupported sample type {a.dtype}")
    if out.shape[2] == 1:
        out = np.repeat(out, 3, axis=2)
    return np.ascontiguousarray(out)


_TIFF_ORIENT = {  # TIFF/EXIF orientation -> (transpose, flip vertical, flip horizontal) after transpose
    1: (False, False, False), 2: (False, False, True), 3: (False, True, True), 4: (False, True, False),
    5: (True, False, False), 6: (True, False, True), 7: (True, True, True), 8: (True, True, False),
}


def apply_orientation(a: np.ndarray, orientation: int) -> np.ndarray:
    transpose, flip_v, flip_h = _TIFF_ORIENT.get(int(orientation or 1), (False, False, False))
    if transpose:
        a = a.transpose(1, 0, 2)
    if flip_v:
        a = a[::-1]
    if flip_h:
        a = a[:, ::-1]
    return np.ascontiguousarray(a)


def _decode_tiff(path: str, max_pixels: int) -> Decoded:
    import tifffile

    try:
        with tifffile.TiffFile(path) as tif:
            if not tif.pages:
                raise DecodeError("TIFF has no pages")
            page = tif.pages[0]
            check_pixels(int(page.imagewidth), int(page.imagelength), max_pixels)
            photometric = page.photometric.name.lower() if page.photometric is not None else None
            if photometric in ("separated", "cielab", "icclab", "itulab", "ycbcr") and page.compression.name != "JPEG":
                name = "CMYK" if photometric == "separated" else photometric.upper()
                raise DecodeError(f"{name} TIFF is not supported (convert it to RGB)")
            a = page.asarray()
            if photometric == "palette" and page.colormap is not None:
                a = np.moveaxis(page.colormap, 0, -1)[a]
            elif photometric == "miniswhite":
                a = np.iinfo(a.dtype).max - a if a.dtype.kind == "u" else 1.0 - a
            # tag values are read lazily: take them while the file is open
            orientation = page.tags.valueof(274)
            icc = page.tags.valueof(34675)
            px = _to_uint16_rgb(a, photometric)
    except DecodeError:
        raise
    except MemoryError:
        raise DecodeError("not enough memory to decode this TIFF") from None
    except Exception as e:
        raise DecodeError(f"corrupt or unreadable TIFF ({type(e).__name__}: {str(e).splitlines()[0][:160]})") from None
    if icc is not None:
        px = _icc_to_srgb_16(px, bytes(icc))
    if orientation is not None:
        px = apply_orientation(px, orientation)
    return Decoded(px)


def _is_srgb(profile) -> bool:
    """Tagged sRGB (by its description): the pixels are already in the working space."""
    from PIL import ImageCms
    desc = (ImageCms.getProfileDescription(profile) or "").lower()
    return "srgb" in desc or "iec61966" in desc


def _icc_to_srgb_16(px: np.ndarray, icc: bytes) -> np.ndarray:
    """Convert 16-bit pixels tagged with a non-sRGB ICC profile to sRGB.

    LittleCMS through Pillow works on 8-bit RGB, so the transform is sampled on a 3D grid of 8-bit colours and
    applied to the 16-bit pixels by trilinear interpolation, which keeps 16-bit smoothness.
    """
    from PIL import Image, ImageCms

    try:
        src = ImageCms.ImageCmsProfile(io.BytesIO(icc))
    except Exception:
        raise DecodeError("embedded ICC profile is unreadable") from None
    if _is_srgb(src):
        return px
    if src.profile.xcolor_space.strip().upper() != "RGB":
        raise DecodeError(f"embedded ICC profile is for {src.profile.xcolor_space.strip()}, not RGB")
    from .lut import apply_lut_u16
    n = 33
    levels = np.round(np.linspace(0, 255, n)).astype(np.uint8)
    r, g, b = np.meshgrid(levels, levels, levels, indexing="ij")
    grid = np.stack([r, g, b], -1).reshape(n * n, n, 3)
    dst = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB"))
    out = ImageCms.profileToProfile(Image.fromarray(grid, "RGB"), src, dst, outputMode="RGB")
    lut = np.asarray(out, dtype=np.float32).reshape(n, n, n, 3) / 255.0
    return apply_lut_u16(px, lut)


def _decode_pillow(path: str, max_pixels: int) -> Decoded:
    from PIL import Image, ImageCms, ImageOps

    Image.MAX_IMAGE_PIXELS = None  # our own limit below, checked before any pixel is decoded
    try:
        with Image.open(path) as im:
            check_pixels(im.width, im.height, max_pixels)
            icc = im.info.get("icc_profile")
            if im.format == "PNG" and im.tile and im.tile[0].args in ("RGB;16B", "RGBA;16B"):
                return _decode_png16(path, icc, im.getexif().get(0x0112, 1))
            im = ImageOps.exif_transpose(im)
            if im.mode in ("I;16", "I;16B", "I;16L", "I"):
                a = np.asarray(im).astype(np.uint16) if im.mode != "I" else np.clip(np.asarray(im), 0, 65535).astype(np.uint16)
                return Decoded(np.ascontiguousarray(np.repeat(a[:, :, None], 3, axis=2)))
            if im.mode == "CMYK":
                raise DecodeError("CMYK JPEG is not supported (convert to RGB)")
            if im.mode not in ("RGB",):
                im = im.convert("RGBA" if "A" in im.mode or "transparency" in im.info else "RGB").convert("RGB")
            if icc:
                try:
                    src = ImageCms.ImageCmsProfile(io.BytesIO(icc))
                    if not _is_srgb(src):
                        dst = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB"))
                        im = ImageCms.profileToProfile(im, src, dst, outputMode="RGB")
                except ImageCms.PyCMSError:
                    pass  # an unusable profile: take the pixels as sRGB, like untagged files
            a = np.asarray(im, dtype=np.uint8)
    except DecodeError:
        raise
    except Exception as e:
        raise DecodeError(f"corrupt or unreadable image ({type(e).__name__}: {str(e).splitlines()[0][:160]})") from None
    return Decoded(a.astype(np.uint16) * 257)


def _decode_png16(path: str, icc: bytes | None, orientation: int) -> Decoded:
    """16-bit RGB(A) PNG at full depth (Pillow would reduce it to 8 bits)."""
    import imagecodecs
    with open(path, "rb") as f:
        a = imagecodecs.png_decode(f.read())
    px = _to_uint16_rgb(a)
    if icc:
        px = _icc_to_srgb_16(px, icc)
    return Decoded(apply_orientation(px, orientation))


# ---------------------------------------------------------------------------------------------------- writing

def encode(pixels: np.ndarray, fmt: str, *, jpeg_quality: int = 95, metadata=None,
           tiff_compression: str | None = None, threads: int = 1) -> bytes:
    """(H, W, 3) uint16 -> file bytes in ``fmt`` with an sRGB ICC profile (see ``encode_to``)."""
    buf = io.BytesIO()
    encode_to(buf, pixels, fmt, jpeg_quality=jpeg_quality, metadata=metadata, tiff_compression=tiff_compression,
              threads=threads)
    return buf.getvalue()


def encode_to(f: BinaryIO, pixels: np.ndarray, fmt: str, *, jpeg_quality: int = 95, metadata=None,
              tiff_compression: str | None = None, threads: int = 1) -> None:
    """Write ``pixels`` as a ``fmt`` file with an sRGB ICC profile into the binary file object ``f``.

    ``metadata`` (``pipeline.metadata.OutputMetadata``) is written into the file: into a TIFF as it is encoded
    (``f`` must then be seekable and, if a real file, readable by its name), into a JPEG or PNG by exiv2 in memory.
    Without it the file carries no metadata besides the ICC profile. Compressed TIFFs are cut into 128-row strips
    that ``threads`` threads compress in parallel.
    """
    icc = srgb_icc_profile()
    if fmt == "tiff16":
        import tifffile
        kw = {}
        if tiff_compression and tiff_compression != "none":
            kw = {"compression": tiff_compression, "predictor": True, "rowsperstrip": 128,
                  "maxworkers": max(1, threads)}
        tiff_meta = None
        if metadata is not None:
            from .metadata import TiffMetadata
            tiff_meta = TiffMetadata.from_metadata(metadata)
            kw["extratags"] = tiff_meta.extratags()
            kw["software"] = metadata.software
            if tiff_meta.resolution is not None:
                kw["resolution"], kw["resolutionunit"] = tiff_meta.resolution[:2], tiff_meta.resolution[2]
        else:
            kw["software"] = False
        start = f.tell()
        tifffile.imwrite(f, pixels, photometric="rgb", iccprofile=icc, metadata=None, byteorder="<", **kw)
        if tiff_meta is not None:
            tiff_meta.append_to(f, start)
        return
    from PIL import Image
    eight = to_uint8(pixels)
    if fmt == "jpeg":
        kw = {"quality": jpeg_quality, "subsampling": 0, "icc_profile": icc}
        save = lambda out: Image.fromarray(eight, "RGB").save(out, "JPEG", **kw)  # noqa: E731
    elif fmt == "png":
        save = lambda out: Image.fromarray(eight, "RGB").save(out, "PNG", icc_profile=icc, compress_level=6)  # noqa: E731
    else:
        raise ValueError(f"unknown output format {fmt!r}; choose from {', '.join(OUTPUT_FORMATS)}")
    if metadata is None:
        save(f)
        return
    from .metadata import embed
    buf = io.BytesIO()
    save(buf)
    f.write(embed(buf.getvalue(), metadata))


def to_uint8(pixels: np.ndarray) -> np.ndarray:
    """16 -> 8 bit with rounding (x * 255 / 65535), only at the very end of the pipeline."""
    return ((pixels.astype(np.uint32) * 255 + 32767) // 65535).astype(np.uint8)


TEMP_PREFIX = ".retouch-tmp-"


def write_atomic(path: str, data: bytes | Callable[[BinaryIO], None], mode: int | None = None,
                 digest: Executor | None = None, on_written: Callable[[], None] | None = None) -> str | None:
    """Write to a temporary file beside ``path``, fsync, then rename: a reader never sees half a file.

    ``data`` is the file's bytes, or a function that writes them into the file object it is given (an encoder
    streaming straight into the file, with no copy of the encoded image in memory). With ``digest``, the SHA-256
    of the written file is computed on that executor while the file is being synced, and returned.
    ``on_written`` is called once the bytes are handed to the OS, before the sync (for stage timings).
    """
    d = os.path.dirname(path) or "."
    os.makedirs(d, exist_ok=True)
    tmp = os.path.join(d, f"{TEMP_PREFIX}{uuid.uuid4().hex}-{os.path.basename(path)}")
    try:
        create = 0o666 if mode is None else mode
        # readable too: a TIFF's EXIF directories are appended after reading back where tifffile put IFD0
        with open(tmp, "x+b", opener=lambda p, flags: os.open(p, flags, create)) as f:
            if callable(data):
                data(f)
            else:
                f.write(data)
            f.flush()
            if on_written is not None:
                on_written()
            from .checkpoint import file_sha256
            sha = digest.submit(file_sha256, tmp) if digest is not None else None
            os.fsync(f.fileno())
        if mode is not None:
            os.chmod(tmp, mode)
        result = sha.result() if sha is not None else None
        os.replace(tmp, path)
        return result
    except OSError as e:
        full = _out_of_space(e, d)  # before the partial file is removed and frees its blocks
        _remove(tmp)
        if full:  # encoders report a full disk their own way ("405900 requested and 61032 written")
            raise OSError(errno.ENOSPC, "no space left on device", path) from None
        raise
    except BaseException:
        _remove(tmp)
        raise


MIN_FREE_BYTES = 1 << 20


def _out_of_space(error: OSError, folder: str) -> bool:
    """Whether a failed write failed for want of space: ENOSPC, or (short writes report no errno) under 1 MiB left."""
    if error.errno == errno.ENOSPC:
        return True
    try:
        return shutil.disk_usage(folder).free < MIN_FREE_BYTES
    except OSError:
        return False


def _remove(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass
