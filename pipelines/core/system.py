"""The machine a task runs on: the cores it may use (CPU affinity, as a container or ``taskset`` gives
them, not the host's count) and how training shares them."""

from __future__ import annotations

import os

from pipelines.settings import Settings


def usable_cores() -> int:
    """Cores this process may run on (``os.sched_getaffinity``; ``os.cpu_count`` where there is none)."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return os.cpu_count() or 1


def train_threads(settings: Settings, side_by_side: int, cores: int | None = None) -> int:
    """Torch CPU threads for one of ``side_by_side`` training processes (``MELI_TORCH_THREADS`` wins);
    ``cores``: the usable cores (default ``usable_cores()``)."""
    if settings.torch_threads > 0:
        return settings.torch_threads
    cores = usable_cores() if cores is None else cores
    return max(1, cores // max(1, min(side_by_side, settings.train_concurrency)))


def pick_device(requested: str = "auto"):
    import torch

    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(requested)
