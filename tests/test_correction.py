"""The correction formulation (``les.formulation: correction``): the plain coarse solver plus a
learned correction, scored after the dataset's filter."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import xarray as xr

from closure.config import config_from_dict
from closure.data.dataset import les_view, open_dataset
from closure.data.generation import generate
from closure.data.system import les_equation, plain_equation
from closure.errors import ClosureError
from closure.les.coupled import run_les
from closure.les.ladder import run_plain
from closure.training.runs import open_data


@pytest.fixture(scope="module")
def correction_dataset(tmp_path_factory):
    from conftest import tiny_config_dict

    raw = tiny_config_dict()
    raw["les"]["formulation"] = "correction"
    out = tmp_path_factory.mktemp("correction") / "corr.nc"
    return generate(config_from_dict(raw, "tiny_correction"), out, progress=False), raw


def test_dataset_keeps_the_filtered_reference_and_adds_the_truncated_pair(correction_dataset, tiny_dataset):
    path, _ = correction_dataset
    with xr.open_dataset(path) as ds, xr.open_dataset(tiny_dataset) as filtered:
        assert ds.attrs["formulation"] == "correction" and filtered.attrs["formulation"] == "filtered"
        # the scoring reference is the filtered dataset's field, value for value
        np.testing.assert_array_equal(ds["omega"].values, filtered["omega"].values)
        coarse = ds["omega_coarse"].values
        # G applied to the truncated field on the LES grid gives P G w
        m = np.fft.fftfreq(16, 1.0 / 16)
        k2 = m[:, None] ** 2 + m[None, :] ** 2
        gauss = np.exp(-k2 * (2.0 * 2 * np.pi / 16) ** 2 / 24)
        gauss[8, :] = 0
        gauss[:, 8] = 0
        again = np.real(np.fft.ifft2(np.fft.fft2(coarse) * gauss))
        np.testing.assert_allclose(again, ds["omega"].values, atol=2e-5 * np.abs(coarse).max())
        assert np.abs(coarse - ds["omega"].values).max() > 0.05 * np.abs(coarse).max()


def test_commutator_is_the_plain_solvers_missing_tendency(correction_dataset):
    """sgs_coarse = P R(w) - R_n(P w), with the plain solver's own tendency on the LES grid."""
    path, raw = correction_dataset
    config = config_from_dict(raw)
    with xr.open_dataset(path) as ds:
        w = torch.as_tensor(ds["omega_dns"].isel(time=2).values, dtype=torch.float64)
        coarse = torch.as_tensor(ds["omega_coarse"].isel(time=2).values, dtype=torch.float64)
        stored = ds["sgs_coarse"].isel(time=2).values
    dns = plain_equation(config, 32)
    les = plain_equation(config, 16)
    r_hat = dns.grid.to_spectral(dns.tendency(w))
    from closure.data.filters import restrict_hat

    p_r = les.grid.to_physical(restrict_hat(r_hat, dns.grid, les.grid))
    expected = (p_r - les.tendency(coarse)).numpy()
    np.testing.assert_allclose(stored, expected, atol=1e-4 * np.abs(expected).max())
    # and the LES equation of the correction formulation is the plain solver (forcing P f, not P G f)
    np.testing.assert_allclose(les_equation(config).tendency(coarse).numpy(), les.tendency(coarse).numpy(),
                               atol=1e-12)


def test_views_swap_the_pair_for_training(correction_dataset, tiny_dataset):
    path, _ = correction_dataset
    ds = open_data(path)
    with xr.open_dataset(path) as raw:
        np.testing.assert_array_equal(ds["omega"].values, raw["omega_coarse"].values)
        np.testing.assert_array_equal(ds["sgs"].values, raw["sgs_coarse"].values)
    assert "omega_coarse" not in ds
    plain = open_dataset(tiny_dataset)
    assert les_view(plain) is plain
    broken = open_dataset(path).drop_vars("sgs_coarse")
    with pytest.raises(ClosureError, match="sgs_coarse"):
        les_view(broken, "x.nc")


def test_no_closure_correction_is_the_plain_solver_rung(correction_dataset, tmp_path):
    """The correction LES without a closure = the ladder's plain solver at the LES grid (DNS start)."""
    path, raw = correction_dataset
    raw["run"]["dt"] = 0.01
    config = config_from_dict(raw)
    les = run_les(config, "none", path, tmp_path / "none.nc", show_progress=False)
    plain = run_plain(config, "plain@16", path, tmp_path / "p.nc", show_progress=False)
    with xr.open_dataset(les) as a, xr.open_dataset(plain) as b, xr.open_dataset(path) as ref:
        assert a.attrs["formulation"] == "correction" and a.attrs["dt"] == pytest.approx(b.attrs["dt"])
        np.testing.assert_allclose(a["omega"].values, b["omega"].values, atol=1e-5 * np.abs(b["omega"].values).max())
        ids = [int(i) for i in a["trajectory"].values]
        # the first saved snapshot is the filtered reference itself
        np.testing.assert_allclose(a["omega"].values[:, 0], ref["omega"].sel(trajectory=ids).isel(time=0).values,
                                   atol=1e-5 * np.abs(a["omega"].values).max())


def test_correction_in_three_dimensions_is_refused():
    with pytest.raises(Exception, match="formulation=correction"):
        config_from_dict({"system": {"equation": "navier_stokes_3d", "forcing": {"type": "none"}},
                          "dns": {"resolution": 32}, "les": {"resolution": 16, "formulation": "correction"}})


def test_training_fits_the_commutator_and_the_les_runs_it(correction_dataset, tmp_path):
    from closure.data.streaming import closure_core
    from closure.nn import load_model
    from closure.training.trainer import train

    path, raw = correction_dataset
    raw["train"]["epochs"] = 1
    raw["train"]["samples_per_epoch"] = 512
    config = config_from_dict(raw)
    run = train(config, path, tmp_path / "run", progress_enabled=False, apriori=False)
    core = closure_core(load_model(run / "model.pt"))
    splits = __import__("json").loads((run / "splits.json").read_text())["train"]
    with xr.open_dataset(path) as ds:
        coarse = float(ds["sgs_coarse"].isel(trajectory=splits).std())
        filtered = float(ds["sgs"].isel(trajectory=splits).std())
    assert abs(coarse - filtered) > 0.1 * coarse  # the two targets differ on this data
    assert float(core.output_std.reshape(-1)[0]) == pytest.approx(coarse, rel=1e-3)
    out = run_les(config, run, path, tmp_path / "learned.nc", show_progress=False)
    with xr.open_dataset(out) as les:
        assert les.attrs["formulation"] == "correction" and np.isfinite(les["omega"].values).all()
