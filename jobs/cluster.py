"""Starting or joining Ray, and deciding how many workers and which device each gets."""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass


@dataclass(frozen=True)
class Placement:
    workers: int
    gpus_per_worker: float
    cpus_per_worker: float
    threads_per_worker: int
    device: str  # "cuda" or "cpu"


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


def plan(requested_workers: int | None, device: str = "auto") -> Placement:
    """One worker per GPU when the cluster has GPUs, else one per CPU; never ask for a GPU that does not exist."""
    import ray
    res = ray.cluster_resources()
    gpus = int(res.get("GPU", 0))
    cpus = max(1.0, float(res.get("CPU", 1)))
    use_gpu = gpus > 0 and device in ("auto", "cuda")
    if device == "cuda" and gpus == 0:
        raise RuntimeError("--device cuda, but the Ray cluster has no GPUs")
    workers = requested_workers or (gpus if use_gpu else int(cpus))
    workers = max(1, workers)
    cpus_per = min(1.0, cpus / workers)
    nodes = max(1, len([n for n in ray.nodes() if n.get("Alive")]))
    threads = max(1, int(cpus / nodes) // max(1, -(-workers // nodes)))
    if use_gpu:
        return Placement(workers, min(1.0, gpus / workers), cpus_per, threads, "cuda")
    return Placement(workers, 0.0, cpus_per, threads, "cpu")
