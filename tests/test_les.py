"""The coupled LES runner: schema, start from the filtered DNS, blow-up handling, learned models, errors."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import xarray as xr

import solvers
from closure.data import dataset as ds_io
from closure.config import config_from_dict
from closure.errors import ClosureError
from closure.les.coupled import integrate, run_les, time_dns


def _config(raw, **run):
    raw = dict(raw)
    raw["run"] = dict(raw["run"], **run)
    return config_from_dict(raw)


def test_run_les_writes_the_dataset_schema(tiny_config, tiny_dataset, tmp_path):
    config = _config(tiny_config)
    ref = ds_io.open_dataset(tiny_dataset)
    test = ds_io.split_trajectories(ref.sizes["trajectory"], config.data.validation_fraction,
                                    config.data.test_fraction, config.seed)["test"]
    for model in ("none", "smagorinsky"):
        path = run_les(config, model, tiny_dataset, tmp_path / f"{model}.nc", show_progress=False)
        out = ds_io.open_dataset(path)  # validated against the contract's schema
        assert out.attrs["model"] == model
        assert tuple(out["omega"].dims) == ("trajectory", "time", "y", "x")
        assert list(out["trajectory"].values) == [int(ref["trajectory"].values[i]) for i in test]
        saves = int(round(config.run.time / config.dns.sample_interval))
        np.testing.assert_allclose(out["time"].values, ref["time"].values[:saves + 1], atol=1e-9)
        # starts from the filtered DNS field
        np.testing.assert_array_equal(out["omega"].isel(time=0).values,
                                      ref["omega"].isel(trajectory=test, time=0).values)
        assert np.all(np.isfinite(out["omega"].values))
        assert np.all(np.isnan(out["blowup_time"].values))
        assert json.loads(out.attrs["blowups"]) == []
        assert out.attrs["cost_ratio"] > 0 and out.attrs["les_seconds_per_model_time"] > 0
        assert out.attrs["dt"] == config.run.dt
        assert out["omega"].dtype == np.float32
        if model == "none":
            assert np.all(out["sgs"].values == 0)
        else:
            assert np.any(out["sgs"].values != 0)
        out.close()
    ref.close()


def test_les_matches_the_solver_run_directly(tiny_config, tiny_dataset, tmp_path):
    """The saved snapshots are the LES solver's states at the sample times (no-closure case)."""
    from closure.data.system import les_equation

    config = _config(tiny_config)
    path = run_les(config, "none", tiny_dataset, tmp_path / "none.nc", show_progress=False)
    out = xr.open_dataset(path)
    eq = les_equation(config, dtype=torch.float32)
    w0 = torch.as_tensor(out["omega"].isel(time=0).values)
    steps = int(round(config.dns.sample_interval / config.run.dt))
    traj = eq.simulate(w0, dt=config.run.dt, steps=2 * steps, save_every=steps,
                       time=float(out["time"].values[0]), method=config.run.integrator)
    np.testing.assert_allclose(out["omega"].values, traj.numpy(), rtol=1e-5, atol=1e-5)
    out.close()


def test_blowup_is_dropped_and_the_others_continue():
    """One member explodes; it is recorded and NaN-filled, the others equal a run without it."""
    forcing = solvers.StochasticBurgers([11, 12, 13], amplitude=0.1, interval=0.05)
    eq = solvers.Burgers1D(32, viscosity=0.02, forcing=forcing, dtype=torch.float64)
    u0 = solvers.random_velocity(eq.grid, [1, 2, 3], peak_wavenumber=3, energy=0.2)
    u0[1] *= 200.0

    def cubic(u):  # du/dt = u^3: finite-time blow-up, immediate for the amplified member
        return u ** 3

    res = integrate(eq, cubic, u0, dt=0.01, save_every=5, saves=4, t0=0.3, show_progress=False)
    assert np.isfinite(res.blowup_time[1]) and 0.3 < res.blowup_time[1] <= 0.3 + 0.05 + 1e-12
    assert np.all(np.isnan(res.blowup_time[[0, 2]]))
    assert np.all(np.isnan(res.field[1, 1:])) and np.all(np.isfinite(res.field[1, 0]))
    assert np.all(np.isfinite(res.field[[0, 2]]))
    # the survivors are exactly the run without the exploding member (its forcing dropped too)
    eq2 = solvers.Burgers1D(32, viscosity=0.02, forcing=solvers.StochasticBurgers([11, 13], amplitude=0.1,
                                                                                   interval=0.05),
                            dtype=torch.float64)
    ref = integrate(eq2, cubic, u0[[0, 2]], dt=0.01, save_every=5, saves=4, t0=0.3, show_progress=False)
    np.testing.assert_allclose(res.field[[0, 2]], ref.field, rtol=1e-12, atol=1e-12)


def test_blowups_are_recorded_in_the_output(tiny_config, tiny_dataset, tmp_path, monkeypatch):
    """Through run_les: a closure that explodes every trajectory leaves NaN snapshots and blow-up times."""
    import closure.les.coupled as les_module
    from closure.les.baselines import Closure

    class Explode(Closure):
        def forward(self, state):
            return 1e3 * state ** 3

    monkeypatch.setattr(les_module, "make_closure", lambda *a, **k: Explode())
    config = _config(tiny_config, time=0.3)
    path = run_les(config, "none", tiny_dataset, tmp_path / "bad.nc", name="explode", show_progress=False)
    out = xr.open_dataset(path)
    blow = out["blowup_time"].values
    assert np.all(np.isfinite(blow))
    assert len(json.loads(out.attrs["blowups"])) == out.sizes["trajectory"]
    assert np.all(np.isnan(out["omega"].isel(time=-1).values))
    assert out.attrs["model"] == "explode"
    out.close()


def test_learned_run_directory(tiny_config, tiny_dataset, tmp_path):
    from closure.nn import build_model, save_model

    config = _config(tiny_config)
    run_dir = tmp_path / "my-run"
    run_dir.mkdir()
    model = build_model(config.model, 2, length=config.system.length)
    save_model(run_dir / "model.pt", model)
    (run_dir / "splits.json").write_text(json.dumps({"train": [0, 1, 4], "validation": [5], "test": [2, 3]}))
    path = run_les(config, str(run_dir), tiny_dataset, tmp_path / "learned.nc", show_progress=False)
    out = xr.open_dataset(path)
    assert out.attrs["model"] == "my-run"
    assert list(out["trajectory"].values) == [2, 3]  # the run's own test split
    with torch.no_grad():
        expected = model(torch.as_tensor(out["omega"].isel(time=0).values))
    np.testing.assert_allclose(out["sgs"].isel(time=0).values, expected.numpy(), rtol=1e-5, atol=1e-6)
    out.close()
    path = run_les(config, str(run_dir), tiny_dataset, tmp_path / "learned2.nc", name="learned",
                   show_progress=False)
    with xr.open_dataset(path) as out:
        assert out.attrs["model"] == "learned"


def test_burgers_les_with_stochastic_forcing(tiny_burgers_config, tiny_burgers_dataset, tmp_path):
    config = _config(tiny_burgers_config)
    path = run_les(config, "dynamic_smagorinsky", tiny_burgers_dataset, tmp_path / "b.nc", show_progress=False)
    out = ds_io.open_dataset(path)
    assert tuple(out["u"].dims) == ("trajectory", "time", "x")
    assert out["u"].dtype == np.float64
    assert np.all(np.isfinite(out["u"].values))
    out.close()


def test_run_les_errors(tiny_config, tiny_dataset, tmp_path):
    with pytest.raises(ClosureError, match="viscosity"):
        raw = dict(tiny_config, system=dict(tiny_config["system"], viscosity=0.5))
        run_les(config_from_dict(raw), "none", tiny_dataset, tmp_path / "x.nc")
    with pytest.raises(ClosureError, match="run.dt"):
        run_les(_config(tiny_config, dt=0.03), "none", tiny_dataset, tmp_path / "x.nc")
    with pytest.raises(ClosureError, match="neither"):
        run_les(_config(tiny_config), "no-such-model", tiny_dataset, tmp_path / "x.nc")
    empty = tmp_path / "empty-run"
    empty.mkdir()
    with pytest.raises(ClosureError, match="model.pt"):
        run_les(_config(tiny_config), str(empty), tiny_dataset, tmp_path / "x.nc")
    assert not (tmp_path / "x.nc").exists()


def test_time_dns_is_positive(tiny_config):
    config = config_from_dict(tiny_config)
    assert time_dns(config, 2, torch.device("cpu"), torch.float32, max_steps=2) > 0


def test_compile_closure_falls_back_to_eager_when_compiling_fails(monkeypatch, caplog):
    """run.compile wraps the network; a compiler failure logs one warning and the result is the eager one."""
    from closure.les import coupled
    from closure.nn import build_model

    model = build_model({"type": "cnn", "stencil": 3, "hidden": [4, 4], "gammas": [1.0, 1.0]}, 2).eval()
    state = torch.randn(2, 8, 8)
    with torch.no_grad():
        expected = model(state)

    def broken_compile(fn, **kwargs):
        def run(x):
            raise RuntimeError("no C++ compiler\nsecond line")
        return run

    monkeypatch.setattr(coupled.torch, "compile", broken_compile)
    compiled = coupled.compile_closure(model)
    with torch.no_grad(), caplog.at_level("WARNING", logger="closure.les.coupled"):
        torch.testing.assert_close(compiled(state), expected)
        torch.testing.assert_close(compiled(state), expected)
    assert [r.getMessage() for r in caplog.records] == [
        "torch.compile of the closure failed (RuntimeError: no C++ compiler); running eagerly"]
    assert coupled.compile_closure("smagorinsky") == "smagorinsky"


def test_closure_per_stage_option_reaches_the_solver(tiny_config, tiny_dataset, tmp_path, monkeypatch):
    """run.closure_per_stage: false runs the closure once per step in run_les (and records it)."""
    import solvers as eq_mod
    from closure.nn import build_model, save_model

    config = _config(tiny_config, closure_per_stage=False)
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    save_model(run_dir / "model.pt", build_model(config.model, 2, length=config.system.length))
    held = []
    original = eq_mod.HeldTendency.__init__

    def spy(self, value_hat):
        held.append(value_hat.shape)
        original(self, value_hat)

    monkeypatch.setattr(eq_mod.HeldTendency, "__init__", spy)
    path = run_les(config, str(run_dir), tiny_dataset, tmp_path / "held.nc", show_progress=False)
    with xr.open_dataset(path) as out:
        steps = int(round(config.dns.sample_interval / config.run.dt)) * (out.sizes["time"] - 1)
        assert out.attrs["closure_per_stage"] == 0
    assert len(held) == steps


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("features", [["gradient"], ["dealias_residual", "gradient"]])
@pytest.mark.parametrize("per_stage", [True, False])
def test_cuda_graph_replays_a_learned_closure_like_the_eager_loop(per_stage, features, monkeypatch):
    """The learned closure is captured with the step (with the solver's spectra, `closure_hat`): same
    trajectory as the eager loop, no fallback."""
    import warnings

    from closure.nn import ConvClosure

    torch.manual_seed(0)
    eq = solvers.NavierStokes2D(32, viscosity=1e-2, dtype=torch.float64, device="cuda")
    model = ConvClosure(2, stencil=3, hidden=[8, 8], features=features).to("cuda", torch.float64).eval()
    for p in model.parameters():
        p.data.mul_(50.0)  # a closure large enough to change the trajectory
    w0 = solvers.random_vorticity(eq.grid, seeds=[1, 2]).to("cuda", torch.float64)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("error")
        graph = eq.simulate(w0, dt=1e-2, steps=20, closure=model, closure_per_stage=per_stage)
        runners = [r for r in eq.stepper("etdrk4", 1e-2).__dict__.get("_cuda_graphs", {}).values()]
        monkeypatch.setenv("SOLVERS_CUDA_GRAPHS", "0")
        eager = eq.simulate(w0, dt=1e-2, steps=20, closure=model, closure_per_stage=per_stage)
        plain = eq.simulate(w0, dt=1e-2, steps=20)
    assert any(r is not None and r.closure is model for r in runners)
    assert float((graph - plain).abs().max()) > 1e-6  # the closure acted
    assert torch.allclose(graph, eager, rtol=0, atol=1e-10)


def test_adaptive_les_lands_on_the_snapshots_records_its_steps_and_is_fourth_order(tiny_config, tiny_dataset,
                                                                                  tmp_path):
    """run.dt: auto: CFL steps landing exactly on the dataset's snapshot times, the steps of each
    interval in ``les_steps``, and ETDRK4's fourth order against a small fixed step."""
    tiny_config["dtype"] = "float64"
    ref = ds_io.open_dataset(tiny_dataset)

    def les(name, **run):
        out = ds_io.open_dataset(run_les(_config(tiny_config, **run), "smagorinsky", tiny_dataset,
                                         tmp_path / f"{name}.nc", show_progress=False)).load()
        out.close()
        return out

    fine = les("fine", dt=0.0025)
    errors, steps = [], []
    for cfl in (0.5, 0.25):
        out = les(f"cfl{cfl}", dt="auto", cfl=cfl)
        np.testing.assert_array_equal(out["time"].values, ref["time"].values[:3])   # exactly
        assert out.attrs["dt"] == "auto" and out["les_steps"].values[0] == 0
        steps.append(out["les_steps"].values[1:])
        errors.append(np.linalg.norm(out["omega"].values - fine["omega"].values) / np.linalg.norm(fine["omega"].values))
    assert (steps[0] > 0).all() and (steps[1] > steps[0]).all()
    order = np.log(errors[0] / errors[1]) / np.log(steps[1].mean() / steps[0].mean())
    assert 3.5 < order < 4.5, (errors, steps, order)
    assert (fine["les_steps"].values[1:] == 40).all()          # a fixed step records its steps too
    ref.close()


def test_adaptive_les_is_refused_where_fixed_steps_are_needed(tiny_config, tiny_dataset, tmp_path):
    from closure.training.calibrate import calibrate
    from closure.training.unroll import train_aposteriori

    config = _config(tiny_config, dt="auto")
    with pytest.raises(ClosureError, match="run.dt: auto is for the coupled LES and the ladder; calibration"):
        calibrate(config, tiny_dataset, "smagorinsky", tmp_path / "c")
    with pytest.raises(ClosureError, match="run.dt: auto .* a-posteriori training .* give run.dt a number"):
        train_aposteriori(config, tiny_dataset, tmp_path / "t")


def _coupled_les_on(device: str, tiny_config, tiny_dataset, tmp_path):
    """A tiny trained closure's coupled LES on ``device`` and on the CPU (paths of the outputs)."""
    import copy

    from closure.les.coupled import run_les
    from closure.training.trainer import train

    tiny_config["train"]["epochs"] = 1
    config = config_from_dict(tiny_config)
    run = train(config, tiny_dataset, tmp_path / "model", progress_enabled=False)
    other = copy.deepcopy(tiny_config)
    other["device"] = device
    a = run_les(config, run, tiny_dataset, tmp_path / "cpu.nc", show_progress=False)
    b = run_les(config_from_dict(other), run, tiny_dataset, tmp_path / f"{device}.nc", show_progress=False)
    return a, b


def _assert_same_les(a, b, rtol):
    with xr.open_dataset(a) as x, xr.open_dataset(b) as y:
        names = [v for v in x.data_vars if x[v].dtype.kind == "f" and x[v].ndim >= 3]
        assert names
        for v in names:
            scale = float(np.nanmax(np.abs(x[v].values)))
            assert np.isfinite(y[v].values).all() == np.isfinite(x[v].values).all()
            np.testing.assert_allclose(y[v].values, x[v].values, rtol=0, atol=rtol * scale, err_msg=v)


def test_coupled_les_of_a_trained_closure_is_the_same_run_twice(tiny_config, tiny_dataset, tmp_path):
    """The CPU twin of the CUDA check below (the comparison itself is exercised on every machine)."""
    a, b = _coupled_les_on("cpu", tiny_config, tiny_dataset, tmp_path)
    _assert_same_les(a, b, rtol=0.0)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_coupled_les_of_a_trained_closure_matches_the_cpu(tiny_config, tiny_dataset, tmp_path):
    """The whole `closure les` stage with a learned closure on the GPU (CUDA graphs) agrees with the CPU run."""
    a, b = _coupled_les_on("cuda", tiny_config, tiny_dataset, tmp_path)
    _assert_same_les(a, b, rtol=2e-3)
