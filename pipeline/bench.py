"""`retouch-batch bench`: time and memory per image size for each retoucher asked for, side by side.

Each size is a real photo resized to that many megapixels and stored as a 16-bit TIFF. Stages: decode (tifffile),
predict (thumbnail + parameter predictors), prepare (a LUT bake, or a bilateral retoucher's grids), apply (full
resolution, uint16 in place), encode (16-bit TIFF bytes, each codec asked for). The reference way (the model's
whole network on the full-resolution image) is measured up to ``reference_max_mp``, and ``apply`` is compared with
the model's own float maths (``render_exact``) there.
"""
from __future__ import annotations

import json
import os
import platform
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field

import numpy as np
import torch

from .checkpoint import load_checkpoint
from .imageio import decode, encode_to, write_atomic
from .metrics import psnr
from .render import Retoucher, open_retoucher

DEFAULT_SIZES_MP = (0.5, 2, 12, 24, 50)


class PeakRSS:
    """Peak resident memory above a baseline, sampled from /proc (catches torch/numba/C allocations too)."""

    def __init__(self, interval: float = 0.002):
        self.interval = interval
        self.peak = 0
        self._stop = threading.Event()

    @staticmethod
    def rss() -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    def __enter__(self):
        self.base = self.rss()
        self.peak = self.base
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()
        return self

    def _run(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, self.rss())
            time.sleep(self.interval)

    def __exit__(self, *exc):
        self._stop.set()
        self._t.join()
        self.peak = max(self.peak, self.rss())

    @property
    def mib(self) -> float:
        return (self.peak - self.base) / 2**20


@dataclass
class SizeResult:
    model: str
    megapixels: float
    width: int
    height: int
    decode_s: float
    predict_s: float
    prepare_s: float
    apply_s: float
    model_stage_s: float  # predict + prepare + apply
    encode_s: dict[str, float]
    encoded_mb: dict[str, float]
    peak_mib_model_stage: float
    peak_mib_total: float
    apply_vs_exact_db: float | None = None  # apply (uint16) against the model's float maths, PSNR
    reference_s: float | None = None  # full-resolution network forward (predict + render), the reference's way
    reference_peak_mib: float | None = None
    speedup_vs_reference: float | None = None
    device: str | None = None  # the same model stage on an accelerator (``--device``), when asked for
    device_model_s: float | None = None  # predict + prepare + apply of an image already in device memory
    device_with_transfers_s: float | None = None  # host uint16 -> device -> rendered -> host uint16
    device_peak_mib: float | None = None  # device memory, above what was allocated before
    device_max_diff_steps: int | None = None  # against the CPU render, in 16-bit steps


@dataclass
class BenchReport:
    machine: dict
    weights: dict  # model -> checkpoint path
    lut_size: int
    threads: int
    sizes: list[SizeResult] = field(default_factory=list)


def machine_info() -> dict:
    cpu = platform.processor() or ""
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((l.split(":", 1)[1].strip() for l in f if l.startswith("model name")), cpu)
    except OSError:
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "torch": torch.__version__,
            "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}


def photo_at_size(megapixels: float, photo: np.ndarray | None = None) -> np.ndarray:
    """A real photo (or a smooth gradient when none is given) resized to ``megapixels`` at 3:2, uint16."""
    from PIL import Image
    w = int(round((megapixels * 1e6 * 1.5) ** 0.5))
    h = int(round(w / 1.5))
    if photo is None:
        y, x = np.mgrid[0:256, 0:384] / 384.0
        photo = (np.stack([x, y, 1 - x * y], -1) * 255).astype(np.uint8)
    img = Image.fromarray(photo).resize((w, h), Image.BILINEAR)
    return np.asarray(img, dtype=np.uint16) * 257


def _timed(fn, repeat: int = 1):
    best, out = float("inf"), None
    for _ in range(repeat):
        t = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t)
    return best, out


def bench_size(retoucher: Retoucher, megapixels: float, photo, codecs, reference_max_mp: float,
               workdir: str) -> SizeResult:
    import tifffile
    src = photo_at_size(megapixels, photo)
    h, w = src.shape[:2]
    path = os.path.join(workdir, f"bench_{megapixels}.tif")
    tifffile.imwrite(path, src, photometric="rgb")
    del src
    with PeakRSS() as total:
        decode_s, decoded = _timed(lambda: decode(path))
        px = decoded.pixels
        scratch = np.empty_like(px)  # extra timing runs of the kernel write here; the real one is in place
        scratch.fill(0)  # touch its pages now, so they count in neither peak below
        with PeakRSS() as model_mem:
            predict_s, s = _timed(lambda: retoucher.predict(px), repeat=2)
            prepare_s, plan = _timed(lambda: retoucher.prepare(px, s), repeat=2)
            apply_s, _ = _timed(lambda buf=scratch: retoucher.apply(px, plan, out=buf), repeat=2)
            t = time.perf_counter()
            retoucher.apply(px, plan, out=px)
            apply_s = min(apply_s, time.perf_counter() - t)
        scratch_mib = scratch.nbytes / 2**20
        scratch = None  # freed before encoding
        enc, size = {}, {}
        out_path = os.path.join(workdir, "out.tif")
        for c in codecs:  # as the worker does it: encoded straight into the file, then synced
            enc[c], _ = _timed(lambda c=c: write_atomic(out_path, lambda f: encode_to(
                f, px, "tiff16", tiff_compression=c, threads=torch.get_num_threads())))
            enc[c] = round(enc[c], 4)
            size[c] = round(os.path.getsize(out_path) / 1e6, 2)
    res = SizeResult(retoucher.info.model, megapixels, w, h, round(decode_s, 4), round(predict_s, 4),
                     round(prepare_s, 4), round(apply_s, 4), round(predict_s + prepare_s + apply_s, 4), enc, size,
                     round(model_mem.mib, 1), round(total.mib - scratch_mib, 1))
    if megapixels <= reference_max_mp:
        orig = decode(path).pixels
        exact = retoucher.render_exact(orig, s)
        res.apply_vs_exact_db = round(psnr(retoucher.apply(orig, plan).astype(np.float32) / 65535, exact), 2)
        del exact
        img = torch.from_numpy(orig.astype(np.float32) / 65535).permute(2, 0, 1)[None]
        del orig
        with PeakRSS() as ref_mem, torch.inference_mode():
            res.reference_s, _ = _timed(lambda: retoucher.model(img))
        res.reference_s = round(res.reference_s, 3)
        res.reference_peak_mib = round(ref_mem.mib, 1)
        res.speedup_vs_reference = round(res.reference_s / res.model_stage_s, 1)
    os.unlink(path)
    return res


def bench_device(retoucher: Retoucher, pixels: np.ndarray, cpu_render: np.ndarray, repeat: int = 5) -> dict:
    """The model stage on ``retoucher.device``: image already there, and from host uint16 back to host uint16.

    The host side goes through one pinned staging buffer per direction, allocated outside the timings as a
    long-running worker would keep them.
    """
    device = torch.device(retoucher.device)
    cuda = device.type == "cuda"

    def sync():
        if cuda:
            torch.cuda.synchronize(device)

    host_in = torch.empty(pixels.shape, dtype=torch.uint16, pin_memory=cuda)
    host_out = torch.empty(pixels.shape, dtype=torch.uint16, pin_memory=cuda)

    def upload() -> torch.Tensor:
        return (host_in.to(device, non_blocking=cuda).permute(2, 0, 1)[None].float() / 65535.0)

    def download(image: torch.Tensor) -> np.ndarray:
        steps = (image[0].permute(1, 2, 0) * 65535.0 + 0.5).to(torch.int32).to(torch.uint16)
        host_out.copy_(steps, non_blocking=cuda)
        sync()
        return host_out.numpy()

    def on_device(image):
        out, _ = retoucher.retouch_tensor(image)
        sync()
        return out

    def end_to_end():
        host_in.numpy()[...] = pixels
        return download(on_device(upload()))

    host_in.numpy()[...] = pixels
    image = upload()
    on_device(image)  # warm-up: kernels, allocator
    if cuda:
        torch.cuda.reset_peak_memory_stats(device)
    base = torch.cuda.memory_allocated(device) if cuda else 0
    model_s, _ = _timed(lambda: on_device(image), repeat=repeat)
    peak = (torch.cuda.max_memory_allocated(device) - base) / 2**20 if cuda else None
    transfers_s, result = _timed(end_to_end, repeat=repeat)
    diff = int(np.abs(result.astype(np.int32) - cpu_render.astype(np.int32)).max())
    return dict(device=str(device), device_model_s=round(model_s, 5), device_with_transfers_s=round(transfers_s, 5),
                device_peak_mib=None if peak is None else round(peak, 1), device_max_diff_steps=diff)


def _bench_in_child(weights, lut_size, threads, mp, photo, codecs, reference_max_mp, workdir, device=None) -> dict:
    torch.set_num_threads(threads)
    r = open_retoucher(load_checkpoint(weights), lut_size=lut_size)
    r.warm_up()  # compile and allocate outside the timings
    res = bench_size(r, mp, photo, codecs, reference_max_mp, workdir)
    if device:
        src = photo_at_size(mp, photo)
        cpu_render = r.render(src, r.predict(src))
        on = open_retoucher(load_checkpoint(weights, device=device), lut_size=lut_size, device=device)
        for k, v in bench_device(on, src, cpu_render).items():
            setattr(res, k, v)
    return asdict(res)


HEADER = (f"{'model':<10} {'MP':>5} {'size':>11} {'decode':>7} {'predict':>8} {'prep':>6} {'apply':>6} {'stage':>6} "
          f"{'encode':>24} {'peak MiB':>9} {'vs exact dB':>11} {'reference':>10} {'ratio':>7}")


DEVICE_HEADER = (f"{'model':<10} {'MP':>5} {'device':>8} {'model (in device memory)':>25} {'with transfers':>15} {'peak MiB':>9} "
                 f"{'max diff':>9}")


def format_device_row(r: SizeResult) -> str:
    peak = f"{r.device_peak_mib:9.1f}" if r.device_peak_mib is not None else f"{'-':>9}"
    return (f"{r.model:<10} {r.megapixels:5.1f} {r.device:>8} {r.device_model_s * 1000:22.2f} ms "
            f"{r.device_with_transfers_s * 1000:12.2f} ms {peak} {r.device_max_diff_steps:9d}")


def format_row(r: SizeResult) -> str:
    enc = " ".join(f"{c}:{t:.2f}" for c, t in r.encode_s.items())
    ref = f"{r.reference_s:.2f}s" if r.reference_s is not None else "-"
    ratio = f"{r.speedup_vs_reference:.0f}x" if r.speedup_vs_reference else "-"
    db = f"{r.apply_vs_exact_db:.1f}" if r.apply_vs_exact_db is not None else "-"
    return (f"{r.model:<10} {r.megapixels:5.1f} {r.width:>5}x{r.height:<5} {r.decode_s:7.3f} {r.predict_s:8.3f} "
            f"{r.prepare_s:6.3f} {r.apply_s:6.3f} {r.model_stage_s:6.3f} {enc:>24} {r.peak_mib_model_stage:9.1f} "
            f"{db:>11} {ref:>10} {ratio:>7}")


def run_bench(sizes=DEFAULT_SIZES_MP, weights=None, lut_size: int = 33, codecs=("none", "zstd"),
              reference_max_mp: float = 2.0, threads: int | None = None, photo_path: str | None = None,
              json_path: str | None = None, log=print, device: str | None = None) -> BenchReport:
    """``weights``: one checkpoint path, or a list of paths and registered model names (their shipped weights), timed
    side by side for each size; ``device`` (e.g. "cuda") also times the model stage there, in the same run."""
    threads = threads or os.cpu_count() or 1
    torch.set_num_threads(threads)
    chosen = weights if isinstance(weights, (list, tuple)) else [weights]
    paths = {}
    for w in chosen:
        is_name = w is None or not (os.path.sep in w or w.endswith((".pt", ".pth")) or os.path.isfile(w))
        loaded = load_checkpoint(None if is_name else w, model=w if is_name else None)
        paths[loaded.info.model if loaded.info.model not in paths else loaded.weights_path] = loaded.weights_path
    photo = None
    if photo_path:
        from PIL import Image
        photo = np.asarray(Image.open(photo_path).convert("RGB"))
    report = BenchReport(machine_info(), paths, lut_size, threads)
    log(f"machine: {report.machine}; LUT {lut_size}^3; {threads} threads")
    log(HEADER)
    import multiprocessing
    ctx = multiprocessing.get_context("spawn")  # a fresh process per size: peak memory is that size's alone
    with tempfile.TemporaryDirectory(prefix="retouch-bench-") as d:
        for mp in sizes:
            for path in paths.values():
                with ctx.Pool(1) as pool:
                    res = pool.apply(_bench_in_child,
                                     (path, lut_size, threads, mp, photo, codecs, reference_max_mp, d, device))
                report.sizes.append(SizeResult(**res))
                log(format_row(report.sizes[-1]))
    if device:
        log(f"model stage on {device} (strengths predicted on the device too; max diff against the CPU render):")
        log(DEVICE_HEADER)
        for r in report.sizes:
            log(format_device_row(r))
    if json_path:
        with open(json_path, "w") as f:
            json.dump(asdict(report), f, indent=1)
    return report
