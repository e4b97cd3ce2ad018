"""Photo metadata in outputs: the source's EXIF, IPTC and XMP carried over, and the edit recorded as XMP.

The policy (what is kept, changed and dropped) lives in the constants and ``output_exif`` / ``output_xmp`` below;
the README's "Outputs" section states it for users.

exiv2 reads every source kind (RAW through its TIFF-structured and maker parsers, TIFF, JPEG, PNG) and writes JPEG
and PNG outputs, which are small enough to rewrite in memory. A 16-bit TIFF output is not rewritten by exiv2, which
copies the whole file through memory (12 MP: +0.26 s and +138 MiB peak, against +0.03 s and no memory for the way
taken; benchmarks/metadata-cost.txt): exiv2 encodes the tags into a 1-pixel TIFF, whose IFD0 tags tifffile then
writes with the pixels and whose EXIF and GPS directories are appended after them (``TiffMetadata``).
"""
from __future__ import annotations

import contextlib
import functools
import io
import struct
import threading
from dataclasses import dataclass, field
from typing import BinaryIO

XMP_NAMESPACE = "http://ns.retouch-batch.org/edit/1.0/"
XMP_PREFIX = "retouch"
SIDECAR_SUFFIX = ".xmp"

# IFD0 tags that describe the photo rather than the layout of the source file
KEPT_IFD0 = frozenset({
    "Make", "Model", "DateTime", "ImageDescription", "Artist", "Copyright", "UniqueCameraModel",
    "LocalizedCameraModel", "CameraSerialNumber", "LensInfo", "Rating", "RatingPercent", "XPTitle", "XPComment",
    "XPAuthor", "XPKeywords", "XPSubject", "XResolution", "YResolution", "ResolutionUnit"})
KEPT_GROUPS = frozenset({"Photo", "GPSInfo"})  # the Exif and GPS directories
# Exif-directory tags about the source's encoding or colour space, which the output does not share
DROPPED_PHOTO = frozenset({"ComponentsConfiguration", "CompressedBitsPerPixel", "PixelXDimension",
                           "PixelYDimension", "InteroperabilityTag", "ColorSpace", "Gamma", "MakerNote"})
# XMP of the source that describes its file, or an edit of the source that must not be re-applied to the output
# (Lightroom re-applies crs: settings found in a TIFF)
DROPPED_XMP_PREFIXES = ("Xmp.crs.", "Xmp.darktable.", f"Xmp.{XMP_PREFIX}.", "Xmp.xmp.Thumbnails",
                        "Xmp.photoshop.ICCProfile", "Xmp.tiff.ImageWidth", "Xmp.tiff.ImageLength",
                        "Xmp.tiff.BitsPerSample", "Xmp.tiff.Compression", "Xmp.tiff.PhotometricInterpretation",
                        "Xmp.tiff.SamplesPerPixel", "Xmp.tiff.PlanarConfiguration", "Xmp.tiff.YCbCrSubSampling",
                        "Xmp.tiff.YCbCrPositioning")

@functools.lru_cache(maxsize=1)
def software() -> str:
    """What outputs name as the software that made them."""
    from importlib.metadata import PackageNotFoundError, version
    try:
        return f"retouch-batch {version('retouch-batch')}"
    except PackageNotFoundError:
        return "retouch-batch"


_init_lock = threading.Lock()
_initialized = False


def _exiv2():
    """exiv2, with its XMP toolkit initialized once per process (not thread-safe) and its log quiet: problems
    reach the ledger row as a warning instead."""
    global _initialized
    import exiv2
    if not _initialized:
        with _init_lock:
            if not _initialized:
                exiv2.XmpParser.initialize()
                exiv2.XmpProperties.registerNs(XMP_NAMESPACE, XMP_PREFIX)
                exiv2.LogMsg.setLevel(exiv2.LogMsg.Level.mute)
                _initialized = True
    return exiv2


class MetadataError(Exception):
    """Metadata that could not be written; the output is then written without it (a warning, not an error)."""


@contextlib.contextmanager
def _as_metadata_error(what: str):
    """Any failure inside becomes a MetadataError: metadata never costs an image (the caller writes it without)."""
    try:
        yield
    except MemoryError:
        raise
    except Exception as e:
        raise MetadataError(f"{what}: {_exiv2_message(e)}") from None


@dataclass
class SourceMetadata:
    """The source's metadata as exiv2 read it (the image object owns the data)."""
    image: object

    @property
    def exif(self):
        return self.image.exifData()

    @property
    def iptc(self):
        return self.image.iptcData()

    @property
    def xmp(self):
        return self.image.xmpData()


def read_source(path: str) -> tuple[SourceMetadata | None, str | None]:
    """The source's metadata, or None and a one-line warning (never an exception: the image still renders)."""
    exiv2 = _exiv2()
    try:
        image = exiv2.ImageFactory.open(path)
        image.readMetadata()
    except MemoryError:
        raise
    except Exception as e:  # exiv2's own errors, and anything else a damaged file provokes
        return None, f"metadata not copied: {_exiv2_message(e)}"
    return SourceMetadata(image), None


def _exiv2_message(e: Exception) -> str:
    """exiv2's errors carry (code, message); others their text."""
    args = getattr(e, "args", ())
    msg = args[1] if len(args) > 1 and type(e).__name__ == "Exiv2Error" else str(e)
    return str(msg).splitlines()[0][:160] if msg else type(e).__name__


@dataclass(frozen=True)
class EditRecord:
    """How an output was made: written into the output's XMP and its ``.xmp`` sidecar.

    The output embeds the edit itself (retoucher, weights, strengths, image, source, and ``run_id``: the ledger run
    whose strengths these are), which is the same for a re-render with unchanged strengths, so that such a re-render
    stays byte-identical. The sidecar adds which run wrote the file and how (``render_run_id``, ``command``,
    ``parent_run_id``).
    """
    model: str
    model_version: str
    weights_sha256: str
    operators: tuple[str, ...]
    strengths: tuple[float, ...]
    run_id: str  # the run that predicted these strengths, or last changed them
    image_id: str
    source_sha256: str
    render_run_id: str = ""  # the run that wrote this output
    command: str = "run"
    parent_run_id: str | None = None
    software: str = "retouch-batch"

    def properties(self, sidecar: bool = False) -> dict[str, str | list[str]]:
        """XMP property name -> text, or a list for an ordered array (operators and strengths pair by position).
        The retoucher is "Retoucher", not "Model", which readers would confuse with the camera model."""
        props: dict[str, str | list[str]] = {
            "Retoucher": self.model, "RetoucherVersion": self.model_version, "WeightsSHA256": self.weights_sha256,
            "Operators": list(self.operators), "Strengths": [repr(float(s)) for s in self.strengths],
            "RunID": self.run_id, "ImageID": self.image_id, "SourceSHA256": self.source_sha256,
            "Software": self.software}
        if sidecar:
            props["RenderRunID"] = self.render_run_id or self.run_id
            props["Command"] = self.command
            if self.parent_run_id:
                props["ParentRunID"] = self.parent_run_id
        return props


def read_edit_run(path: str) -> str | None:
    """The ``RunID`` of the edit record an output embeds, or None (no such file or record)."""
    exiv2 = _exiv2()
    try:
        image = exiv2.ImageFactory.open(path)
        image.readMetadata()
        xmp = image.xmpData()
        it = xmp.findKey(exiv2.XmpKey(f"Xmp.{XMP_PREFIX}.RunID"))
        return None if it == xmp.end() else str(it.toString())
    except Exception:  # missing or unreadable: the caller falls back to the ledger's run
        return None


# ------------------------------------------------------------------------------------------ what goes out

# maker-note entries that name the lens, for sources without the standard LensModel tag
MAKER_LENS_KEYS = ("Exif.Canon.LensModel", "Exif.CanonCs.LensType", "Exif.NikonLd4.LensIDNumber",
                   "Exif.NikonLd3.LensIDNumber", "Exif.NikonLd2.LensIDNumber", "Exif.Sony1.LensID", "Exif.Sony2.LensID",
                   "Exif.Pentax.LensType", "Exif.OlympusEq.LensModel", "Exif.Panasonic.LensType")


def output_exif(source: SourceMetadata | None, fmt: str, width: int, height: int, software: str):
    """The output's EXIF: the source's photo description, with what the output changed set anew.

    Kept: the IFD0 photo tags (``KEPT_IFD0``), the Exif directory and GPS; TIFF/EP files (some RAWs) keep exposure
    tags in IFD0, which move to the Exif directory; the lens named by a maker note becomes the standard LensModel.
    Changed: orientation 1 (the pixels are turned), software, colour space sRGB, pixel dimensions (JPEG/PNG).
    Dropped: thumbnails and sub-images (they show the unedited photo), maker notes (camera-specific blocks that
    embed previews and whose internal offsets break when moved), the source's pixel layout and colour tags, and
    empty strings.
    """
    exiv2 = _exiv2()
    out = exiv2.ExifData()
    if source is not None:
        photo_tags = _photo_tag_numbers()
        src = source.exif
        have_photo = {d.tag() for d in src if d.groupName() == "Photo"}
        for d in src:
            group, name = d.groupName(), d.tagName()
            if d.typeId() == exiv2.TypeId.asciiString and not str(d.toString()).strip():
                continue
            if group == "Image":
                if name in KEPT_IFD0:
                    out.add(d)
                elif d.tag() in photo_tags and d.tag() not in have_photo and name not in DROPPED_PHOTO:
                    out.add(exiv2.ExifKey(d.tag(), "Photo"), d.getValue())  # TIFF/EP: IFD0 -> Exif directory
            elif group in KEPT_GROUPS and name not in DROPPED_PHOTO:
                out.add(d)
        keys = {d.key() for d in out}
        if "Exif.Image.Model" not in keys and "Exif.Image.UniqueCameraModel" in keys:
            out["Exif.Image.Model"] = str(out["Exif.Image.UniqueCameraModel"].toString())  # DNG: the same fact
        if "Exif.Photo.LensModel" not in keys:
            lens = maker_lens_name(src)
            if lens:
                out["Exif.Photo.LensModel"] = lens
                version = out.findKey(exiv2.ExifKey("Exif.Photo.ExifVersion"))
                if version == out.end() or _exif_version(version) < b"0230":
                    out["Exif.Photo.ExifVersion"] = exiv2.DataValue(b"0232")  # LensModel: 2.3
    out["Exif.Image.Orientation"] = exiv2.UShortValue(1)
    out["Exif.Image.Software"] = software
    if fmt in ("jpeg", "png"):
        out["Exif.Photo.PixelXDimension"] = exiv2.ULongValue(width)
        out["Exif.Photo.PixelYDimension"] = exiv2.ULongValue(height)
    if any(d.groupName() == "Photo" for d in out):  # what the EXIF standard requires of an Exif directory
        keys = {d.key() for d in out}
        out["Exif.Photo.ColorSpace"] = exiv2.UShortValue(1)  # sRGB
        if "Exif.Photo.ExifVersion" not in keys:
            out["Exif.Photo.ExifVersion"] = exiv2.DataValue(b"0232")
        if "Exif.Photo.FlashpixVersion" not in keys:
            out["Exif.Photo.FlashpixVersion"] = exiv2.DataValue(b"0100")
        if fmt == "jpeg":
            out["Exif.Photo.ComponentsConfiguration"] = exiv2.DataValue(bytes([1, 2, 3, 0]))
    if fmt == "jpeg":
        keys = {d.key() for d in out}
        if "Exif.Image.XResolution" not in keys:
            out["Exif.Image.XResolution"] = exiv2.URationalValue((72, 1))
            out["Exif.Image.YResolution"] = exiv2.URationalValue((72, 1))
            out["Exif.Image.ResolutionUnit"] = exiv2.UShortValue(2)
        out["Exif.Image.YCbCrPositioning"] = exiv2.UShortValue(1)
    out.sortByTag()
    return out


def _exif_version(datum) -> bytes:
    """ExifVersion as its four ASCII digits (exiv2 prints it as their codes: "48 50 50 49" for 0221)."""
    try:
        return bytes(int(x) for x in str(datum.toString()).split())
    except ValueError:
        return b""


def maker_lens_name(exif) -> str | None:
    """The lens as exiv2 decodes it from a maker note, or None when no maker note names one."""
    exiv2 = _exiv2()
    for key in MAKER_LENS_KEYS:
        it = exif.findKey(exiv2.ExifKey(key))
        if it != exif.end():
            name = str(it.print(exif)).strip()
            if name and name != "n/a" and not name.startswith("(") and not name.isdigit():
                return name
    return None


def output_xmp(source: SourceMetadata | None, edit: EditRecord | None, width: int, height: int, software: str,
               sidecar: bool = False):
    """The output's XMP (or its sidecar's): the source's, less what describes the source file or an edit of it, plus
    the edit."""
    exiv2 = _exiv2()
    out = exiv2.XmpData()
    if source is not None:
        for d in source.xmp:
            if not d.key().startswith(DROPPED_XMP_PREFIXES):
                out.add(d)
        keys = {d.key() for d in out}
        for key, value in (("Xmp.tiff.Orientation", "1"), ("Xmp.exif.PixelXDimension", str(width)),
                           ("Xmp.exif.PixelYDimension", str(height)), ("Xmp.exif.ColorSpace", "1")):
            if key in keys:
                out[key] = value
    if source is not None or edit is not None:
        out["Xmp.xmp.CreatorTool"] = software
    if edit is not None:
        for name, value in edit.properties(sidecar).items():
            key = exiv2.XmpKey(f"Xmp.{XMP_PREFIX}.{name}")
            if isinstance(value, list):
                seq = exiv2.XmpArrayValue(exiv2.TypeId.xmpSeq)
                for v in value:
                    seq.read(v)
                out.add(key, seq)
            else:
                out.add(key, exiv2.XmpTextValue(value))
    return out


def xmp_packet(xmp, sidecar: bool = False) -> str:
    """XMP serialized: a padded packet for embedding, or a bare ``x:xmpmeta`` document for a sidecar file."""
    exiv2 = _exiv2()
    if xmp.empty():
        return ""
    flags = exiv2.XmpParser.XmpFormatFlags.useCompactFormat
    if sidecar:
        flags |= exiv2.XmpParser.XmpFormatFlags.omitPacketWrapper
    status, packet = exiv2.XmpParser.encode(xmp, flags)
    if status != 0:
        raise ValueError(f"XMP could not be serialized (exiv2 status {status})")
    return packet


def sidecar_text(source: SourceMetadata | None, edit: EditRecord, width: int, height: int) -> str:
    """The ``<output>.xmp`` sidecar: the output's XMP (the source's, and the edit) as an XMP document."""
    with _as_metadata_error("sidecar not written"):
        return xmp_packet(output_xmp(source, edit, width, height, software(), sidecar=True), sidecar=True)


@dataclass
class OutputMetadata:
    """Everything an output file carries besides its pixels and ICC profile."""
    exif: object
    iptc: object | None
    xmp: object
    software: str

    @classmethod
    def build(cls, source: SourceMetadata | None, edit: EditRecord | None, fmt: str, width: int, height: int,
              software: str) -> "OutputMetadata":
        with _as_metadata_error("metadata not copied"):
            return cls(output_exif(source, fmt, width, height, software),
                       source.iptc if source is not None else None,
                       output_xmp(source, edit, width, height, software), software)


def embed(encoded: bytes, meta: OutputMetadata) -> bytes:
    """A JPEG or PNG file's bytes with ``meta`` written in by exiv2 (which keeps the encoder's ICC profile)."""
    with _as_metadata_error("metadata not written"):
        return _written_by_exiv2(encoded, meta)


def _written_by_exiv2(encoded: bytes, meta: OutputMetadata) -> bytes:
    """An image file's bytes with ``meta`` written in by exiv2, in memory."""
    image = _exiv2().ImageFactory.open(encoded)
    image.readMetadata()
    image.setExifData(meta.exif)
    if meta.iptc is not None:
        image.setIptcData(meta.iptc)
    image.setXmpData(meta.xmp)
    image.writeMetadata()
    with image.io().mmap() as data:
        return bytes(data)


# ------------------------------------------------------------------------------------------ 16-bit TIFF outputs

TIFF_TYPE_SIZES = {1: 1, 2: 1, 3: 2, 4: 4, 5: 8, 6: 1, 7: 1, 8: 2, 9: 4, 10: 8, 11: 4, 12: 8, 13: 4}
EXIF_IFD_TAG, GPS_IFD_TAG = 34665, 34853
# tifffile refuses to write directory pointers, so IFD0 gets placeholders under the tag number just below each
# (unused in IFD0, so the directory's tag order holds when they are renumbered)
PLACEHOLDER_TAGS = {EXIF_IFD_TAG: EXIF_IFD_TAG - 1, GPS_IFD_TAG: GPS_IFD_TAG - 1}
# IFD0 tags tifffile writes itself for the output's pixels (or that point at directories we append)
TIFFFILE_OWN_TAGS = frozenset({254, 255, 256, 257, 258, 259, 262, 273, 277, 278, 279, 284, 305, 317, 338, 339, 34675,
                               282, 283, 296, EXIF_IFD_TAG, GPS_IFD_TAG})


@dataclass(frozen=True)
class Entry:
    """One TIFF directory entry with its value as the file's bytes (little-endian)."""
    tag: int
    type: int
    count: int
    value: bytes


@dataclass
class TiffMetadata:
    """The output metadata laid out for a classic little-endian TIFF: IFD0 entries for tifffile, and the Exif and
    GPS directories to append after the pixels."""
    ifd0: list[Entry] = field(default_factory=list)
    exif_ifd: list[Entry] = field(default_factory=list)
    gps_ifd: list[Entry] = field(default_factory=list)
    resolution: tuple[tuple[int, int], tuple[int, int], int] | None = None  # x, y, unit (for tifffile's own tags)

    @classmethod
    def from_metadata(cls, meta: OutputMetadata) -> "TiffMetadata":
        with _as_metadata_error("metadata not written"):
            out = cls.from_tiff(_tiny_tiff_with(meta))
            out.resolution = _resolution(meta.exif)
            return out

    @classmethod
    def from_tiff(cls, data: bytes) -> "TiffMetadata":
        ifd0 = read_ifd(data, struct.unpack_from("<I", data, 4)[0])
        out = cls()
        by_tag = {e.tag: e for e in ifd0}
        if EXIF_IFD_TAG in by_tag:
            out.exif_ifd = [e for e in read_ifd(data, _long(by_tag[EXIF_IFD_TAG])) if e.tag != 40965]  # no Interop
        if GPS_IFD_TAG in by_tag:
            out.gps_ifd = read_ifd(data, _long(by_tag[GPS_IFD_TAG]))
        out.ifd0 = [e for e in ifd0 if e.tag not in TIFFFILE_OWN_TAGS]
        return out

    def extratags(self) -> list[tuple]:
        """tifffile ``extratags``: the IFD0 entries, and placeholders for the appended directories' offsets."""
        tags = [(e.tag, e.type, None, e.value, True) for e in self.ifd0]
        for tag, entries in ((EXIF_IFD_TAG, self.exif_ifd), (GPS_IFD_TAG, self.gps_ifd)):
            if entries:
                tags.append((PLACEHOLDER_TAGS[tag], 4, 1, 0, True))
        return tags

    def append_to(self, f: BinaryIO, start: int = 0) -> None:
        """Append the Exif and GPS directories to the TIFF that tifffile just wrote into ``f`` (readable and
        seekable; the TIFF begins at ``start``) and turn IFD0's placeholders into pointers to them."""
        if not (self.exif_ifd or self.gps_ifd):
            return
        f.seek(start)
        head = f.read(8)
        if head[:4] != b"II*\x00":
            raise ValueError("EXIF can only be appended to a classic little-endian TIFF")
        placeholders = _entry_offsets(f, start, struct.unpack_from("<I", head, 4)[0], set(PLACEHOLDER_TAGS.values()))
        end = f.seek(0, io.SEEK_END) - start
        for tag, entries in ((EXIF_IFD_TAG, self.exif_ifd), (GPS_IFD_TAG, self.gps_ifd)):
            if not entries:
                continue
            end += (-end) % 4
            f.seek(start + end)
            block = ifd_bytes(entries, end)
            f.write(block)
            f.seek(start + placeholders[PLACEHOLDER_TAGS[tag]])
            f.write(struct.pack("<HHII", tag, 4, 1, end))
            end += len(block)
        f.seek(0, io.SEEK_END)


def _resolution(exif) -> tuple[tuple[int, int], tuple[int, int], int] | None:
    """(x, y, unit) from EXIF for tifffile, which writes the resolution tags itself (exiv2 leaves a TIFF's own)."""
    exiv2 = _exiv2()
    found = {}
    for name in ("XResolution", "YResolution", "ResolutionUnit"):
        it = exif.findKey(exiv2.ExifKey(f"Exif.Image.{name}"))
        if it == exif.end():
            return None
        found[name] = it.getValue()
    x, y = found["XResolution"].toRational(0), found["YResolution"].toRational(0)
    if x[1] == 0 or y[1] == 0:
        return None
    return (tuple(x), tuple(y), int(found["ResolutionUnit"].toInt64(0)))


def _long(e: Entry) -> int:
    return struct.unpack_from("<I", e.value)[0]


def _tiny_tiff_with(meta: OutputMetadata) -> bytes:
    """A 1-pixel TIFF into which exiv2 encoded ``meta``: every tag in its file form, read back by ``read_ifd``."""
    import numpy as np
    import tifffile
    buf = io.BytesIO()
    tifffile.imwrite(buf, np.zeros((1, 1), np.uint8), metadata=None, software=False, byteorder="<")
    out = _written_by_exiv2(buf.getvalue(), meta)
    if out[:4] != b"II*\x00":  # exiv2 keeps the byte order it found
        raise ValueError("unexpected TIFF byte order from exiv2")
    return out


def read_ifd(data: bytes, offset: int) -> list[Entry]:
    """The entries of the classic little-endian TIFF directory at ``offset``, each with its value's bytes."""
    (n,) = struct.unpack_from("<H", data, offset)
    entries = []
    for i in range(n):
        tag, typ, count = struct.unpack_from("<HHI", data, offset + 2 + 12 * i)
        size = TIFF_TYPE_SIZES.get(typ, 1) * count
        at = offset + 2 + 12 * i + 8
        if size > 4:
            (at,) = struct.unpack_from("<I", data, at)
        entries.append(Entry(tag, typ, count, bytes(data[at:at + size])))
    return entries


def ifd_bytes(entries: list[Entry], offset: int) -> bytes:
    """A classic little-endian TIFF directory to be placed at file ``offset``: entries sorted by tag, then the
    values that do not fit in an entry (word-aligned), no next directory."""
    entries = sorted(entries, key=lambda e: e.tag)
    head = 2 + 12 * len(entries) + 4
    table, values = [struct.pack("<H", len(entries))], bytearray()
    for e in entries:
        if len(e.value) <= 4:
            table.append(struct.pack("<HHI", e.tag, e.type, e.count) + e.value.ljust(4, b"\0"))
        else:
            table.append(struct.pack("<HHII", e.tag, e.type, e.count, offset + head + len(values)))
            values += e.value + b"\0" * (len(e.value) % 2)
    table.append(struct.pack("<I", 0))
    return b"".join(table) + bytes(values)


def _entry_offsets(f: BinaryIO, start: int, ifd_offset: int, tags: set[int]) -> dict[int, int]:
    """Offsets (from the TIFF's start) of the entries of ``tags`` in the directory at ``ifd_offset``."""
    f.seek(start + ifd_offset)
    (n,) = struct.unpack("<H", f.read(2))
    raw = f.read(12 * n)
    found = {}
    for i in range(n):
        (tag,) = struct.unpack_from("<H", raw, 12 * i)
        if tag in tags:
            found[tag] = ifd_offset + 2 + 12 * i
    return found


@functools.lru_cache(maxsize=1)
def _photo_tag_numbers() -> frozenset[int]:
    """Tag numbers of the Exif directory (TIFF/EP stores some of them in IFD0)."""
    return frozenset(t.tag_ for t in _exiv2().ExifTags.tagList("Photo"))
