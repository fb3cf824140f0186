"""Dataset generation: values, batching/dask independence, resume, blow-ups."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from closure.data import generation as gen
from closure.config import config_from_dict, load_config
from closure.data.dataset import dataset_config, open_dataset
from closure.errors import ClosureError
from closure.data.sgs import filtered_field_and_sgs
from closure.data.system import dns_equation, initial_state, les_equation, make_filter, trajectory_seeds


def _load(path):
    ds = open_dataset(path).load()
    ds.close()
    return ds


def _assert_same_values(a, b):
    assert set(a.data_vars) == set(b.data_vars)
    for v in a.data_vars:
        np.testing.assert_array_equal(a[v].values, b[v].values, err_msg=v)
    np.testing.assert_array_equal(a["trajectory"].values, b["trajectory"].values)
    np.testing.assert_array_equal(a["time"].values, b["time"].values)


def test_values_match_a_direct_simulation(tmp_path, tiny_config):
    tiny_config["dtype"] = "float64"
    tiny_config["dns"]["trajectories"] = 2
    config = config_from_dict(tiny_config)
    path = gen.generate(config, tmp_path / "d.nc", progress=False)
    ds = _load(path)
    seeds = trajectory_seeds(config, [0, 1])
    dns = dns_equation(config, torch.float64, "cpu", seeds)
    les = les_equation(config, torch.float64, "cpu", seeds)
    d = config.dns
    traj = dns.simulate(initial_state(config, dns.grid, seeds), dt=d.dt,
                        steps=d.spinup_steps + (d.samples - 1) * d.sample_steps, save_every=d.sample_steps)
    snaps = traj[:, d.spinup_steps // d.sample_steps:]
    assert snaps.shape[1] == d.samples
    flat = snaps.reshape(-1, *dns.grid.shape)
    field, sgs = filtered_field_and_sgs(flat, dns, les, make_filter(config))
    np.testing.assert_allclose(ds["omega"].values, field.reshape(ds["omega"].shape).numpy(), atol=1e-10)
    np.testing.assert_allclose(ds["sgs"].values, sgs.reshape(ds["sgs"].shape).numpy(), atol=1e-9)
    np.testing.assert_allclose(ds["omega_dns"].values, snaps.numpy(), atol=1e-10)
    assert ds["omega"].dtype == np.float64


def test_batch_size_does_not_change_values(tmp_path, tiny_config, tiny_dataset):
    tiny_config["dns"]["batch_size"] = 4  # parts of 4 + 2 instead of 3 + 3
    other = gen.generate(config_from_dict(tiny_config), tmp_path / "b.nc", progress=False)
    _assert_same_values(_load(tiny_dataset), _load(other))
    tiny_config["dns"]["batch_size"] = 5  # a lone leftover trajectory
    other = gen.generate(config_from_dict(tiny_config), tmp_path / "c.nc", progress=False)
    _assert_same_values(_load(tiny_dataset), _load(other))


def test_burgers_stochastic_dataset(tiny_burgers_dataset):
    ds = _load(tiny_burgers_dataset)
    config = dataset_config(ds)
    assert ds["u"].dims == ("trajectory", "time", "x") and ds["u_dns"].dims == ("trajectory", "time", "x_dns")
    assert ds.sizes["x"] == config.les.resolution and ds["u"].dtype == np.float64
    assert np.isfinite(ds["sgs"].values).all()
    # independent forcing and initial fields per trajectory
    assert not np.allclose(ds["u"].values[0], ds["u"].values[1])


def test_resume_after_interruption_gives_the_same_dataset(tmp_path, tiny_config, tiny_dataset, monkeypatch):
    tiny_config["dns"]["batch_size"] = 2
    config = config_from_dict(tiny_config)
    out = tmp_path / "r.nc"
    written = []

    def interrupt(path):
        written.append(path)
        raise KeyboardInterrupt

    monkeypatch.setattr(gen, "_part_written", interrupt)
    with pytest.raises(KeyboardInterrupt):
        gen.generate(config, out, progress=False)
    parts = sorted((tmp_path / "r.nc.parts").glob("part-*.nc"))
    assert [p.name for p in parts] == ["part-000000-000001.nc"] and not out.exists()
    first_part_time = parts[0].stat().st_mtime_ns

    calls = []
    monkeypatch.setattr(gen, "_part_written", lambda path: calls.append(Path(path).name))
    gen.generate(config, out, progress=False)
    assert calls == ["part-000002-000003.nc", "part-000004-000005.nc"]  # the finished part was skipped
    assert not (tmp_path / "r.nc.parts").exists()
    _assert_same_values(_load(tiny_dataset), _load(out))
    assert first_part_time  # (the kept part was reused, not rewritten)


def test_resume_refuses_parts_of_another_config(tmp_path, tiny_config, monkeypatch):
    tiny_config["dns"]["trajectories"] = 4
    tiny_config["dns"]["batch_size"] = 2
    out = tmp_path / "r.nc"
    monkeypatch.setattr(gen, "_part_written", lambda path: (_ for _ in ()).throw(KeyboardInterrupt))
    with pytest.raises(KeyboardInterrupt):
        gen.generate(config_from_dict(tiny_config), out, progress=False)
    monkeypatch.setattr(gen, "_part_written", lambda path: None)
    tiny_config["system"]["viscosity"] = 2e-2
    with pytest.raises(ClosureError, match="different configuration"):
        gen.generate(config_from_dict(tiny_config), out, progress=False)


def test_blowup_names_trajectory_and_time_and_keeps_parts(tmp_path, tiny_config):
    tiny_config["dns"].update(trajectories=4, batch_size=2, dt=0.2, spinup_time=2.0, sample_interval=0.2)
    tiny_config["initial"]["energy"] = 200.0
    tiny_config["system"]["viscosity"] = 1e-4
    config = config_from_dict(tiny_config)
    with pytest.raises(ClosureError, match=r"trajectory [0-9, ]+ became non-finite at t = [0-9.]+"):
        gen.generate(config, tmp_path / "x.nc", progress=False)
    assert not (tmp_path / "x.nc").exists()


def test_default_output_uses_the_config_file_stem(tmp_path, tiny_config, monkeypatch):
    import yaml

    from closure.config import load_config

    tiny_config["dns"]["trajectories"] = 2
    cfg = tmp_path / "myexp.yaml"
    cfg.write_text(yaml.safe_dump(tiny_config))
    monkeypatch.chdir(tmp_path)
    path = gen.generate(load_config(cfg), progress=False)
    assert path == Path("data") / "myexp.nc" and (tmp_path / "data" / "myexp.nc").is_file()


def test_keep_dns_false_keeps_only_the_first_dns_state(tmp_path, tiny_config, tiny_dataset):
    """Without keep_dns the DNS appears only at each trajectory's first snapshot (omega_dns_t0)."""
    tiny_config["data"]["keep_dns"] = False
    tiny_config["dns"]["trajectories"] = 2
    ds = _load(gen.generate(config_from_dict(tiny_config), tmp_path / "k.nc", progress=False))
    assert set(ds.data_vars) == {"omega", "sgs", "omega_dns_t0", "dns_steps"}
    assert ds["omega_dns_t0"].dims == ("trajectory", "y_dns", "x_dns")
    # it is the DNS field of the first snapshot (the keep_dns dataset's copy, same trajectories)
    full = _load(tiny_dataset)
    np.testing.assert_array_equal(ds["omega_dns_t0"].values, full["omega_dns"].isel(trajectory=[0, 1], time=0).values)
    np.testing.assert_array_equal(full["omega_dns_t0"].values, full["omega_dns"].isel(time=0).values)


def test_dask_local_cluster_matches_in_process(tmp_path, tiny_config, tiny_dataset, monkeypatch):
    """Two processes (this one and a dask worker forked from it, 1 thread each, loopback) give
    bitwise the in-process values. This process runs the part it takes first and waits until
    the worker has written the other, so both take part whatever the timing."""
    import os
    import time

    config = config_from_dict(tiny_config)
    real, here, parent = gen._write_part, [], os.getpid()
    parts = tmp_path / "dask.nc.parts"

    def first_here(config, ids, path, **kw):
        if os.getpid() == parent:   # (the forked worker inherits this patch: it only writes)
            here.append(Path(path).name)
            deadline = time.monotonic() + 120
            while len(list(parts.glob("part-*.nc"))) < 1 and time.monotonic() < deadline:
                time.sleep(0.05)
        return real(config, ids, path, **kw)

    monkeypatch.setattr(gen, "_write_part", first_here)
    path = gen.generate(config, tmp_path / "dask.nc", workers=2, progress=False)
    assert len(here) == 1 and here[0] in {"part-000000-000002.nc", "part-000003-000005.nc"}   # the other: worker
    _assert_same_values(_load(tiny_dataset), _load(path))


def test_a_failure_here_stops_the_workers(tmp_path, tiny_config):
    tiny_config["dns"].update(trajectories=4, batch_size=2, dt=0.2, spinup_time=2.0, sample_interval=0.2)
    tiny_config["initial"]["energy"] = 200.0
    tiny_config["system"]["viscosity"] = 1e-4
    with pytest.raises(ClosureError, match=r"trajectory [0-9, ]+ became non-finite"):
        gen.generate(config_from_dict(tiny_config), tmp_path / "x.nc", workers=2, progress=False)
    assert not (tmp_path / "x.nc").exists()


def test_scheduler_and_workers_are_exclusive(tmp_path, tiny_config):
    with pytest.raises(ClosureError, match="either"):
        gen.generate(config_from_dict(tiny_config), tmp_path / "x.nc", scheduler="tcp://127.0.0.1:1", workers=2)


@pytest.mark.slow
def test_dask_scheduler_address(tmp_path, tiny_config, tiny_dataset):
    from distributed import LocalCluster

    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None,
                      host="127.0.0.1") as cluster:
        path = gen.generate(config_from_dict(tiny_config), tmp_path / "s.nc", scheduler=cluster.scheduler_address,
                            progress=False)
    _assert_same_values(_load(tiny_dataset), _load(path))


def test_layout_uses_every_core_and_splits_the_trajectories(tiny_config):
    from closure.data.parallelism import choose_layout

    tiny_config["dns"].update(trajectories=8, batch_size=8)
    tiny_config["dns"].update(resolution=256, spinup_time=20.0)   # big enough for a cluster to pay
    config = config_from_dict(tiny_config)
    layout = choose_layout(config, cores=2)
    assert (layout.workers, layout.threads, layout.batch_size) == (2, 1, 4)
    assert "2 processes (this one and 1 dask worker(s)) x 1 torch thread(s)" in layout.describe()
    assert choose_layout(config, cores=16).workers == 8          # no more processes than trajectories
    assert choose_layout(config, cores=1).in_process
    assert choose_layout(config, cores=4, workers=1).in_process   # overrides
    assert choose_layout(config, cores=4, threads=3).threads == 3
    with pytest.raises(ClosureError, match="--threads"):
        choose_layout(config, threads=0)


def test_layout_keeps_small_jobs_in_process(tiny_config):
    from closure.data.parallelism import choose_layout

    layout = choose_layout(config_from_dict(tiny_config), cores=8)
    assert layout.in_process and "small job" in layout.reason


def test_adaptive_dt_lands_on_the_sample_times_and_matches_a_small_fixed_dt(tmp_path, tiny_config):
    tiny_config["dtype"] = "float64"
    tiny_config["dns"].update(trajectories=2, batch_size=2, dt=0.002)
    fine = gen.simulate_batch(config_from_dict(tiny_config), [0, 1])
    tiny_config["dns"].update(dt="auto", cfl=0.5)
    config = config_from_dict(tiny_config)
    path = gen.generate(config, tmp_path / "auto.nc", progress=False)
    ds = _load(path)
    np.testing.assert_array_equal(ds["time"].values, config.dns.sample_times())   # exactly
    steps = ds["dns_steps"].values
    assert steps.shape == (2, 4) and (steps > 0).all() and (steps[0] == steps[1]).all()
    assert (fine.steps == [200, 50, 50, 50]).all()     # the fixed-dt run records its steps too
    assert steps.sum() < fine.steps.sum() / 2           # larger steps than the small fixed dt
    assert ds.attrs["dt"] == "auto"
    err = np.linalg.norm(ds["omega"].values - fine.field) / np.linalg.norm(fine.field)
    assert 1e-12 < err < 1e-5, err


ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("name, former_dt, batch, window, margin", [
    ("quickstart", 4e-3, 8, ["dns.spinup_time=0.2", "dns.sample_interval=0.1"], 3.5),
    ("kolmogorov2d", 1e-3, 1, ["dns.spinup_time=0.01", "dns.sample_interval=0.005"], 1.25),
])
def test_the_configs_adaptive_steps_land_on_the_samples_as_accurate_as_their_former_fixed_dt(
        tmp_path, name, former_dt, batch, window, margin):
    """The shipped configs step with ``dns.dt: auto``: snapshots exactly on the sample times,
    and (ETDRK4, fourth order) an error against a 4x smaller fixed step within ``margin``
    of that of the fixed step the config had before (its accuracy was chosen by hand).

    A batch shares its steps, set by its fastest flow. kolmogorov2d's cfl (0.45) matches the
    former step for one trajectory; the quickstart's (0.65) for its batches of 8 in the
    statistically steady flow (for one trajectory cfl 0.5 would; benchmarks/adaptive_dt.py).
    From the random initial state, whose slower flow the fixed step resolves at a lower
    CFL number, the fixed step is more accurate at first: ~3x here ((0.65 / 0.5)^4 ~ 2.9)."""
    from closure.data.parallelism import estimated_steps

    path = ROOT / "configs" / f"{name}.yaml"
    short = ["dtype=float64", "device=cpu", f"dns.trajectories={batch}", f"dns.batch_size={batch}", "dns.samples=3",
             *window]
    config = load_config(path, short)
    assert config.dns.adaptive
    ds = _load(gen.generate(config, tmp_path / "auto.nc", progress=False))
    np.testing.assert_array_equal(ds["time"].values, config.dns.sample_times())   # exactly
    steps = ds["dns_steps"].values
    assert steps.shape == (batch, 3) and (steps > 0).all()
    assert 0.7 < estimated_steps(config) / steps[0].sum() < 1.4    # the layout's guess (from the initial state)
    ids = list(range(batch))
    fine = gen.simulate_batch(load_config(path, [*short, f"dns.dt={former_dt / 4}"]), ids)
    fixed = gen.simulate_batch(load_config(path, [*short, f"dns.dt={former_dt}"]), ids)

    def error(field):
        return np.linalg.norm(field - fine.field) / np.linalg.norm(fine.field)

    err, err_fixed = error(ds["omega"].values), error(fixed.field)
    assert 0 < err <= margin * err_fixed, (err, err_fixed)   # the reference's own error is ~256x smaller


def test_adaptive_batches_do_not_depend_on_the_layout(tiny_config):
    """A batch shares its CFL steps: with dt: auto the parts are dns.batch_size long on any
    machine, and a batch size is part of what determines the values (resume key)."""
    from closure.data.parallelism import choose_layout

    tiny_config["dns"].update(trajectories=8, batch_size=4, dt="auto")
    config = config_from_dict(tiny_config)
    assert gen.plan_parts(config, 2) == gen.plan_parts(config) == [[0, 1, 2, 3], [4, 5, 6, 7]]
    assert choose_layout(config, cores=4, workers=4).batch_size == 4
    other = config_from_dict({**tiny_config, "dns": {**tiny_config["dns"], "batch_size": 2}})
    assert gen.generation_key(other) != gen.generation_key(config)
    tiny_config["dns"]["dt"] = 0.01
    fixed = config_from_dict(tiny_config)
    assert gen.plan_parts(fixed, 2) == [[0, 1], [2, 3], [4, 5], [6, 7]]
    assert gen.generation_key(config_from_dict({**tiny_config, "dns": {**tiny_config["dns"], "batch_size": 2}})) \
        == gen.generation_key(fixed)


def test_adaptive_dt_needs_a_steady_forcing(tiny_burgers_config):
    tiny_burgers_config["dns"]["dt"] = "auto"
    with pytest.raises(ClosureError, match="steady forcing"):
        config_from_dict(tiny_burgers_config)
