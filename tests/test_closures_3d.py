"""3D closures: Smagorinsky and dynamic Smagorinsky on the velocity, the 3D convolutional
mean-field closure (vector output, channels as widths); checks against hand computations."""

from __future__ import annotations

import math

import pytest
import torch

import solvers
from closure.data.filters import Filter, prolong_hat
from closure.data.sgs import filtered_field_and_sgs
from closure.les.baselines import DealiasResidual, classical_closure, make_closure
from closure.les.baselines_3d import DynamicSmagorinsky3D, Leith3D, Smagorinsky3D
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


def test_leith_3d_matches_a_hand_computation():
    """u = (A sin(y), 0, 0): omega = (0, 0, -A cos y), |grad omega| = A |sin y|,
    c_x = d_y(2 nu_e S_xy) = (C_L D)^3 A^2 d_y(|sin y| cos y)."""
    eq = les(16)
    x, y, z = eq.grid.mesh()
    A, cl = 0.7, 0.25
    u = torch.stack([A * torch.sin(y), torch.zeros_like(y), torch.zeros_like(y)])[None]
    model = classical_closure("leith", eq, leith_cl=cl)
    assert isinstance(model, Leith3D)
    D = 2 * math.pi / 16
    assert torch.allclose(model.eddy_viscosity(u)[0], (cl * D) ** 3 * A * torch.sin(y).abs(), atol=1e-12)
    flux = (cl * D) ** 3 * A ** 2 * torch.sin(y).abs() * torch.cos(y)
    c = model(u)
    assert torch.allclose(c[0, 0], eq.grid.derivative(flux[None], axis="y")[0], atol=1e-12)
    assert c[0, 1:].abs().max() < 1e-12


def test_dealias_residual_3d_is_the_exact_sgs_of_a_field_the_les_grid_resolves():
    """A DNS velocity with modes |m| < n_les / 2 only, spectral filter: sgs = P N(u) - N_les(P u)
    is exactly what the LES's 2/3 rule discards of the resolved advection."""
    coarse, dns = les(12), solvers.NavierStokes3D(36, viscosity=1e-3, dtype=F64)
    u_les = velocity(coarse, seeds=(4, 5))
    u = dns.grid.to_physical(prolong_hat(coarse.grid.to_spectral(u_les), coarse.grid, dns.grid))
    field, sgs = filtered_field_and_sgs(u, dns, coarse, Filter("spectral", 12, coarse.grid.length))
    model = make_closure("dealias_residual", coarse)
    assert isinstance(model, DealiasResidual)
    assert float(sgs.abs().max()) > 1e-3
    torch.testing.assert_close(model(field), sgs, rtol=1e-9, atol=1e-10)
    both = make_closure("smagorinsky+dealias_residual", coarse)(field)
    torch.testing.assert_close(both, sgs + Smagorinsky3D.for_equation(coarse)(field))


@pytest.mark.parametrize("name", ["smagorinsky", "leith", "dynamic_smagorinsky"])
def test_3d_baselines_drain_energy_and_keep_shape(name):
    eq = les()
    # a developed field (a random-phase field has no net cascade: the dynamic coefficient is ~0 there)
    u = eq.simulate(velocity(eq, seeds=(1, 2)), dt=0.02, steps=25)
    if name != "dynamic_smagorinsky":
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
