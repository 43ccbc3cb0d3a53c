"""CPU threading: use the cores this process may run on, and never spin on shared cores.

PyTorch's CPU build runs its intra-op pool on GNU OpenMP, whose idle threads busy-wait for
300,000 spins between parallel regions by default. When another process holds one of the cores,
the spinning threads and the thread that does the work take turns on the core and a training step
slows down 6x (one CPU hog, `benchmarks/results/demo_time.md`; 30x was seen on a busier machine).
``OMP_WAIT_POLICY=PASSIVE`` (no spinning) cuts that to 1.4x but costs ~40 % on a quiet machine;
``GOMP_SPINCOUNT=10000`` (a short spin, then sleep) keeps the quiet speed within ~8 % and the
slowdown at ~2.4x, so that is what faceparse sets. OpenMP reads it once, when torch is first
imported: :mod:`faceparse` sets it (unless the user set ``GOMP_SPINCOUNT`` or ``OMP_WAIT_POLICY``)
before it imports torch, so the ``faceparse`` command and ``import faceparse`` before
``import torch`` get it.

Hand-written: neither torch nor Lightning exposes the cgroup-aware core count or the wait policy.
"""

from __future__ import annotations

import os
from pathlib import Path

SPIN_COUNT = "10000"


def set_short_spin() -> None:
    """Ask OpenMP to spin briefly, then sleep, while waiting (effective only before torch is imported)."""
    if "OMP_WAIT_POLICY" not in os.environ:
        os.environ.setdefault("GOMP_SPINCOUNT", SPIN_COUNT)


def available_cpus() -> int:
    """Cores this process may use: its CPU affinity, capped by a cgroup v2 CPU quota if one is set."""
    try:
        n = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        n = os.cpu_count() or 1
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]
        if quota != "max":
            n = min(n, max(1, int(int(quota) // int(period))))
    except (OSError, ValueError):
        pass
    return max(1, n)


def configure_threads(num_threads: int | None = None) -> int:
    """Set torch's intra-op threads to ``num_threads`` (default: :func:`available_cpus`); return it."""
    import torch

    n = int(num_threads or available_cpus())
    if torch.get_num_threads() != n:
        torch.set_num_threads(n)
    return n


def worker_init(worker_id: int) -> None:
    """DataLoader ``worker_init_fn``: one torch thread per worker, numpy/random seeded per worker.

    Each worker's seed derives from torch's per-worker seed, which the DataLoader draws from the
    main process's generator: one ``seed_everything`` fixes the augmentations of every worker.
    """
    import random

    import numpy as np
    import torch

    torch.set_num_threads(1)
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)
