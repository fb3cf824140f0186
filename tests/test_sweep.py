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
from closure.study.results import fit_power_law, quarter_mean_drop
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


def test_fit_power_law_of_a_constant_is_exact():
    assert fit_power_law([32, 64, 128], [0.02, 0.02, 0.02]) == (0.0, pytest.approx(math.log(0.02)), 0.0)


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
    # other seeds for every gamma: each slope is its own measurement (with shared seeds the variances
    # of two gammas differ by the exact factor N^(2 (gamma' - gamma)) of one draw)
    widths = [8, 64, 512]
    for k, gamma in enumerate((0.5, 0.75, 1.0)):
        var = []
        for n in widths:
            with torch.no_grad():
                outs = torch.stack([build_network(data, Run("study", gamma, 1.0, n, 1000 * k + s, 1.0, 1), 2)
                                    .net(data.probe) for s in range(150)]).squeeze(-1)
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


# --------------------------------------------------------------------------- rate transfer, seeds, probes, curves
def test_parametrization_names_and_mup_rules(tiny_config):
    from closure.study.parametrization import StandardMLP, mup_groups, parse

    assert parse("meanfield") == ("gamma", 1.0, 1.0) and parse("mixed") == ("gamma", 1.0, 0.5)
    assert parse("gamma:0.75/1") == ("gamma", 0.75, 1.0) and parse("mup")[0] == "mup"
    with pytest.raises(Exception, match="parametrizations"):
        _sweep_config(tiny_config, parametrizations=["gamma:0.3/1"])
    # muP (Tensor Programs V, Table 3) at width multiplier m = 4: SGD W1, biases x m, hidden x 1, readout / m;
    # Adam: hidden and readout / m, the rest x 1
    net = StandardMLP(10, [64, 64], torch.tanh)
    sgd = {g["name"]: g["lr"] for g in mup_groups(net, 1.0, "sgd", base_width=16)}
    adam = {g["name"]: g["lr"] for g in mup_groups(net, 1.0, "adam", base_width=16)}
    assert sgd == {"W1": 4.0, "W2": 1.0, "b1": 4.0, "b2": 4.0, "C": 0.25, "bC": 1.0}
    assert adam == {"W1": 1.0, "W2": 0.25, "b1": 1.0, "b2": 1.0, "C": 0.25, "bC": 1.0}
    # muP's readout variance is standard / m: check on the empirical variance of the drawn weights
    gen = torch.Generator().manual_seed(0)
    wide = StandardMLP(10, [1024, 1024], torch.tanh)
    wide.reset_parameters(gen, readout_scale=0.5)
    assert float(wide.readout.weight.detach().var()) == pytest.approx(0.25 / (3 * 1024), rel=0.15)


def test_rate_search_brackets_the_optimum(tiny_config):
    """Extend the grid towards the optimum until a worse neighbour (or a divergence) closes it."""
    from closure.study.transfer import RateSearch

    config = _sweep_config(tiny_config, study="transfer", parametrizations=["standard"], widths=[8], seeds=2,
                           lr_centers={"sgd": 1.0}, lr_points=3, lr_ratio=2.0, bracket_steps=3, steps=4)
    search = RateSearch(config, 1000)
    runs = search.start()
    assert sorted({r.lr for r in runs}) == [0.5, 1.0, 2.0] and len(runs) == 6
    landscape = lambda lr: (math.log2(lr) - 3.0) ** 2  # optimum at lr = 8
    while runs:
        new = []
        for r in runs:
            new += search.record(r, {"validation_mse": landscape(r.lr), "diverged": False})
        runs = new
    cell = next(iter(search.cells))
    assert search.optimum(cell) == (8.0, True)
    # out of extensions: the optimum stays at the edge and is reported as not bracketed
    short = RateSearch(config.model_copy(update={"sweep": config.sweep.model_copy(update={"bracket_steps": 1})}), 1000)
    runs = short.start()
    while runs:
        runs = [n for r in runs for n in short.record(r, {"validation_mse": landscape(r.lr), "diverged": False})]
    assert short.optimum(next(iter(short.cells))) == (4.0, False)
    # a diverged rate counts as worse: it brackets from above
    div = RateSearch(config, 1000)
    runs = div.start()
    while runs:
        runs = [n for r in runs for n in div.record(r, {"validation_mse": 1.0 / r.lr, "diverged": r.lr > 3})]
    assert div.optimum(next(iter(div.cells))) == (2.0, True)


def test_transfer_study_runs_on_dask_and_resumes(tiny_config, tiny_dataset, tmp_path):
    config = _sweep_config(tiny_config, study="transfer", parametrizations=["meanfield", "standard", "mup"],
                           optimizers=["sgd", "adam"], widths=[8, 16], seeds=2, steps=6, lr_points=2,
                           bracket_steps=1, curve_points=3, lr_centers={"sgd": 0.3, "adam": 0.01})
    out = tmp_path / "transfer"
    sweep(config, tiny_dataset, out, workers=2, progress=False)
    first = json.loads((out / "sweep.json").read_text())
    ds = xr.open_dataset(out / "sweep.nc")
    try:
        assert ds["best_lr"].dims == ("parametrization", "optimizer", "width")
        assert list(ds["parametrization"].values) == ["meanfield", "standard", "mup"]
        assert np.isfinite(ds["best_lr"].values).all()
        for cell in np.ndindex(*ds["best_lr"].shape):
            score = ds["score"].values[cell]
            lr = ds["lr"].values[cell]
            best = ds["best_lr"].values[cell]
            ok = np.isfinite(lr)
            # the best rate is the grid point with the lowest mean validation MSE
            finite = np.where(np.isfinite(score[ok]), score[ok], np.inf)
            assert best == lr[ok][np.argmin(finite)]
        assert (ds["curve_steps"].values[..., -1] == 6).all()  # the last checkpoint is the end of training
        assert np.isfinite(ds["best_curve_validation_mse"].values).all()
        assert ds["best_lr_slope"].dims == ("parametrization", "optimizer")
        curve = ds["best_curve_validation_mse"].values[0, 0, 0, 0]  # checkpoints after 0, 2, 4, 6 steps
        assert list(ds["curve_steps"].values[0, 0, 0]) == [0, 2, 4, 6]
        assert float(ds["best_curve_drop"].values[0, 0, 0, 0]) == pytest.approx((curve[2] - curve[3]) / curve[2])
        # quarters of 6 steps: (3, 4.5] holds step 4, (4.5, 6] step 6
        assert float(ds["best_curve_drop_mean"].values[0, 0, 0, 0]) == pytest.approx((curve[2] - curve[3]) / curve[2])
    finally:
        ds.close()
    for name in ("transfer_rate.png", "transfer_error.png", "transfer_curves.png", "transfer_landscape.png"):
        assert (out / name).stat().st_size > 0
    assert "Best base rate" in (out / "summary.md").read_text()
    assert "Convergence: fall of the validation MSE" in (out / "summary.md").read_text()
    sweep(config, tiny_dataset, out, workers=2, progress=False)
    second = json.loads((out / "sweep.json").read_text())
    assert second["executed"] == 0 and second["skipped"] == first["executed"] == first["runs"]


def test_independent_seeds_differ_across_gammas_and_ood_probes_are_recorded(tiny_config, tiny_dataset, tmp_path):
    config = _sweep_config(tiny_config, vary=["outer"], widths=[8], seeds=2, curve_points=2)
    data = StudyData(tiny_dataset, config)
    a, b = Run("study", 0.5, 1.0, 8, 0, 1.0, 1), Run("study", 1.0, 1.0, 8, 0, 1.0, 1)
    wa = build_network(data, a, 2, common=False).net.weights[0]
    wb = build_network(data, b, 2, common=False).net.weights[0]
    assert not torch.equal(wa, wb)  # independent: every (gamma, width) cell draws its own weights
    assert torch.equal(build_network(data, a, 2).net.weights[0], build_network(data, b, 2).net.weights[0])
    assert data.probe_ood.shape == data.probe.shape
    assert float(data.probe_ood.std()) == pytest.approx(config.sweep.ood_scale, rel=0.1)
    out = tmp_path / "s"
    sweep(config, tiny_dataset, out, workers=0, progress=False)
    ds = xr.open_dataset(out / "sweep.nc")
    try:
        for name in ("output_variance_ood", "init_output_variance_ood", "init_variance_slope_ood"):
            assert name in ds
        assert np.isfinite(ds["init_output_variance_ood"].sel(gamma_inner=1.0).values).all()
        assert list(ds["curve_steps"].values[0]) == [0, 4, 8]
    finally:
        ds.close()


# --------------------------------------------------------------------------- fixed training subset, ladder
def test_fixed_training_subset_is_gathered_once_and_full_batch_is_deterministic(tiny_config, tiny_dataset,
                                                                                monkeypatch):
    from closure.study.grid import derived_seed
    from closure.study.run import train_run

    config = _sweep_config(tiny_config, study="transfer", parametrizations=["meanfield"], widths=[8], seeds=1,
                           steps=5, train_points=40, batch_size=64, curve_points=2)
    data = StudyData(tiny_dataset, config)
    x, y = data.train_subset
    assert x.shape == (40, data.in_features) and y.shape == (40,)
    flat = torch.randperm(data.n_train_points, generator=torch.Generator().manual_seed(
        derived_seed(config.seed, 0x7EA1, 40)))[:40]
    assert torch.equal(x, gather_patches(data.channels["train"], flat, data.stencil))  # the subset's own patches
    assert torch.equal(y, data.targets["train"][flat])
    run = Run("transfer", 1.0, 1.0, 8, 0, 0.3, 5)

    def trained(cfg, d, stream):
        monkeypatch.setattr(Run, "batch_seed", lambda self, common: stream)
        return train_run(d, run, cfg)["validation_mse"]

    # batch >= train_points: full-batch gradient descent, independent of the sample stream
    a = trained(config, data, 1)
    assert trained(config, data, 2) == a
    data.train_subset = (x, y + 1.0)  # training on other targets must change the result
    assert trained(config, data, 1) != a
    mini = _sweep_config(tiny_config, study="transfer", widths=[8], seeds=1, steps=5, train_points=40, batch_size=8)
    mini_data = StudyData(tiny_dataset, mini)
    assert trained(mini, mini_data, 1) != trained(mini, mini_data, 2)  # mini-batches follow the sample stream


def test_field_errors_are_relative_l2_over_the_saved_times():
    from closure.study.run import field_errors

    rng = np.random.default_rng(0)
    ref = rng.standard_normal((2, 4, 8, 8))
    assert field_errors(ref, ref) == {"error": pytest.approx(0.0), "correlation": pytest.approx(1.0)}
    scaled = ref.copy()
    scaled[:, 1:] *= 3.0
    scaled[:, 0] = 99.0  # the first snapshot (the shared initial state) is not scored
    assert field_errors(scaled, ref)["error"] == pytest.approx(2.0)
    assert field_errors(-ref, ref)["correlation"] == pytest.approx(-1.0, abs=0.05)
    with pytest.raises(ValueError, match="differ in shape"):
        field_errors(ref[:, :3], ref)


def test_aposteriori_sweep_reports_the_plain_solver_ladder_and_reuses_it(tiny_config, tiny_dataset, tmp_path):
    from closure.data.dataset import open_dataset
    from closure.study.data import StudyData as Data
    from closure.study.ladder import plain_ladder
    from closure.study.run import field_errors, reference_fields

    tiny_config["run"].update({"ladder": [1, 2], "ladder_starts": ["filtered"]})
    config = _sweep_config(tiny_config, vary=["outer"], gammas=[1.0], widths=[8], seeds=2, time=1.0,
                           aposteriori=True)
    out = tmp_path / "post"
    sweep(config, tiny_dataset, out, workers=0, progress=False)
    ds = xr.open_dataset(out / "sweep.nc")
    try:
        assert list(ds["ladder"].values) == ["plain@16:filtered", "plain@32:filtered"]
        assert list(ds["ladder_resolution"].values) == [16, 32]
        errors = ds["ladder_error"].values
        assert np.all(np.isfinite(errors)) and np.all(errors > 0)
    finally:
        ds.close()
    text = (out / "summary.md").read_text()
    assert "plain@32:filtered (plain solver, no network)" in text
    # the row is the study's metric applied to the rung's coarse-grained field
    data = Data(tiny_dataset, config)
    stored = open_dataset(out / "ladder" / "plain@32_filtered.nc", chunks=False)
    try:
        assert field_errors(stored[data.var].values, reference_fields(data, config))["error"] == pytest.approx(errors[1])
    finally:
        stored.close()
    stamp = (out / "ladder" / "plain@32_filtered.nc").stat().st_mtime_ns
    again = plain_ladder(config, data, out / "ladder")
    assert (out / "ladder" / "plain@32_filtered.nc").stat().st_mtime_ns == stamp  # reused, not recomputed
    assert again["plain@32:filtered"]["error"] == pytest.approx(errors[1])


def test_gamma_study_trains_with_its_one_optimizer(tiny_config, tiny_dataset, tmp_path):
    from closure.errors import ClosureError
    from closure.study.grid import study_runs

    adam = _sweep_config(tiny_config, vary=["outer"], gammas=[1.0], widths=[8], seeds=1, optimizers=["adam"])
    runs = study_runs(adam, 1000, {(1.0, 1.0): 0.01})
    assert [r.optimizer for r in runs] == ["adam"] and runs[0].name.endswith("_adam")
    assert study_runs(_sweep_config(tiny_config, vary=["outer"], gammas=[1.0], widths=[8], seeds=1), 1000,
                      {(1.0, 1.0): 0.01})[0].name == "study_go1_gi1_w8_s0"  # SGD names unchanged (caches stay valid)
    both = _sweep_config(tiny_config, optimizers=["sgd", "adam"])
    with pytest.raises(ClosureError, match="one optimizer"):
        sweep(both, tiny_dataset, tmp_path / "x", workers=0, progress=False)


def test_aposteriori_sweep_refuses_a_correction_dataset(tiny_config, tmp_path):
    from closure.data.generation import generate
    from closure.errors import ClosureError

    raw = dict(tiny_config)
    raw["les"] = dict(raw["les"], formulation="correction")
    raw["dns"] = dict(raw["dns"], trajectories=3)
    data = generate(config_from_dict(raw, "tiny correction"), tmp_path / "c.nc", progress=False)
    config = _sweep_config(raw, vary=["outer"], gammas=[1.0], widths=[8], seeds=2, aposteriori=True)
    with pytest.raises(ClosureError, match="les.formulation 'filtered'"):
        sweep(config, data, tmp_path / "s", workers=0, progress=False)


def test_quarter_mean_drop_averages_each_quarter():
    steps = np.arange(0, 17) * 10  # checkpoints 0, 10, ..., 160: quarters (80, 120] and (120, 160]
    curve = 1.0 + 0.1 * np.arange(17.0)[::-1]
    curve[13] += 5.0  # one noisy checkpoint in the last quarter moves the average by 5 / 4
    m3, m4 = curve[9:13].mean(), curve[13:17].mean()
    assert quarter_mean_drop(curve[None], steps)[0] == pytest.approx((m3 - m4) / m3)
    flat = np.ones(17)
    assert quarter_mean_drop(flat[None], steps)[0] == 0.0
    short = np.array([0, 10, -1, -1])  # one checkpoint: no quarters
    assert np.isnan(quarter_mean_drop(np.ones((1, 4)), short)[0])
