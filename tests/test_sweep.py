"""The normalization study (closure.study): slope fitting, patches, the network's variance law,
the dask sweep end to end with resume, learning-rate tuning, the CLI."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import xarray as xr

from closure.config import config_from_dict
from closure.study.data import StudyData, gather_patches
from closure.study.grid import Run, gamma_pairs, steps_for
from closure.study.normalization import sweep
from closure.study.results import fit_power_law
from closure.study.run import build_network


def _sweep_config(tiny_config, **sweep_keys):
    cfg = dict(tiny_config)
    cfg["train"] = dict(cfg["train"], lr=1.0)
    cfg["sweep"] = {"gammas": [0.5, 1.0], "widths": [8, 16], "seeds": 2, "time": 1.0, "test_points": 256,
                    "validation_points": 128, "probe_points": 32, **sweep_keys}
    return config_from_dict(cfg, "tiny sweep config")


# --------------------------------------------------------------------------- slope fitting
def test_fit_power_law_recovers_a_known_slope():
    widths = np.array([64, 128, 256, 512, 1024])
    slope, intercept, err = fit_power_law(widths, 3.0 * widths ** -0.75)
    assert slope == pytest.approx(-0.75, abs=1e-12)
    assert math.exp(intercept) == pytest.approx(3.0, rel=1e-10)
    assert err == pytest.approx(0.0, abs=1e-10)
    rng = np.random.default_rng(0)
    fits = [fit_power_law(widths, 2.0 * widths ** 0.3 * np.exp(0.1 * rng.standard_normal(widths.size)))
            for _ in range(200)]
    slopes = np.array([f[0] for f in fits])
    assert abs(slopes.mean() - 0.3) < 0.01
    # the reported standard error matches the spread of the estimates
    assert np.median([f[2] for f in fits]) == pytest.approx(slopes.std(), rel=0.35)


def test_fit_power_law_skips_bad_points():
    widths = [8, 16, 32, 64]
    slope, _, _ = fit_power_law(widths, [8.0 ** -1, float("nan"), 32.0 ** -1, 0.0])
    assert slope == pytest.approx(-1.0)
    assert math.isnan(fit_power_law([8, 16], [1.0, float("nan")])[0])


# --------------------------------------------------------------------------- patches
@pytest.mark.parametrize("ndim", [1, 2])
def test_gather_patches_matches_stencil_patches(ndim):
    from closure.nn import stencil_patches

    torch.manual_seed(0)
    grid = (12,) if ndim == 1 else (6, 8)
    channels = torch.randn((5, 2) + grid)
    full = stencil_patches(channels, 3).reshape(-1, 2 * 3 ** ndim)  # (S * points, C s^d)
    flat = torch.randint(full.shape[0], (40,))
    assert torch.equal(gather_patches(channels, flat, 3), full[flat])


# --------------------------------------------------------------------------- design
def test_gamma_cross_holds_the_other_gammas_fixed(tiny_config):
    config = _sweep_config(tiny_config, gammas=[0.5, 0.75, 1.0], fixed_gamma=1.0)
    pairs = gamma_pairs(config)
    assert pairs == [(0.5, 1.0), (0.75, 1.0), (1.0, 1.0), (1.0, 0.5), (1.0, 0.75)]
    assert steps_for(config, 16, 10_000) == 16  # t = 1: k = t N_L
    epochs = config.model_copy(update={"sweep": config.sweep.model_copy(update={"time": None})})
    assert steps_for(epochs, 16, 10_000) == steps_for(epochs, 1024, 10_000)  # epochs: independent of N


def test_initial_output_variance_follows_the_width_law(tiny_config, tiny_dataset):
    """At initialization the across-seed variance of g scales like N^(1 - 2 gamma_outer)."""
    config = _sweep_config(tiny_config, probe_points=64)
    data = StudyData(tiny_dataset, config)
    # with inner gamma = 1 the last hidden layer is nearly input independent at init, so each seed
    # gives ~one Gaussian number: many seeds and a wide width range keep the fit's error ~0.05
    widths = [8, 64, 512]
    for gamma in (0.5, 0.75, 1.0):
        var = []
        for n in widths:
            with torch.no_grad():
                outs = torch.stack([build_network(data, Run("study", gamma, 1.0, n, s, 1.0, 1), 2).net(data.probe)
                                    for s in range(150)]).squeeze(-1)
            var.append(float(outs.var(dim=0).mean()))
        slope = fit_power_law(widths, var)[0]
        assert slope == pytest.approx(1 - 2 * gamma, abs=0.15), (gamma, var)


# --------------------------------------------------------------------------- end to end
def test_sweep_runs_on_dask_and_resumes(tiny_config, tiny_dataset, tmp_path):
    config = _sweep_config(tiny_config)
    out = tmp_path / "sweep"
    assert sweep(config, tiny_dataset, out, workers=2, progress=False) == out
    runs = sorted((out / "runs").glob("*.json"))
    assert len(runs) == 3 * 2 * 2  # (0.5, 1), (1, 1), (1, 0.5) x 2 widths x 2 seeds
    first = json.loads((out / "sweep.json").read_text())
    assert first["executed"] == 12 and first["skipped"] == 0
    stamps = {p.name: p.stat().st_mtime_ns for p in runs}

    ds = xr.open_dataset(out / "sweep.nc")
    try:
        for dim, size in (("gamma_outer", 2), ("gamma_inner", 2), ("width", 2), ("seed", 2)):
            assert ds.sizes[dim] == size
        for name in ("relative_l2", "mse", "correlation", "r2"):
            assert ds[name].dims == ("gamma_outer", "gamma_inner", "width", "seed")
        assert ds["output_variance"].dims == ("gamma_outer", "gamma_inner", "width")
        assert ds["variance_slope"].dims == ("gamma_outer", "gamma_inner")
        assert list(ds["predicted_slope"].values) == [0.0, -1.0]
        on_cross = ds["relative_l2"].sel(gamma_inner=1.0)
        assert np.isfinite(on_cross.values).all()
        assert np.isfinite(ds["relative_l2"].sel(gamma_outer=1.0, gamma_inner=0.5).values).all()
        assert np.isnan(ds["relative_l2"].sel(gamma_outer=0.5, gamma_inner=0.5).values).all()  # off the cross
        assert np.isfinite(ds["output_variance"].sel(gamma_inner=1.0).values).all()
        assert list(ds["steps"].values) == [8, 16]
        assert "inner gamma is 1.0" in ds.attrs["design"]
    finally:
        ds.close()
    for name in ("error.png", "variance.png", "sensitivity.png", "summary.md"):
        assert (out / name).stat().st_size > 0
    assert "slope (trained)" in (out / "summary.md").read_text()

    # second run: every run is found, nothing is recomputed (no cluster is even started)
    sweep(config, tiny_dataset, out, workers=2, progress=False)
    second = json.loads((out / "sweep.json").read_text())
    assert second["executed"] == 0 and second["skipped"] == 12
    assert {p.name: p.stat().st_mtime_ns for p in (out / "runs").glob("*.json")} == stamps


def test_sweep_resumes_partially_and_reruns_stale_results(tiny_config, tiny_dataset, tmp_path):
    config = _sweep_config(tiny_config, vary=["outer"], widths=[8], seeds=2)
    out = tmp_path / "sweep"
    sweep(config, tiny_dataset, out, workers=0, progress=False)
    runs = sorted((out / "runs").glob("*.json"))
    assert len(runs) == 4
    runs[0].unlink()  # an interrupted sweep
    stale = json.loads(runs[1].read_text())
    stale["fingerprint"] = "other settings"
    runs[1].write_text(json.dumps(stale))
    sweep(config, tiny_dataset, out, workers=0, progress=False)
    info = json.loads((out / "sweep.json").read_text())
    assert info["executed"] == 2 and info["skipped"] == 2


def test_learning_rate_tuning_picks_the_best_validation_rate(tiny_config, tiny_dataset, tmp_path):
    config = _sweep_config(tiny_config, vary=["outer"], widths=[8], seeds=2, tune_lr=True,
                           tune_factors=[0.01, 1.0, 1.0e4])
    out = tmp_path / "tuned"
    sweep(config, tiny_dataset, out, workers=0, progress=False)
    ds = xr.open_dataset(out / "sweep.nc")
    try:
        tv = ds["tune_validation_mse"].sel(gamma_inner=1.0)
        for go in ds["gamma_outer"].values:
            row = tv.sel(gamma_outer=go).values
            scores = np.where(np.isfinite(row), row, np.inf)
            chosen = float(ds["lr"].sel(gamma_outer=go, gamma_inner=1.0))
            assert chosen == pytest.approx(float(ds["lr_factor"].values[np.argmin(scores)]))
    finally:
        ds.close()
    assert len(list((out / "runs").glob("tune_*.json"))) == 2 * 3
    assert "Learning-rate tuning" in (out / "summary.md").read_text()


@pytest.mark.slow
def test_sweep_aposteriori_flag(tiny_config, tiny_dataset, tmp_path):
    config = _sweep_config(tiny_config, vary=["outer"], widths=[8], seeds=2, aposteriori=True)
    out = tmp_path / "post"
    sweep(config, tiny_dataset, out, workers=0, progress=False)
    ds = xr.open_dataset(out / "sweep.nc")
    try:
        assert np.isfinite(ds["aposteriori_error"].sel(gamma_inner=1.0).values).all()
        assert np.isfinite(ds["aposteriori_error_none"].sel(gamma_inner=1.0).values).all()
    finally:
        ds.close()


# --------------------------------------------------------------------------- CLI
def test_cli_sweep_errors(tiny_config, tmp_path, capsys):
    import yaml

    from closure.cli import main

    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump(tiny_config))
    assert main(["sweep", str(cfg), "--data", str(tmp_path / "missing.nc"), "-o", str(tmp_path / "s")]) == 2
    assert "missing.nc" in capsys.readouterr().err
    assert main(["sweep", str(cfg), "--data", str(cfg), "-o", str(tmp_path / "s"), "--set", "sweep.bogus=1"]) == 2
    assert "sweep.bogus" in capsys.readouterr().err


def test_sweep_rejects_inner_with_one_layer(tiny_config, tiny_dataset, tmp_path):
    from closure.errors import ClosureError

    config = _sweep_config(tiny_config, depth=1)
    with pytest.raises(ClosureError, match="inner"):
        sweep(config, tiny_dataset, tmp_path / "s", workers=0, progress=False)


def test_output_bias_option_changes_the_network_and_the_fingerprint(tiny_config, tiny_dataset):
    from closure.study.executor import settings_fingerprint

    config = _sweep_config(tiny_config)
    plain = _sweep_config(tiny_config, output_bias=False)
    data = StudyData(tiny_dataset, config)
    run = Run("study", 1.0, 1.0, 8, 0, 1.0, 1)
    assert build_network(data, run, 2).net.bC is not None
    assert build_network(data, run, 2, output_bias=False).net.bC is None
    path = Path(tiny_dataset)
    assert settings_fingerprint(config, path, "x") != settings_fingerprint(plain, path, "x")
