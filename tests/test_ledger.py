"""The ledger's part files: compaction keeps every row and survives an interruption."""
import shutil

from click.testing import CliRunner

from cli import main
from jobs.ledger import LedgerRow, LedgerWriter, compact, ledger_files, now, read_ledger


def _ledger(root, runs=2, rows=7):
    for run in range(runs):
        w = LedgerWriter(root, f"run{run}", flush_rows=1, min_flush_seconds=0)  # a part file per row, as a slow job
        for i in range(rows):
            w.add(LedgerRow(f"img{i}", f"/src/{i}.dng", "ok" if i % 3 else "error", model="neurop",
                            operators=["bc", "ex", "vb"], strengths=[0.1 * i, -0.2, 0.3] if i % 3 else [],
                            error=None if i % 3 else f"/src/{i}.dng: corrupt", created_at=now(), seconds=0.5 + i))
        w.flush()


def _key(rows):
    return sorted((r.run_id, r.image_id, r.status, tuple(r.strengths), r.error, r.created_at, r.seconds) for r in rows)


def test_compaction_keeps_every_row_in_one_file_per_run(tmp_path):
    root = tmp_path / "ledger"
    _ledger(root)
    before = read_ledger(root)
    assert len(ledger_files(root)) == 14
    r = CliRunner().invoke(main, ["ledger", "compact", str(root)])
    assert r.exit_code == 0, r.output
    assert "2 run(s) compacted, 14 part files merged" in r.output
    assert len(ledger_files(root)) == 2 and len(list(root.glob("run_id=*/*.parquet"))) == 2
    assert _key(read_ledger(root)) == _key(before)
    # appending after compaction, then compacting again
    w = LedgerWriter(root, "run1", flush_rows=1, min_flush_seconds=0)
    w.add(LedgerRow("late", "/src/late.dng", "ok", operators=["ex"], strengths=[0.5], created_at=now()))
    w.flush()
    assert len(compact(root, log=lambda m: None)) == 1
    after = read_ledger(root)
    assert len(after) == 15 and _key([x for x in after if x.image_id != "late"]) == _key(before)


def test_an_interrupted_compaction_loses_nothing_and_duplicates_nothing(tmp_path):
    root = tmp_path / "ledger"
    _ledger(root, runs=1)
    before = read_ledger(root)
    saved = tmp_path / "parts"
    shutil.copytree(root / "run_id=run0", saved)
    compact(root, log=lambda m: None)
    # the state after a crash between the new file's rename and the old parts' removal: both on disk
    for p in saved.glob("*.parquet"):
        shutil.copy(p, root / "run_id=run0" / p.name)
    assert len(list(root.glob("run_id=*/*.parquet"))) == 8
    assert _key(read_ledger(root)) == _key(before)  # the replaced parts are not read twice
    done = compact(root, log=lambda m: None)  # and the next compaction removes them
    assert done[0].orphans_removed == 7
    assert len(list(root.glob("run_id=*/*.parquet"))) == 1 and _key(read_ledger(root)) == _key(before)


def test_the_arrow_index_finds_what_the_row_by_row_reading_finds(tmp_path):
    """Resuming looks rows up a batch at a time in Arrow: the newest row per image, per status and per run, as
    latest_by_image over every row says."""
    from jobs.ledger import LedgerIndex, latest_by_image
    root = tmp_path / "ledger"
    _ledger(root, runs=3)
    w = LedgerWriter(root, "run1", flush_rows=1, min_flush_seconds=0)  # a later skipped row for img1 in run1
    w.add(LedgerRow("img1", "/src/1.dng", "skipped", operators=["bc"], strengths=[0.5], created_at=now()))
    w.flush()
    rows = read_ledger(root)
    table = LedgerIndex.read(root)
    for statuses in (("ok", "skipped"), ("ok", "error", "skipped")):
        expected = latest_by_image(rows, statuses)
        index = LedgerIndex.newest(table, statuses, columns=LedgerIndex.COLUMNS + ("created_at", "run_id"))
        assert len(index) == len(expected)
        found = index.rows(["img1", "img0", "nothing", "img4"])
        assert set(found) == {k for k in ("img1", "img0", "img4") if k in expected}
        for k, row in found.items():
            assert (row.run_id, row.status, row.strengths, row.created_at) == \
                (expected[k].run_id, expected[k].status, expected[k].strengths, expected[k].created_at)
    assert LedgerIndex.newest(table, ("ok", "skipped")).rows(["img1"])["img1"].status == "skipped"
    run1 = LedgerIndex.newest(table, run_id="run1")
    assert list(run1.contains(["img0", "img6", "img7"])) == [True, True, False]
    assert run1.counts() == {"ok": 3, "error": 3, "skipped": 1}  # img1's newest row in run1 is the skipped one
    assert sorted(r.image_id for r in run1.errors()) == ["img0", "img3", "img6"]
    assert len(LedgerIndex.newest(LedgerIndex.read(tmp_path / "none"))) == 0
