"""The study's results as an xarray Dataset (``sweep.nc``), and the power-law fits of the variance law."""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from closure import storage
from closure.config import Config, config_to_yaml
from closure.study.grid import base_lr, depth_of, gamma_pairs, tune_width

METRICS = ("relative_l2", "mse", "correlation", "r2", "validation_mse", "train_loss", "seconds", "diverged")
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


def collect(config: Config, study: dict, tune: Optional[dict] = None, data: Optional[Path] = None):
    """The study's results as an xarray Dataset (dims gamma_outer, gamma_inner, width, seed, probe)."""
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
    probe = np.full(shape + (n_probe,), np.nan)
    probe0 = np.full(shape + (n_probe,), np.nan)
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
        probe[i, j, k, s] = np.asarray(res["probe_output"], dtype=np.float64)
        probe0[i, j, k, s] = np.asarray(res["probe_output_init"], dtype=np.float64)
        lr[i, j] = run.lr
        steps[k] = run.steps
    dims = ("gamma_outer", "gamma_inner", "width", "seed")
    with np.errstate(invalid="ignore"), quiet_nan():
        var = np.nanmean(np.nanvar(probe, axis=3, ddof=1), axis=-1) if len(seeds) > 1 else np.full(shape[:3], np.nan)
        var0 = np.nanmean(np.nanvar(probe0, axis=3, ddof=1), axis=-1) if len(seeds) > 1 else np.full(shape[:3], np.nan)
    # a cell where any seed diverged has no meaningful variance
    bad = np.isnan(probe).all(axis=-1).any(axis=3)
    var = np.where(bad, np.nan, var)
    slope, icpt, err = variance_slopes(var, widths)
    slope0, icpt0, err0 = variance_slopes(var0, widths)
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
        "probe_output": (dims + ("probe",), probe, {"long_name": "trained network output g at fixed test inputs "
                                                                  "(normalized units)"}),
        "probe_output_init": (dims + ("probe",), probe0, {"long_name": "network output g at initialization"}),
        "output_variance": (dims[:3], var, {"long_name": "across-seed variance of the trained output g, "
                                                         "mean over the probe inputs"}),
        "init_output_variance": (dims[:3], var0, {"long_name": "across-seed variance of g at initialization"}),
        "variance_slope": (dims[:2], slope, {"long_name": "log-log slope of output_variance vs width"}),
        "variance_slope_stderr": (dims[:2], err, {"long_name": "standard error of variance_slope"}),
        "variance_intercept": (dims[:2], icpt, {"long_name": "log-log intercept (natural log)"}),
        "init_variance_slope": (dims[:2], slope0, {"long_name": "log-log slope of init_output_variance vs width"}),
        "init_variance_slope_stderr": (dims[:2], err0, {"long_name": "standard error of init_variance_slope"}),
        "predicted_slope": (("gamma_outer",), 1.0 - 2.0 * np.asarray(g_out),
                            {"long_name": "theory: 1 - 2 gamma_outer"}),
        "lr": (dims[:2], lr, {"long_name": "base SGD rate alpha used (tuned if tune_lr)"}),
        "steps": (("width",), steps, {"long_name": "SGD steps per run"}),
    })
    coords = {"gamma_outer": g_out, "gamma_inner": g_in, "width": widths, "seed": seeds,
              "probe": np.arange(n_probe)}
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
    budget = (f"t = k / N_L = {sw.time} (k = round(t N_L) steps)" if sw.time is not None
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
        "optimizer": "plain SGD, constant rate, per-layer rates of closure.nn.param_groups",
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

