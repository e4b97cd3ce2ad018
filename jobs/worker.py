"""What happens to one image, inside a worker: hash, decode, predict, render, encode, write.

Pure of Ray: ``ImageProcessor`` is unit-tested on its own and wrapped by a Ray actor in ``jobs.run``.
Every failure of one image becomes an error row naming the file and the cause; nothing here raises for bad input.
"""
from __future__ import annotations

import json
import os
import stat
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field

from pipeline.checkpoint import file_sha256, load_checkpoint
from pipeline.imageio import DEFAULT_MAX_PIXELS, DecodeError, decode, encode_to, write_atomic
from pipeline.metadata import (SIDECAR_SUFFIX, EditRecord, MetadataError, OutputMetadata, read_source, sidecar_text,
                               software)
from pipeline.lut import DEFAULT_LUT_SIZE
from pipeline.render import open_retoucher

from .ledger import LedgerRow, now

DEFAULT_TIFF_COMPRESSION = "none"


@dataclass(frozen=True)
class RenderSettings:
    """Everything besides the strengths that decides an output's bytes (part of the resume key)."""

    output_format: str = "tiff16"
    jpeg_quality: int = 95
    strip_metadata: bool = False  # no source metadata and no edit record in the output (a sidecar stays)
    lut_size: int = DEFAULT_LUT_SIZE
    tiff_compression: str = DEFAULT_TIFF_COMPRESSION
    half_size: bool = False
    model_options: str = ""  # JSON of the model's run options (aesthetic: guide file and hash, search steps, lr)
    # the edit as <output>.xmp beside each output; opt-in: the output embeds it anyway, and a sidecar is a file in the
    # output tree that no ledger row names
    xmp_sidecar: bool = False

    @property
    def model_options_dict(self) -> dict:
        return json.loads(self.model_options) if self.model_options else {}

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "RenderSettings":
        d = json.loads(text)
        return cls(**{k: v for k, v in d.items() if k in cls.__dataclass_fields__})


@dataclass
class ImageTask:
    image_id: str
    source: str
    output: str  # absolute output path
    strengths: list[float] | None = None  # given: rerender (never re-predicted); None: predict
    previous: LedgerRow | None = None  # the newest ok row: skip when source, settings and output still match
    overwrite: bool = False
    parent_run_id: str | None = None
    attempts: int = 1
    command: str = "run"
    strengths_run_id: str | None = None  # rerender: the run whose row holds these very strengths (None: this run)


@dataclass
class WorkerConfig:
    weights: str | None
    settings: RenderSettings = field(default_factory=RenderSettings)
    max_pixels: int = DEFAULT_MAX_PIXELS
    device: str = "cpu"
    threads: int = 1
    images: int = 1  # images processed at once (threads of one actor); the model stage takes one at a time
    run_id: str = ""  # recorded in each output's edit XMP

    @property
    def threads_per_image(self) -> int:
        return threads_per_image(self.threads, self.images)


def threads_per_image(threads: int, images: int) -> int:
    """Threads for one held image's decode and encode: the worker's threads shared among the images it holds
    (the model stage, one image at a time, uses them all)."""
    return max(1, threads // max(1, images))


def output_mode(source: str) -> int:
    """Outputs never get wider permissions than their source (and stay readable and writable by the owner)."""
    try:
        src = stat.S_IMODE(os.stat(source).st_mode)
    except OSError:
        src = 0o644
    umask = os.umask(0)
    os.umask(umask)
    return (0o666 & ~umask) & (src | 0o600)


class ImageProcessor:
    def __init__(self, config: WorkerConfig):
        import torch
        torch.set_num_threads(max(1, config.threads))
        self.config = config
        self._use_threads()
        loaded = load_checkpoint(config.weights, device=config.device)
        self.retoucher = open_retoucher(loaded, lut_size=config.settings.lut_size, device=config.device,
                                        options=config.settings.model_options_dict)
        self.settings_json = config.settings.to_json()
        self._threads = ThreadPoolExecutor(max_workers=2 * max(1, config.images), thread_name_prefix="hash")
        # one image at a time on the model: its kernels use all the worker's threads (or the GPU), and device
        # memory holds one image's strips
        self._model_lock = threading.Lock()

    def _use_threads(self) -> None:
        """numba's thread count is per calling thread: set it in whichever thread runs the model stage."""
        try:
            import numba
            numba.set_num_threads(max(1, min(self.config.threads, numba.config.NUMBA_NUM_THREADS)))
        except (ImportError, ValueError):
            pass

    def _row(self, task: ImageTask, status: str, **kw) -> LedgerRow:
        info = self.retoucher.info
        base = dict(image_id=task.image_id, source_path=task.source, status=status, model=info.model,
                    model_version=info.model_version, weights_sha256=self.retoucher.loaded.weights_sha256,
                    operators=list(info.operators), created_at=now(), output_format=self.config.settings.output_format,
                    render_settings=self.settings_json, parent_run_id=task.parent_run_id, command=task.command,
                    attempts=task.attempts, output_path=task.output)
        base.update(kw)
        return LedgerRow(**base)

    def _write(self, path: str, pixels, metadata: OutputMetadata | None, mode: int, on_written) -> str:
        """Encode straight into the output file; its hash is read back while the file is synced."""
        s = self.config.settings

        def encode(f) -> None:
            encode_to(f, pixels, s.output_format, jpeg_quality=s.jpeg_quality, metadata=metadata,
                      tiff_compression=s.tiff_compression, threads=self.config.threads_per_image)
        try:
            return write_atomic(path, encode, mode, digest=self._threads, on_written=on_written)
        except OSError as e:
            raise DecodeError(f"cannot write output {path}: {e.strerror or e}") from None

    def _edit_record(self, task: ImageTask, strengths: list[float], source_sha: str) -> EditRecord:
        info = self.retoucher.info
        return EditRecord(model=info.model, model_version=str(info.model_version),
                          weights_sha256=self.retoucher.loaded.weights_sha256, operators=tuple(info.operators),
                          strengths=tuple(strengths), run_id=task.strengths_run_id or self.config.run_id,
                          image_id=task.image_id, source_sha256=source_sha, render_run_id=self.config.run_id,
                          command=task.command, parent_run_id=task.parent_run_id, software=software())

    def is_current(self, task: ImageTask, source_sha: str) -> bool:
        prev = task.previous
        if task.overwrite or prev is None or prev.status not in ("ok", "skipped"):
            return False
        same = (prev.source_sha256 == source_sha and prev.weights_sha256 == self.retoucher.loaded.weights_sha256
                and prev.render_settings == self.settings_json and prev.output_path == task.output
                and (task.strengths is None or list(task.strengths) == list(prev.strengths)))
        sidecar_ok = not self.config.settings.xmp_sidecar or os.path.isfile(task.output + SIDECAR_SUFFIX)
        return (same and sidecar_ok and os.path.isfile(task.output)
                and file_sha256(task.output) == prev.output_sha256)

    def process(self, task: ImageTask) -> LedgerRow:
        t0 = time.perf_counter()
        timings: dict[str, float] = {}
        last = [t0]

        def lap(stage: str) -> None:
            t = time.perf_counter()
            timings[stage] = round(t - last[0], 4)
            last[0] = t

        src = task.source
        try:
            if not os.path.exists(src):
                raise DecodeError("file not found")
            if os.path.isdir(src):
                raise DecodeError("is a folder, not an image")
            if task.previous is not None and not task.overwrite:  # a skip candidate: the hash decides first
                source_sha = file_sha256(src)
                lap("hash")
                if self.is_current(task, source_sha):
                    p = task.previous
                    return self._row(task, "skipped", source_sha256=source_sha, output_sha256=p.output_sha256,
                                     strengths=list(p.strengths), width=p.width, height=p.height,
                                     seconds=round(time.perf_counter() - t0, 4))
                source_hash = _done(source_sha)
            else:  # hashing overlaps decoding (hashlib and the decoders release the GIL)
                source_hash = self._threads.submit(file_sha256, src)
            s = self.config.settings
            # read beside decoding; metadata that cannot be read is a warning, never a failed image
            source_meta = None if s.strip_metadata else self._threads.submit(read_source, src)
            decoded = decode(src, self.config.max_pixels, self.retoucher.info.rendition, half_size=s.half_size)
            pixels = decoded.pixels
            h, w = pixels.shape[:2]
            lap("decode")
            with self._model_lock:
                if self.config.images > 1:
                    lap("wait")  # for another image's model stage
                    self._use_threads()
                view = self.retoucher.view(pixels)
                prediction = None
                if task.strengths is None:
                    strengths = [float(x) for x in self.retoucher.predict(view)]
                    details = self.retoucher.prediction_details()
                    prediction = json.dumps(details, sort_keys=True) if details else None
                    lap("predict")
                else:
                    strengths = [float(x) for x in task.strengths]
                prepared = self.retoucher.prepare_image(view, strengths, pixels.shape)
                lap("prepare")
                self.retoucher.apply(pixels, prepared, out=pixels)  # in place: no second full-res buffer
                del prepared, view
                lap("apply")
            if os.path.realpath(task.output) == os.path.realpath(src):
                raise DecodeError("refusing to overwrite the source with its output")

            source_sha = source_hash.result()
            edit = self._edit_record(task, strengths, source_sha)
            meta, warning = (None, None) if source_meta is None else source_meta.result()
            out_meta = None
            if not s.strip_metadata:
                try:
                    out_meta = OutputMetadata.build(meta, edit, s.output_format, w, h, software())
                except MetadataError as e:  # the source's metadata is left out; the edit record still goes in
                    meta, warning = None, str(e)
                    out_meta = OutputMetadata.build(None, edit, s.output_format, w, h, software())
            try:
                out_sha = self._write(task.output, pixels, out_meta, output_mode(src), lambda: lap("encode"))
            except MetadataError as e:  # the image is not lost for its metadata
                meta, warning = None, str(e)
                out_sha = self._write(task.output, pixels, None, output_mode(src), lambda: lap("encode"))
            del pixels, decoded
            if s.xmp_sidecar:  # after the output: a crash between leaves no sidecar, and the image is redone
                try:
                    text = sidecar_text(meta, edit, w, h)
                except MetadataError as e:
                    warning = warning or str(e)
                    text = sidecar_text(None, edit, w, h)
                try:
                    write_atomic(task.output + SIDECAR_SUFFIX, text.encode(), output_mode(src))
                except OSError as e:
                    raise DecodeError(f"cannot write {task.output + SIDECAR_SUFFIX}: {e.strerror or e}") from None
            elif os.path.isfile(task.output + SIDECAR_SUFFIX):  # a former run's: it would describe another edit
                os.unlink(task.output + SIDECAR_SUFFIX)
            lap("write")
            return self._row(task, "ok", source_sha256=source_sha, output_sha256=out_sha, strengths=strengths,
                             width=w, height=h, seconds=round(time.perf_counter() - t0, 4),
                             timings=json.dumps(timings), prediction=prediction, warning=warning)
        except DecodeError as e:
            return self._row(task, "error", error=f"{src}: {e}", output_path=None,
                             seconds=round(time.perf_counter() - t0, 4))
        except PermissionError:
            return self._row(task, "error", error=f"{src}: permission denied", output_path=None)
        except MemoryError:
            return self._row(task, "error", error=f"{src}: out of memory while processing", output_path=None)
        except OSError as e:
            return self._row(task, "error", error=f"{src}: {e.strerror or e}", output_path=None)
        except Exception as e:  # a bug or an unforeseen library error: still one row, never a lost image
            msg = str(e).splitlines()[0][:200] if str(e) else ""
            return self._row(task, "error", error=f"{src}: internal error {type(e).__name__}: {msg}",
                             output_path=None)


def _done(value) -> Future:
    f: Future = Future()
    f.set_result(value)
    return f
