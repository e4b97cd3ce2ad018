"""Manifests validated in one streamed pass and read back in batches: the same entries and the same refusals as
reading the whole table, whatever the batch size."""
import os

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import manifests.manifest as manifest_module
from manifests.manifest import ManifestError, load_manifest


def _csv(path, header, rows):
    path.write_text("\n".join([",".join(header)] + [",".join(r) for r in rows]) + "\n")
    return str(path)


@pytest.fixture
def small_batches(monkeypatch):
    """Batches of 3 rows, so that every check below has to look across batches."""
    monkeypatch.setattr(manifest_module, "BATCH_ROWS", 3)


def test_entries_come_in_batches_in_manifest_order(tmp_path, small_batches):
    rows = [(f"in/{i:02d}.jpg",) for i in range(10)]
    m = load_manifest(_csv(tmp_path / "m.csv", ["path"], rows), str(tmp_path / "out"))
    batches = list(m.batches(size=3))
    assert [len(b) for b in batches] == [3, 3, 3, 1] and m.rows == 10
    assert [e.image_id for b in batches for e in b] == [f"in/{i:02d}.jpg" for i in range(10)]
    assert batches[0][0].source == str(tmp_path / "in" / "00.jpg") and batches[0][0].output == "in/00.tif"


def test_shared_stems_across_batches_keep_their_extension(tmp_path, small_batches):
    rows = [("a/x.dng",), ("b.jpg",), ("c.jpg",), ("d.jpg",), ("a/X.jpg",)]  # x.dng and X.jpg: rows 1 and 5
    m = load_manifest(_csv(tmp_path / "m.csv", ["path"], rows), str(tmp_path / "out"), "jpeg")
    outputs = [e.output for e in m.entries]
    assert outputs == ["a/x_dng.jpg", "b.jpg", "c.jpg", "d.jpg", "a/X_jpg.jpg"]


@pytest.mark.parametrize("header,rows,message", [
    (["path", "id"], [("1.jpg", "a"), ("2.jpg", "b"), ("3.jpg", "c"), ("4.jpg", "d"), ("5.jpg", "b")],
     "duplicate id 'b' (lines 3 and 6)"),
    (["path", "output"], [("1.jpg", "x"), ("2.jpg", ""), ("3.jpg", ""), ("4.jpg", ""), ("x.png", "")],
     "duplicate output 'x.tif' (lines 2 and 6)"),
    (["path", "id"], [("1.jpg", ""), ("2.jpg", ""), ("3.jpg", ""), ("", "d")], "line 5: empty path"),
])
def test_duplicates_and_bad_rows_are_found_across_batches(tmp_path, small_batches, header, rows, message):
    with pytest.raises(ManifestError, match=message.replace("(", r"\(").replace(")", r"\)")):
        load_manifest(_csv(tmp_path / "m.csv", header, rows), str(tmp_path / "out"))


def test_an_output_that_would_overwrite_a_source_is_refused(tmp_path, small_batches):
    out = tmp_path / "out"
    (out / "in").mkdir(parents=True)
    (out / "in" / "a.tif").write_bytes(b"not really")
    rows = [("1.jpg",), ("2.jpg",), ("3.jpg",), (str(out / "in" / "a.tif"), "")]
    m = _csv(tmp_path / "m.csv", ["path", "output"], [r if len(r) == 2 else (r[0], "") for r in rows] +
             [("5.jpg", "in/a.tif")])
    with pytest.raises(ManifestError, match="would overwrite a source image"):
        load_manifest(m, str(out))


def test_a_parquet_manifest_streams_like_a_csv(tmp_path, small_batches):
    paths = [f"in/{i}.png" for i in range(7)]
    pq.write_table(pa.table({"path": paths, "id": [None, "b", None, None, None, None, "g"]}), tmp_path / "m.parquet")
    m = load_manifest(str(tmp_path / "m.parquet"), str(tmp_path / "out"), "png")
    assert [e.image_id for e in m.entries] == ["in/0.png", "b", "in/2.png", "in/3.png", "in/4.png", "in/5.png", "g"]
    assert m.entries[1].output == "in/1.png"
    pq.write_table(pa.table({"path": ["a.png", "b.png", "c.png", "d.png"], "id": ["1", "2", "3", "2"]}),
                   tmp_path / "d.parquet")
    with pytest.raises(ManifestError, match=r"duplicate id '2' \(rows 2 and 4\)"):
        load_manifest(str(tmp_path / "d.parquet"), str(tmp_path / "out"))


def test_the_digest_names_the_rows_and_the_format(tmp_path):
    a = _csv(tmp_path / "a.csv", ["path"], [("1.jpg",), ("2.jpg",)])
    b = _csv(tmp_path / "b.csv", ["path"], [("1.jpg",), ("3.jpg",)])
    out = str(tmp_path / "out")
    assert load_manifest(a, out).digest == load_manifest(a, out).digest
    assert load_manifest(a, out).digest != load_manifest(b, out).digest
    assert load_manifest(a, out).digest != load_manifest(a, out, "jpeg").digest


def test_a_folder_is_refused_and_a_missing_file_is_left_to_its_job_row(tmp_path):
    (tmp_path / "sub").mkdir()
    m = load_manifest(_csv(tmp_path / "m.csv", ["path"], [("missing.jpg",)]), str(tmp_path / "out"))
    assert m.rows == 1 and not os.path.exists(m.entries[0].source)
    with pytest.raises(ManifestError, match="line 3: 'sub' is a folder"):
        load_manifest(_csv(tmp_path / "m.csv", ["path"], [("missing.jpg",), ("sub",)]), str(tmp_path / "out"))
