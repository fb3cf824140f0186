"""3D closures: Smagorinsky and dynamic Smagorinsky on the velocity, the 3D convolutional
mean-field closure (vector output, channels as widths); checks against hand computations."""

from __future__ import annotations

import math

import pytest
import torch

import solvers
from closure.errors import ClosureError
from closure.les.baselines import classical_closure
from closure.les.baselines_3d import DynamicSmagorinsky3D, Smagorinsky3D
from closure.nn import build_model, param_groups

F64 = torch.float64


def les(n=12):
    return solvers.NavierStokes3D(n, viscosity=1e-3, dtype=F64)


def velocity(eq, seeds=(1,)):
    return solvers.random_solenoidal_velocity(eq.grid, list(seeds), peak_wavenumber=3, energy=0.5)


def test_smagorinsky_3d_matches_a_finite_difference_free_hand_computation():
    """A linear shear u = (A sin(y), 0, 0): S_xy = A cos(y) / 2, |S| = A |cos y|,
    c_x = d_y(2 nu_e S_xy) = (Cs D)^2 A^2 d_y(|cos y| cos y)."""
    eq = les(16)
    x, y, z = eq.grid.mesh()
    A, cs = 0.7, 0.2
    u = torch.stack([A * torch.sin(y), torch.zeros_like(y), torch.zeros_like(y)])[None]
    model = Smagorinsky3D.for_equation(eq, cs=cs)
    D = 2 * math.pi / 16
    nu = model.eddy_viscosity(u)
    assert torch.allclose(nu[0], (cs * D) ** 2 * A * torch.cos(y).abs(), atol=1e-12)
    c = model(u)
    flux = (cs * D) ** 2 * A ** 2 * torch.cos(y).abs() * torch.cos(y)
    expected = eq.grid.derivative(flux[None], axis="y")[0]
    assert torch.allclose(c[0, 0], expected, atol=1e-12) and c[0, 1:].abs().max() < 1e-12


@pytest.mark.parametrize("name", ["smagorinsky", "dynamic_smagorinsky"])
def test_3d_baselines_drain_energy_and_keep_shape(name):
    eq = les()
    # a developed field (a random-phase field has no net cascade: the dynamic coefficient is ~0 there)
    u = eq.simulate(velocity(eq, seeds=(1, 2)), dt=0.02, steps=25)
    if name == "smagorinsky":
        model = classical_closure(name, eq)
    else:  # Gaussian-filtered data (the dynamic model's widths follow the dataset's filter)
        model = DynamicSmagorinsky3D.for_equation(eq, filter_type="gaussian", filter_width=2.0)
    c = model(u)
    assert c.shape == u.shape
    drain = (u * c).sum(1).mean(dim=(-3, -2, -1))
    assert (drain < 0).all(), drain
    # through the LES: energy falls faster than without the closure
    e0 = eq.energy(eq.simulate(u, dt=0.02, steps=5))
    e1 = eq.energy(eq.simulate(u, dt=0.02, steps=5, closure=model))
    assert (e1 < e0).all()


def test_dynamic_smagorinsky_3d_coefficient_is_the_least_squares_fit():
    eq = les()
    u = eq.simulate(velocity(eq, seeds=(3,)), dt=0.02, steps=25)
    model = DynamicSmagorinsky3D.for_equation(eq, filter_type="gaussian", filter_width=2.0)
    L, M, _, _ = model.germano(u)
    c = model.coefficient(u)
    # c minimises <|L - c M|^2>: the residual is orthogonal to M
    assert abs(float(((L - c.reshape(-1, 1, 1, 1, 1) * M) * M).mean())) < 1e-12 * float((M * M).mean())
    assert 0 < float(c) < 0.2
    assert model.ratio == pytest.approx(math.sqrt(2))


def test_3d_rejects_2d_only_baselines():
    with pytest.raises(ClosureError, match="not available in 3D"):
        classical_closure("leith", les())


def test_3d_cnn_closure_vector_output_rates_and_normalization():
    eq = les(8)
    u = velocity(eq, seeds=(1, 2))
    model = build_model({"type": "cnn", "stencil": 3, "hidden": [8, 6], "gammas": [1.0, 0.5],
                         "features": ["gradient"]}, 3, dtype=F64)
    assert model.n_channels == 12 and model.net.out_channels == 3
    model.fit_normalization(u, 2 * u)
    out = model(u)
    assert out.shape == u.shape and torch.isfinite(out).all()
    # gradient channels: d_j u_i with i-major order (channel 3 + 3 i + j)
    ch = model.channels(u)
    assert torch.allclose(ch[:, 3 + 3 * 0 + 1], eq.grid.derivative(u[:, 0], axis="y"), atol=1e-12)
    names = [g["name"] for g in param_groups(model, 1.0)]
    assert "W1" in names and "C" in names
    # equivariance of periodic convolutions under grid translations
    shifted = torch.roll(u, shifts=(1, 2, 3), dims=(-3, -2, -1))
    assert torch.allclose(model(shifted), torch.roll(out, shifts=(1, 2, 3), dims=(-3, -2, -1)), atol=1e-12)
    with pytest.raises(ValueError, match=r"\(batch, 3, nz, ny, nx\)"):
        model(u[:, 0])
