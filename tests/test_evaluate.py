"""A-posteriori metrics and the evaluation report."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
import xarray as xr

import solvers
from closure.evaluation import metrics as M
from closure.config import config_from_dict
from closure.errors import ClosureError
from closure.evaluation.compare import evaluate, match_times
from closure.les.coupled import run_les, write_atomic
from closure.evaluation.report import FIGURES


# ------------------------------------------------------------------------------ metrics
def test_spectrum_parseval_and_error():
    eq = solvers.NavierStokes2D(32, viscosity=1e-3, dtype=torch.float64)
    w = solvers.random_vorticity(eq.grid, [0, 1], peak_wavenumber=4, energy=0.5)
    E = M.energy_spectrum(w.numpy())
    assert E.shape == (2, 15)
    np.testing.assert_allclose(E.sum(-1), eq.energy(w).numpy(), rtol=1e-10)  # energy below the corners
    np.testing.assert_allclose(M.energy(w.numpy()), eq.energy(w).numpy(), rtol=1e-10)
    assert M.spectrum_error(E[0], E[0]) == 0
    assert M.spectrum_error(10 * E[0], E[0]) == pytest.approx(1.0)
    u = solvers.random_velocity(solvers.Burgers1D(32, viscosity=1e-3).grid, [0], peak_wavenumber=4, energy=0.5)
    np.testing.assert_allclose(M.energy_spectrum(u.numpy()).sum(-1), M.energy(u.numpy()), rtol=1e-6)


def test_hellinger_pearson_decorrelation():
    rng = np.random.default_rng(0)
    a = rng.normal(size=10000)
    edges = M.pdf_edges(a)
    assert M.hellinger(M.histogram(a, edges), M.histogram(a, edges)) == 0
    assert M.hellinger(M.histogram(a, edges), M.histogram(a + 100, edges)) == pytest.approx(1.0)
    assert 0 < M.hellinger(M.histogram(a, edges), M.histogram(1.5 * a, edges)) < 1
    f = rng.normal(size=(3, 8, 8))
    np.testing.assert_allclose(M.pearson(f, f), 1.0)
    np.testing.assert_allclose(M.pearson(f, -f), -1.0)
    corr = np.array([[1.0, 0.99, 0.9, 0.99], [1.0, 0.99, 0.98, 0.97], [1.0, np.nan, np.nan, np.nan]])
    t_d, censored = M.decorrelation_times(corr, np.array([0.0, 1.0, 2.0, 3.0]))
    np.testing.assert_allclose(t_d, [2.0, 3.0, 1.0])
    np.testing.assert_array_equal(censored, [False, True, False])
    assert M.similarity(0.5, 1.0) == 0.5 and M.similarity(0.0, 1.0) == 1.0 and M.similarity(1.0, 1.0) == 0.0
    assert M.similarity(1.0, None) is None


def test_match_times():
    i_run, i_ref = match_times(np.array([0.4, 0.5, 0.6, 0.7, 0.8]), np.array([0.4, 0.5000000001, 0.6, 0.7]))
    np.testing.assert_array_equal(i_run, [0, 1, 2, 3])
    np.testing.assert_array_equal(i_ref, [0, 1, 2, 3])


# ------------------------------------------------------------------------------ evaluate
@pytest.fixture(scope="module")
def runs(tiny_dataset, tmp_path_factory):
    """LES files: none, smagorinsky, a perfect copy of the reference, a damaged one, a blown-up one."""
    from conftest import tiny_config_dict

    raw = tiny_config_dict()
    raw["run"]["time"] = 0.5  # longer than the reference's span (0.3): evaluated on the overlap
    config = config_from_dict(raw)
    folder = tmp_path_factory.mktemp("les")
    paths = {m: run_les(config, m, tiny_dataset, folder / f"{m}.nc", show_progress=False)
             for m in ("none", "smagorinsky")}
    ref = xr.open_dataset(tiny_dataset)
    base = xr.open_dataset(paths["none"]).load()
    ids = [int(i) for i in base["trajectory"].values]
    times = base["time"].values[:4]  # the reference's times
    truth = ref["omega"].sel(trajectory=ids).values
    rng = np.random.default_rng(1)

    def variant(name, field):
        ds = base.isel(time=slice(0, 4)).copy(deep=True)
        ds["omega"].values[:] = field.astype(np.float32)
        ds.attrs["model"] = name
        return write_atomic(ds, folder / f"{name}.nc")

    paths["perfect"] = variant("perfect", truth)
    noise = truth + 0.6 * truth.std() * rng.normal(size=truth.shape)
    noise[:, 0] = truth[:, 0]
    paths["damaged"] = variant("damaged", noise)
    broken = truth.copy()
    broken[:, 2:] = np.nan
    paths["broken"] = variant("broken", broken)
    ref.close()
    base.close()
    assert np.allclose(times, ref["time"].values)
    return paths


def test_evaluate_identical_run_is_perfect_and_damage_ranks_worse(tiny_dataset, runs, tmp_path):
    order = ["none", "smagorinsky", "perfect", "damaged"]
    metrics = evaluate(tiny_dataset, [runs[m] for m in order], tmp_path / "report")
    assert list(metrics) == order
    perfect, damaged, none = metrics["perfect"], metrics["damaged"], metrics["none"]
    assert perfect["spectrum_error"] == pytest.approx(0.0, abs=1e-12)
    assert perfect["pdf_distance"] == pytest.approx(0.0, abs=1e-12)
    assert perfect["blowups"] == 0
    window = perfect["window"][1] - perfect["window"][0]
    assert perfect["decorrelation_time"] == pytest.approx(window)  # never decorrelates (censored)
    assert perfect["similarity"]["spectrum_error"] == pytest.approx(1.0)
    assert perfect["similarity"]["pdf_distance"] == pytest.approx(1.0)
    assert none["similarity"]["spectrum_error"] == 0.0
    assert damaged["spectrum_error"] > perfect["spectrum_error"]
    assert damaged["pdf_distance"] > perfect["pdf_distance"]
    assert damaged["decorrelation_time"] < perfect["decorrelation_time"]
    # the LES is longer than the reference: only the overlap is evaluated
    assert len(none["time"]) == 4 and none["window"][1] == pytest.approx(perfect["window"][1])
    assert len(none["energy"]) == len(none["enstrophy"]) == 4
    assert none["cost_ratio"] > 0
    # files
    report = tmp_path / "report"
    stored = json.loads((report / "metrics.json").read_text())
    for name in order:
        assert {"spectrum_error", "pdf_distance", "decorrelation_time", "blowups", "similarity",
                "energy", "enstrophy", "cost_ratio"} <= set(stored[name])
    assert (report / "metrics.csv").read_text().splitlines()[0].startswith("model,spectrum_error,pdf_distance")
    for fig in FIGURES:
        assert (report / fig).stat().st_size > 1000
    text = (report / "report.md").read_text()
    assert "| perfect |" in text and "spectra.png" in text


def test_evaluate_without_none_and_errors(tiny_dataset, runs, tmp_path):
    metrics = evaluate(tiny_dataset, [runs["smagorinsky"]], tmp_path / "r", figures=False)
    assert metrics["smagorinsky"]["similarity"] is None
    with pytest.raises(ClosureError, match="not found"):
        evaluate(tiny_dataset, [tmp_path / "missing.nc"], tmp_path / "r")
    with pytest.raises(ClosureError, match="missing attribute 'model'"):
        evaluate(tiny_dataset, [tiny_dataset], tmp_path / "r")


def test_duplicate_model_names_are_kept_apart(tiny_dataset, runs, tmp_path):
    metrics = evaluate(tiny_dataset, [runs["none"], runs["none"]], tmp_path / "r", figures=False)
    assert len(metrics) == 2 and "none" in metrics


def test_an_early_blowup_does_not_score_well_and_every_run_shares_one_window(tiny_dataset, runs, tmp_path):
    """A run that blows up is scored on the same snapshots as the others and reported apart.

    Scoring each run on its own finite snapshots rewards an early blow-up: 'broken' equals
    the reference until it becomes NaN, so on its own window it is perfect.
    """
    order = ["none", "damaged", "broken"]
    metrics = evaluate(tiny_dataset, [runs[m] for m in order], tmp_path / "r", figures=False)
    broken, damaged, none = metrics["broken"], metrics["damaged"], metrics["none"]
    assert broken["blowups"] == len(broken["trajectories"])
    # one window for all: the snapshots before the first non-finite one of any run
    assert damaged["window"] == broken["window"] == none["window"]
    assert damaged["window"][1] < damaged["run_window"][1]
    assert len(damaged["time"]) == 2
    assert damaged["window_limited_by"] == ["broken"]
    # a blown-up run is never on the front, however well it scored before blowing up
    assert broken["front"]["none"]["blew_up"] and not broken["front"]["none"]["on_front"]
    assert damaged["front"]["none"]["on_front"] or damaged["dominated_by"]
    # without the broken run the window is the whole reference span again
    alone = evaluate(tiny_dataset, [runs["none"], runs["damaged"]], tmp_path / "r2", figures=False)
    assert alone["damaged"]["window"] == alone["damaged"]["run_window"]
    assert len(alone["damaged"]["time"]) == 4 and alone["damaged"]["window_limited_by"] == []


def test_spectrum_error_is_split_at_the_dealiasing_cutoff(tiny_dataset, runs, tmp_path):
    """k <= n/3 and n/3 < k < n/2: the full error is their shell-count-weighted mean."""
    from closure.evaluation import metrics as M

    metrics = evaluate(tiny_dataset, [runs["none"], runs["damaged"]], tmp_path / "r", figures=False)
    n = 16
    k = M.wavenumbers(n)
    low, high = (k <= n // 3).sum(), (k > n // 3).sum()
    assert low == 5 and high == 2
    for r in metrics.values():
        whole = (low * r["spectrum_error_low_k"] + high * r["spectrum_error_high_k"]) / (low + high)
        assert r["spectrum_error"] == pytest.approx(whole, rel=1e-12)
    d = metrics["damaged"]
    assert d["spectrum_error_high_k"] > 0 and d["spectrum_error_low_k"] > 0
    # a change of the small scales only shows in the high band
    from closure.evaluation.compare import compare

    rng = np.random.default_rng(0)
    ref = rng.normal(size=(2, 3, n, n))
    hat = np.fft.fft2(ref)
    m = np.fft.fftfreq(n, 1.0 / n)
    shell = np.rint(np.hypot(*np.meshgrid(m, m, indexing="ij")))
    field = np.real(np.fft.ifft2(np.where(shell > n // 3, 2.0 * hat, hat)))
    out = compare(field, ref, np.arange(3) * 0.1, 2, 2 * np.pi, M.pdf_edges(ref))
    assert out["spectrum_error_low_k"] == pytest.approx(0.0, abs=1e-12)
    assert out["spectrum_error_high_k"] == pytest.approx(np.log10(4.0), rel=1e-9)
