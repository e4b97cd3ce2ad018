"""`retouch-batch run`: a manifest in, outputs and a ledger out, resumable after any crash."""
from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field, replace

from manifests.manifest import Manifest, load_manifest
from pipeline.checkpoint import load_checkpoint
from pipeline.render import configure_model
from pipeline.imageio import DEFAULT_MAX_PIXELS, TEMP_PREFIX

from . import cluster
from .executor import DEFAULT_MAX_ATTEMPTS, Outcome, execute, execute_local
from .ledger import LedgerIndex, LedgerWriter, RunRecord, new_run_id, now, read_run_records, write_run_record
from .lock import OutputLock
from .progress import Progress
from .worker import ImageTask, RenderSettings, WorkerConfig


@dataclass
class JobOptions:
    out: str
    weights: str | None = None
    model: str | None = None  # a registered retoucher; None: the one the weights hold (default weights: neurop)
    settings: RenderSettings = field(default_factory=RenderSettings)
    workers: int | None = None
    cpus_per_worker: int | None = None
    images_per_worker: int | None = None
    address: str | None = None
    ledger: str | None = None  # default <out>/ledger
    overwrite: bool = False
    max_pixels: int = DEFAULT_MAX_PIXELS
    max_attempts: int = DEFAULT_MAX_ATTEMPTS
    device: str = "auto"
    progress: bool = True
    executor: str = "auto"  # auto / local (this process) / ray; see in_process()

    @property
    def ledger_dir(self) -> str:
        return self.ledger or os.path.join(self.out, "ledger")


@dataclass
class JobResult:
    run_id: str
    outcome: Outcome
    resumed: bool
    ledger: str
    warnings: list[str]


def remove_stale_temporaries(folder: str) -> int:
    """Half-written outputs of a killed job (the lock guarantees no live job owns them)."""
    n = 0
    for d, _, files in os.walk(folder):
        for f in files:
            if f.startswith(TEMP_PREFIX) or (f.startswith(".part-") and f.endswith(".tmp")):
                try:
                    os.unlink(os.path.join(d, f))
                    n += 1
                except OSError:
                    pass
    return n


def settings_key(manifest_digest: str, weights_sha: str, settings: RenderSettings) -> str:
    h = hashlib.sha256()
    h.update(manifest_digest.encode())
    h.update(weights_sha.encode())
    h.update(settings.to_json().encode())
    return h.hexdigest()


def run_job(manifest_path: str, opts: JobOptions, log=print) -> JobResult:
    out = os.path.abspath(opts.out)
    manifest = load_manifest(manifest_path, out, opts.settings.output_format)
    for w in manifest.warnings:
        log(f"warning: {w}")
    loaded = load_checkpoint(opts.weights, model=opts.model)  # fail early, before Ray starts, on a bad checkpoint
    # and on options the model does not take; a guide file is pinned by its hash for the workers and the resume key
    pinned = configure_model(loaded.model, opts.settings.model_options_dict)
    opts = replace(opts, settings=replace(opts.settings, model_options=json.dumps(pinned, sort_keys=True)
                                          if pinned else ""))
    os.makedirs(out, exist_ok=True)
    with OutputLock(out):
        remove_stale_temporaries(out)
        ledger_dir = os.path.abspath(opts.ledger_dir)
        key = settings_key(manifest.digest, loaded.weights_sha256, opts.settings)
        records = [r for r in read_run_records(ledger_dir) if r.command == "run"]
        unfinished = [r for r in records if r.finished_at is None and r.settings_key == key]
        resumed = bool(unfinished) and unfinished[-1].run_id == (records[-1].run_id if records else None)
        run_id = unfinished[-1].run_id if resumed else new_run_id()
        table = LedgerIndex.read(ledger_dir)
        previous = LedgerIndex.newest(table, ("ok", "skipped"))  # an image whose output is current is skipped
        in_this_run = LedgerIndex.newest(table if resumed else table.slice(0, 0), run_id=run_id,
                                         columns=("image_id", "source_path", "status", "error"))
        del table
        if resumed:  # one row per image per run: what the interrupted part of this run did is not done again
            log(f"resuming run {run_id}: {len(in_this_run)} of {manifest.rows} images already in the ledger")
        started = unfinished[-1].started_at if resumed else now().isoformat()
        rec = RunRecord(run_id, "run", key, started, manifest.rows, weights_path=loaded.weights_path,
                        weights_sha256=loaded.weights_sha256, out=out)
        if not resumed:
            write_run_record(ledger_dir, rec)
        tasks = image_tasks(manifest, out, previous, in_this_run, opts.overwrite)
        outcome = launch(tasks, loaded.weights_path, opts, rec, ledger_dir, log, total=manifest.rows - len(in_this_run))
        for status, n in in_this_run.counts().items():  # what the interrupted part of this run already reported
            setattr(outcome, status, getattr(outcome, status) + n)
        outcome.errors = [r.error or r.source_path for r in in_this_run.errors()] + (outcome.errors or []) or None
    return JobResult(run_id, outcome, resumed, ledger_dir, manifest.warnings)


def image_tasks(manifest: Manifest, out: str, previous: LedgerIndex, done: LedgerIndex, overwrite: bool
                ) -> Iterator[ImageTask]:
    """The job's tasks, made a manifest batch at a time as the workers take them: the images not already done in
    this run, each with its newest ok row (the worker skips an image whose output is still that row's)."""
    for batch in manifest.batches():
        ids = [e.image_id for e in batch]
        skip = done.contains(ids) if len(done) else None
        rows = previous.rows(ids)
        for k, e in enumerate(batch):
            if skip is None or not skip[k]:
                yield ImageTask(e.image_id, e.source, os.path.join(out, e.output), previous=rows.get(e.image_id),
                                overwrite=overwrite)


LOCAL_MAX_IMAGES = 16  # auto: jobs of at most this many images run in this process


def in_process(opts: JobOptions, images: int) -> bool:
    """Whether the job runs in this process instead of on Ray. ``auto``: when it is small (at most
    LOCAL_MAX_IMAGES images), names no cluster (--address, RAY_ADDRESS) and asks nothing of Ray's workers
    (--workers, --cpus-per-worker, --images-per-worker): starting Ray costs seconds a small job does not have."""
    if opts.executor != "auto":
        return opts.executor == "local"
    return (images <= LOCAL_MAX_IMAGES and not opts.address and not os.environ.get("RAY_ADDRESS")
            and opts.workers is None and opts.cpus_per_worker is None and opts.images_per_worker is None)


def launch(tasks: Iterable[ImageTask], weights_path: str, opts: JobOptions, rec: RunRecord, ledger_dir: str, log,
           total: int | None = None) -> Outcome:
    """Run the tasks (``total`` of them; a list when not given) in this process or on Ray (started or joined here),
    and mark the run finished in its record. The caller holds the lock."""
    if total is None:
        tasks = list(tasks)
        total = len(tasks)
    if total <= 0:
        rec.finished_at = now().isoformat()
        write_run_record(ledger_dir, rec)
        return Outcome()
    choose = _local_executor if in_process(opts, total) else _ray_executor
    run = choose(opts, rec, total, log)
    writer = LedgerWriter(ledger_dir, rec.run_id)
    config = WorkerConfig(weights=weights_path, settings=opts.settings, max_pixels=opts.max_pixels, run_id=rec.run_id)
    progress = Progress(total, enabled=opts.progress)
    try:
        outcome = run(tasks, total, config, writer, progress)
    finally:
        progress.close()
    rec.finished_at = now().isoformat()
    write_run_record(ledger_dir, rec)
    return outcome


def _ray_executor(opts: JobOptions, rec: RunRecord, images: int, log):
    """Start or join Ray, place the workers, and say so; the executor that runs tasks on them."""
    cluster.connect(opts.address)
    placement = cluster.plan(opts.workers, opts.device, opts.cpus_per_worker, opts.images_per_worker)
    held = f", {placement.images_per_worker} images at once" if placement.images_per_worker > 1 else ""
    log(f"{rec.command} {rec.run_id}: {images} images on {placement.workers} {placement.device} worker(s)"
        f" x {placement.threads_per_worker} thread(s){held}"
        f" -> {rec.out}")
    return lambda tasks, total, config, writer, progress: execute(tasks, total, config, placement, writer, progress,
                                                                  opts.max_attempts)


def _local_executor(opts: JobOptions, rec: RunRecord, images: int, log):
    """Choose this process's device and threads, and say so; the executor that runs tasks here."""
    import torch
    if opts.device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("--device cuda, but this machine has no CUDA GPU")
    device = "cuda" if opts.device in ("auto", "cuda") and torch.cuda.is_available() else "cpu"
    threads = os.cpu_count() or 1
    log(f"{rec.command} {rec.run_id}: {images} images in this process ({device}, {threads} thread(s); "
        f"jobs over {LOCAL_MAX_IMAGES} images, --workers or --address use Ray) -> {rec.out}")
    return lambda tasks, total, config, writer, progress: execute_local(tasks, total, config, writer, progress,
                                                                        threads, device)
