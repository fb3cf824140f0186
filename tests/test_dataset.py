"""The dataset schema (docs/conventions.md): round trip, attributes, lazy reading, validation, splits."""

from __future__ import annotations

import json

import dask.array
import numpy as np
import pytest
import xarray as xr
import yaml

from closure.config import config_from_dict, config_to_yaml
from closure.data.dataset import (REQUIRED_ATTRS, build_dataset, dataset_config, open_dataset, split_trajectories,
                             validate, write)
from closure.errors import ClosureError


def _arrays(config, nt=3, ntraj=2, dns=False, seed=0):
    rng = np.random.default_rng(seed)
    n = config.les.resolution
    space = (n,) * config.system.ndim
    out = [rng.standard_normal((ntraj, nt) + space), rng.standard_normal((ntraj, nt) + space)]
    if dns:
        out.append(rng.standard_normal((ntraj, nt) + (config.dns.resolution,) * config.system.ndim))
    return out


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("which", ["2d", "burgers"])
def test_round_trip_schema(tmp_path, tiny_config, tiny_burgers_config, dtype, which):
    raw = tiny_config if which == "2d" else tiny_burgers_config
    raw["dtype"] = dtype
    config = config_from_dict(raw)
    field, sgs, dns = _arrays(config, dns=True)
    times = [0.4, 0.5, 0.6]
    ds = build_dataset(config, field, sgs, times, [0, 1], dns_field=dns)
    path = write(ds, tmp_path / "d.nc")
    assert path.exists() and not list(tmp_path.glob(".*tmp"))

    back = open_dataset(path)
    name = "omega" if which == "2d" else "u"
    space = ("y", "x") if which == "2d" else ("x",)
    assert back[name].dims == ("trajectory", "time") + space
    assert back["sgs"].dims == ("trajectory", "time") + space
    assert back[name + "_dns"].dims == ("trajectory", "time") + tuple(d + "_dns" for d in space)
    for var in (name, "sgs", name + "_dns"):
        assert back[var].dtype == np.dtype(dtype)
        assert isinstance(back[var].data, dask.array.Array)  # lazy
        assert back[var].attrs["units"] and back[var].attrs["long_name"]
        np.testing.assert_array_equal(back[var].values, {name: field, "sgs": sgs, name + "_dns": dns}[var]
                                      .astype(dtype))
    n_les, n_dns, length = config.les.resolution, config.dns.resolution, config.system.length
    np.testing.assert_allclose(back["x"].values, np.arange(n_les) * length / n_les)
    np.testing.assert_allclose(back["x_dns"].values, np.arange(n_dns) * length / n_dns)
    if which == "2d":
        np.testing.assert_allclose(back["y"].values, np.arange(n_les) * length / n_les)
        np.testing.assert_allclose(back["y_dns"].values, np.arange(n_dns) * length / n_dns)
    np.testing.assert_allclose(back["time"].values, times)
    assert back["time"].attrs["long_name"]
    # global attributes
    for attr in REQUIRED_ATTRS:
        assert attr in back.attrs, attr
    assert back.attrs["Conventions"] == "CF-1.8"
    assert back.attrs["equation"] == config.system.equation
    assert back.attrs["length"] == pytest.approx(length)
    assert back.attrs["viscosity"] == pytest.approx(config.system.viscosity)
    assert back.attrs["drag"] == pytest.approx(config.system.drag)
    assert json.loads(back.attrs["forcing"])["type"] == config.system.forcing.type
    assert json.loads(back.attrs["filter"])["type"] == config.les.filter.type
    assert json.loads(back.attrs["filter"])["width"] == config.les.filter.width
    assert int(back.attrs["dns_resolution"]) == n_dns and int(back.attrs["les_resolution"]) == n_les
    assert back.attrs["dt"] == pytest.approx(config.dns.dt)
    assert yaml.safe_load(back.attrs["config"])["dtype"] == dtype
    assert dataset_config(back) == config
    assert back.attrs["closure_version"] and back.attrs["created"]
    # compressed and chunked along trajectory and time
    enc = back[name].encoding
    assert enc["zlib"] and enc["chunksizes"][0] == 1
    back.close()


def test_open_with_plain_xarray_is_lazy(tiny_dataset):
    with xr.open_dataset(tiny_dataset, chunks={}) as ds:
        assert isinstance(ds["omega"].data, dask.array.Array)
        assert ds["omega"].data.chunks[0] == (1,) * ds.sizes["trajectory"]


def test_tiny_dataset_fixture(tiny_dataset):
    ds = open_dataset(tiny_dataset)
    config = dataset_config(ds)
    assert ds.sizes["trajectory"] == config.dns.trajectories == 6
    assert ds.sizes["time"] == config.dns.samples
    np.testing.assert_allclose(ds["time"].values,
                               config.dns.spinup_time + config.dns.sample_interval * np.arange(config.dns.samples))
    assert np.isfinite(ds["sgs"].values).all() and float(ds["sgs"].std()) > 0
    ds.close()


def test_open_many_files_concatenates_trajectories(tmp_path, tiny_config):
    config = config_from_dict(tiny_config)
    a = build_dataset(config, *_arrays(config, seed=1), [0.4, 0.5, 0.6], [0, 1])
    b = build_dataset(config, *_arrays(config, seed=2), [0.4, 0.5, 0.6], [2, 3])
    pa, pb = write(a, tmp_path / "a.nc"), write(b, tmp_path / "b.nc")
    ds = open_dataset([pa, pb])
    assert list(ds["trajectory"].values) == [0, 1, 2, 3]
    assert isinstance(ds["sgs"].data, dask.array.Array)
    np.testing.assert_array_equal(ds["sgs"].values[2:], b["sgs"].values)
    ds.close()


def test_foreign_and_missing_files_are_closure_errors(tmp_path, tiny_config):
    with pytest.raises(ClosureError, match="not found"):
        open_dataset(tmp_path / "nope.nc")
    junk = tmp_path / "junk.nc"
    junk.write_text("hello")
    with pytest.raises(ClosureError, match="not a netCDF file"):
        open_dataset(junk)
    foreign = tmp_path / "foreign.nc"
    xr.Dataset({"temperature": (("x",), np.zeros(4))}).to_netcdf(foreign)
    with pytest.raises(ClosureError, match=r"foreign.nc: not a closure dataset \(missing variable 'sgs'\)"):
        open_dataset(foreign)
    config = config_from_dict(tiny_config)
    ds = build_dataset(config, *_arrays(config), [0.4, 0.5, 0.6], [0, 1])
    no_attr = ds.copy()
    del no_attr.attrs["config"]
    with pytest.raises(ClosureError, match="missing global attribute 'config'"):
        validate(no_attr, "x.nc")
    no_field = ds.drop_vars("omega")
    with pytest.raises(ClosureError, match="missing variable 'omega'"):
        validate(no_field, "x.nc")


def test_write_is_atomic(tmp_path, tiny_config, monkeypatch):
    config = config_from_dict(tiny_config)
    ds = build_dataset(config, *_arrays(config), [0.4, 0.5, 0.6], [0, 1])
    path = write(ds, tmp_path / "d.nc")
    before = path.read_bytes()

    def boom(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(xr.Dataset, "to_netcdf", boom)
    with pytest.raises(RuntimeError):
        write(ds, path)
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d.nc"]


@pytest.mark.parametrize("n", [2, 3, 4, 6, 8, 10, 37, 100])
@pytest.mark.parametrize("fractions", [(0.125, 0.25), (0.2, 0.2), (0.0, 0.1), (0.5, 0.4)])
def test_split_trajectories(n, fractions):
    val, test = fractions
    s = split_trajectories(n, val, test, seed=3)
    assert s == split_trajectories(n, val, test, seed=3)  # deterministic
    all_ids = s["train"] + s["validation"] + s["test"]
    assert sorted(all_ids) == list(range(n))  # disjoint and complete
    assert len(s["test"]) >= 1 and len(s["train"]) >= 1
    if n >= 3 and val > 0:
        assert len(s["validation"]) >= 1
    if val == 0:
        assert s["validation"] == []
    if n >= 20:
        assert abs(len(s["test"]) - test * n) <= 1


def test_split_depends_on_seed_and_rejects_one_trajectory():
    assert split_trajectories(20, 0.2, 0.2, 0) != split_trajectories(20, 0.2, 0.2, 1)
    with pytest.raises(ClosureError):
        split_trajectories(1, 0.1, 0.1, 0)


def test_config_round_trips_through_yaml(tiny_config):
    config = config_from_dict(tiny_config)
    assert config_from_dict(yaml.safe_load(config_to_yaml(config))) == config
