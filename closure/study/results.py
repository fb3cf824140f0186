"""The study's results as an xarray Dataset (``sweep.nc``), and the power-law fits of the variance law."""

from __future__ import annotations

import json
import math
import warnings
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from closure import storage
from closure.config import Config, config_to_yaml
from closure.study.grid import base_lr, depth_of, gamma_pairs, tune_width

METRICS = ("relative_l2", "mse", "correlation", "r2", "validation_mse", "train_loss", "seconds", "diverged")
PROBES = {  # result key: (which inputs, when)
    "probe_output": ("fixed test inputs", "after training"),
    "probe_output_init": ("fixed test inputs", "at initialization"),
    "probe_output_ood": ("i.i.d. Gaussian inputs outside the data (sweep.ood_scale)", "after training"),
    "probe_output_ood_init": ("i.i.d. Gaussian inputs outside the data (sweep.ood_scale)", "at initialization"),
}
APOSTERIORI = ("aposteriori_error", "aposteriori_correlation", "aposteriori_blowups", "aposteriori_error_none")


def fit_power_law(widths: Sequence[float], values: Sequence[float]) -> tuple[float, float, float]:
    """Least-squares fit ``log values = slope * log widths + intercept``: (slope, intercept, slope stderr).

    ``scipy.stats.linregress`` on the logs. Non-finite or non-positive values are left out;
    fewer than 2 points give NaNs, and the standard error needs 3.
    """
    from scipy.stats import linregress

    w = np.asarray(widths, dtype=np.float64)
    v = np.asarray(values, dtype=np.float64)
    ok = np.isfinite(v) & (v > 0) & np.isfinite(w) & (w > 0)
    x, y = np.log(w[ok]), np.log(v[ok])
    if x.size < 2 or np.ptp(x) == 0:
        return float("nan"), float("nan"), float("nan")
    if np.ptp(y) == 0:  # constant values: linregress's correlation is 0/0, the fit itself is exact
        return 0.0, float(y[0]), 0.0 if x.size >= 3 else float("nan")
    fit = linregress(x, y)
    stderr = float(fit.stderr) if x.size >= 3 else float("nan")
    return float(fit.slope), float(fit.intercept), stderr


# --------------------------------------------------------------------------- results
def write_netcdf(ds, path: Path) -> Path:
    return storage.write_with(path, lambda tmp: ds.to_netcdf(tmp, engine="netcdf4"))


def variance_slopes(variance, widths) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Fit log variance vs log width along the last axis of ``variance`` (..., width)."""
    v = np.asarray(variance, dtype=np.float64)
    shape = v.shape[:-1]
    slope, icpt, err = (np.full(shape, np.nan) for _ in range(3))
    for idx in np.ndindex(*shape):
        slope[idx], icpt[idx], err[idx] = fit_power_law(widths, v[idx])
    return slope, icpt, err


def seed_variance(probe: np.ndarray) -> np.ndarray:
    """Across-seed variance (axis 3, ddof 1) of probe outputs (..., seed, probe), mean over the probes."""
    if probe.shape[3] < 2:
        return np.full(probe.shape[:3], np.nan)
    with np.errstate(invalid="ignore"), quiet_nan():
        return np.nanmean(np.nanvar(probe, axis=3, ddof=1), axis=-1)


def collect(config: Config, study: dict, tune: Optional[dict] = None, data: Optional[Path] = None,
            ladder: Optional[dict] = None):
    """The study's results as an xarray Dataset (dims gamma_outer, gamma_inner, width, seed, probe);
    ``ladder`` (``closure.study.ladder.plain_ladder``) adds the plain solver's rows along dim ``ladder``."""
    import xarray as xr

    sw = config.sweep
    pairs = gamma_pairs(config)
    g_out = sorted({p[0] for p in pairs})
    g_in = sorted({p[1] for p in pairs})
    widths = sorted(int(w) for w in sw.widths)
    seeds = list(range(sw.seeds))
    n_probe = None
    for res in study.values():
        n_probe = len(res["probe_output"])
        break
    n_probe = n_probe or sw.probe_points
    shape = (len(g_out), len(g_in), len(widths), len(seeds))
    names = list(METRICS) + (list(APOSTERIORI) if sw.aposteriori else [])
    arrays = {name: np.full(shape, np.nan) for name in names}
    probes = {key: np.full(shape + (n_probe,), np.nan) for key in PROBES}
    n_curve = max((len(res.get("curve_steps", [])) for res in study.values()), default=0)
    curve = np.full(shape + (n_curve,), np.nan)
    curve_steps = np.full((len(widths), n_curve), -1, dtype=np.int64)
    lr = np.full((len(g_out), len(g_in)), np.nan)
    steps = np.zeros(len(widths), dtype=np.int64)
    for run, res in study.items():
        i, j = g_out.index(run.gamma_outer), g_in.index(run.gamma_inner)
        k, s = widths.index(run.width), run.seed
        if s >= len(seeds):
            continue
        for name in names:
            value = res.get(name)
            arrays[name][i, j, k, s] = float(value) if value is not None else np.nan
        for key in PROBES:
            if key in res:
                probes[key][i, j, k, s] = np.asarray(res[key], dtype=np.float64)
        values = res.get("curve_validation_mse", [])
        curve[i, j, k, s, :len(values)] = np.asarray(values, dtype=np.float64)
        curve_steps[k, :len(values)] = res.get("curve_steps", [])
        lr[i, j] = run.lr
        steps[k] = run.steps
    dims = ("gamma_outer", "gamma_inner", "width", "seed")
    variances = {key: seed_variance(probes[key]) for key in PROBES}
    # a cell where any seed diverged has no meaningful variance
    bad = np.isnan(probes["probe_output"]).all(axis=-1).any(axis=3)
    for key in ("probe_output", "probe_output_ood"):
        variances[key] = np.where(bad, np.nan, variances[key])
    fits = {key: variance_slopes(variances[key], widths) for key in PROBES}
    long_names = {
        "relative_l2": "test relative L2 error ||c - s|| / ||s|| (physical units)",
        "mse": "test MSE in normalized units (MSE / var(sgs_train))",
        "correlation": "test Pearson correlation of c and s",
        "r2": "test coefficient of determination",
        "validation_mse": "validation MSE in normalized units",
        "train_loss": "0.5 * MSE on the training batches, mean over the last 10% of the steps",
        "seconds": "wall time of the run",
        "diverged": "1 if the run produced non-finite values",
        "aposteriori_error": "coupled LES: mean over saved times of ||LES - DNS|| / ||DNS|| (test trajectories)",
        "aposteriori_correlation": "coupled LES: correlation with the filtered DNS at the final time",
        "aposteriori_blowups": "coupled LES: trajectories that blew up (-1: not run, training diverged)",
        "aposteriori_error_none": "the same error of the LES without closure",
    }
    data_vars = {name: (dims, arrays[name], {"long_name": long_names[name]}) for name in names}
    data_vars.update({
        "curve_validation_mse": (dims + ("checkpoint",), curve,
                                 {"long_name": "validation MSE during training (normalized units)"}),
        "curve_steps": (("width", "checkpoint"), curve_steps, {"long_name": "steps after which the curve is taken"}),
    })
    for key, (what, when) in PROBES.items():
        stem = key.replace("probe_output", "output_variance")  # output_variance, output_variance_init, ..._ood
        prefix = "init_" if when == "at initialization" else ""
        stem = prefix + stem.replace("_init", "")
        slope, icpt, err = fits[key]
        slope_name = prefix + "variance_slope" + ("_ood" if "ood" in key else "")
        data_vars.update({
            key: (dims + ("probe",), probes[key], {"long_name": f"network output g {when} at {what}"}),
            stem: (dims[:3], variances[key], {"long_name": f"across-seed variance of g {when} at {what}, "
                                                           "mean over the probe inputs"}),
            slope_name: (dims[:2], slope, {"long_name": f"log-log slope of {stem} vs width"}),
            slope_name + "_stderr": (dims[:2], err, {"long_name": f"standard error of {slope_name}"}),
            slope_name.replace("slope", "intercept"): (dims[:2], icpt, {"long_name": "log-log intercept (natural log)"}),
        })
    data_vars.update({
        "predicted_slope": (("gamma_outer",), 1.0 - 2.0 * np.asarray(g_out),
                            {"long_name": "theory: 1 - 2 gamma_outer"}),
        "lr": (dims[:2], lr, {"long_name": "base SGD rate alpha used (tuned if tune_lr)"}),
        "steps": (("width",), steps, {"long_name": "SGD steps per run"}),
    })
    coords = {"gamma_outer": g_out, "gamma_inner": g_in, "width": widths, "seed": seeds,
              "probe": np.arange(n_probe), "checkpoint": np.arange(n_curve)}
    ds = xr.Dataset(data_vars, coords=coords)
    if tune:
        factors = sorted({round(r.lr / base_lr(config), 12) for r in tune})
        tv = np.full((len(g_out), len(g_in), len(factors)), np.nan)
        for run, res in tune.items():
            f = factors.index(round(run.lr / base_lr(config), 12))
            v = res.get("validation_mse")
            tv[g_out.index(run.gamma_outer), g_in.index(run.gamma_inner), f] = np.nan if v is None else v
        ds = ds.assign_coords(lr_factor=factors)
        ds["tune_validation_mse"] = (("gamma_outer", "gamma_inner", "lr_factor"), tv,
                                     {"long_name": f"validation MSE of the tuning runs (width {tune_width(config)})"})
    if ladder:
        labels = list(ladder)
        ds = ds.assign_coords(ladder=labels)
        for key, long_name in (("error", "plain solver: mean over saved times of ||P G w - DNS|| / ||DNS||"),
                               ("correlation", "plain solver: correlation with the filtered DNS at the final time"),
                               ("resolution", "plain solver: grid points per direction"),
                               ("blowups", "plain solver: trajectories that blew up")):
            ds[f"ladder_{key}"] = (("ladder",), np.array([ladder[m][key] for m in labels], dtype=float),
                                   {"long_name": long_name})
    budget = (f"{sw.steps} steps" if sw.steps is not None else
              f"t = k / N_L = {sw.time} (k = round(t N_L) steps)" if sw.time is not None
              else f"{config.train.epochs} epochs of the training points (k independent of N)")
    ds.attrs.update({
        "title": "normalization study: gamma x width x seed (closure sweep)",
        "design": (f"vary={list(sw.vary)}; when the outer gamma is varied every inner gamma is {sw.fixed_gamma}, "
                   f"when the inner gammas are varied the outer gamma is {sw.fixed_gamma}"),
        "fixed_gamma": sw.fixed_gamma,
        "vary": json.dumps(list(sw.vary)),
        "depth": depth_of(config),
        "budget": budget,
        "batch_size": sw.batch_size,
        "output_bias": int(sw.output_bias),
        "base_lr": base_lr(config),
        "tune_lr": int(sw.tune_lr),
        "tune_width": tune_width(config) if sw.tune_lr else -1,
        "optimizer": (f"plain {sw.optimizers[0].upper() if sw.optimizers[0] == 'sgd' else 'Adam'}, constant rate, "
                      "per-layer rates of closure.nn.param_groups"),
        "dataset": str(data) if data is not None else "",
        "config": config_to_yaml(config),
    })
    return ds


class quiet_nan:
    """Silence numpy's RuntimeWarnings (all-NaN slices) inside the block."""

    def __enter__(self):
        self._w = warnings.catch_warnings()
        self._w.__enter__()
        warnings.simplefilter("ignore", category=RuntimeWarning)

    def __exit__(self, *exc):
        self._w.__exit__(*exc)



TRANSFER_METRICS = ("validation_mse", "relative_l2", "mse", "correlation", "r2", "diverged", "seconds")


def last_quarter_drop(curve: np.ndarray, steps: np.ndarray) -> np.ndarray:
    """Relative fall of a validation curve over the last quarter of training, ``(v(3T/4) - v(T)) / v(3T/4)``,
    along the last axis (``steps``, broadcast to ``curve``: the checkpoints' steps, -1 where absent;
    v(3T/4) is the last checkpoint at or before 3T/4). Near 0: flattened (converged at this rate);
    < 0: rising again."""
    steps = np.broadcast_to(np.asarray(steps), curve.shape)
    out = np.full(curve.shape[:-1], np.nan)
    for idx in np.ndindex(*curve.shape[:-1]):
        st = steps[idx]
        ok = st >= 0
        if ok.sum() < 2:
            continue
        total = st[ok].max()
        j_end = int(np.flatnonzero(st == total)[0])
        earlier = np.flatnonzero(ok & (st <= 0.75 * total))
        if earlier.size == 0:
            continue
        v0, v1 = curve[idx + (int(earlier[-1]),)], curve[idx + (j_end,)]
        out[idx] = (v0 - v1) / v0 if np.isfinite(v0) and np.isfinite(v1) and v0 > 0 else np.nan
    return out


def quarter_mean_drop(curve: np.ndarray, steps: np.ndarray) -> np.ndarray:
    """Relative fall of a validation curve between the third and the last quarter of training, each averaged
    over its checkpoints: ``(m3 - m4) / m3``, ``m3`` = mean of v over steps in (T/2, 3T/4], ``m4`` over
    (3T/4, T] (arguments as ``last_quarter_drop``). Less noisy than ``last_quarter_drop`` when a
    constant-rate SGD curve fluctuates between checkpoints; NaN with fewer than one checkpoint per quarter."""
    steps = np.broadcast_to(np.asarray(steps), curve.shape)
    out = np.full(curve.shape[:-1], np.nan)
    for idx in np.ndindex(*curve.shape[:-1]):
        st = steps[idx]
        ok = st >= 0
        if not ok.any():
            continue
        total = st[ok].max()
        third = ok & (st > 0.5 * total) & (st <= 0.75 * total)
        last = ok & (st > 0.75 * total)
        if not third.any() or not last.any():
            continue
        m3, m4 = float(np.mean(curve[idx][third])), float(np.mean(curve[idx][last]))
        out[idx] = (m3 - m4) / m3 if np.isfinite(m3) and np.isfinite(m4) and m3 > 0 else np.nan
    return out


def collect_transfer(config: Config, search, data: Optional[Path] = None):
    """The rate-transfer study as an xarray Dataset.

    Dims parametrization, optimizer, width, rate (index into the cell's sorted rate grid, coordinate
    variable ``lr``), seed, checkpoint. Per cell: ``best_lr`` (lowest mean validation MSE),
    ``bracketed``, the test error and validation curve at that rate; per (parametrization,
    optimizer): ``best_lr_slope`` = d log best_lr / d log N (0: the rate transfers) with its stderr.
    """
    import xarray as xr

    sw = config.sweep
    names, opts = list(sw.parametrizations), list(sw.optimizers)
    widths = sorted(int(w) for w in sw.widths)
    seeds = list(range(sw.seeds))
    n_rate = max(len(c["rates"]) for c in search.cells.values())
    n_curve = max((len(r.get("curve_steps", [])) for c in search.cells.values() for r in c["results"].values()),
                  default=0)
    shape = (len(names), len(opts), len(widths))
    lr = np.full(shape + (n_rate,), np.nan)
    score = np.full(shape + (n_rate,), np.nan)
    metrics = {m: np.full(shape + (n_rate, len(seeds)), np.nan) for m in TRANSFER_METRICS}
    curves = np.full(shape + (n_rate, len(seeds), n_curve), np.nan)
    curve_steps = np.full(shape + (n_curve,), -1, dtype=np.int64)
    best_lr, bracketed, best_index = np.full(shape, np.nan), np.zeros(shape, dtype=np.int8), np.zeros(shape, np.int64)
    steps = np.zeros(shape, dtype=np.int64)
    for cell, c in search.cells.items():
        i = names.index(c["name"])
        j = opts.index(cell[1])
        k = widths.index(cell[2])
        steps[i, j, k] = c["proto"].steps
        scores = search.scores(cell)
        for r, rate in enumerate(c["rates"]):
            lr[i, j, k, r] = rate
            score[i, j, k, r] = scores[r] if math.isfinite(scores[r]) else np.nan
            for s in seeds:
                res = c["results"].get((rate, s))
                if res is None:
                    continue
                for m in TRANSFER_METRICS:
                    v = res.get(m)
                    metrics[m][i, j, k, r, s] = np.nan if v is None else float(v)
                values = res.get("curve_validation_mse", [])
                curves[i, j, k, r, s, :len(values)] = values
                curve_steps[i, j, k, :len(values)] = res.get("curve_steps", [])
        if search.complete(cell):
            best, ok = search.optimum(cell)
            best_lr[i, j, k], bracketed[i, j, k] = best, int(ok)
            best_index[i, j, k] = c["rates"].index(best)
    take = np.take_along_axis
    idx = best_index[..., None, None]
    at_best = {m: take(metrics[m], np.broadcast_to(idx, shape + (1, len(seeds))), axis=3)[..., 0, :]
               for m in ("relative_l2", "validation_mse", "correlation")}
    curve_best = take(curves, np.broadcast_to(best_index[..., None, None, None], shape + (1, len(seeds), n_curve)),
                      axis=3)[..., 0, :, :]
    unknown = ~np.isfinite(best_lr)  # cells still searching have no optimum yet
    for m in at_best:
        at_best[m][unknown] = np.nan
    curve_best[unknown] = np.nan
    transfer_slope = np.full(shape[:2], np.nan)
    transfer_err = np.full(shape[:2], np.nan)
    for i in range(len(names)):
        for j in range(len(opts)):
            transfer_slope[i, j], _, transfer_err[i, j] = fit_power_law(widths, best_lr[i, j])
    dims = ("parametrization", "optimizer", "width")
    long_names = {
        "validation_mse": "validation MSE (normalized units)",
        "relative_l2": "test relative L2 error ||c - s|| / ||s|| (physical units)",
        "mse": "test MSE (normalized units)",
        "correlation": "test Pearson correlation",
        "r2": "test coefficient of determination",
        "diverged": "1 if the run produced non-finite or huge values",
        "seconds": "wall time of the run",
    }
    data_vars = {m: (dims + ("rate", "seed"), metrics[m], {"long_name": long_names[m]}) for m in TRANSFER_METRICS}
    with quiet_nan():
        data_vars.update({
            "lr": (dims + ("rate",), lr, {"long_name": "base rate of the grid point"}),
            "score": (dims + ("rate",), score, {"long_name": "mean validation MSE over seeds (NaN: a seed diverged)"}),
            "curve_validation_mse": (dims + ("rate", "seed", "checkpoint"), curves,
                                     {"long_name": "validation MSE during training"}),
            "curve_steps": (dims + ("checkpoint",), curve_steps, {"long_name": "steps after which the curve is taken"}),
            "steps": (dims, steps, {"long_name": "steps per run"}),
            "best_lr": (dims, best_lr, {"long_name": "base rate with the lowest mean validation MSE"}),
            "bracketed": (dims, bracketed, {"long_name": "1 if the best rate has a worse (or diverged) neighbour "
                                                         "on both sides"}),
            "best_relative_l2": (dims + ("seed",), at_best["relative_l2"],
                                 {"long_name": "test relative L2 error at the best rate"}),
            "best_validation_mse": (dims + ("seed",), at_best["validation_mse"],
                                    {"long_name": "validation MSE at the best rate"}),
            "best_correlation": (dims + ("seed",), at_best["correlation"],
                                 {"long_name": "test correlation at the best rate"}),
            "best_curve_validation_mse": (dims + ("seed", "checkpoint"), curve_best,
                                          {"long_name": "validation curve at the best rate"}),
            "best_curve_drop": (dims + ("seed",), last_quarter_drop(curve_best, curve_steps[..., None, :]),
                                {"long_name": "relative fall of the validation MSE at the best rate over the last "
                                              "quarter of training (0: flattened)"}),
            "best_curve_drop_mean": (dims + ("seed",), quarter_mean_drop(curve_best, curve_steps[..., None, :]),
                                     {"long_name": "relative fall of the validation MSE at the best rate from the "
                                                   "third to the last quarter of training, each averaged over its "
                                                   "checkpoints (0: flattened)"}),
            "best_lr_slope": (dims[:2], transfer_slope, {"long_name": "d log best_lr / d log width (0: transfers)"}),
            "best_lr_slope_stderr": (dims[:2], transfer_err, {"long_name": "standard error of best_lr_slope"}),
        })
    coords = {"parametrization": names, "optimizer": opts, "width": widths, "rate": np.arange(n_rate),
              "seed": seeds, "checkpoint": np.arange(n_curve)}
    ds = xr.Dataset(data_vars, coords=coords)
    budget = (f"{sw.steps} steps" if sw.steps is not None else
              f"t = k / N_L = {sw.time} (k = round(t N_L) steps)" if sw.time is not None
              else f"{config.train.epochs} epochs")
    ds.attrs.update({
        "title": "rate-transfer study: best base rate vs width per parametrization (closure sweep)",
        "study": "transfer", "depth": depth_of(config), "budget": budget, "batch_size": sw.batch_size,
        "lr_ratio": sw.lr_ratio, "bracket_steps": sw.bracket_steps,
        "mup_base_width": int(sw.mup_base_width or min(sw.widths)),
        "dataset": str(data) if data is not None else "", "config": config_to_yaml(config),
    })
    return ds
