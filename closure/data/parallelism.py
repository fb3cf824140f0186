"""How dataset generation uses the machine: processes x torch threads x trajectories per part.

    choose_layout(config, workers=None, threads=None, cores=None, gpus=None) -> Layout

On the CPU every core gets a process with one torch thread (dask workers): one
solver step is a chain of FFTs and elementwise passes that threads speed up
little on small grids, and threads competing with other processes for the cores
were seen to slow down ~100x, while independent trajectories in separate
processes scale with the cores. The trajectories are split into at least as
many parts as workers (``dns.batch_size`` is an upper bound; values do not
depend on the batching with a fixed ``dns.dt``; with ``dns.dt: auto`` a batch
shares its steps, so the parts are always ``dns.batch_size`` long). On CUDA
there is one process per GPU (in this process for a single GPU): there a large
batch fills the device. On the CPU, `closure.data.generation` runs parts in this
process too, next to N - 1 dask workers.

A local cluster costs a few seconds to start, so a job whose estimated work is
small (`_SMALL_JOB_POINT_STEPS` grid-point steps, ~10 s on one core) runs in
this process. ``workers`` / ``threads`` override the choice (``workers=1``: in
this process).
"""

from __future__ import annotations

import math
import os
import sys
from dataclasses import dataclass
from typing import Optional

from closure.config import Config, resolve_device
from closure.errors import ClosureError

__all__ = ["ALLOCATOR_ENVIRON", "Layout", "choose_layout", "dask_client", "estimated_steps", "keep_freed_memory",
           "usable_cores"]

# DNS grid points x steps below which a local cluster does not pay for its start-up
# (~4e-8 s per point-step for an ETDRK4 NS2D step on one core: ~10 s of work)
_SMALL_JOB_POINT_STEPS = 2.5e8


@dataclass(frozen=True)
class Layout:
    """Processes (``workers``; 1 = this process), torch threads per process, trajectories per part."""

    workers: int
    threads: int
    batch_size: int
    device: str
    reason: str

    @property
    def in_process(self) -> bool:
        return self.workers == 1

    def describe(self) -> str:
        if self.in_process:
            where = "in this process"
        elif self.device == "cpu":  # `closure.data.generation` runs parts here too
            where = f"{self.workers} processes (this one and {self.workers - 1} dask worker(s))"
        else:
            where = f"{self.workers} worker processes"
        return f"{where} x {self.threads} torch thread(s) on {self.device} ({self.reason})"


def usable_cores() -> int:
    """Cores this process may run on (its CPU affinity), at least 1."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def _gpu_count(device) -> int:
    import torch

    return torch.cuda.device_count() if device.type == "cuda" else 0


def choose_layout(config: Config, workers: Optional[int] = None, threads: Optional[int] = None,
                  cores: Optional[int] = None, gpus: Optional[int] = None) -> Layout:
    """The generation layout for ``config`` on this machine (see the module docstring)."""
    if workers is not None and int(workers) < 1:
        raise ClosureError(f"--workers {workers}: must be at least 1")
    if threads is not None and int(threads) < 1:
        raise ClosureError(f"--threads {threads}: must be at least 1")
    d = config.dns
    device = resolve_device(config.device)
    n_traj = d.trajectories
    if device.type == "cuda":
        gpus = _gpu_count(device) if gpus is None else gpus
        n = max(1, min(gpus, n_traj)) if workers is None else int(workers)
        reason = f"one process per GPU, {gpus} GPU(s)" if workers is None else "--workers"
        batch = d.batch_size if d.adaptive else min(d.batch_size, math.ceil(n_traj / n))
        return Layout(n, int(threads or 1), batch, str(device), reason)
    cores = usable_cores() if cores is None else int(cores)
    if workers is not None:
        n, reason = int(workers), "--workers"
    else:
        steps = estimated_steps(config)
        work = n_traj * steps * d.resolution ** config.system.ndim
        if cores == 1 or n_traj == 1:
            n, reason = 1, f"{cores} core(s), {n_traj} trajectory(ies)"
        elif work < _SMALL_JOB_POINT_STEPS:
            n, reason = 1, f"a small job ({work:.1e} grid-point steps): no cluster start-up"
        else:
            n, reason = min(cores, n_traj), f"one process per core, {cores} core(s)"
    batch = d.batch_size if d.adaptive else min(d.batch_size, math.ceil(n_traj / n))
    n = min(n, math.ceil(n_traj / batch))
    return Layout(n, int(threads or 1), batch, "cpu", reason)


def estimated_steps(config: Config) -> float:
    """DNS steps per trajectory: exact for a fixed ``dns.dt``; for ``dns.dt: auto`` the run's
    length over the CFL step of trajectory 0's random initial state (statistically steady
    flows are usually faster: an underestimate)."""
    d = config.dns
    if not d.adaptive:
        return d.spinup_steps + (d.samples - 1) * d.sample_steps
    import torch

    from closure.data.system import dns_equation, dns_step_size, initial_state, trajectory_seeds

    seeds = trajectory_seeds(config, [0])
    eq = dns_equation(config, torch.float32, "cpu", seeds)
    w_hat = eq.grid.to_spectral(initial_state(config, eq.grid, seeds).to(torch.float32))
    return d.sample_times()[-1] / dns_step_size(config, eq, w_hat)


# glibc malloc for solver processes: temporaries up to 32 MiB (glibc's largest mmap
# threshold) from the heap, freed memory kept up to 1 GiB (see `keep_freed_memory`)
_MMAP_THRESHOLD = 32 * 2 ** 20
_TRIM_THRESHOLD = 2 ** 30
ALLOCATOR_ENVIRON = {"MALLOC_MMAP_THRESHOLD_": str(_MMAP_THRESHOLD), "MALLOC_TRIM_THRESHOLD_": str(_TRIM_THRESHOLD)}


def keep_freed_memory() -> bool:
    """Make glibc's malloc keep freed memory for reuse in this process (True where it did).

    A solver step allocates and frees tens of arrays of ~0.1-10 MB. By default glibc maps
    each array above its mmap threshold afresh and returns freed heap memory to the system
    above its trim threshold; both thresholds start low (128 KiB) and rise only as large
    blocks are freed, so a fresh process pays page faults (zeroed pages) on every step of
    its first run: ~0.85 million minor faults and ~2 s of system time for 8 trajectories x
    ~3000 steps of 128^2 in a worker thread, ~10% more user time, ~5x fewer faults the
    second time. With fixed thresholds (mmap 32 MiB, trim 1 GiB) the first run is as fast
    as a warm one (~20 thousand faults). A process whose environment sets only
    ``MALLOC_TRIM_THRESHOLD_`` (dask's workers do) loses the rising threshold altogether
    (~20 million faults for the same run): setting both here repairs it. No-op off glibc.
    """
    import ctypes
    import platform

    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    m_trim_threshold, m_mmap_threshold = -1, -3
    return bool(libc.mallopt(m_mmap_threshold, _MMAP_THRESHOLD)) and bool(
        libc.mallopt(m_trim_threshold, _TRIM_THRESHOLD))


# dask's periodic work that a local cluster of solver processes does without: the workers'
# statistical profiler (a stack sample every 10 ms, taking the GIL from the task's thread),
# the resource monitors and the event-loop tick. Idle, one worker and its scheduler then
# cost 0.04 s and 0.07 s of CPU time per 20 s instead of 0.43 s and 0.42 s (measured);
# memory_limit=0 turns the memory monitors off.
_QUIET_CLUSTER = {"distributed.worker.profile.enabled": False,
                  "distributed.admin.system-monitor.interval": "10s",
                  "distributed.admin.tick.interval": "1s"}


def dask_client(scheduler: Optional[str], workers: Optional[int], fork: bool = False):
    """A dask.distributed client: on the scheduler at ``scheduler``, else on a new local
    cluster of ``workers`` single-threaded worker processes; returns ``(client, cluster)``
    (``cluster`` is None for a remote scheduler; the caller closes both).

    dask's workers start with ``MALLOC_TRIM_THRESHOLD_=65536``, which turns off glibc's
    adaptive mmap threshold: every array above 128 KiB is then mapped and zeroed afresh,
    and a solver step (tens of such temporaries) ran ~5x slower. Local workers start
    with `ALLOCATOR_ENVIRON` instead (see `keep_freed_memory`), and without dask's
    profiler and frequent monitors (`_QUIET_CLUSTER`).

    ``fork=True`` (Linux): the workers are forked from this process instead of started
    afresh, so they inherit its imports (torch, the solvers, xarray) and allocator
    settings: a worker is up and through a small first task in ~0.5 s of CPU time instead
    of ~3 s (a new interpreter and its imports; measured with one worker). Call it before
    this process starts work of its own in other threads (a fork copies only the calling
    thread; locks held by the others would stay held in the workers).
    """
    import dask
    from distributed import Client, LocalCluster

    if scheduler is not None:
        try:
            return Client(scheduler, timeout="20s"), None
        except (OSError, TimeoutError) as exc:
            raise ClosureError(f"--scheduler {scheduler}: cannot connect ({exc.__class__.__name__})") from None
    settings = {"distributed.nanny.pre-spawn-environ": {**dask.config.get("distributed.nanny.pre-spawn-environ"),
                                                         **ALLOCATOR_ENVIRON}, **_QUIET_CLUSTER}
    if fork and sys.platform == "linux":
        settings["distributed.worker.multiprocessing-method"] = "fork"
    with dask.config.set(settings):
        cluster = LocalCluster(n_workers=int(workers), threads_per_worker=1, processes=True,
                               dashboard_address=None, host="127.0.0.1", memory_limit=0,
                               scheduler_kwargs={"dashboard_address": ":0"})  # no dashboard; its health
    # routes on a free port (the default 8787 is taken when two clusters run at once)
    return Client(cluster), cluster
