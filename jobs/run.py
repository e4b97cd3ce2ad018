"""`retouch-batch run`: a manifest in, outputs and a ledger out, resumable after any crash."""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field, replace

from manifests.manifest import load_manifest
from pipeline.checkpoint import load_checkpoint
from pipeline.render import configure_model
from pipeline.imageio import DEFAULT_MAX_PIXELS, TEMP_PREFIX

from . import cluster
from .executor import DEFAULT_MAX_ATTEMPTS, Outcome, execute, execute_local
from .ledger import (LedgerRow, LedgerWriter, RunRecord, latest_by_image, new_run_id, now, read_ledger,
                     read_run_records, write_run_record)
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


def settings_key(entries, weights_sha: str, settings: RenderSettings) -> str:
    h = hashlib.sha256()
    h.update(json.dumps([[e.image_id, e.source, e.output] for e in entries]).encode())
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
        rows = read_ledger(ledger_dir) if os.path.isdir(ledger_dir) else []
        key = settings_key(manifest.entries, loaded.weights_sha256, opts.settings)
        records = [r for r in read_run_records(ledger_dir) if r.command == "run"]
        unfinished = [r for r in records if r.finished_at is None and r.settings_key == key]
        resumed = bool(unfinished) and unfinished[-1].run_id == (records[-1].run_id if records else None)
        run_id = unfinished[-1].run_id if resumed else new_run_id()
        in_this_run = {r.image_id: r for r in rows if r.run_id == run_id}
        previous = latest_by_image(rows, ("ok", "skipped"))
        tasks = []
        for e in manifest.entries:
            done = in_this_run.get(e.image_id)
            if done is not None and done.status == "error":
                continue  # already reported in this run: one row per image per run
            tasks.append(ImageTask(e.image_id, e.source, os.path.join(out, e.output), previous=previous.get(e.image_id),
                                   overwrite=opts.overwrite and done is None))
        if resumed:
            log(f"resuming run {run_id}: {len(in_this_run)} of {len(manifest.entries)} images already in the ledger")
        started = unfinished[-1].started_at if resumed else now().isoformat()
        rec = RunRecord(run_id, "run", key, started, len(manifest.entries), weights_path=loaded.weights_path,
                        weights_sha256=loaded.weights_sha256, out=out)
        if not resumed:
            write_run_record(ledger_dir, rec)
        def record(row: LedgerRow) -> bool:
            # in a resumed run an image already recorded in it gets no second row
            return not (row.status == "skipped" and row.image_id in in_this_run)

        outcome = launch(tasks, loaded.weights_path, opts, rec, ledger_dir, log, record)
        for r in in_this_run.values():  # what the interrupted part of this run already reported
            if r.status == "error":
                outcome.count(r)
    return JobResult(run_id, outcome, resumed, ledger_dir, manifest.warnings)


LOCAL_MAX_IMAGES = 16  # auto: jobs of at most this many images run in this process


def in_process(opts: JobOptions, images: int) -> bool:
    """Whether the job runs in this process instead of on Ray. ``auto``: when it is small (at most
    LOCAL_MAX_IMAGES images), names no cluster (--address, RAY_ADDRESS) and asks nothing of Ray's workers
    (--workers, --cpus-per-worker, --images-per-worker): starting Ray costs seconds a small job does not have."""
    if opts.executor != "auto":
        return opts.executor == "local"
    return (images <= LOCAL_MAX_IMAGES and not opts.address and not os.environ.get("RAY_ADDRESS")
            and opts.workers is None and opts.cpus_per_worker is None and opts.images_per_worker is None)


def launch(tasks: list[ImageTask], weights_path: str, opts: JobOptions, rec: RunRecord, ledger_dir: str, log,
           record=None) -> Outcome:
    """Run the tasks in this process or on Ray (started or joined here), and mark the run finished in its record.
    The caller holds the lock."""
    if not tasks:
        rec.finished_at = now().isoformat()
        write_run_record(ledger_dir, rec)
        return Outcome()
    choose = _local_executor if in_process(opts, len(tasks)) else _ray_executor
    run = choose(opts, rec, len(tasks), log)
    writer = LedgerWriter(ledger_dir, rec.run_id)
    config = WorkerConfig(weights=weights_path, settings=opts.settings, max_pixels=opts.max_pixels, run_id=rec.run_id)
    progress = Progress(len(tasks), enabled=opts.progress)
    try:
        outcome = run(tasks, config, writer, progress, record)
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
    return lambda tasks, config, writer, progress, record: execute(tasks, config, placement, writer, progress,
                                                                   opts.max_attempts, record)


def _local_executor(opts: JobOptions, rec: RunRecord, images: int, log):
    """Choose this process's device and threads, and say so; the executor that runs tasks here."""
    import torch
    if opts.device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("--device cuda, but this machine has no CUDA GPU")
    device = "cuda" if opts.device in ("auto", "cuda") and torch.cuda.is_available() else "cpu"
    threads = os.cpu_count() or 1
    log(f"{rec.command} {rec.run_id}: {images} images in this process ({device}, {threads} thread(s); "
        f"jobs over {LOCAL_MAX_IMAGES} images, --workers or --address use Ray) -> {rec.out}")
    return lambda tasks, config, writer, progress, record: execute_local(tasks, config, writer, progress, threads,
                                                                         device, record)
