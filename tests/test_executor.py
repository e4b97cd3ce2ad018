"""The executor's pure parts: the task feed (lazy, retries first) and the pace of images per call to a worker."""
from jobs.executor import MAX_IMAGES_PER_CALL, _Feed, _Pace
from jobs.ledger import LedgerRow
from jobs.worker import ImageTask


def _task(i):
    return ImageTask(str(i), f"/src/{i}.jpg", f"/out/{i}.tif")


def test_the_feed_draws_lazily_and_gives_retries_first():
    drawn = []

    def tasks():
        for i in range(3):
            drawn.append(i)
            yield _task(i)
    feed = _Feed(tasks())
    assert drawn == [0]  # only what the first dispatch will take
    first = feed.pop()
    feed.retry(first)
    assert feed.pop() is first and drawn == [0, 1]
    assert [feed.pop().image_id for _ in range(2)] == ["1", "2"] and not feed


def test_quick_images_go_several_to_a_call_slow_ones_alone():
    pace = _Pace()
    assert pace.images == 1  # nothing known yet
    pace.update([LedgerRow("a", "/a", "ok", seconds=2.0)])
    assert pace.images == 1  # a RAW: one per call
    for _ in range(30):
        pace.update([LedgerRow("b", "/b", "ok", seconds=0.02)])
    assert 10 <= pace.images <= 13  # ~0.25 s of work per call
    for _ in range(30):
        pace.update([LedgerRow("c", "/c", "skipped", seconds=0.0001)])
    assert pace.images == MAX_IMAGES_PER_CALL
    pace.update([LedgerRow("d", "/d", "error", seconds=None)])  # rows without a time change nothing
    assert pace.images == MAX_IMAGES_PER_CALL
