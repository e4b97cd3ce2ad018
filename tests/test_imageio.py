"""Decoding every supported input to 16-bit sRGB, refusing bad ones with a clear cause, and writing outputs."""
import errno
import io
import os
import struct

import numpy as np
import pytest
import tifffile
from PIL import Image

from pipeline.imageio import DecodeError, decode, encode, encode_to, write_atomic

from conftest import need_shared, synthetic_photo


def test_raw_decodes_to_16_bit_srgb():
    d = decode(str(need_shared("data", "raw", "good", "tinydng_colorchart.dng")))
    assert d.pixels.dtype == np.uint16 and d.pixels.ndim == 3 and d.pixels.shape[2] == 3
    assert d.pixels.max() > 20000  # a real exposure, not an empty or 8-bit image
    assert len(np.unique(d.pixels[..., 1])) > 256  # more than 8 bits of levels survive


def test_tiff16_round_trip_is_exact(tmp_path):
    px = synthetic_photo()
    p = tmp_path / "a.tif"
    tifffile.imwrite(p, px, photometric="rgb")
    assert np.array_equal(decode(str(p)).pixels, px)


@pytest.mark.parametrize("kind", ["gray8", "gray16", "rgba16", "float32", "palette", "uint8"])
def test_odd_tiffs_are_processed(tmp_path, kind):
    px = synthetic_photo(40, 60)
    p = tmp_path / f"{kind}.tif"
    if kind == "gray8":
        tifffile.imwrite(p, (px[..., 0] >> 8).astype(np.uint8))
    elif kind == "gray16":
        tifffile.imwrite(p, px[..., 0])
    elif kind == "rgba16":
        tifffile.imwrite(p, np.dstack([px, np.full(px.shape[:2], 65535, np.uint16)]), photometric="rgb",
                         extrasamples=["unassalpha"])
    elif kind == "float32":
        tifffile.imwrite(p, px.astype(np.float32) / 65535, photometric="rgb")
    elif kind == "palette":
        Image.fromarray((px >> 8).astype(np.uint8)).convert("P").save(p)
    else:
        tifffile.imwrite(p, (px >> 8).astype(np.uint8), photometric="rgb")
    d = decode(str(p))
    assert d.pixels.shape == (40, 60, 3) and d.pixels.dtype == np.uint16
    if kind in ("rgba16", "float32"):
        assert np.abs(d.pixels.astype(int) - px.astype(int)).max() <= 1


def test_tiff_orientation_is_applied(tmp_path):
    px = synthetic_photo(20, 30)
    p = tmp_path / "rot.tif"
    tifffile.imwrite(p, px, photometric="rgb", extratags=[(274, "H", 1, 6, True)])  # 6 = rotate 90 CW
    d = decode(str(p))
    assert d.pixels.shape == (30, 20, 3)
    assert np.array_equal(d.pixels, np.rot90(px, k=-1))


def test_jpeg_exif_orientation_is_applied(tmp_path):
    img = Image.fromarray((synthetic_photo(20, 30) >> 8).astype(np.uint8))
    exif = Image.Exif()
    exif[0x0112] = 8
    p = tmp_path / "o.jpg"
    img.save(p, exif=exif.tobytes(), quality=95)
    assert decode(str(p)).pixels.shape == (30, 20, 3)


def test_cmyk_is_refused_with_a_cause(tmp_path):
    p = tmp_path / "cmyk.tif"
    tifffile.imwrite(p, np.zeros((8, 8, 4), np.uint8), photometric="separated")
    with pytest.raises(DecodeError, match="CMYK TIFF is not supported"):
        decode(str(p))


def bomb_tiff(path, w, h):
    entries = [(256, 4, 1, w), (257, 4, 1, h), (258, 3, 1, 16), (259, 3, 1, 1), (262, 3, 1, 2),
               (273, 4, 1, 8), (277, 3, 1, 3), (278, 4, 1, h), (279, 4, 1, 16), (284, 3, 1, 1)]
    b = b"II" + struct.pack("<HI", 42, 24) + b"\0" * 16 + struct.pack("<H", len(entries))
    for tag, typ, cnt, val in entries:
        b += struct.pack("<HHI", tag, typ, cnt) + (struct.pack("<HH", val, 0) if typ == 3 else struct.pack("<I", val))
    path.write_bytes(b + struct.pack("<I", 0))


def test_decompression_bomb_is_refused_before_decoding(tmp_path):
    p = tmp_path / "bomb.tif"
    bomb_tiff(p, 100_000, 100_000)
    with pytest.raises(DecodeError, match="pixel limit"):
        decode(str(p))
    png = tmp_path / "big.png"
    Image.new("RGB", (3000, 3000)).save(png)
    with pytest.raises(DecodeError, match="pixel limit"):
        decode(str(png), max_pixels=1_000_000)


@pytest.mark.parametrize("content,name,cause", [
    (b"", "empty.dng", "empty file"),
    (b"not a raw file\n" * 50, "notes.nef", "not a RAW format"),
    (b"\x89PNG\r\n\x1a\n" + b"\0" * 20, "broken.png", "corrupt"),
    (b"hello", "x.tif", "not a TIFF"),
    (b"hello", "x.xyz", "unsupported file type"),
])
def test_bad_files_raise_one_line_causes(tmp_path, content, name, cause):
    p = tmp_path / name
    p.write_bytes(content)
    with pytest.raises(DecodeError, match=cause) as e:
        decode(str(p))
    assert "\n" not in str(e.value)


def test_truncated_raw_is_an_error():
    raw = need_shared("data", "raw", "good", "tinydng_colorchart.dng").read_bytes()
    import tempfile
    with tempfile.NamedTemporaryFile(suffix=".dng") as f:
        f.write(raw[:200_000])
        f.flush()
        with pytest.raises(DecodeError):
            decode(f.name)


def test_wrong_extension_is_read_by_content(tmp_path):
    p = tmp_path / "really_a_png.tif"
    Image.fromarray((synthetic_photo(10, 12) >> 8).astype(np.uint8)).save(p, format="PNG")
    assert decode(str(p)).pixels.shape == (10, 12, 3)


def test_outputs_carry_srgb_icc_and_16_bits():
    px = synthetic_photo()
    data = encode(px, "tiff16")
    with tifffile.TiffFile(io.BytesIO(data)) as t:
        assert t.pages[0].dtype == np.uint16 and t.pages[0].iccprofile
        assert np.array_equal(t.pages[0].asarray(), px)
    im = Image.open(io.BytesIO(encode(px, "jpeg", jpeg_quality=90)))
    assert im.format == "JPEG" and im.info.get("icc_profile")
    assert Image.open(io.BytesIO(encode(px, "png"))).info.get("icc_profile")


def test_write_atomic_leaves_no_temporary(tmp_path):
    write_atomic(str(tmp_path / "o.tif"), b"abc", 0o640)
    assert os.listdir(tmp_path) == ["o.tif"]
    assert (tmp_path / "o.tif").read_bytes() == b"abc"
    assert oct(os.stat(tmp_path / "o.tif").st_mode & 0o777) == oct(0o640)


def test_streamed_write_equals_encoded_bytes_and_returns_the_file_hash(tmp_path):
    import hashlib
    from concurrent.futures import ThreadPoolExecutor
    from pipeline.imageio import encode_to
    px = synthetic_photo(120, 80)
    with ThreadPoolExecutor(1) as pool:
        sha = write_atomic(str(tmp_path / "o.tif"), lambda f: encode_to(f, px, "tiff16"), digest=pool)
    data = (tmp_path / "o.tif").read_bytes()
    assert data == encode(px, "tiff16") and sha == hashlib.sha256(data).hexdigest()
    assert os.listdir(tmp_path) == ["o.tif"]


def test_failed_streamed_write_leaves_nothing(tmp_path):
    def broken(f):
        f.write(b"half a file")
        raise ValueError("encoder failed")
    with pytest.raises(ValueError):
        write_atomic(str(tmp_path / "o.tif"), broken)
    assert os.listdir(tmp_path) == []


def test_compressed_tiffs_are_lossless():
    px = synthetic_photo(300, 200)
    for codec in ("zstd", "zlib", "lzw"):
        data = encode(px, "tiff16", tiff_compression=codec, threads=2)
        assert np.array_equal(tifffile.imread(io.BytesIO(data)), px), codec
        if codec != "lzw":  # LZW grows on this noisy test image
            assert len(data) < px.nbytes, codec


def _swapped_primaries_profile() -> bytes:
    """A valid RGB ICC profile that is not sRGB: sRGB with its red and blue primaries swapped."""
    from pipeline.imageio import srgb_icc_profile
    icc = bytearray(srgb_icc_profile())
    n = struct.unpack(">I", icc[128:132])[0]
    entries = {bytes(icc[132 + 12 * i:136 + 12 * i]): 132 + 12 * i for i in range(n)}
    r, b = entries[b"rXYZ"], entries[b"bXYZ"]
    icc[r + 4:r + 12], icc[b + 4:b + 12] = icc[b + 4:b + 12], icc[r + 4:r + 12]
    return bytes(icc).replace("sRGB".encode("utf-16-be"), "xRGB".encode("utf-16-be")).replace(b"sRGB", b"xRGB")


def test_embedded_icc_profile_is_converted_to_srgb(tmp_path):
    red = np.zeros((8, 8, 3), np.uint16)
    red[..., 0] = 50000
    p = tmp_path / "tagged.tif"
    tifffile.imwrite(p, red, photometric="rgb", iccprofile=_swapped_primaries_profile())
    px = decode(str(p)).pixels.astype(int)
    assert px[..., 2].mean() > 30000 and px[..., 0].mean() < 15000  # "red" in that space is blue in sRGB
    q = tmp_path / "tagged.png"
    Image.fromarray((red >> 8).astype(np.uint8)).save(q, icc_profile=_swapped_primaries_profile())
    px = decode(str(q)).pixels.astype(int)
    assert px[..., 2].mean() > 30000 and px[..., 0].mean() < 15000
    plain = tmp_path / "untagged.tif"
    tifffile.imwrite(plain, red, photometric="rgb")
    assert np.array_equal(decode(str(plain)).pixels, red)  # untagged: taken as sRGB, untouched


def test_16_bit_png_keeps_its_depth(tmp_path):
    import imagecodecs
    px = synthetic_photo(30, 40)
    p = tmp_path / "deep.png"
    p.write_bytes(imagecodecs.png_encode(px))
    assert np.array_equal(decode(str(p)).pixels, px)
    rgba = np.dstack([px, np.full(px.shape[:2], 65535, np.uint16)])
    p.write_bytes(imagecodecs.png_encode(rgba))
    assert np.array_equal(decode(str(p)).pixels, px)


@pytest.fixture
def tiny_disk(tmp_path):
    """A real 256 KiB filesystem (tmpfs), or a skip where mounting is not allowed."""
    import subprocess
    mount = tmp_path / "tiny"
    mount.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mount)], capture_output=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs to fill ({r.stderr.decode().strip() or 'not permitted'})")
    yield mount
    subprocess.run(["umount", str(mount)], check=False)


def test_a_full_disk_says_so_and_leaves_nothing(tiny_disk):
    pixels = np.random.default_rng(0).integers(0, 65535, (200, 300, 3), dtype=np.uint16)  # 360 kB, incompressible
    target = str(tiny_disk / "out.tif")
    with pytest.raises(OSError) as info:
        write_atomic(target, lambda f: encode_to(f, pixels, "tiff16"))
    assert info.value.errno == errno.ENOSPC and "no space left on device" in str(info.value)
    assert os.listdir(tiny_disk) == []  # the partial temporary file is gone