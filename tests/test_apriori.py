"""A-priori metrics (closure.training.apriori) on exact cases and on a streamed dataset."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from closure.data import dataset as cds
from closure.les.baselines import Smagorinsky
from closure.training.apriori import (AprioriAccumulator, correlation, evaluate, hellinger, probabilities, r2,
                                      relative_l2, transfer_fields)
from closure.config import config_from_dict

from test_streaming import tiny_raw_config, write_tiny_dataset


def test_perfect_prediction():
    torch.manual_seed(0)
    s = torch.randn(4, 16, 16)
    assert correlation(s, s) == pytest.approx(1.0)
    assert r2(s, s) == pytest.approx(1.0)
    assert relative_l2(s, s) == 0.0


def test_scaled_and_negated_predictions():
    x = torch.linspace(0, 2 * math.pi, 64, dtype=torch.float64)[:-1]
    s = torch.sin(x)[None]  # mean zero
    assert correlation(2 * s, s) == pytest.approx(1.0)
    assert r2(2 * s, s) == pytest.approx(0.0, abs=1e-12)  # SSE = sum s^2 = SST
    assert relative_l2(2 * s, s) == pytest.approx(1.0)
    assert correlation(-s, s) == pytest.approx(-1.0)
    assert r2(torch.zeros_like(s), s) == pytest.approx(0.0, abs=1e-12)


def test_known_transfers_1d_and_2d():
    n = 32
    x = torch.arange(n, dtype=torch.float64) * (2 * math.pi / n)
    u = torch.sin(x)[None]
    t1 = transfer_fields(u, -u)
    assert t1["energy"].mean().item() == pytest.approx(-0.5)
    # Taylor-Green: omega = 2 sin x sin y has psi = sin x sin y (omega = -lap psi)
    y, xx = torch.meshgrid(x, x, indexing="ij")
    omega = (2 * torch.sin(xx) * torch.sin(y))[None]
    t2 = transfer_fields(omega, -omega)
    assert t2["energy"].mean().item() == pytest.approx(-0.5)  # -<2 sin^2 x sin^2 y> = -1/2
    assert t2["enstrophy"].mean().item() == pytest.approx(-1.0)  # -<4 sin^2 x sin^2 y> = -1


def test_accumulator_streams_exactly_and_counts_backscatter():
    torch.manual_seed(1)
    field = torch.randn(6, 16, 16, dtype=torch.float64)
    true = torch.randn(6, 16, 16, dtype=torch.float64)
    pred = 0.7 * true + 0.3 * torch.randn(6, 16, 16, dtype=torch.float64)
    edges = np.linspace(-5, 5, 21)
    acc = AprioriAccumulator(["model", "exact"], edges)
    for i in range(0, 6, 2):  # three blocks
        acc.update(field[i:i + 2], true[i:i + 2], {"model": pred[i:i + 2], "exact": true[i:i + 2]})
    res = acc.result()
    assert res["model"]["correlation"] == pytest.approx(correlation(pred, true), rel=1e-10)
    assert res["model"]["r2"] == pytest.approx(r2(pred, true), rel=1e-10)
    assert res["model"]["relative_l2"] == pytest.approx(relative_l2(pred, true), rel=1e-10)
    assert res["exact"]["correlation"] == pytest.approx(1.0)
    assert res["exact"]["r2"] == pytest.approx(1.0)
    assert res["exact"]["pdf_hellinger"] == pytest.approx(0.0, abs=1e-7)
    tr = transfer_fields(field, pred)
    assert res["model"]["enstrophy_transfer"] == pytest.approx(tr["enstrophy"].mean().item(), rel=1e-10)
    assert res["model"]["energy_backscatter"] == pytest.approx((tr["energy"] > 0).double().mean().item())
    assert res["truth"]["enstrophy_backscatter"] == pytest.approx((field * true > 0).double().mean().item())
    assert sum(res["truth"]["pdf"]) + res["truth"]["pdf_outside"] == true.numel()


def test_hellinger_bounds():
    assert hellinger(probabilities([1, 2, 3]), probabilities([2, 4, 6])) == pytest.approx(0.0, abs=1e-12)
    assert hellinger(probabilities([1, 0]), probabilities([0, 1])) == pytest.approx(1.0)
    assert math.isnan(hellinger([0.5, float("nan")], [0.5, 0.5]))


@pytest.mark.parametrize("ndim", [1, 2])
def test_smagorinsky_dissipates(ndim):
    raw = tiny_raw_config("navier_stokes_2d" if ndim == 2 else "burgers_1d")
    config = config_from_dict(raw)
    smag = Smagorinsky(config.les.resolution, config.system.length, ndim=ndim)
    torch.manual_seed(0)
    n = config.les.resolution
    state = torch.randn((2,) + (n,) * ndim, dtype=torch.float64)
    out = smag(state)
    assert out.shape == state.shape
    key = "enstrophy" if ndim == 2 else "energy"
    assert transfer_fields(state, out)[key].mean() < 0  # an eddy viscosity drains the resolved scales


def test_evaluate_streams_a_dataset(tmp_path):
    raw = tiny_raw_config(samples=6, trajectories=2)
    path = write_tiny_dataset(tmp_path / "d.nc", raw)
    config = config_from_dict(raw)
    ds = cds.open_dataset(path)
    from closure.les.baselines import DealiasResidual

    residual = DealiasResidual(16, config.system.length, 2)
    res = evaluate(ds, [1], {"smagorinsky": Smagorinsky(16, config.system.length), "zero": lambda f: 0 * f,
                             "dealias_residual": residual}, config, progress_enabled=False)
    f = torch.from_numpy(ds.omega.isel(trajectory=[1]).values).double().reshape(-1, 16, 16)
    s = torch.from_numpy(ds.sgs.isel(trajectory=[1]).values).double().reshape(-1, 16, 16)
    assert res["points"] == s.numel()
    assert res["truth"]["enstrophy_transfer"] == pytest.approx(transfer_fields(f, s)["enstrophy"].mean().item(),
                                                               rel=1e-9)
    assert res["zero"]["r2"] == pytest.approx(1 - (s ** 2).sum().item() / ((s - s.mean()) ** 2).sum().item())
    # the streamed metrics are those of the whole arrays
    smag = Smagorinsky(16, config.system.length)(f)
    assert res["smagorinsky"]["correlation"] == pytest.approx(correlation(smag, s), rel=1e-9)
    assert res["smagorinsky"]["r2"] == pytest.approx(r2(smag, s), rel=1e-9)
    # a closure that knows most of the target scores high: this coarse dataset's SGS term is mostly the
    # advection the LES's 2/3 rule discards
    assert res["dealias_residual"]["correlation"] > 0.6, res["dealias_residual"]
    for name in ("smagorinsky", "dealias_residual"):  # an affine refit reaches corr^2: R^2 <= corr^2
        assert res[name]["r2"] <= res[name]["correlation"] ** 2 + 1e-12
    assert res["truth"]["pdf_outside"] == 0
