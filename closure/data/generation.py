"""DNS ensembles -> filtered datasets with exact SGS terms (in-process or on dask.distributed).

For each of ``dns.trajectories`` independent random initial conditions (seeded per
trajectory by `closure.data.system.trajectory_seeds`, so values do not depend on how
trajectories are batched or distributed), the DNS is integrated for
``dns.spinup_time``, then ``dns.samples`` snapshots are taken every
``dns.sample_interval``. Each snapshot is filtered and restricted (``P G w``) and
its exact SGS term computed (`closure.data.sgs`); with ``les.formulation:
correction`` also the truncated field ``P w`` and its commutator (``*_coarse``).

Trajectories are integrated ``dns.batch_size`` at a time (one batch = one task =
one *part file*, written atomically under ``<output>.parts/``). When every part
exists they are merged into the final file (atomically) and the part folder is
removed. Re-running after an interruption skips the finished parts (resume).

    generate(config, output=None, scheduler=None, workers=None, progress=None) -> Path

``scheduler`` attaches to a running dask.distributed scheduler; otherwise
`closure.data.parallelism.choose_layout` picks processes x torch threads x
trajectories per part for the machine (one single-threaded process per core on
the CPU, one per GPU; small jobs in this process), logs the choice, and
``workers=N`` / ``threads=T`` override it (``workers=1``: the batches run one
after the other in this process; N > 1 on the CPU: this process and a `LocalCluster`
of N - 1 workers forked from it take the batches from one queue).
"""

from __future__ import annotations

import json
import logging
import shutil
import threading
import time as _time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np
import torch
import xarray as xr

from solvers import BlowUpError

from closure.data import dataset as ds_io
from closure.data.parallelism import choose_layout, dask_client, keep_freed_memory
from closure.data.sgs import sgs_hat
from closure.data.system import (dns_equation, dns_step_rule, initial_state, les_equation, make_filter,
                                 solver_filter, trajectory_seeds)
from closure.config import Config, config_from_yaml, config_to_yaml, resolve_device, resolve_dtype
from closure import storage
from closure.errors import ClosureError
from closure.progress import progress as progress_bar

log = logging.getLogger("closure.data.generation")

__all__ = ["generate", "simulate_batch", "plan_parts", "default_output", "generation_key"]


# --------------------------------------------------------------------------- planning
def default_output(config: Config) -> Path:
    """``data/<config file stem>.nc`` (``data/dataset.nc`` for a config not loaded from a file)."""
    stem = Path(config.source).stem if getattr(config, "source", None) else "dataset"
    return Path("data") / f"{stem}.nc"


def plan_parts(config: Config, batch_size: Optional[int] = None) -> list[list[int]]:
    """Trajectory ids of each batch (part): consecutive runs of ``batch_size`` (default ``dns.batch_size``).

    With ``dns.dt: auto`` a batch shares its steps (chosen for its fastest flow), so the
    values depend on the batches: they are always ``dns.batch_size`` long."""
    n = config.dns.trajectories
    b = config.dns.batch_size if config.dns.adaptive else batch_size or config.dns.batch_size
    return [list(range(start, min(start + b, n))) for start in range(0, n, b)]


def part_name(ids: Sequence[int]) -> str:
    return f"part-{ids[0]:06d}-{ids[-1]:06d}.nc"


def generation_key(config: Config) -> str:
    """The config sections that determine a dataset's values (for resume checks)."""
    d = config.model_dump(mode="json")
    keep = {k: d[k] for k in ("seed", "dtype", "system", "initial", "les", "data")}
    keep["dns"] = {k: v for k, v in d["dns"].items() if k != "batch_size" or config.dns.adaptive}
    keep["data"] = {"keep_dns": d["data"]["keep_dns"]}
    return json.dumps(keep, sort_keys=True)


# --------------------------------------------------------------------------- one batch
@dataclass
class BatchResult:
    ids: list[int]
    times: np.ndarray
    field: np.ndarray
    sgs: np.ndarray
    dns: Optional[np.ndarray]
    dns_start: Optional[np.ndarray] = None  # (batch, *dns grid): the DNS field at the first snapshot
    steps: Optional[np.ndarray] = None   # DNS steps taken before each snapshot (since the previous one)
    coarse: Optional[tuple] = None   # (P w, its commutator): the correction formulation's pair


def simulate_batch(config: Config, ids: Sequence[int], device=None,
                   on_steps: Optional[Callable[[int], None]] = None) -> BatchResult:
    """Integrate the trajectories ``ids`` together and return their filtered snapshots and SGS terms.

    ``on_steps(k)`` reports progress: ``k`` steps (fixed ``dns.dt``) or ``k`` units of
    model time (``dns.dt: auto``). Raises `ClosureError` naming the trajectory and the
    model time if the DNS blows up.
    """
    ids = [int(i) for i in ids]
    n_real = len(ids)
    if n_real == 1 and config.dns.batch_size > 1 and config.system.ndim == 2:
        # torch's CPU FFT takes another code path for a single 2D transform, with different
        # roundoff: run a lone leftover trajectory with a copy of itself so that its values are
        # bitwise those of a batched run (whatever the part it lands in)
        ids = ids * 2
    dtype = resolve_dtype(config.dtype)
    device = resolve_device(config.device) if device is None else torch.device(device)
    seeds = trajectory_seeds(config, ids)
    dns = dns_equation(config, dtype=dtype, device=device, seeds=seeds)
    les = les_equation(config, dtype=dtype, device=device, seeds=seeds)
    filt = make_filter(config)
    truncation = solver_filter(config) if config.les.formulation == "correction" else None
    d = config.dns
    dt = d.dt
    grid = dns.grid
    keep = config.data.keep_dns
    fields, sgss, dnss, times, first, steps = [], [], [], [], [], []
    coarse_fields, coarse_sgss = [], []

    def snapshot(step: int, time: float, w_hat: torch.Tensor):
        field_hat, s_hat = sgs_hat(w_hat, dns, les, filt)
        fields.append(les.grid.to_physical(field_hat).cpu().numpy())
        sgss.append(les.grid.to_physical(s_hat).cpu().numpy())
        if truncation is not None:
            field_hat, s_hat = sgs_hat(w_hat, dns, les, truncation)
            coarse_fields.append(les.grid.to_physical(field_hat).cpu().numpy())
            coarse_sgss.append(les.grid.to_physical(s_hat).cpu().numpy())
        if keep:
            dnss.append(grid.to_physical(w_hat).cpu().numpy())
        if not first:  # the DNS state at the first snapshot is always kept (the ladder starts from it)
            first.append(grid.to_physical(w_hat).cpu().numpy()[:n_real])
        times.append(time)
        steps.append(step)

    state = initial_state(config, grid, seeds).to(device=device, dtype=dtype)
    check_every = 1 if device.type == "cpu" else 20
    if d.adaptive:  # steps from the velocity, landing on the sample times
        clock = [0.0]

        def on_step(step, time, w_hat):
            on_steps(time - clock[0])
            clock[0] = time

        run = dict(dt=dns_step_rule(config), save_times=d.sample_times())
        advice = f"dns.dt=auto, dns.cfl={d.cfl:g}); lower dns.cfl or raise dns.resolution"
    else:  # absolute step numbers of the snapshots
        targets = [d.spinup_steps + j * d.sample_steps for j in range(d.samples)]
        on_step = lambda step, time, w_hat: on_steps(1)  # noqa: E731
        run = dict(dt=dt, steps=targets[-1], save_at=targets)
        advice = f"dns.dt={dt:g}); reduce dns.dt or raise dns.resolution"
    with torch.no_grad():
        try:
            dns.simulate(state, method=d.integrator, on_save=snapshot, check_every=check_every,
                         on_step=None if on_steps is None else on_step, **run)
        except BlowUpError as err:
            names = ", ".join(str(i) for i in sorted({ids[m] for m in err.members}))
            raise ClosureError(f"DNS blew up: trajectory {names} became non-finite at t = {err.time:.6g} "
                               f"(step {err.step}, {advice}") from None
        except ValueError as err:  # an adaptive step that collapsed
            raise ClosureError(f"DNS of trajectories {ids[:n_real]}: {err}") from None
    stack = lambda xs: np.stack(xs, axis=1)[:n_real]  # noqa: E731  (batch, time, *space)
    return BatchResult(ids[:n_real], np.asarray(times, dtype=np.float64), stack(fields), stack(sgss),
                       stack(dnss) if keep else None, first[0] if first else None,
                       np.diff(np.asarray([0] + steps, dtype=np.int64)),
                       (stack(coarse_fields), stack(coarse_sgss)) if truncation is not None else None)


def _part_dataset(config: Config, result: BatchResult):
    return ds_io.build_dataset(config, result.field, result.sgs, result.times, result.ids, dns_field=result.dns,
                               dns_start=result.dns_start, dns_steps=result.steps, coarse=result.coarse)


def _write_part(config: Config, ids: Sequence[int], path: Path, device=None,
                on_steps: Optional[Callable[[int], None]] = None) -> Path:
    result = simulate_batch(config, ids, device=device, on_steps=on_steps)
    ds = _part_dataset(config, result)
    ds.attrs["generation_key"] = generation_key(config)
    ds_io.write(ds, path, complevel=1)
    return path


def _dask_task(config_yaml: str, ids: list[int], path: str, threads: int = 1, device: Optional[str] = None) -> str:
    """One part on a dask worker (``threads`` torch threads, 1 by default: workers must not
    oversubscribe the cores; ``device`` e.g. ``cuda:1``, default the config's)."""
    keep_freed_memory()  # also on workers of a remote scheduler
    torch.set_num_threads(int(threads))
    config = config_from_yaml(config_yaml, "generate task")
    _write_part(config, ids, Path(path), device=device)
    return path


def _part_written(path: Path) -> None:
    """Hook called after each part file is written (tests patch it to simulate an interruption)."""


# --------------------------------------------------------------------------- resume
def _part_is_done(path: Path, key: str) -> bool:
    if not path.is_file():
        return False
    try:
        with xr.open_dataset(path, engine="netcdf4") as ds:
            stored = ds.attrs.get("generation_key")
    except Exception:  # a damaged part: regenerate it
        log.warning("%s: unreadable part file, regenerating it", path)
        return False
    if stored != key:
        raise ClosureError(f"{path}: part file of a different configuration; remove {path.parent} "
                           "or choose another output")
    return True


# --------------------------------------------------------------------------- main entry
def generate(config: Config, output=None, *, scheduler: Optional[str] = None, workers: Optional[int] = None,
             progress: Optional[bool] = None, threads: Optional[int] = None) -> Path:
    """Generate the dataset of ``config`` into ``output`` (default ``data/<config stem>.nc``).

    ``progress``: None shows a bar on a terminal and log lines otherwise; False is quiet.
    ``workers`` / ``threads``: processes and torch intra-op threads per process (default:
    `closure.data.parallelism.choose_layout`, one single-threaded process per core on the
    CPU: threads competing with other processes for the cores can slow the FFTs down a
    hundredfold). Returns the path of the final file.
    """
    if scheduler is not None and workers is not None:
        raise ClosureError("give either --scheduler or --workers, not both")
    layout = choose_layout(config, workers=workers, threads=threads)
    output = Path(output) if output is not None else default_output(config)
    if output.suffix != ".nc":
        raise ClosureError(f"{output}: the dataset file name must end in .nc")
    if output.is_dir():
        raise ClosureError(f"{output}: is a directory, expected a dataset file name")
    resolve_device(config.device)  # fail early on an unavailable device
    _check_grid(config)
    parts_dir = output.with_name(output.name + ".parts")
    parts = plan_parts(config, None if scheduler is not None else layout.batch_size)
    key = generation_key(config)
    paths = [parts_dir / part_name(ids) for ids in parts]
    todo = [(ids, p) for ids, p in zip(parts, paths) if not _part_is_done(p, key)]
    d = config.dns
    # progress: trajectory-steps (fixed dt) or trajectory-model-time (dt: auto)
    steps_per_traj = d.sample_times()[-1] if d.adaptive else d.spinup_steps + (d.samples - 1) * d.sample_steps
    n_done = len(parts) - len(todo)
    log.info("generate %s: %d trajectories x %d snapshots, DNS %d -> LES %d, %d part(s)%s; %s",
             output, d.trajectories, d.samples, d.resolution, config.les.resolution, len(parts),
             f" ({n_done} already done)" if n_done else "",
             f"scheduler {scheduler}" if scheduler is not None else layout.describe())
    parts_dir.mkdir(parents=True, exist_ok=True)
    storage.remove_stale_temps(parts_dir)  # part files half-written by a killed run
    storage.remove_stale_temps(output)  # and its final merge
    start = _time.perf_counter()
    if todo:
        if scheduler is None and layout.in_process:
            _run_in_process(config, todo, steps_per_traj, progress, layout.threads)
        elif scheduler is None and layout.device == "cpu":
            _run_local(config, todo, layout, progress)
        else:
            _run_dask(config, todo, scheduler, None if scheduler is not None else layout, progress)
    _merge(config, paths, output)
    shutil.rmtree(parts_dir, ignore_errors=True)
    log.info("wrote %s (%.1f s)", output, _time.perf_counter() - start)
    return output


def _check_grid(config: Config):
    try:
        config.system.forcing.check_resolution(config.les.resolution)
    except ValueError as err:
        raise ClosureError(str(err)) from None


def _run_in_process(config: Config, todo, steps_per_traj: int, progress: Optional[bool],
                    threads: Optional[int] = None):
    total = sum(len(ids) for ids, _ in todo) * steps_per_traj
    keep_freed_memory()
    previous = torch.get_num_threads()
    on_cpu = resolve_device(config.device).type == "cpu"
    if on_cpu and threads is not None:
        torch.set_num_threads(int(threads))
    try:
        unit = "traj-time" if config.dns.adaptive else "traj-step"
        with progress_bar(total=total, desc="generate", unit=unit, enabled=progress) as bar:
            for ids, path in todo:
                _write_part(config, ids, path, on_steps=lambda k, n=len(ids): bar.update(k * n))
                _part_written(path)
    finally:
        torch.set_num_threads(previous)


class _PartQueue:
    """The parts still to run, taken one at a time by this process and the workers (thread-safe)."""

    def __init__(self, todo):
        self._parts, self._lock, self.stopped = list(reversed(todo)), threading.Lock(), threading.Event()

    def take(self):
        with self._lock:
            return None if self.stopped.is_set() or not self._parts else self._parts.pop()


def _run_local(config: Config, todo, layout, progress: Optional[bool]):
    """``layout.workers`` processes on this machine: this one and ``layout.workers - 1``
    dask workers forked from it, taking the parts from one queue.

    Forked workers inherit this process's imports and set-up (`dask_client` with
    ``fork=True``): they are up in a fraction of a second, where a fresh interpreter
    spends ~3 s of CPU time on start-up and imports. This process runs parts too, and
    each process takes the next part when it is free.
    """
    queue, failures, lock = _PartQueue(todo), [], threading.Lock()
    n_traj = sum(len(ids) for ids, _ in todo)
    keep_freed_memory()  # before the fork: the workers inherit it
    client, cluster = dask_client(None, layout.workers - 1, fork=True)  # before any thread of ours works
    try:
        with client, progress_bar(total=n_traj, desc="generate", unit="traj", enabled=progress) as bar:
            def done(path, n):
                with lock:
                    bar.update(n)
                    _part_written(path)

            def workers():
                try:
                    _serve_parts(config, queue, client, layout, done)
                except BaseException as exc:  # noqa: BLE001 (raised again in this thread)
                    failures.append(exc)
                    queue.stopped.set()

            helper = threading.Thread(target=workers, name="generate-workers", daemon=True)
            helper.start()
            previous = torch.get_num_threads()
            try:
                torch.set_num_threads(int(layout.threads))
                while (item := queue.take()) is not None:
                    ids, path = item
                    done(_write_part(config, ids, path), len(ids))
            except BaseException:
                queue.stopped.set()
                raise
            finally:
                torch.set_num_threads(previous)
                helper.join()
    finally:
        cluster.close()
    if failures:
        raise failures[0]


def _serve_parts(config: Config, queue: _PartQueue, client, layout, done: Callable):
    """Keep each of the ``layout.workers - 1`` workers of ``client`` busy with a part from
    ``queue`` until it is empty or stopped (then the running parts are cancelled)."""
    from distributed import wait

    text = config_to_yaml(config)
    token = uuid.uuid4().hex[:8]

    def submit(item):
        ids, path = item
        return client.submit(_dask_task, text, ids, str(path.resolve()), layout.threads, None,
                             pure=False, key=f"generate-{path.stem}-{token}")

    sizes, pending = {}, set()

    def feed():
        if (item := queue.take()) is not None:
            fut = submit(item)
            sizes[fut.key] = len(item[0])
            pending.add(fut)

    for _ in range(layout.workers - 1):
        feed()
    try:
        while pending and not queue.stopped.is_set():
            try:  # a bounded wait: a failure in this process stops the workers within seconds
                finished = wait(list(pending), timeout=2.0, return_when="FIRST_COMPLETED").done
            except TimeoutError:
                continue
            for fut in finished:
                pending.discard(fut)
                done(Path(fut.result()), sizes[fut.key])
                feed()
    finally:
        for fut in pending:
            fut.cancel()


def _run_dask(config: Config, todo, scheduler: Optional[str], layout, progress: Optional[bool]):
    from distributed import as_completed

    cluster = None
    try:
        client, cluster = dask_client(scheduler, None if layout is None else layout.workers)
        text = config_to_yaml(config)
        with client:
            # parts are written by the workers: with --scheduler the output folder must be on a file
            # system the workers share (absolute paths)
            token = uuid.uuid4().hex[:8]
            threads = 1 if layout is None else layout.threads
            gpus = layout is not None and layout.device.startswith("cuda") and layout.workers > 1
            futures = [client.submit(_dask_task, text, ids, str(path.resolve()), threads,
                                     f"cuda:{i % layout.workers}" if gpus else None,
                                     pure=False, key=f"generate-{path.stem}-{token}")
                       for i, (ids, path) in enumerate(todo)]
            n_traj = sum(len(ids) for ids, _ in todo)
            sizes = {f.key: len(ids) for f, (ids, _) in zip(futures, todo)}
            with progress_bar(total=n_traj, desc="generate", unit="traj", enabled=progress) as bar:
                try:
                    for fut in as_completed(futures):
                        path = Path(fut.result())
                        bar.update(sizes[fut.key])
                        _part_written(path)
                except BaseException:
                    for f in futures:
                        f.cancel()
                    raise
    finally:
        if cluster is not None:
            cluster.close()


def _merge(config: Config, paths: list[Path], output: Path) -> Path:
    if len(paths) == 1:
        parts = [xr.open_dataset(paths[0], engine="netcdf4", chunks={})]
        merged = parts[0]
    else:
        parts = [xr.open_dataset(p, engine="netcdf4", chunks={}) for p in paths]
        merged = xr.concat(parts, dim="trajectory", data_vars="minimal", coords="minimal", compat="override",
                           join="exact", combine_attrs="override")
    try:
        merged.attrs = ds_io.global_attrs(config)
        ds_io.write(merged, output)
    finally:
        for p in parts:
            p.close()
    return output
