"""The 3D data path: generation (in process and with dask), the file schema (u, v, w and
sgs_u, sgs_v, sgs_w on (trajectory, time, z, y, x)), the in-memory stacked layout, values."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
import xarray as xr

from closure.config import config_from_dict
from closure.data import generation as gen
from closure.data.dataset import open_dataset
from closure.data.sgs import filtered_field_and_sgs
from closure.data.system import dns_equation, initial_state, les_equation, make_filter, trajectory_seeds
from closure.errors import ClosureError

TINY_3D = {
    "seed": 1,
    "device": "cpu",
    "dtype": "float64",
    "system": {"equation": "navier_stokes_3d", "length": 2 * math.pi, "viscosity": 2e-2,
               "forcing": {"type": "linear", "coefficient": 0.2, "wavenumber": 2}},
    "initial": {"peak_wavenumber": 2.0, "energy": 0.5},
    "dns": {"resolution": 16, "dt": 0.05, "spinup_time": 0.1, "sample_interval": 0.1, "samples": 2,
            "trajectories": 3, "batch_size": 2},
    "les": {"resolution": 8, "filter": {"type": "gaussian", "width": 2.0}},
    "data": {"keep_dns": True, "validation_fraction": 0.0, "test_fraction": 0.3},
}


@pytest.fixture(scope="module")
def dataset_3d(tmp_path_factory):
    config = config_from_dict(copy.deepcopy(TINY_3D))
    path = gen.generate(config, tmp_path_factory.mktemp("d3") / "hit.nc", progress=False)
    return config, path


def test_file_schema_has_component_variables(dataset_3d):
    _, path = dataset_3d
    with xr.open_dataset(path, engine="netcdf4") as raw:
        for name in ("u", "v", "w", "sgs_u", "sgs_v", "sgs_w"):
            assert raw[name].dims == ("trajectory", "time", "z", "y", "x"), name
            assert raw[name].dtype == np.float64
        for name in ("u_dns", "v_dns", "w_dns"):
            assert raw[name].dims == ("trajectory", "time", "z_dns", "y_dns", "x_dns")
        assert raw.attrs["Conventions"] == "CF-1.8" and raw.attrs["equation"] == "navier_stokes_3d"
        assert raw["z"].attrs["axis"] == "Z" and raw.sizes["z"] == 8
        assert "velocity" not in raw.data_vars and "sgs" not in raw.data_vars
        assert raw["u_dns_t0"].dims == ("trajectory", "z_dns", "y_dns", "x_dns")  # the ladder's start


def test_values_match_a_direct_simulation_and_the_stacked_layout(dataset_3d):
    config, path = dataset_3d
    ds = open_dataset(path)
    assert ds["velocity"].dims == ("trajectory", "time", "component", "z", "y", "x")
    assert ds["velocity"].chunks is not None  # lazy (dask)
    assert list(ds["component"].values) == ["u", "v", "w"]
    ds = ds.load()
    seeds = trajectory_seeds(config, [0, 1, 2])
    dns = dns_equation(config, torch.float64, "cpu", seeds)
    les = les_equation(config, torch.float64, "cpu", seeds)
    d = config.dns
    traj = dns.simulate(initial_state(config, dns.grid, seeds), dt=d.dt,
                        steps=d.spinup_steps + (d.samples - 1) * d.sample_steps, save_every=d.sample_steps)
    snaps = traj[:, d.spinup_steps // d.sample_steps:]
    field, sgs = filtered_field_and_sgs(snaps.reshape(-1, 3, *dns.grid.shape), dns, les, make_filter(config))
    np.testing.assert_allclose(ds["velocity"].values, field.reshape(ds["velocity"].shape).numpy(), atol=1e-11)
    np.testing.assert_allclose(ds["sgs"].values, sgs.reshape(ds["sgs"].shape).numpy(), atol=1e-10)
    np.testing.assert_allclose(ds["velocity_dns"].values, snaps.numpy(), atol=1e-11)
    np.testing.assert_array_equal(ds["velocity_dns_t0"].values, ds["velocity_dns"].isel(time=0).values)
    assert float(np.abs(ds["sgs"].values).max()) > 1e-4
    with xr.open_dataset(path, engine="netcdf4") as raw:
        np.testing.assert_array_equal(raw["w"].values, ds["velocity"].sel(component="w").values)
        np.testing.assert_array_equal(raw["sgs_v"].values, ds["sgs"].sel(component="v").values)


@pytest.mark.slow  # a local dask cluster takes ~20 s to start; the 2D suite covers dask by default
def test_dask_generation_matches_in_process(tmp_path, dataset_3d):
    config, path = dataset_3d
    other = gen.generate(config, tmp_path / "dask.nc", progress=False, workers=1)
    a, b = open_dataset(path).load(), open_dataset(other).load()
    for name in ("velocity", "sgs", "velocity_dns"):
        np.testing.assert_array_equal(a[name].values, b[name].values)


def test_3d_config_errors():
    raw = copy.deepcopy(TINY_3D)
    raw["system"]["forcing"] = {"type": "kolmogorov"}
    with pytest.raises(ClosureError, match="not a 3D forcing"):
        config_from_dict(raw)
    raw = copy.deepcopy(TINY_3D)
    raw["system"]["forcing"] = {"type": "band", "low": 1, "high": 3}
    with pytest.raises(ClosureError, match="system.forcing.high=3"):
        gen.generate(config_from_dict(raw), "/nonexistent/never.nc", progress=False)


def test_taylor_green_initial_state():
    raw = copy.deepcopy(TINY_3D)
    raw["initial"] = {"type": "taylor_green", "energy": 0.125}
    config = config_from_dict(raw)
    dns = dns_equation(config, torch.float64, "cpu")
    u = initial_state(config, dns.grid, [0, 1])
    assert u.shape == (2, 3, 16, 16, 16)
    assert torch.allclose(dns.energy(u), torch.full((2,), 0.125, dtype=torch.float64))
