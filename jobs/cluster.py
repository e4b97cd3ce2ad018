"""Starting or joining Ray, and deciding how many workers and which device each gets."""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass

from .worker import threads_per_image


@dataclass(frozen=True)
class Placement:
    workers: int
    gpus_per_worker: float
    cpus_per_worker: float
    threads_per_worker: int
    device: str  # "cuda" or "cpu"
    images_per_worker: int = 1  # images a worker holds at once: while one is on the model, the others decode

    @property
    def decode_threads(self) -> int:
        """OpenMP threads for each image's RAW decode: the worker's cores shared among the images it holds."""
        return threads_per_image(self.threads_per_worker, self.images_per_worker)


def connect(address: str | None) -> bool:
    """Join the cluster at ``address`` (or RAY_ADDRESS), or start an embedded local Ray. Returns True if started here."""
    os.environ.setdefault("RAY_ENABLE_UV_RUN_RUNTIME_ENV", "0")
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    import ray
    if ray.is_initialized():
        return False
    address = address or os.environ.get("RAY_ADDRESS") or None
    common = dict(include_dashboard=False, logging_level=logging.ERROR, log_to_driver=False,
                  configure_logging=True)
    if address:
        import jobs, manifests, pipeline  # shipped to the cluster's workers, which may not have them installed
        ray.init(address=address, runtime_env={"py_modules": [pipeline, jobs, manifests]}, **common)
        return False
    ray.init(num_cpus=os.cpu_count() or 1, **common)
    return True


# memory to keep free per image a worker holds: a decoded 24 MP image is 137 MiB, LibRaw's working copies of a
# large RAW several times that
HELD_IMAGE_BYTES = 1 << 30


def plan(requested_workers: int | None, device: str = "auto", cpus_per_worker: int | None = None,
         images_per_worker: int | None = None) -> Placement:
    """Ask Ray what the cluster has, then ``place`` the workers."""
    import ray
    res = ray.cluster_resources()
    nodes = max(1, len([n for n in ray.nodes() if n.get("Alive")]))
    return place(float(res.get("CPU", 1)), int(res.get("GPU", 0)), float(res.get("memory", 0)), nodes,
                 requested_workers, device, cpus_per_worker, images_per_worker)


def place(cpus: float, gpus: int, memory: float, nodes: int, requested_workers: int | None, device: str = "auto",
          cpus_per_worker: int | None = None, images_per_worker: int | None = None) -> Placement:
    """One worker per GPU when the cluster has GPUs, else one per ``cpus_per_worker`` CPUs (default 1).

    A CPU worker claims its CPUs from Ray and runs exactly that many compute threads (LibRaw's OpenMP demosaic
    included: Ray sets an actor's OMP_NUM_THREADS to its claim), so a worker never uses cores Ray has given to
    someone else, and throughput grows with workers. Never ask for a GPU that does not exist; when more workers are
    asked for than the CPUs allow, each claims an equal share so all can start.

    A GPU worker holds one image per core it claims by default (``images_per_worker``), as far as its share of
    the cluster's memory allows (``HELD_IMAGE_BYTES`` each): the images decode and encode side by side on the CPU,
    one at a time takes the model stage on the GPU, so the GPU is not left waiting on one single-threaded demosaic.
    A CPU worker holds one image unless asked for more.
    """
    cpus = max(1.0, cpus)
    if device == "cuda" and gpus == 0:
        raise RuntimeError("--device cuda, but the Ray cluster has no GPUs")
    if gpus > 0 and device in ("auto", "cuda"):
        workers = max(1, requested_workers or gpus)
        # a GPU worker decodes and encodes on the CPU: it gets its node's cores shared among that node's workers
        threads = cpus_per_worker or max(1, int(cpus / nodes) // max(1, -(-workers // nodes)))
        fits = int(memory / workers // HELD_IMAGE_BYTES) if memory > 0 else threads
        return Placement(workers, min(1.0, gpus / workers), min(float(threads), cpus / workers), threads, "cuda",
                         images_per_worker or max(1, min(threads, fits)))
    per = max(1, cpus_per_worker or 1)
    workers = max(1, requested_workers or int(cpus // per) or 1)
    claim = min(float(per), cpus / workers)
    return Placement(workers, 0.0, claim, max(1, int(claim)), "cpu", images_per_worker or 1)
