"""The plain-solver resolution ladder (closure.les.ladder)."""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr

from closure.cli import main
from closure.config import config_from_dict
from closure.errors import ClosureError
from closure.les.ladder import PlainSpec, fft_size, ladder_models, ladder_resolution, parse_plain, run_plain


def test_names_and_grid_sizes():
    assert [fft_size(x) for x in (32, 48, 64, 96, 97, 7, 110)] == [32, 48, 64, 96, 96, 8, 108]
    assert [ladder_resolution(32, f) for f in (1, 1.5, 2, 3)] == [32, 48, 64, 96]
    assert parse_plain("plain@64", 32) == PlainSpec(64, "dns")
    assert parse_plain("plain@1.5x:filtered", 32) == PlainSpec(48, "filtered")
    assert PlainSpec(48, "filtered").label == "plain@48:filtered"
    for bad in ("plain@", "plain@63", "plain@64:other", "plain@x"):
        with pytest.raises(ClosureError, match="plain@"):
            parse_plain(bad, 32)
    config = config_from_dict({"run": {"ladder": [1, 1.5, 1.5], "ladder_starts": ["filtered"]}})
    assert ladder_models(config, 32) == ["plain@32:filtered", "plain@48:filtered"]


def test_plain_solver_at_the_dns_grid_reproduces_the_filtered_dns(tiny_config, tiny_dataset, tmp_path):
    """From the DNS start at the DNS's own grid, coarse-grained output = the dataset's P G w."""
    config = config_from_dict(tiny_config)
    out = run_plain(config, "plain@32", tiny_dataset, tmp_path / "p.nc", show_progress=False)
    with xr.open_dataset(out) as run, xr.open_dataset(tiny_dataset) as ref:
        assert run.attrs["ladder_resolution"] == 32 and run.attrs["ladder_start"] == "dns"
        assert run.attrs["dt"] == pytest.approx(0.02 * 16 / 32)  # the CFL-scaled step
        assert run.attrs["les_seconds_per_model_time"] > 0 and run.attrs["batch"] == run.sizes["trajectory"]
        ids = [int(i) for i in run["trajectory"].values]
        truth = ref["omega"].sel(trajectory=ids).isel(time=slice(0, run.sizes["time"])).values
        assert np.max(np.abs(run["omega"].values - truth)) < 1e-5 * np.max(np.abs(truth))
        assert np.all(run["sgs"].values == 0)


def test_plain_solver_with_cfl_steps_reproduces_the_filtered_dns(tiny_config, tiny_dataset, tmp_path):
    """run.dt: auto: the ladder steps by CFL at its own grid, lands on the snapshots, records its steps."""
    tiny_config["run"].update(dt="auto", cfl=0.5)
    out = run_plain(config_from_dict(tiny_config), "plain@32", tiny_dataset, tmp_path / "p.nc", show_progress=False)
    with xr.open_dataset(out) as run, xr.open_dataset(tiny_dataset) as ref:
        assert run.attrs["dt"] == "auto" and (run["les_steps"].values[1:] > 0).all()
        np.testing.assert_array_equal(run["time"].values, ref["time"].values[:run.sizes["time"]])
        ids = [int(i) for i in run["trajectory"].values]
        truth = ref["omega"].sel(trajectory=ids).isel(time=slice(0, run.sizes["time"])).values
        assert np.max(np.abs(run["omega"].values - truth)) < 1e-4 * np.max(np.abs(truth))


def test_filtered_start_is_the_les_field_and_coarser_grids_differ(tiny_config, tiny_dataset, tmp_path):
    config = config_from_dict(tiny_config)
    fine = run_plain(config, "plain@2x:filtered", tiny_dataset, tmp_path / "f.nc", show_progress=False)
    coarse = run_plain(config, "plain@16", tiny_dataset, tmp_path / "c.nc", show_progress=False)
    with xr.open_dataset(fine) as f, xr.open_dataset(coarse) as c, xr.open_dataset(tiny_dataset) as ref:
        ids = [int(i) for i in f["trajectory"].values]
        les0 = ref["omega"].sel(trajectory=ids).isel(time=0).values
        # at t0 the filtered start is P G of the zero-padded LES field: the LES field filtered once more
        hat = np.fft.fft2(les0)
        m = np.fft.fftfreq(16, 1.0 / 16)
        k2 = m[:, None] ** 2 + m[None, :] ** 2
        D = 2.0 * 2 * np.pi / 16
        np.testing.assert_allclose(f["omega"].values[:, 0], np.real(np.fft.ifft2(hat * np.exp(-k2 * D ** 2 / 24))),
                                   atol=1e-5 * np.abs(les0).max())
        truth = ref["omega"].sel(trajectory=ids).isel(time=-1).values
        err = lambda run: np.abs(run["omega"].values[:, -1] - truth).max()  # noqa: E731
        assert err(c) > 10 * 1e-5 * np.abs(truth).max()  # the coarse plain solver is not the DNS


def test_old_dataset_without_the_dns_start_is_a_one_line_error(tiny_config, tiny_dataset, tmp_path, capsys):
    old = tmp_path / "old.nc"
    with xr.open_dataset(tiny_dataset) as ds:
        ds.drop_vars(["omega_dns", "omega_dns_t0"]).to_netcdf(old)
    config = config_from_dict(tiny_config)
    with pytest.raises(ClosureError, match="omega_dns_t0.*regenerate"):
        run_plain(config, "plain@32", old, tmp_path / "x.nc")
    # the filtered start needs only the LES field
    assert run_plain(config, "plain@32:filtered", old, tmp_path / "y.nc", show_progress=False).is_file()


def test_cli_les_plain(tiny_config, tiny_dataset, tmp_path, capsys):
    import yaml

    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump(tiny_config))
    assert main(["les", str(cfg), "--model", "plain@1.5x", "--data", str(tiny_dataset), "-o",
                 str(tmp_path / "p.nc")]) == 0
    with xr.open_dataset(tmp_path / "p.nc") as ds:
        assert ds.attrs["model"] == "plain@24"
    assert main(["les", str(cfg), "--model", "plain@25", "--data", str(tiny_dataset), "-o",
                 str(tmp_path / "q.nc")]) == 2
    assert "even integer" in capsys.readouterr().err


def _max_speed(omega: np.ndarray, n: int) -> float:
    """max over trajectories of max|u| + max|v| of the 2/3-truncated field (numpy, independent)."""
    hat = np.fft.fft2(omega)
    m = np.fft.fftfreq(n, 1.0 / n)
    my, mx = np.meshgrid(m, m, indexing="ij")
    keep = (np.abs(mx) <= n // 3) & (np.abs(my) <= n // 3)
    k2 = np.where(mx ** 2 + my ** 2 == 0, 1.0, mx ** 2 + my ** 2)
    psi = np.where(keep, hat / k2, 0.0)  # -lap psi = omega on the 2 pi box
    u = np.real(np.fft.ifft2(1j * my * psi))
    v = np.real(np.fft.ifft2(-1j * mx * psi))
    return float(np.max(np.abs(u).max(axis=(-2, -1)) + np.abs(v).max(axis=(-2, -1))))


@pytest.mark.parametrize("cfl", [0.3, 1.0])
def test_ladder_cfl_gives_each_rung_its_largest_step_within_the_cfl_number(cfl, tiny_config, tiny_dataset, tmp_path):
    tiny_config["run"]["ladder_cfl"] = cfl
    config = config_from_dict(tiny_config)
    out = run_plain(config, "plain@32", tiny_dataset, tmp_path / "p.nc", show_progress=False)
    with xr.open_dataset(out) as run, xr.open_dataset(tiny_dataset) as ref:
        ids = [int(i) for i in run["trajectory"].values]
        speed = _max_speed(ref["omega_dns_t0"].sel(trajectory=ids).values.astype(np.float64), 32)
        dt, dx, interval = float(run.attrs["dt"]), 2 * np.pi / 32, 0.1
        k = round(interval / dt)
        assert interval / k == pytest.approx(dt)
        assert float(run.attrs["cfl"]) == pytest.approx(dt * speed / dx, rel=1e-3)
        assert dt * speed / dx <= cfl * (1 + 1e-6)  # within the CFL number
        assert k == 1 or interval / (k - 1) * speed / dx > cfl  # and the largest such step
