"""The source's metadata in every output format, the edit as XMP in the output and its sidecar; exiftool is the
independent reader (Debian libimage-exiftool-perl; .ci/run installs it)."""
import io
import json
import os
import shutil
import struct
import subprocess

import numpy as np
import pytest
import tifffile
from click.testing import CliRunner
from PIL import Image

from cli import main
from jobs.ledger import read_ledger
from jobs.worker import ImageProcessor, ImageTask, RenderSettings, WorkerConfig
from pipeline import metadata
from pipeline.imageio import OUTPUT_FORMATS, encode

from conftest import need_shared

FORMATS = list(OUTPUT_FORMATS)
TIFF_LAYOUT_TAGS = {"ImageWidth", "ImageHeight", "BitsPerSample", "Compression", "PhotometricInterpretation",
                    "StripOffsets", "SamplesPerPixel", "RowsPerStrip", "StripByteCounts", "XResolution",
                    "YResolution", "ResolutionUnit", "PlanarConfiguration"}


def exiftool(*args) -> list[dict]:
    if shutil.which("exiftool") is None:
        pytest.skip("exiftool is not installed (Debian package libimage-exiftool-perl; .ci/run installs it)")
    r = subprocess.run(["exiftool", "-j", "-G1", *map(str, args)], capture_output=True, text=True)
    assert r.returncode in (0, 1), r.stderr
    return json.loads(r.stdout)


def serious_warnings(path) -> list[str]:
    """exiftool's -validate findings, less those marked minor."""
    tags = exiftool("-validate", "-warning", "-error", "-a", path)[0]
    return [str(v) for k, v in tags.items() if k.startswith("ExifTool:") and ("Warning" in k or "Error" in k)
            and not str(v).startswith("[minor]")]


def edit_of(tags: dict) -> tuple[list[str], list[float]]:
    ops = tags["XMP-retouch:Operators"]
    strengths = tags["XMP-retouch:Strengths"]
    ops = ops if isinstance(ops, list) else [ops]
    strengths = strengths if isinstance(strengths, list) else [strengths]
    return ops, [float(s) for s in strengths]


# ------------------------------------------------------------------------------------------ TIFF directories

def test_a_directory_written_at_an_offset_reads_back_entry_for_entry():
    entries = [metadata.Entry(0x9003, 2, 20, b"2008:04:20 19:12:06\0"),  # beyond 4 bytes: stored after the table
               metadata.Entry(0x829A, 5, 1, struct.pack("<II", 4, 10)),
               metadata.Entry(0x8827, 3, 1, struct.pack("<H", 100)),  # inline
               metadata.Entry(0x9000, 7, 4, b"0232")]
    at = 1002
    blob = bytes(at) + metadata.ifd_bytes(entries, at)
    assert metadata.read_ifd(blob, at) == sorted(entries, key=lambda e: e.tag)


def test_tiff_metadata_is_appended_and_the_pixels_are_untouched():
    source, warning = metadata.read_source(str(need_shared("data", "photos", "Storm.jpg")))
    assert warning is None
    px = (np.random.default_rng(1).random((60, 80, 3)) * 65535).astype(np.uint16)
    meta = metadata.OutputMetadata.build(source, None, "tiff16", 80, 60, "retouch-batch test")
    data = encode(px, "tiff16", metadata=meta)
    assert np.array_equal(tifffile.imread(io.BytesIO(data)), px)
    with tifffile.TiffFile(io.BytesIO(data)) as t:
        tags = t.pages[0].tags
        assert tags["Make"].value == "Canon" and tags["Orientation"].value == 1
        assert tags["ExifTag"].value["DateTimeOriginal"] == "2008:04:20 19:12:06"  # tifffile follows the pointer
        assert tags["Software"].value == "retouch-batch test"


# ------------------------------------------------------------------------------------------ every source kind

SOURCES = {  # file -> what exiftool must find in each output
    ("photos", "Storm.jpg"): {"IFD0:Make": "Canon", "IFD0:Model": "Canon EOS 400D DIGITAL",
                              "ExifIFD:DateTimeOriginal": "2008:04:20 19:12:06"},
    ("raw", "good", "tinydng_colorchart.dng"): {"IFD0:Make": "Canon", "IFD0:Model": "Canon EOS Kiss X4"},
    ("raw", "good", "imageio_Nikon_uncompressed.nef"): {"IFD0:Make": "Nikon", "IFD0:Model": "Nikon COOLSCAN IV ED"},
    ("raw", "good", "imageio_Blackmagic.dng"): {"IFD0:UniqueCameraModel": "Blackmagic Pocket Cinema Camera 4K"},
}


@pytest.fixture(scope="module", params=FORMATS)
def rendered(request, tmp_path_factory):
    """Every source of SOURCES rendered into one format, by the worker code the Ray actors run."""
    fmt = request.param
    out = tmp_path_factory.mktemp(f"meta-{fmt}")
    proc = ImageProcessor(WorkerConfig(weights=None, settings=RenderSettings(output_format=fmt, half_size=True,
                                                                            xmp_sidecar=True),
                                       run_id="run-test"))
    rows = {}
    for parts in SOURCES:
        src = need_shared("data", *parts)
        rows[parts] = proc.process(ImageTask(parts[-1], str(src), str(out / (parts[-1] + OUTPUT_FORMATS[fmt]))))
    return fmt, rows


def test_camera_and_capture_metadata_reach_every_format(rendered):
    fmt, rows = rendered
    for parts, expected in SOURCES.items():
        row = rows[parts]
        assert row.status == "ok" and row.warning is None, (row.error, row.warning)
        tags = exiftool(row.output_path)[0]
        for key, value in expected.items():
            assert tags.get(key) == value, (fmt, parts[-1], key, tags.get(key))
        assert tags["IFD0:Orientation"] == "Horizontal (normal)"
        assert tags["ICC_Profile:ProfileDescription"] == "sRGB built-in"
        assert tags["IFD0:Software"].startswith("retouch-batch")
        assert not any(k.startswith(("IFD1:", "SubIFD")) for k in tags)  # no thumbnail of the unedited photo
        assert serious_warnings(row.output_path) == [], (fmt, parts[-1])


def test_the_edit_travels_in_the_file_and_its_sidecar(rendered):
    fmt, rows = rendered
    row = rows[("photos", "Storm.jpg")]
    embedded, sidecar = exiftool(row.output_path, row.output_path + ".xmp")
    for tags in (embedded, sidecar):
        assert edit_of(tags) == (row.operators, row.strengths)
        assert tags["XMP-retouch:Retoucher"] == row.model == "neurop"
        assert tags["XMP-retouch:WeightsSHA256"] == row.weights_sha256
        assert tags["XMP-retouch:SourceSHA256"] == row.source_sha256
        assert tags["XMP-retouch:RunID"] == "run-test" and tags["XMP-retouch:ImageID"] == "Storm.jpg"
    assert serious_warnings(row.output_path + ".xmp") == []


# ------------------------------------------------------------------------------------------ IPTC, XMP, GPS, strip

@pytest.fixture(scope="module")
def tagged_jpeg(tmp_path_factory):
    """A real photo with IPTC caption and keywords, XMP subject, GPS, a Camera Raw setting and orientation 6."""
    exiv2 = metadata._exiv2()
    path = tmp_path_factory.mktemp("tagged") / "tagged.jpg"
    Image.open(need_shared("data", "photos", "Storm.jpg")).resize((240, 160)).save(path, quality=90)
    image = exiv2.ImageFactory.open(str(path))
    image.readMetadata()
    exif, iptc, xmp = image.exifData(), image.iptcData(), image.xmpData()
    exif["Exif.Image.Make"] = "Canon"
    exif["Exif.Image.Orientation"] = exiv2.UShortValue(6)
    exif["Exif.GPSInfo.GPSLatitudeRef"] = "N"
    exif["Exif.GPSInfo.GPSLatitude"] = exiv2.URationalValue((43, 1))
    iptc["Iptc.Application2.Caption"] = "Storm over the bay"
    iptc["Iptc.Application2.Keywords"] = "storm"
    xmp["Xmp.dc.subject"] = "weather"
    xmp["Xmp.crs.Exposure2012"] = "+1.00"  # an edit of the source, which must not be re-applied to the output
    image.writeMetadata()
    return path


@pytest.mark.parametrize("fmt", FORMATS)
def test_iptc_xmp_and_gps_are_kept_and_source_edits_dropped(tagged_jpeg, tmp_path, fmt):
    proc = ImageProcessor(WorkerConfig(weights=None, settings=RenderSettings(output_format=fmt)))
    row = proc.process(ImageTask("t", str(tagged_jpeg), str(tmp_path / ("t" + OUTPUT_FORMATS[fmt]))))
    assert row.status == "ok", row.error
    assert (row.width, row.height) == (160, 240)  # turned upright
    tags = exiftool(row.output_path)[0]
    assert tags["IPTC:Caption-Abstract"] == "Storm over the bay" and tags["IPTC:Keywords"] == "storm"
    assert tags["XMP-dc:Subject"] == "weather"
    assert tags["GPS:GPSLatitudeRef"] == "North" and tags["GPS:GPSLatitude"].startswith("43 deg")
    assert tags["IFD0:Orientation"] == "Horizontal (normal)"
    assert not any(k.startswith("XMP-crs:") for k in tags)
    if fmt != "tiff16":
        assert (tags["ExifIFD:ExifImageWidth"], tags["ExifIFD:ExifImageHeight"]) == (160, 240)


@pytest.mark.parametrize("fmt", FORMATS)
def test_strip_metadata_leaves_only_the_colour_profile(tagged_jpeg, tmp_path, fmt):
    proc = ImageProcessor(WorkerConfig(weights=None, settings=RenderSettings(output_format=fmt,
                                                                            strip_metadata=True, xmp_sidecar=True)))
    row = proc.process(ImageTask("t", str(tagged_jpeg), str(tmp_path / ("t" + OUTPUT_FORMATS[fmt]))))
    assert row.status == "ok", row.error
    tags = exiftool("-EXIF:all", "-IPTC:all", "-XMP:all", "-GPS:all", "-MakerNotes:all", row.output_path)[0]
    left = {k.split(":", 1)[1] for k in tags if k != "SourceFile"}
    assert left <= (TIFF_LAYOUT_TAGS if fmt == "tiff16" else set()), left  # exiftool counts a TIFF's own as EXIF
    assert exiftool("-ICC_Profile:ProfileDescription", row.output_path)[0]["ICC_Profile:ProfileDescription"]
    sidecar = exiftool(row.output_path + ".xmp")[0]  # the edit still travels beside the output, nothing else
    assert edit_of(sidecar) == (row.operators, row.strengths)
    assert "XMP-dc:Subject" not in sidecar


def test_the_sidecar_is_opt_in(tmp_path):
    src = need_shared("data", "photos", "Storm.jpg")
    row = ImageProcessor(WorkerConfig(weights=None)).process(ImageTask("s", str(src), str(tmp_path / "s.tif")))
    assert row.status == "ok" and not os.path.exists(row.output_path + ".xmp")
    assert edit_of(exiftool(row.output_path)[0]) == (row.operators, row.strengths)  # the output carries the edit


def test_unreadable_metadata_is_a_warning_and_the_image_is_rendered(tmp_path):
    buf = io.BytesIO()
    Image.open(need_shared("data", "photos", "Dune.jpg")).resize((120, 80)).save(buf, "JPEG", quality=90)
    data = buf.getvalue()
    payload = b"Exif\0\0II*\0\xff\xff\xff\x7f" + bytes(20)  # an EXIF block whose first directory is past its end
    src = tmp_path / "broken-exif.jpg"
    src.write_bytes(data[:2] + b"\xff\xe1" + struct.pack(">H", len(payload) + 2) + payload + data[2:])
    proc = ImageProcessor(WorkerConfig(weights=None, settings=RenderSettings(output_format="jpeg")))
    row = proc.process(ImageTask("b", str(src), str(tmp_path / "b.jpg")))
    assert row.status == "ok" and row.warning.startswith("metadata not copied:"), (row.error, row.warning)
    assert edit_of(exiftool(row.output_path)[0]) == (row.operators, row.strengths)  # the edit record still is


# ------------------------------------------------------------------------------------------ run and rerender

def test_rerender_updates_the_embedded_edit_and_the_sidecar(tmp_path, ray_cluster):
    manifest = tmp_path / "m.csv"
    manifest.write_text(f"path\n{need_shared('data', 'photos', 'Storm.jpg')}\n"
                        f"{need_shared('data', 'raw', 'good', 'tinydng_colorchart.dng')}\n")
    out, again = tmp_path / "out", tmp_path / "again"
    runner = CliRunner()
    r = runner.invoke(main, ["run", str(manifest), "--out", str(out), "--format", "jpeg", "--xmp-sidecar",
                             "--workers", "1", "--no-progress"])
    assert r.exit_code == 0, r.output
    first = {x.image_id: x for x in read_ledger(out / "ledger")}
    r = runner.invoke(main, ["rerender", str(out / "ledger"), "--out", str(again), "--shift", "ex=+0.2",
                             "--workers", "1", "--no-progress"])
    assert r.exit_code == 0, r.output
    second = {x.image_id: x for x in read_ledger(again / "ledger") if x.command == "rerender"}
    assert second.keys() == first.keys()
    for image_id, row in second.items():
        before = first[image_id]
        embedded, sidecar = exiftool(row.output_path, row.output_path + ".xmp")
        for tags in (embedded, sidecar):
            assert edit_of(tags) == (row.operators, row.strengths)
            assert tags["XMP-retouch:RunID"] == row.run_id != before.run_id  # the run that set these strengths
        assert sidecar["XMP-retouch:Command"] == "rerender" and sidecar["XMP-retouch:ParentRunID"] == before.run_id
        assert sidecar["XMP-retouch:RenderRunID"] == row.run_id
        assert "XMP-retouch:Command" not in embedded  # the file holds the edit, not the job that wrote it
        assert row.strengths[1] == pytest.approx(before.strengths[1] + 0.2)
    storm = next(r for k, r in second.items() if k.endswith("Storm.jpg"))
    assert exiftool(storm.output_path)[0]["IFD0:Model"] == "Canon EOS 400D DIGITAL"
    assert os.path.isfile(first[storm.image_id].output_path + ".xmp")
    # unchanged strengths, twice over (a re-render of the re-render): the same bytes as the first run's outputs
    same, same2 = tmp_path / "same", tmp_path / "same2"
    assert runner.invoke(main, ["rerender", str(out / "ledger"), "--out", str(same), "--workers", "1",
                                "--no-progress"]).exit_code == 0
    assert runner.invoke(main, ["rerender", str(same / "ledger"), "--out", str(same2), "--no-progress"]).exit_code == 0
    for image_id, row in first.items():
        for folder in (same, same2):
            again_row = next(x for x in read_ledger(folder / "ledger") if x.image_id == image_id)
            assert again_row.output_sha256 == row.output_sha256, (folder.name, image_id)
            assert exiftool(again_row.output_path + ".xmp")[0]["XMP-retouch:RenderRunID"] == again_row.run_id
