"""The plain-solver resolution ladder: the baseline a learned closure has to beat.

A closure is worth its cost only if no plain pseudo-spectral solver at a somewhat
finer grid gives the same accuracy for less (McGreivy & Hakim 2024; Dresdner et al.
2023). For each factor ``f`` of ``run.ladder`` the plain solver (no closure, the DNS
physics with the DNS forcing ``f``) runs on the test trajectories at ``n = f n_les``
points (rounded to an even size with prime factors 2, 3, 5 only), and every saved
snapshot is coarse-grained exactly as the dataset was: ``P G w`` with the dataset's
filter ``G`` and the restriction ``P`` onto the LES grid. The result is an LES file
(`closure.les.coupled` schema, ``sgs`` = 0: there is no closure) scored by
`closure.evaluation.compare` like any LES model.

Two initial states, answering two questions (``run.ladder_starts``):

- ``dns``: the DNS field at the trajectory's first snapshot, spectrally truncated
  to ``n`` (modes ``|m_d| < n/2``): "what would the plain solver at this
  resolution have given?";
- ``filtered``: the LES's own initial field ``P G w`` zero-padded to ``n``: the
  plain solver starts from exactly the information the LES starts from, so the
  trajectory metrics (decorrelation) compare like with like.

The step of each rung follows one rule for all rungs: ``run.ladder_cfl: C`` gives
each rung the largest step dividing the sample interval whose CFL number
``max(sum_d |u_d|) dt / dx`` on the rung's initial fields is at most ``C``
(`solvers.CFL`; the plain solvers are as accurate at a large step as at a small one
up to some CFL number, and a fair baseline gets its largest accurate step); without
it, the LES step scaled to the rung's grid, ``run.dt * n_les / n``, shortened to
divide the sample interval; ``run.dt: auto``: CFL steps at ``run.cfl`` on this
grid, adapted as the flow evolves. Every output records its step and CFL number
(``dt``, ``cfl``; `closure.les.coupled.cfl_number`). Cost is timed like the LES models
(`closure.les.coupled.integrate`: one untimed warm-up step, wall clock of the
stepping only, the same device, batch and torch threads as the LES of the same
dataset), in seconds per unit model time.

Model names (``closure les --model``): ``plain@N`` (``N`` grid points per
direction), ``plain@Fx`` (a factor of the LES resolution, e.g. ``plain@1.5x``),
each optionally followed by ``:filtered`` (or ``:dns``, the default start).

    spec = parse_plain("plain@1.5x:filtered", n_les=32)   # PlainSpec(48, "filtered")
    run_plain(config, "plain@48", "dataset.nc", "les/plain@48.nc")
    ladder_models(config, n_les)                          # the names run.ladder asks for

The DNS state at the first snapshot is stored in every dataset (``omega_dns_t0``/
``u_dns_t0``; in 3D ``u_dns_t0``, ``v_dns_t0``, ``w_dns_t0``, docs/data.md), so the ladder
works without ``data.keep_dns``, in 1D, 2D and 3D.
"""

from __future__ import annotations

import logging
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Union

import numpy as np
import torch

from closure.config import Config, resolve_device, resolve_dtype
from closure.data import dataset as ds_io
from closure.data.filters import prolong_hat, restrict_hat
from closure.data.system import make_filter, plain_equation, trajectory_seeds
from closure.errors import ClosureError
from closure.les.coupled import (cfl_number, coarse_grain_snapshots, cpu_threads, dns_cost, integrate, les_config,
                                 test_trajectories, write_run)
from solvers import CFL
from solvers.spectral import SpectralGrid

log = logging.getLogger("closure.les.ladder")

__all__ = ["PlainSpec", "STARTS", "is_plain", "parse_plain", "ladder_resolution", "ladder_models", "run_plain",
           "fft_size", "rung_step"]

STARTS = ("dns", "filtered")
_SPEC = re.compile(r"^plain@(?P<size>\d+(?:\.\d+)?)(?P<x>x?)(?::(?P<start>[a-z]+))?$")


@dataclass(frozen=True)
class PlainSpec:
    """The plain solver at ``resolution`` points per direction, started from ``start``."""

    resolution: int
    start: str = "dns"

    @property
    def label(self) -> str:
        return f"plain@{self.resolution}" + ("" if self.start == "dns" else f":{self.start}")

    @property
    def file_name(self) -> str:
        return f"plain@{self.resolution}" + ("" if self.start == "dns" else f"_{self.start}") + ".nc"


def is_plain(name: str) -> bool:
    """True for a name of the ``plain@...`` family (well-formed or not)."""
    return str(name).startswith("plain@")


def fft_size(n: float) -> int:
    """The even integer nearest ``n`` whose prime factors are 2, 3 and 5 only (ties: the larger)."""
    target = max(4.0, float(n))
    best = None
    for m in range(4, int(2 * target) + 8, 2):
        rest = m
        for p in (2, 3, 5):
            while rest % p == 0:
                rest //= p
        if rest == 1 and (best is None or abs(m - target) <= abs(best - target)):
            best = m
    return int(best)


def ladder_resolution(n_les: int, factor: float) -> int:
    """Grid points of the ladder rung ``factor`` (of the LES resolution ``n_les``)."""
    if not (factor > 0 and math.isfinite(factor)):
        raise ClosureError(f"run.ladder: factor {factor!r} must be a positive number")
    return fft_size(factor * n_les)


def parse_plain(name: str, n_les: int) -> PlainSpec:
    """``plain@N``, ``plain@Fx``, optionally ``:dns`` or ``:filtered`` -> `PlainSpec`."""
    match = _SPEC.match(str(name))
    if match is None:
        raise ClosureError(f"--model {name!r}: expected plain@N (grid points), plain@Fx (a factor of the LES "
                           f"resolution) and optionally :dns or :filtered, e.g. plain@64 or plain@1.5x:filtered")
    start = match["start"] or "dns"
    if start not in STARTS:
        raise ClosureError(f"--model {name!r}: unknown start {start!r}; choose one of {', '.join(STARTS)}")
    size = float(match["size"])
    if match["x"]:
        n = ladder_resolution(n_les, size)
    else:
        if size != int(size) or int(size) < 4 or int(size) % 2:
            raise ClosureError(f"--model {name!r}: the grid size must be an even integer >= 4")
        n = int(size)
    return PlainSpec(n, start)


def ladder_models(config: Config, n_les: int) -> list[str]:
    """The ladder's model names for ``run.ladder`` x ``run.ladder_starts`` (duplicates dropped)."""
    names: list[str] = []
    for start in config.run.ladder_starts:
        for factor in config.run.ladder:
            label = PlainSpec(ladder_resolution(n_les, float(factor)), start).label
            if label not in names:
                names.append(label)
    return names


def rung_step(cfg: Config, equation, initial_hat: torch.Tensor, n_les: int) -> float:
    """The largest step a rung may take (before shortening to divide the sample interval):
    ``run.ladder_cfl`` on the rung's initial fields, else ``run.dt * n_les / n``."""
    if cfg.run.ladder_cfl is None:
        return cfg.run.dt * n_les / equation.grid.n
    return CFL(cfl=cfg.run.ladder_cfl).largest_step(equation, initial_hat)


def _save_every(interval: float, dt_max: float) -> int:
    return max(1, int(math.ceil(interval / dt_max - 1e-9)))


def _initial_hat(spec: PlainSpec, ds, test: list[int], var: str, grid: SpectralGrid, les_grid: SpectralGrid,
                 dns_grid: SpectralGrid, source: str, device, dtype) -> torch.Tensor:
    """The spectral initial state on the ladder grid (DNS start: truncated; filtered start: zero-padded)."""
    if spec.start == "filtered":
        field = np.asarray(ds[var].isel(trajectory=test, time=0).values)
        small, values = les_grid, field
    else:
        values = ds_io.dns_start(ds, test, source)
        small = dns_grid
    if not np.all(np.isfinite(values)):
        raise ClosureError(f"{source}: non-finite values in the initial fields of the test trajectories")
    hat = small.to_spectral(torch.as_tensor(values).to(device=device, dtype=dtype))
    if small.n == grid.n:
        return hat
    return restrict_hat(hat, small, grid) if small.n > grid.n else prolong_hat(hat, small, grid)


def run_plain(config: Config, model: str, data, output: Union[str, Path], show_progress: Optional[bool] = None,
              extra_attrs: Optional[dict] = None) -> Path:
    """Run the plain solver ``model`` (``plain@...``) from the test trajectories of ``data``; write ``output``.

    The output is an LES file whose snapshots are ``P G w`` on the LES grid (see the module
    docstring); its attributes add ``ladder_resolution``, ``ladder_factor`` (``n / n_les``)
    and ``ladder_start`` to those of `closure.les.coupled.run_les`.
    """
    output = Path(output)
    ds = ds_io.open_dataset(data) if not hasattr(data, "data_vars") else data
    source = str(data) if not hasattr(data, "data_vars") else ds.encoding.get("source", "dataset")
    data_config = ds_io.dataset_config(ds)
    cfg = les_config(config, data_config)
    n_les, n_dns = cfg.les.resolution, cfg.dns.resolution
    spec = parse_plain(model, n_les)
    var = ds_io.field_name(cfg.system.equation)
    ndim = cfg.system.ndim
    length = cfg.system.length

    times = np.asarray(ds["time"].values, dtype=np.float64)
    if times.size < 1:
        raise ClosureError(f"{source}: the dataset has no snapshots")
    interval = cfg.dns.sample_interval if times.size < 2 else float(times[1] - times[0])
    saves = int(math.floor(cfg.run.time / interval + 1e-9))
    if saves < 1:
        raise ClosureError(f"run.time={cfg.run.time} is shorter than the dataset's sample interval {interval:g}")
    t0 = float(times[0])

    test = test_trajectories(cfg, int(ds.sizes["trajectory"]))
    ids = [int(v) for v in np.asarray(ds["trajectory"].values)[test]]
    device, dtype = resolve_device(cfg.device), resolve_dtype(cfg.dtype)
    seeds = trajectory_seeds(cfg, ids)
    equation = plain_equation(cfg, spec.resolution, dtype=dtype, device=device, seeds=seeds)
    grid = equation.grid
    les_grid = SpectralGrid(n_les, length, ndim, dtype, device)
    dns_grid = SpectralGrid(n_dns, length, ndim, dtype, device)
    initial_hat = _initial_hat(spec, ds, test, var, grid, les_grid, dns_grid, source, device, dtype)
    initial = grid.to_physical(initial_hat)
    if cfg.run.adaptive:  # CFL steps at this resolution, landing on the snapshots
        dt, save_every = CFL(cfl=cfg.run.cfl, max_dt=interval), None
    else:
        save_every = _save_every(interval, rung_step(cfg, equation, initial_hat, n_les))
        dt = interval / save_every

    steps = f"CFL steps (cfl {cfg.run.cfl:g})" if cfg.run.adaptive else f"{saves * save_every} steps of dt={dt:.4g}"
    log.info("les %s: plain solver %d^%d from the %s start, %d trajectories %s, %s on %s",
             spec.label, spec.resolution, ndim, spec.start, len(ids), ids, steps, device)
    # the thread setting of the LES grid, so that the ladder and the LES models are timed alike
    with cpu_threads(device, n_les):
        n_threads = torch.get_num_threads()
        result = integrate(equation, None, initial, dt, save_every, saves, t0=t0, method=cfg.run.integrator,
                           desc=f"les {spec.label}", show_progress=show_progress, interval=interval)

    field = coarse_grain_snapshots(result.field, grid, les_grid, make_filter(cfg), device, dtype)
    spmt = result.seconds / result.model_time if result.model_time > 0 else float("nan")
    dns_spmt, dns_source = dns_cost(ds, data_config, len(ids), device, dtype)

    out = ds_io.build_dataset(cfg, field, np.zeros_like(field), result.times, ids)
    out[var].attrs["long_name"] = f"P G {var} of the plain solver at {spec.resolution} points"
    out["sgs"].attrs["long_name"] = "closure tendency (none: the plain solver has no closure)"
    out.attrs.update({
        "title": f"plain solver of {cfg.system.equation} at {spec.resolution} points, coarse-grained to the LES grid",
        "model": spec.label,
        "model_source": spec.label,
        "ladder_resolution": int(spec.resolution),
        "ladder_factor": float(spec.resolution / n_les),
        "ladder_start": spec.start,
    })
    return write_run(out, output, result, label=spec.label, ids=ids, dt="auto" if cfg.run.adaptive else dt,
                     data_config=data_config,
                     integrator=cfg.run.integrator, source=source, identity=ds_io.dataset_identity(ds),
                     seconds_per_model_time=spmt, dns_cost=(dns_spmt, dns_source), device=device,
                     n_threads=n_threads, extra_attrs=extra_attrs,
                     cfl=None if cfg.run.adaptive else cfl_number(equation, initial_hat, dt))
