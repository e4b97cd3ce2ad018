"""Runs image tasks on a pool of Ray actors, replaces dead ones, retries their images a bounded number of times,
and streams every result into the ledger. Only tasks and small rows travel through Ray; pixels never do."""
from __future__ import annotations

import collections
import time
from dataclasses import dataclass, replace
from typing import Callable

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

    def process(self, task: ImageTask) -> LedgerRow:
        return self.processor.process(task)

    def ready(self) -> bool:
        return True


def execute(tasks: list[ImageTask], config: WorkerConfig, placement, writer: LedgerWriter,
            progress: Progress, max_attempts: int = DEFAULT_MAX_ATTEMPTS,
            record: Callable[[LedgerRow], bool] | None = None) -> Outcome:
    """Process every task exactly once into the ledger (``record(row)`` decides whether a row is written)."""
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
    queue = collections.deque(tasks)
    n_workers = max(1, min(placement.workers, len(tasks)))
    actors = [actor_cls.remote(cfg) for _ in range(n_workers)]
    # work goes only to actors that have started: one that cannot be placed (a lost node, too few CPUs left)
    # waits without holding images, and the others carry on
    starting: dict = {a.ready.remote(): i for i, a in enumerate(actors)}
    ready: set[int] = set()
    in_flight: dict = {}  # object ref -> (actor index, task)
    load: list[int] = [0] * n_workers
    last_progress = time.monotonic()
    start_failures = 0
    first_ready = None

    def emit(row: LedgerRow) -> None:
        _emit(row, writer, outcome, progress, record)

    def dispatch() -> None:
        for i in sorted(ready):
            while queue and load[i] < images + QUEUED_PER_WORKER:
                task = queue.popleft()
                ref = actors[i].process.remote(task)
                in_flight[ref] = (i, task)
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

    def fail_task(i: int, task: ImageTask, e: Exception) -> None:
        """The worker died: every image it held is retried elsewhere, a bounded number of times."""
        dead = [r for r, (j, _) in in_flight.items() if j == i]
        retry = [task] + [in_flight.pop(r)[1] for r in dead]
        load[i] = 0
        replace_actor(i)
        for t in retry:
            if t.attempts >= max_attempts:
                emit(_died_row(t, cfg, e))
            else:
                queue.appendleft(replace(t, attempts=t.attempts + 1))

    try:
        while in_flight or queue:
            done, _ = ray.wait(list(in_flight) + list(starting), num_returns=1, timeout=1.0)
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
                i, task = in_flight.pop(ref)
                load[i] -= 1
                last_progress = time.monotonic()
                try:
                    row = ray.get(ref)
                except (RayActorError, WorkerCrashedError, ObjectLostError) as e:
                    fail_task(i, task, e)
                    continue
                except Exception as e:  # an error that escaped the per-image guard: still one row
                    row = _error_row(task, cfg, f"internal error {type(e).__name__}: {_first_line(e)}")
                emit(row)
            dispatch()
            if not ready and not in_flight and time.monotonic() - last_progress > START_TIMEOUT_S:
                raise RuntimeError(f"no Ray worker could start within {START_TIMEOUT_S} s (the cluster has "
                                   f"{ray.cluster_resources()} but each worker asks for {placement.cpus_per_worker} "
                                   f"CPU and {placement.gpus_per_worker} GPU)")
    except KeyboardInterrupt:
        raise JobInterrupted(outcome.images, len(tasks)) from None
    finally:
        writer.flush()  # whatever happened, every finished image reaches the ledger
        for a in actors:
            try:
                ray.kill(a, no_restart=True)
            except Exception:
                pass
    outcome.seconds = time.monotonic() - (first_ready or start)
    return outcome


def execute_local(tasks: list[ImageTask], config: WorkerConfig, writer: LedgerWriter, progress: Progress,
                  threads: int, device: str = "cpu", record: Callable[[LedgerRow], bool] | None = None) -> Outcome:
    """The same worker code in this process, for jobs too small to be worth starting Ray: one ImageProcessor that
    holds up to ``threads`` images at once (they decode and encode side by side; the model stage takes one at a
    time with every thread), writing the same ledger rows."""
    from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait

    images = max(1, min(threads, len(tasks)))
    cfg = replace(config, device=device, threads=threads, images=images)
    outcome = Outcome()
    start = time.monotonic()
    processor = ImageProcessor(cfg)
    outcome.startup_seconds = time.monotonic() - start
    progress.start = time.monotonic()
    pool = ThreadPoolExecutor(max_workers=images, thread_name_prefix="image")
    try:
        pending = {pool.submit(processor.process, t): t for t in tasks}
        while pending:
            done, _ = wait(pending, timeout=1.0, return_when=FIRST_COMPLETED)
            for f in done:
                task = pending.pop(f)
                try:
                    row = f.result()
                except Exception as e:  # an error that escaped the per-image guard: still one row
                    row = _error_row(task, cfg, f"internal error {type(e).__name__}: {_first_line(e)}")
                _emit(row, writer, outcome, progress, record)
    except KeyboardInterrupt:
        pool.shutdown(wait=False, cancel_futures=True)  # images in progress finish; their rows are not awaited
        raise JobInterrupted(outcome.images, len(tasks)) from None
    finally:
        writer.flush()
    pool.shutdown()
    outcome.seconds = time.monotonic() - progress.start
    return outcome


def _emit(row: LedgerRow, writer: LedgerWriter, outcome: Outcome, progress: Progress,
          record: Callable[[LedgerRow], bool] | None) -> None:
    """A finished image: into the ledger (unless ``record`` declines it), the counts and the progress bar."""
    if record is None or record(row):
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
