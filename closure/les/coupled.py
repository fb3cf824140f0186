"""The coupled LES: the LES solver with a closure, started from filtered DNS fields.

    run_les(config, model, data, output, name=None) -> Path

- ``data``: a filtered-DNS dataset (docs/conventions.md schema). The LES physics
  (equation, viscosity, drag, forcing, LES resolution and filter, seed) is the
  dataset's own stored config; ``config`` supplies the ``run`` section (time,
  dt, integrator, constants), ``device`` and ``dtype``, and the train/test
  split. A ``system``/``les`` section in ``config`` that disagrees with the
  dataset's is an error (the LES would not be the dataset's LES).
- ``model``: a training run directory (its ``model.pt`` is loaded with
  `closure.nn.load_model`, and its ``splits.json`` names the test
  trajectories) or a baseline name (``none``, ``smagorinsky``,
  ``dynamic_smagorinsky``, ``leith``, or a ``+`` sum, see `closure.les.baselines`).
  Without a run directory the test trajectories are
  ``split_trajectories(n, data.validation_fraction, data.test_fraction, seed)["test"]``,
  the split the training uses.
- Formulation (``les.formulation``): ``filtered``, the LES advances the filtered field;
  ``correction``, the LES is the plain solver on the LES grid plus the closure, started
  from the truncated DNS field ``P w`` (the dataset's `closure.data.dataset.les_view`),
  and every saved snapshot is filtered by ``G`` (``P G`` on the LES grid,
  `coarse_grain_snapshots`, as the ladder's rungs) before it is written and scored
  against the filtered DNS; ``sgs`` holds the closure's (unfiltered) tendency.
- Each test trajectory starts from its first snapshot (model time
  ``t0 = dns.spinup_time``) and the LES (`closure.data.system.les_equation`, filtered
  forcing ``P G f``; the stochastic Burgers forcing gets each trajectory's own
  seed and the absolute model time, so it is the DNS's forcing) runs for
  ``run.time`` with steps of ``run.dt``, all test trajectories in one batch on
  the resolved device. The closure is called inside every stage of the
  integrator, on the solver's device, under ``torch.no_grad``: no host round
  trips except one copy per saved snapshot.
- Snapshots are saved every ``dns.sample_interval`` (so ``run.dt`` must divide
  it), at the same times as the reference. ``run.time`` may exceed the
  reference's span (a longer stability test); the evaluation uses the overlap.
- Blow-ups: a trajectory whose state becomes non-finite is recorded (its
  ``blowup_time``), dropped from the batch, and the others continue from the
  last saved state (the interval is re-run without it). Its remaining
  snapshots are NaN.

Output: the dataset schema (variable ``omega``/``u`` and ``sgs`` = the closure's
tendency at each snapshot, coordinates, the contract's attributes with ``dt``
the LES step), plus the variable ``blowup_time`` (trajectory; NaN = none) and
the attributes ``model``, ``blowups`` (JSON ``[{trajectory, time}]``),
``les_seconds_per_model_time`` (wall clock of the whole batch per unit model
time, I/O and one untimed warm-up step excluded), ``les_ms_per_step``, ``device``,
``torch_threads`` and ``batch`` (how it was timed), ``dns_seconds_per_model_time`` (the
dataset's ``dns_seconds_per_model_time`` attribute if it has one, else a few
DNS steps timed here on the same device with the same batch, once per process
so that the models of one pipeline share it) and
``cost_ratio`` (LES / DNS per unit model time), and ``reference_identity``
(the dataset's `closure.data.dataset.dataset_identity`, which ``closure evaluate``
checks). Written atomically. A learned model trained for another equation,
LES grid, domain length or field is refused before the run.
"""

from __future__ import annotations

import json
import logging
import math
import time as _time
from pathlib import Path
from typing import Optional, Union

import numpy as np
import torch

import solvers
from solvers import CFL

from closure.data import dataset as ds_io
from closure.data.generation import generation_key
from closure.data.filters import prolong_hat, restrict_hat
from closure.data.system import dns_equation, dns_step_size, initial_state, les_equation, make_filter, trajectory_seeds
from closure.les.baselines import BASELINES, CALIBRATION_FILE, NoClosure, is_baseline, is_calibrated_run, make_closure
from closure.config import Config, resolve_device, resolve_dtype
from closure import storage
from closure.errors import ClosureError
from closure.nn.features import FieldClosure
from closure.progress import progress

log = logging.getLogger("closure.les.coupled")

__all__ = ["run_les", "made_by", "test_trajectories", "les_config", "time_dns", "model_label", "LESResult",
           "integrate", "dns_cost", "warm_up", "write_atomic", "cpu_threads", "compile_closure",
           "coarse_grain_snapshots", "cfl_number"]


_DNS_COST: dict = {}  # (DNS setup, batch, device, dtype) -> seconds per unit model time


def _sections_equal(a, b) -> bool:
    return a.model_dump(mode="json") == b.model_dump(mode="json")


def les_config(config: Config, data_config: Config) -> Config:
    """The dataset's physics with ``config``'s run section, device and dtype (checked for consistency)."""
    for section in ("system", "les"):
        if not _sections_equal(getattr(config, section), getattr(data_config, section)):
            mine = getattr(config, section).model_dump(mode="json")
            theirs = getattr(data_config, section).model_dump(mode="json")
            key = next((k for k in mine if mine[k] != theirs.get(k)), "?")
            raise ClosureError(f"config {section}.{key}={mine.get(key)!r} differs from the dataset's "
                               f"{section}.{key}={theirs.get(key)!r}: the LES must use the dataset's physics")
    return data_config.model_copy(update={"run": config.run, "device": config.device, "dtype": config.dtype,
                                          "data": config.data, "model": config.model, "train": config.train})


def model_label(model: Union[str, Path]) -> str:
    """``none``/``smagorinsky``/... for baselines, the run directory's name for a learned model."""
    text = str(model)
    return text if is_baseline(text) else Path(text).resolve().name


def _is_run_dir(model) -> bool:
    return not is_baseline(str(model)) and Path(str(model)).is_dir()


def test_trajectories(config: Config, n_trajectories: int, model=None) -> list[int]:
    """Positional indices of the test trajectories: the run dir's ``splits.json`` if any, else the config's split."""
    if model is not None and _is_run_dir(model):
        splits_file = Path(str(model)) / "splits.json"
        if splits_file.is_file():
            try:
                test = json.loads(splits_file.read_text())["test"]
            except (ValueError, KeyError):
                raise ClosureError(f"{splits_file}: malformed (expected a JSON object with a 'test' list)") from None
            bad = [i for i in test if not (0 <= int(i) < n_trajectories)]
            if bad:
                raise ClosureError(f"{splits_file}: test trajectories {bad} are not in the dataset "
                                   f"({n_trajectories} trajectories)")
            return [int(i) for i in test]
    d = config.data
    return ds_io.split_trajectories(n_trajectories, d.validation_fraction, d.test_fraction, config.seed)["test"]


def _sync(device: torch.device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class cpu_threads:
    """Context manager: torch intra-op threads for small CPU grids.

    Small FFTs (an LES grid of <= 128^2) gain nothing from several threads, and when
    other processes compete for the cores torch's thread pool can slow them ~100x
    (docs/performance.md). ``threads=None`` picks 1 for grids of at most ``small``
    points per direction on the CPU and leaves the setting alone otherwise.
    """

    def __init__(self, device, n: int, threads: Optional[int] = None, small: int = 128):
        self.target = threads if threads is not None else (1 if torch.device(device).type == "cpu" and n <= small
                                                           else None)
        self.saved = None

    def __enter__(self):
        if self.target is not None:
            self.saved = torch.get_num_threads()
            torch.set_num_threads(int(self.target))
        return self

    def __exit__(self, *exc):
        if self.saved is not None:
            torch.set_num_threads(self.saved)
        return False


def time_dns(config: Config, batch: int, device, dtype, max_steps: int = 20, budget_s: float = 2.0) -> float:
    """Seconds of wall clock per unit model time of the DNS of ``config`` for ``batch`` trajectories."""
    with cpu_threads(device, config.dns.resolution):
        return _time_dns(config, batch, device, dtype, max_steps, budget_s)


def _time_dns(config, batch, device, dtype, max_steps, budget_s):
    seeds = trajectory_seeds(config, range(batch))
    eq = dns_equation(config, dtype=dtype, device=device, seeds=seeds)
    state = initial_state(config, eq.grid, seeds).to(device=device, dtype=dtype)
    d = config.dns
    dt = dns_step_size(config, eq, eq.grid.to_spectral(state))  # dt: auto: the step the run starts with
    with torch.no_grad():
        _sync(eq.device)
        start = _time.perf_counter()
        state = eq.simulate(state, dt, 1, method=d.integrator)  # warm-up (plans, caches)
        _sync(eq.device)
        first = _time.perf_counter() - start
        steps = max(2, min(max_steps, int(budget_s / max(first, 1e-9))))
        if eq.device.type != "cpu":  # a second warm-up: the CUDA graph of `steps`-step runs
            state = eq.simulate(state, dt, steps, time=dt, method=d.integrator)
        _sync(eq.device)
        start = _time.perf_counter()
        eq.simulate(state, dt, steps, time=dt, method=d.integrator)
        _sync(eq.device)
        elapsed = _time.perf_counter() - start
    return elapsed / (steps * dt)


def dns_cost(ds, data_config: Config, batch: int, device, dtype) -> tuple[float, str]:
    """``(seconds per unit model time of the DNS, where the figure comes from)``.

    The dataset's ``dns_seconds_per_model_time`` attribute if it has one, else a few DNS
    steps timed here, once per process and DNS setup, so that the models of one pipeline
    share the figure.
    """
    stored = ds.attrs.get("dns_seconds_per_model_time")
    if stored is not None:
        return float(stored), "dataset"
    key = (generation_key(data_config), batch, str(device), str(dtype))
    if key not in _DNS_COST:
        _DNS_COST[key] = time_dns(data_config, batch, device, dtype)
    return float(_DNS_COST[key]), f"timed here ({batch} trajectories, {device})"


class LESResult:
    """Arrays of one coupled LES batch: field/sgs (trajectory, time, *grid), times, blow-up times, timing."""

    def __init__(self, field, sgs, times, blowup_time, seconds, model_time, steps, interval_steps=None):
        self.field, self.sgs, self.times, self.blowup_time = field, sgs, times, blowup_time
        self.seconds, self.model_time, self.steps = seconds, model_time, steps
        self.interval_steps = interval_steps  # steps taken to reach each snapshot from the previous one


def warm_up(equation, closure, state: torch.Tensor, dt: float, t0: float, method: str) -> None:
    """One untimed step from ``state`` (discarded): FFT plans, caches and lazy set-up happen here,
    so that the timed stepping measures the steady cost per step."""
    try:
        equation.simulate(state, dt=dt, steps=1, closure=closure, time=t0, method=method)
    except solvers.BlowUpError:
        pass  # the timed run meets the blow-up again and records it
    _sync(state.device)


def compile_closure(closure):
    """``torch.compile`` the network part of a learned closure (its ``predict``), in place; returns it.

    Only the real-valued network is compiled (TorchInductor has no complex codegen, so the
    spectral features and the solver stay eager). Compilation happens at the first call
    (~20 s for a small network on one CPU thread, again for each new batch size); if it
    fails the closure logs one warning and runs eagerly. Baselines are returned unchanged.
    """
    if not isinstance(closure, FieldClosure):
        return closure
    eager = closure.predict
    current = {"fn": torch.compile(eager, dynamic=False)}

    def predict(x: torch.Tensor) -> torch.Tensor:
        try:
            return current["fn"](x)
        except Exception as exc:  # compiler missing or unsupported op: fall back once
            if current["fn"] is eager:
                raise
            log.warning("torch.compile of the closure failed (%s: %s); running eagerly",
                        type(exc).__name__, str(exc).splitlines()[0] if str(exc) else "")
            current["fn"] = eager
            return eager(x)

    closure.predict = predict
    return closure


def integrate(equation, closure, initial: torch.Tensor, dt, save_every: Optional[int], saves: int,
              t0: float = 0.0, method: str = "etdrk4", desc: str = "les", show_progress: Optional[bool] = None,
              closure_per_stage: bool = True, interval: Optional[float] = None) -> LESResult:
    """Run ``saves`` intervals of ``save_every`` steps from ``initial`` (batch, *grid); drop blow-ups.

    ``dt`` a `solvers.CFL`: adaptive steps landing on every ``interval`` (``save_every``
    unused; the batch shares its steps, set by its fastest flow); the steps taken in each
    interval are in ``LESResult.interval_steps``. ``closure_per_stage=False`` evaluates
    the closure once per step, held over the integrator's stages
    (`solvers.integrators.HeldTendency`). Returns numpy arrays (NaN after a member's
    blow-up) and the wall time of the stepping.
    """
    closure = NoClosure() if closure is None else closure
    # the zero closure costs two FFTs per stage inside the solver: pass None there
    solver_closure = None if isinstance(closure, NoClosure) else closure
    batch = initial.shape[0]
    shape = tuple(initial.shape[1:])
    np_dtype = np.float32 if initial.dtype == torch.float32 else np.float64
    field = np.full((batch, saves + 1) + shape, np.nan, dtype=np_dtype)
    sgs = np.full((batch, saves + 1) + shape, np.nan, dtype=np_dtype)
    blowup_time = np.full(batch, np.nan)
    adaptive = isinstance(dt, solvers.CFL)
    if not adaptive:
        interval = save_every * dt
    times = t0 + interval * np.arange(saves + 1)
    interval_steps = np.zeros(saves + 1, dtype=np.int64)
    active = list(range(batch))
    state = initial
    first = dt.largest_step(equation, equation.grid.to_spectral(state)) if adaptive else dt
    first = first if math.isfinite(first) else interval
    equation.stepper(method, first)  # build (and cache) the integrator's coefficients outside the timing
    seconds, steps = 0.0, 0
    with torch.no_grad():
        warm_up(equation, solver_closure, state, first, t0, method)
        field[:, 0] = state.cpu().numpy()
        sgs[:, 0] = closure(state).cpu().numpy()
        with progress(total=saves, desc=desc, unit="snapshot", enabled=show_progress) as bar:
            for j in range(1, saves + 1):
                t = float(times[j - 1])
                new = None
                while active:
                    _sync(state.device)
                    start = _time.perf_counter()
                    try:
                        new, taken = _interval(equation, state, dt, save_every, solver_closure, t, interval, method,
                                               closure_per_stage)
                        _sync(state.device)
                        seconds += _time.perf_counter() - start
                        steps += taken
                        interval_steps[j] += taken
                        break
                    except solvers.BlowUpError as err:
                        seconds += _time.perf_counter() - start
                        steps += err.step
                        interval_steps[j] += err.step
                        bad = set(int(m) for m in err.members)
                        for m in bad:
                            blowup_time[active[m]] = err.time
                        keep = [i for i in range(len(active)) if i not in bad]
                        log.warning("%s: trajectory %s blew up at t = %.6g; continuing with %d of %d",
                                    desc, [active[m] for m in sorted(bad)], err.time, len(keep), batch)
                        active = [active[i] for i in keep]
                        if not active:
                            break
                        state = state[keep]
                        forcing = equation.forcing
                        if forcing is not None and not getattr(forcing, "steady", True):
                            equation.forcing = forcing.subset(keep)
                if not active:
                    break
                state = new
                field[active, j] = state.cpu().numpy()
                sgs[active, j] = closure(state).cpu().numpy()
                bar.update(1)
    return LESResult(field, sgs, times, blowup_time, seconds, saves * interval, steps, interval_steps)


def _interval(equation, state, dt, save_every, closure, t: float, interval: float, method: str, per_stage: bool):
    """One interval between snapshots from model time ``t``: (the state at its end, the steps taken)."""
    if not isinstance(dt, solvers.CFL):
        return equation.simulate(state, dt=dt, steps=save_every, closure=closure, time=t, method=method,
                                 closure_per_stage=per_stage), save_every
    taken = []
    new = equation.simulate(state, dt=dt, closure=closure, time=t, save_times=[t + interval], method=method,
                            closure_per_stage=per_stage, on_save=lambda i, time, w_hat: taken.append(i))
    return new, taken[-1]


def _check_model(model: str, cfg: Config, var: str, identity: str, source) -> None:
    """Refuse a model trained for another equation, grid or field (`closure.nn.io.check_made_for`)."""
    from closure.nn.io import check_made_for, model_file, read_made_for

    path = model_file(model)
    stored = read_made_for(path)
    check_made_for(path, stored, {"equation": cfg.system.equation, "les_resolution": cfg.les.resolution,
                                  "length": cfg.system.length, "field": var})
    if stored.get("dataset") not in (None, identity):
        log.warning("les: %s was trained on another dataset (identity %s) than %s (%s): same physics and grid, "
                    "so it runs; its test split refers to its own dataset", path, stored["dataset"], source, identity)


def _check_calibration(run_dir: str, cfg: Config, var: str) -> None:
    """Refuse a calibration made for another equation, grid or field (its ``calibration.json``)."""
    from closure.nn.io import check_made_for

    path = Path(run_dir) / CALIBRATION_FILE
    try:
        stored = json.loads(path.read_text()).get("made_for", {})
    except (OSError, ValueError, AttributeError):
        raise ClosureError(f"{path}: unreadable or malformed calibration record") from None
    check_made_for(path, stored if isinstance(stored, dict) else {},
                   {"equation": cfg.system.equation, "les_resolution": cfg.les.resolution,
                    "length": cfg.system.length, "field": var})


def made_by(path: Union[str, Path], config: Config, model: Union[str, Path], data) -> bool:
    """True if the LES file ``path`` was run with this ``model`` from ``data`` with the same run settings.

    Compares its ``model_source``, ``reference_identity`` and the ``run`` section, ``dtype`` and
    ``data`` section of its stored config (what `closure les` would change); False for a file
    that cannot be read.
    """
    import xarray as xr

    from closure.config import config_from_yaml

    model_str = str(model)
    source = model_str if is_baseline(model_str) else str(Path(model_str).resolve())
    try:
        with xr.open_dataset(path, engine="netcdf4") as out:
            attrs = dict(out.attrs)
        stored = config_from_yaml(attrs.get("config", ""), str(path))
        with ds_io.open_dataset(data) as ds:
            identity = ds_io.dataset_identity(ds)
    except (OSError, ValueError, RuntimeError, ClosureError):
        return False
    return (attrs.get("model_source") == source and attrs.get("reference_identity") == identity
            and _sections_equal(stored.run, config.run) and stored.dtype == config.dtype
            and _sections_equal(stored.data, config.data))


def run_les(config: Config, model: Union[str, Path], data, output: Union[str, Path],
            name: Optional[str] = None, show_progress: Optional[bool] = None,
            extra_attrs: Optional[dict] = None) -> Path:
    """Run the coupled LES of ``model`` from the test trajectories of ``data``; write ``output``; return its path.

    ``name`` overrides the ``model`` attribute (default: the baseline name or the run directory's
    name); ``extra_attrs`` are added to the output's global attributes.
    """
    output = Path(output)
    model_str = str(model)
    if not is_baseline(model_str):
        path = Path(model_str)
        if not path.exists():
            raise ClosureError(f"--model {model_str!r}: neither a training run directory nor one of "
                               f"{', '.join(BASELINES)}")
        if path.is_dir() and not (path / "model.pt").is_file() and not is_calibrated_run(path):
            raise ClosureError(f"{path}: not a training run directory (no model.pt) nor a calibration run "
                               f"(no {CALIBRATION_FILE})")
    label = name or model_label(model_str)

    ds = ds_io.open_dataset(data) if not hasattr(data, "data_vars") else data
    source = str(data) if not hasattr(data, "data_vars") else ds.encoding.get("source", "dataset")
    data_config = ds_io.dataset_config(ds)
    cfg = les_config(config, data_config)
    equation_name = cfg.system.equation
    var = ds_io.field_name(equation_name)
    identity = ds_io.dataset_identity(ds)
    if is_calibrated_run(model_str):
        _check_calibration(model_str, cfg, var)
    elif not is_baseline(model_str):
        _check_model(model_str, cfg, var, identity, source)

    # ---------------------------------------------------------------- times
    times = np.asarray(ds["time"].values, dtype=np.float64)
    if times.size < 1:
        raise ClosureError(f"{source}: the dataset has no snapshots")
    interval = cfg.dns.sample_interval if times.size < 2 else float(times[1] - times[0])
    run = cfg.run
    if run.adaptive:  # CFL steps landing on every snapshot time
        step, save_every = solvers.CFL(cfl=run.cfl, max_dt=interval), None
    else:
        ratio = interval / run.dt
        if abs(ratio - round(ratio)) > 1e-6 * max(1.0, ratio) or round(ratio) < 1:
            raise ClosureError(f"run.dt={run.dt} must divide the dataset's sample interval {interval:g}")
        step, save_every = float(run.dt), int(round(ratio))
    saves = int(math.floor(run.time / interval + 1e-9))
    if saves < 1:
        raise ClosureError(f"run.time={run.time} is shorter than the dataset's sample interval {interval:g}")
    t0 = float(times[0])
    span = float(times[-1] - times[0])
    if saves * interval > span + 1e-9:
        log.info("les %s: run.time=%g exceeds the reference span %g; the evaluation uses the overlap",
                 label, run.time, span)

    # ---------------------------------------------------------------- trajectories
    n_traj = int(ds.sizes["trajectory"])
    test = test_trajectories(cfg, n_traj, model_str)
    ids = [int(v) for v in np.asarray(ds["trajectory"].values)[test]]
    device, dtype = resolve_device(cfg.device), resolve_dtype(cfg.dtype)
    initial = np.asarray(ds_io.les_view(ds, source)[var].isel(trajectory=test, time=0).values)
    if not np.all(np.isfinite(initial)):
        raise ClosureError(f"{source}: non-finite values in the initial snapshots of trajectories {ids}")
    state = torch.as_tensor(initial).to(device=device, dtype=dtype)

    seeds = trajectory_seeds(cfg, ids)
    equation = les_equation(cfg, dtype=dtype, device=device, seeds=seeds)
    closure = make_closure(model_str, equation, cfg)
    if isinstance(closure, torch.nn.Module):
        closure = closure.to(device=device).eval()
        if run.compile:
            closure = compile_closure(closure)

    if run.adaptive:
        log.info("les %s: %d trajectories %s, %d intervals of %g with CFL steps (cfl %g) on %s", label, len(ids),
                 ids, saves, interval, run.cfl, device)
    else:
        log.info("les %s: %d trajectories %s, %d steps of dt=%g on %s", label, len(ids), ids, saves * save_every,
                 run.dt, device)
    with cpu_threads(device, cfg.les.resolution) as threads:
        n_threads = torch.get_num_threads()
        result = integrate(equation, closure, state, step, save_every, saves, t0=t0, method=run.integrator,
                           desc=f"les {label}", show_progress=show_progress,
                           closure_per_stage=run.closure_per_stage, interval=interval)

    # ---------------------------------------------------------------- cost
    les_spmt = result.seconds / result.model_time if result.model_time > 0 else float("nan")
    dns_spmt, dns_source = dns_cost(ds, data_config, len(ids), device, dtype)

    # ---------------------------------------------------------------- write
    field = result.field
    if cfg.les.formulation == "correction":  # the plain coarse solver's state -> P G w, scored like the ladder
        field = coarse_grain_snapshots(field, equation.grid, equation.grid, make_filter(cfg), device, dtype)
    out = ds_io.build_dataset(cfg, field, result.sgs, result.times, ids)
    out[var].attrs["long_name"] = f"LES {var} with closure {label}"
    out["sgs"].attrs["long_name"] = f"closure tendency c({var}) of model {label}"
    out.attrs.update({
        "title": f"coupled LES of {equation_name} with closure {label}",
        "model": label,
        "model_source": model_str if is_baseline(model_str) else str(Path(model_str).resolve()),
        "closure_per_stage": int(run.closure_per_stage),
        "formulation": cfg.les.formulation,
    })
    return write_run(out, output, result, label=label, ids=ids, dt=run.dt, data_config=data_config,
                     integrator=run.integrator, source=source, identity=identity, seconds_per_model_time=les_spmt,
                     dns_cost=(dns_spmt, dns_source), device=device, n_threads=n_threads, extra_attrs=extra_attrs,
                     cfl=None if run.adaptive else cfl_number(equation, equation.grid.to_spectral(state), run.dt))


def coarse_grain_snapshots(field: np.ndarray, grid, les_grid, filt, device, dtype) -> np.ndarray:
    """``P G w`` of every snapshot ``(trajectory, time, *grid)`` onto the LES grid (NaN stays NaN).

    Used for the plain-solver ladder's rungs and for the correction formulation's output
    (``grid`` = the LES grid: ``G`` and the restriction, which zeroes the Nyquist mode)."""
    batch, saves = field.shape[:2]
    components = field.shape[2:-grid.ndim]  # (3,) for the 3D velocity
    out = np.full((batch, saves) + components + les_grid.shape, np.nan, dtype=field.dtype)
    with torch.no_grad():
        for j in range(saves):  # one snapshot of every trajectory at a time: bounded memory
            snap = field[:, j]
            ok = np.all(np.isfinite(snap.reshape(batch, -1)), axis=1)
            if not ok.any():
                continue
            w = torch.as_tensor(snap[ok]).to(device=device, dtype=dtype)
            hat = filt.apply_hat(grid.to_spectral(w), grid)
            # restriction also at equal sizes: P zeroes the Nyquist mode
            hat = restrict_hat(hat, grid, les_grid) if grid.n >= les_grid.n else prolong_hat(hat, grid, les_grid)
            out[ok, j] = les_grid.to_physical(hat).cpu().numpy()
    return out


def cfl_number(equation, state_hat: torch.Tensor, dt: float) -> float:
    """The CFL number ``dt max_batch(sum_d max|u_d|) / dx`` of a step ``dt`` on a spectral state
    (the number `solvers.CFL` bounds)."""
    largest = CFL(cfl=1.0).largest_step(equation, state_hat)
    return float(dt / largest) if largest > 0 and math.isfinite(largest) else float("nan")


def write_run(out, output, result, *, label, ids, dt, data_config, integrator, source, identity,
              seconds_per_model_time, dns_cost, device, n_threads, extra_attrs=None, cfl=None) -> Path:
    """Complete an LES or ladder output (blow-up times, provenance, cost like for like) and write it atomically.

    ``les_steps`` (time): the steps taken to reach each snapshot (``dt`` is "auto" for CFL steps).
    The cost attributes: ``les_seconds_per_model_time`` (wall seconds per unit model time,
    warm-up excluded), ``les_ms_per_step``, the DNS's cost from ``dns_cost`` = (seconds per
    model time, how it was obtained), their ratio, and the device, torch threads and batch.
    """
    dns_spmt, dns_source = dns_cost
    if result.interval_steps is not None:
        out["les_steps"] = ("time", result.interval_steps,
                            {"long_name": "LES steps taken since the previous snapshot (the batch shares them)",
                             "units": "1"})
    out["blowup_time"] = ("trajectory", result.blowup_time,
                          {"long_name": "model time at which the trajectory became non-finite (NaN: never)",
                           "units": "1"})
    blowups = [{"trajectory": ids[i], "time": float(result.blowup_time[i])}
               for i in range(len(ids)) if np.isfinite(result.blowup_time[i])]
    out.attrs.update({
        "dt": "auto" if dt == "auto" else float(dt),
        "cfl": float("nan") if cfl is None else float(cfl),
        "dns_dt": "auto" if data_config.dns.adaptive else float(data_config.dns.dt),
        "integrator": integrator,
        "reference": str(Path(source).resolve()) if Path(str(source)).exists() else str(source),
        "reference_identity": identity,
        "test_trajectories": json.dumps(ids),
        "blowups": json.dumps(blowups),
        "les_seconds_per_model_time": float(seconds_per_model_time),
        "les_ms_per_step": float(1e3 * result.seconds / max(result.steps, 1)),
        "dns_seconds_per_model_time": dns_spmt,
        "dns_cost_source": dns_source,
        "cost_ratio": float(seconds_per_model_time / dns_spmt) if dns_spmt > 0 else float("nan"),
        "device": str(device),
        "torch_threads": int(n_threads),
        "batch": len(ids),
    })
    out.attrs.update(extra_attrs or {})
    if blowups:
        log.warning("les %s: %d of %d trajectories blew up: %s", label, len(blowups), len(ids), blowups)
    return write_atomic(out, output)


def write_atomic(ds, path: Union[str, Path]) -> Path:
    """Write an LES dataset atomically (`closure.storage`: temp file in the same folder, then a rename).

    The field variables get the dataset writer's encoding (`closure.data.dataset.encoding_for`:
    zlib, chunks along trajectory and time); per-trajectory variables are stored plainly.
    """
    ds = ds_io.split_components(ds)
    fields = [name for name, v in ds.data_vars.items() if v.ndim >= 3]
    encoding = ds_io.encoding_for(ds[fields])
    for name, v in ds.data_vars.items():
        if name not in fields:
            encoding[name] = {"zlib": True}
    return storage.write_with(path, lambda tmp: ds.to_netcdf(tmp, engine="netcdf4", format="NETCDF4",
                                                             encoding=encoding))
