"""Runs image tasks on a pool of Ray actors, replaces dead ones, retries their images a bounded number of times,
and streams every result into the ledger. Only tasks and small rows travel through Ray; pixels never do."""
from __future__ import annotations

import collections
import time
from dataclasses import dataclass, replace
from collections.abc import Iterable

from .ledger import LedgerRow, LedgerWriter, now
from .progress import Progress
from .worker import ImageProcessor, ImageTask, WorkerConfig

QUEUED_PER_WORKER = 1  # beyond the images a worker holds: hides scheduling latency without hoarding images
DEFAULT_MAX_ATTEMPTS = 3
START_TIMEOUT_S = 600  # no worker started at all for this long: the cluster cannot place one


class JobInterrupted(Exception):
    def __init__(self, done: int, total: int):
        super().__init__(f"interrupted after {done} of {total} images")
        self.done, self.total = done, total


@dataclass
class Outcome:
    ok: int = 0
    error: int = 0
    skipped: int = 0
    seconds: float = 0.0  # from the first worker ready to the last image
    startup_seconds: float = 0.0  # Ray actors created until the first one has loaded its model
    worker_restarts: int = 0
    errors: list[str] | None = None
    warnings: list[str] | None = None  # ok images with a problem that lost nothing of the image

    @property
    def images(self) -> int:
        return self.ok + self.error + self.skipped

    def count(self, row: LedgerRow) -> None:
        setattr(self, row.status, getattr(self, row.status) + 1)
        if row.status == "error":
            self.errors = (self.errors or []) + [row.error or row.source_path]
        elif row.warning:
            self.warnings = (self.warnings or []) + [f"{row.source_path}: {row.warning}"]


class _Worker:
    """The Ray actor: loads the model once, then processes tasks."""

    def __init__(self, config: WorkerConfig):
        self.processor = ImageProcessor(config)
        self.processor.retoucher.warm_up()

    def process_many(self, tasks: list[ImageTask]) -> list[LedgerRow]:
        return [self.processor.process(t) for t in tasks]

    def ready(self) -> bool:
        return True


class _Feed:
    """Tasks in order from a lazy iterable (a manifest read a batch at a time), retried ones first."""

    def __init__(self, tasks: Iterable[ImageTask]):
        self._tasks = iter(tasks)
        self._retry: collections.deque[ImageTask] = collections.deque()
        self._next = next(self._tasks, None)

    def __bool__(self) -> bool:
        return bool(self._retry) or self._next is not None

    def pop(self) -> ImageTask:
        if self._retry:
            return self._retry.popleft()
        task, self._next = self._next, next(self._tasks, None)
        return task

    def retry(self, task: ImageTask) -> None:
        self._retry.appendleft(task)


CALL_SECONDS = 0.25  # the work one call to a worker carries, once images are known to be quick
MAX_IMAGES_PER_CALL = 64


class _Pace:
    """How many images go to a worker in one call: one while images take longer than CALL_SECONDS (a RAW, a big
    TIFF), more for quick ones (web-size JPEGs, skips), so that the driver's ~1 ms per call (BENCHMARKS.md) stays
    small beside the work it hands out."""

    def __init__(self) -> None:
        self.seconds: float | None = None  # moving average of an image's seconds in a worker

    def update(self, rows: list[LedgerRow]) -> None:
        for r in rows:
            if r.seconds is not None:
                self.seconds = r.seconds if self.seconds is None else 0.8 * self.seconds + 0.2 * r.seconds

    @property
    def images(self) -> int:
        if self.seconds is None:
            return 1
        return max(1, min(MAX_IMAGES_PER_CALL, int(CALL_SECONDS / max(self.seconds, 1e-4))))


def execute(tasks: Iterable[ImageTask], total: int, config: WorkerConfig, placement, writer: LedgerWriter,
            progress: Progress, max_attempts: int = DEFAULT_MAX_ATTEMPTS) -> Outcome:
    """Process every task exactly once into the ledger; tasks are drawn from ``tasks`` only as workers free up."""
    import ray
    from ray.exceptions import ObjectLostError, RayActorError, WorkerCrashedError

    images = max(1, placement.images_per_worker)
    options = {}
    if images > 1:  # the images share the worker's cores: each RAW decode gets its share of OpenMP threads
        options["runtime_env"] = {"env_vars": {"OMP_NUM_THREADS": str(placement.decode_threads)}}
    actor_cls = ray.remote(_Worker).options(num_cpus=placement.cpus_per_worker, num_gpus=placement.gpus_per_worker,
                                            max_restarts=0, max_task_retries=0, max_concurrency=images, **options)
    cfg = replace(config, device=placement.device, threads=placement.threads_per_worker, images=images)
    outcome = Outcome()
    start = time.monotonic()
    queue = _Feed(tasks)
    n_workers = max(1, min(placement.workers, total))
    actors = [actor_cls.remote(cfg) for _ in range(n_workers)]
    # work goes only to actors that have started: one that cannot be placed (a lost node, too few CPUs left)
    # waits without holding images, and the others carry on
    starting: dict = {a.ready.remote(): i for i, a in enumerate(actors)}
    ready: set[int] = set()
    in_flight: dict = {}  # object ref -> (actor index, [tasks])
    pace = _Pace()
    load: list[int] = [0] * n_workers
    last_progress = time.monotonic()
    start_failures = 0
    first_ready = None

    def emit(row: LedgerRow) -> None:
        _emit(row, writer, outcome, progress)

    def dispatch() -> None:
        for i in sorted(ready):
            while queue and load[i] < images + QUEUED_PER_WORKER:
                batch = [queue.pop()]
                while queue and len(batch) < pace.images:
                    batch.append(queue.pop())
                ref = actors[i].process_many.remote(batch)
                in_flight[ref] = (i, batch)
                load[i] += 1

    def replace_actor(i: int) -> None:
        try:
            ray.kill(actors[i], no_restart=True)
        except Exception:
            pass
        ready.discard(i)
        for ref in [r for r, j in starting.items() if j == i]:
            del starting[ref]
        actors[i] = actor_cls.remote(cfg)
        starting[actors[i].ready.remote()] = i
        outcome.worker_restarts += 1

    def fail_task(i: int, batch: list[ImageTask], e: Exception) -> None:
        """The worker died: every image it held is retried elsewhere, a bounded number of times."""
        dead = [r for r, (j, _) in in_flight.items() if j == i]
        retry = batch + [t for r in dead for t in in_flight.pop(r)[1]]
        load[i] = 0
        replace_actor(i)
        for t in retry:
            if t.attempts >= max_attempts:
                emit(_died_row(t, cfg, e))
            else:
                queue.retry(replace(t, attempts=t.attempts + 1))

    try:
        while in_flight or queue:
            refs = list(in_flight) + list(starting)
            done, _ = ray.wait(refs, num_returns=1, timeout=1.0)
            if done and len(refs) > 1:  # whatever else is ready too: one scan of the refs for many results
                done, _ = ray.wait(refs, num_returns=len(refs), timeout=0)
            for ref in done:
                if ref in starting:
                    i = starting.pop(ref)
                    try:
                        ray.get(ref)
                        ready.add(i)
                        if first_ready is None:
                            first_ready = time.monotonic()
                            outcome.startup_seconds = first_ready - start
                            progress.start = first_ready  # rates count from here, as the summary does
                    except (RayActorError, WorkerCrashedError, ObjectLostError) as e:
                        start_failures += 1
                        if start_failures > 3 * n_workers:  # not bad luck: workers cannot start at all
                            raise RuntimeError(f"Ray workers fail to start: {_first_line(e)}") from None
                        replace_actor(i)
                    continue
                if ref not in in_flight:  # its worker died earlier in this round: its images are queued again
                    continue
                i, batch = in_flight.pop(ref)
                load[i] -= 1
                last_progress = time.monotonic()
                try:
                    rows = ray.get(ref)
                except (RayActorError, WorkerCrashedError, ObjectLostError) as e:
                    fail_task(i, batch, e)
                    continue
                except Exception as e:  # an error that escaped the per-image guard: still one row per image
                    rows = [_error_row(t, cfg, f"internal error {type(e).__name__}: {_first_line(e)}") for t in batch]
                pace.update(rows)
                for row in rows:
                    emit(row)
            dispatch()
            if not ready and not in_flight and time.monotonic() - last_progress > START_TIMEOUT_S:
                raise RuntimeError(f"no Ray worker could start within {START_TIMEOUT_S} s (the cluster has "
                                   f"{ray.cluster_resources()} but each worker asks for {placement.cpus_per_worker} "
                                   f"CPU and {placement.gpus_per_worker} GPU)")
    except KeyboardInterrupt:
        raise JobInterrupted(outcome.images, total) from None
    finally:
        writer.flush()  # whatever happened, every finished image reaches the ledger
        for a in actors:
            try:
                ray.kill(a, no_restart=True)
            except Exception:
                pass
    outcome.seconds = time.monotonic() - (first_ready or start)
    return outcome


def execute_local(tasks: Iterable[ImageTask], total: int, config: WorkerConfig, writer: LedgerWriter,
                  progress: Progress, threads: int, device: str = "cpu") -> Outcome:
    """The same worker code in this process, for jobs too small to be worth starting Ray: one ImageProcessor that
    holds up to ``threads`` images at once (they decode and encode side by side; the model stage takes one at a
    time with every thread), writing the same ledger rows."""
    from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait

    images = max(1, min(threads, total))
    cfg = replace(config, device=device, threads=threads, images=images)
    outcome = Outcome()
    start = time.monotonic()
    processor = ImageProcessor(cfg)
    outcome.startup_seconds = time.monotonic() - start
    progress.start = time.monotonic()
    pool = ThreadPoolExecutor(max_workers=images, thread_name_prefix="image")
    feed = iter(tasks)
    pending: dict = {}

    def top_up() -> None:  # a few images queued beyond those in progress, never the whole job
        while len(pending) < images + QUEUED_PER_WORKER:
            task = next(feed, None)
            if task is None:
                return
            pending[pool.submit(processor.process, task)] = task
    try:
        top_up()
        while pending:
            done, _ = wait(pending, timeout=1.0, return_when=FIRST_COMPLETED)
            for f in done:
                task = pending.pop(f)
                try:
                    row = f.result()
                except Exception as e:  # an error that escaped the per-image guard: still one row
                    row = _error_row(task, cfg, f"internal error {type(e).__name__}: {_first_line(e)}")
                _emit(row, writer, outcome, progress)
            top_up()
    except KeyboardInterrupt:
        pool.shutdown(wait=False, cancel_futures=True)  # images in progress finish; their rows are not awaited
        raise JobInterrupted(outcome.images, total) from None
    finally:
        writer.flush()
    pool.shutdown()
    outcome.seconds = time.monotonic() - progress.start
    return outcome


def _emit(row: LedgerRow, writer: LedgerWriter, outcome: Outcome, progress: Progress) -> None:
    """A finished image: into the ledger, the counts and the progress bar."""
    writer.add(row)
    outcome.count(row)
    progress.update(row.status)


def _first_line(e: Exception) -> str:
    lines = [line for line in str(e).splitlines() if line.strip()]
    return lines[-1][:300] if lines else type(e).__name__


def _died_row(task: ImageTask, cfg: WorkerConfig, e: Exception) -> LedgerRow:
    return _error_row(task, cfg, f"the worker processing it died {task.attempts} time(s) ({type(e).__name__}); "
                                 "possibly out of memory")


def _error_row(task: ImageTask, cfg: WorkerConfig, cause: str) -> LedgerRow:
    return LedgerRow(image_id=task.image_id, source_path=task.source, status="error", created_at=now(),
                     error=f"{task.source}: {cause}", attempts=task.attempts, command=task.command,
                     parent_run_id=task.parent_run_id, render_settings=cfg.settings.to_json(),
                     output_format=cfg.settings.output_format)
