"""Exact solutions and invariants of the pseudo-spectral solvers (float64).

References: Taylor-Green / single-shell fields; the Kolmogorov laminar state
u = A sin(k y) / (nu k^2 + drag); the periodic Cole-Hopf solution of Burgers;
Basdevant et al. (1986) shock benchmark.
"""

import math

import pytest
import torch

import solvers
from solvers.spectral import SpectralGrid

F64 = torch.float64


def ns(n=32, nu=0.01, drag=0.0, forcing=None, length=2 * math.pi):
    return solvers.NavierStokes2D(n, viscosity=nu, drag=drag, forcing=forcing, length=length, dtype=F64)


# ----------------------------------------------------------------------------- 2D
@pytest.mark.parametrize("field", ["taylor_green", "shell25"])
@pytest.mark.parametrize("method", ["etdrk4", "cnrk4"])
def test_single_shell_fields_decay_exactly(field, method):
    nu, drag, t_end = 0.05, 0.1, 1.0
    eq = ns(32, nu, drag)
    x, y = eq.grid.mesh()
    if field == "taylor_green":
        w0, k2 = 2 * torch.sin(x) * torch.sin(y), 2.0
    else:  # |k|^2 = 25 for (3, 4), (5, 0), (0, 5): one shell, several directions
        w0, k2 = torch.cos(3 * x + 4 * y) + 0.7 * torch.sin(5 * y) - 0.3 * torch.cos(5 * x + 0.2), 25.0
    w0 = w0[None]
    assert eq.nonlinear(w0).abs().max() < 1e-12 * w0.abs().max()
    w = eq.simulate(w0, dt=0.01, steps=100, method=method)
    expected = w0 * math.exp(-(nu * k2 + drag) * t_end)
    rel = (w - expected).abs().max() / expected.abs().max()
    if method == "etdrk4":
        assert rel < 1e-10
    else:  # Crank-Nicolson treats L to second order only
        assert rel < 1e-4


def test_taylor_green_decay_rate_2nu_plus_drag():
    nu, drag = 0.02, 0.3
    eq = ns(16, nu, drag)
    x, y = eq.grid.mesh()
    w0 = (2 * torch.sin(x) * torch.sin(y))[None]
    w = eq.simulate(w0, dt=0.05, steps=40)
    ratio = (w / w0)[0, 3, 5].item()
    assert abs(ratio - math.exp(-(2 * nu + drag) * 2.0)) < 1e-12


def test_kolmogorov_laminar_state_is_steady():
    nu, drag, k, amp = 1e-3, 0.1, 4, 1.0
    eq = ns(64, nu, drag, solvers.Kolmogorov(wavenumber=k, amplitude=amp))
    _, y = eq.grid.mesh()
    U = amp / (nu * k ** 2 + drag)
    omega = (-U * k * torch.cos(k * y))[None]  # vorticity of (U sin(ky), 0)
    assert eq.tendency(omega).abs().max() < 1e-10
    u, v = eq.velocity(omega)
    assert torch.allclose(u[0], U * torch.sin(k * y), atol=1e-12) and v.abs().max() < 1e-12


def test_kolmogorov_laminar_state_other_length():
    nu, drag, length = 1e-2, 0.05, 3.0
    eq = ns(32, nu, drag, solvers.Kolmogorov(wavenumber=2, amplitude=0.5), length=length)
    _, y = eq.grid.mesh()
    k = 2 * math.pi * 2 / length
    U = 0.5 / (nu * k ** 2 + drag)
    assert eq.tendency((-U * k * torch.cos(k * y))[None]).abs().max() < 1e-10


def test_vorticity_velocity_conventions():
    eq = ns(32)
    g = eq.grid
    x, y = g.mesh()
    # u = sin(y) cos(2x)?  use a streamfunction psi: u = dpsi/dy, v = -dpsi/dx, omega = -lap(psi)
    psi = torch.sin(2 * x) * torch.cos(3 * y)
    omega = 13 * psi
    u, v = eq.velocity(omega[None])
    assert torch.allclose(u[0], -3 * torch.sin(2 * x) * torch.sin(3 * y), atol=1e-12)
    assert torch.allclose(v[0], -2 * torch.cos(2 * x) * torch.cos(3 * y), atol=1e-12)
    # omega = dv/dx - du/dy
    curl = g.derivative(v, 1, "x") - g.derivative(u, 1, "y")
    assert torch.allclose(curl[0], omega, atol=1e-11)


def test_advection_matches_direct_form():
    """Basdevant's 4-FFT form equals -P[u . grad(omega)] computed directly (n not a multiple of 3)."""
    eq = ns(64)
    g = eq.grid
    w = solvers.random_vorticity(g, seeds=[3, 4], peak_wavenumber=5)
    u, v = g.velocity(w)
    direct = -g.to_physical(g.dealias * g.to_spectral(u * g.derivative(w, 1, "x") + v * g.derivative(w, 1, "y")))
    assert (eq.nonlinear(w) - direct).abs().max() < 1e-11 * direct.abs().max()


# ----------------------------------------------------------------------------- Burgers
def cole_hopf(x, t, nu, a=2.0, b=(1.0, 0.4, 0.1)):
    """u = -2 nu phi_x / phi, phi = a + sum b_n exp(-nu n^2 t) cos(n x)."""
    phi = torch.full_like(x, a)
    phi_x = torch.zeros_like(x)
    for n, bn in enumerate(b, start=1):
        c = bn * math.exp(-nu * n * n * t)
        phi = phi + c * torch.cos(n * x)
        phi_x = phi_x - c * n * torch.sin(n * x)
    return -2 * nu * phi_x / phi


def test_burgers_cole_hopf():
    nu, n = 0.1, 256
    eq = solvers.Burgers1D(n, viscosity=nu, dtype=F64)
    (x,) = eq.grid.mesh()
    u0 = cole_hopf(x, 0.0, nu)[None]
    u1 = eq.simulate(u0, dt=1e-3, steps=1000)
    assert (u1[0] - cole_hopf(x, 1.0, nu)).abs().max() < 1e-9


def test_basdevant_shock_gradient():
    """u0 = -sin(pi x) on [-1, 1], nu = 1/(100 pi): u_x(0, 1.6037/pi) = -152.00516."""
    n, nu = 4096, 1 / (100 * math.pi)
    eq = solvers.Burgers1D(n, viscosity=nu, length=2.0, dtype=F64)
    (x,) = eq.grid.mesh()  # x' = x + 1 in [0, 2): u0 = -sin(pi (x' - 1)) = sin(pi x')
    u0 = torch.sin(math.pi * x)[None]
    t_end = 1.6037 / math.pi
    steps = 2000
    u = eq.simulate(u0, dt=t_end / steps, steps=steps)
    ux = eq.grid.derivative(u, 1, "x")[0, n // 2].item()
    assert abs(ux / -152.00516 - 1) < 1e-3


# ----------------------------------------------------------------------------- invariants
def inviscid_drift(eq, w0, dt, t_end, quantities):
    w = eq.simulate(w0, dt=dt, steps=int(round(t_end / dt)))
    return [((q(w) - q(w0)) / q(w0)).abs().max().item() for q in quantities]


def test_inviscid_2d_energy_and_enstrophy_drift_at_fourth_order():
    eq = ns(32, nu=0.0)
    w0 = solvers.random_vorticity(eq.grid, seeds=[1], peak_wavenumber=3, energy=0.5)
    qs = [eq.energy, eq.enstrophy]
    coarse = inviscid_drift(eq, w0, 0.04, 2.0, qs)
    fine = inviscid_drift(eq, w0, 0.02, 2.0, qs)
    for c, f in zip(coarse, fine):
        assert c > 1e-12, "drift must be measurable for the order check"
        assert math.log2(c / f) > 3.5


def test_inviscid_burgers_energy_drift_at_fourth_order():
    eq = solvers.Burgers1D(64, viscosity=0.0, dtype=F64)
    u0 = solvers.random_velocity(eq.grid, seeds=[2], peak_wavenumber=3, energy=0.05)
    coarse, = inviscid_drift(eq, u0, 0.04, 2.0, [eq.energy])
    fine, = inviscid_drift(eq, u0, 0.02, 2.0, [eq.energy])
    assert coarse > 1e-13 and math.log2(coarse / fine) > 3.5


def test_truncated_nonlinear_term_conserves_exactly():
    """The dealiased N is energy- and enstrophy-neutral for a truncated field (continuous time)."""
    eq = ns(32, nu=0.0)
    g = eq.grid
    w = g.to_physical(g.to_spectral(solvers.random_vorticity(g, seeds=[5])) * g.dealias)
    N = eq.nonlinear(w)
    psi = eq.streamfunction(w)
    assert abs((w * N).mean().item()) < 1e-12 * (w * w).mean().item() * N.abs().max().item()
    assert abs((psi * N).mean().item()) < 1e-12 * (psi.abs().max() * N.abs().max()).item()


def test_viscous_energy_budget():
    """dE/dt = -2 nu Z - 2 drag E  (Z = enstrophy <omega^2>/2) without forcing."""
    nu, drag = 0.01, 0.2
    eq = ns(64, nu, drag)
    w = solvers.random_vorticity(eq.grid, seeds=[7], peak_wavenumber=4)
    dt = 1e-3
    traj = eq.simulate(w, dt=dt, steps=2, save_every=1)
    E = eq.energy(traj[0])
    dEdt = (E[2] - E[0]) / (2 * dt)
    expected = -2 * nu * eq.enstrophy(traj[0, 1]) - 2 * drag * E[1]
    assert abs(dEdt / expected - 1) < 1e-5


# ----------------------------------------------------------------------------- spectral toolkit
def test_derivatives_and_poisson_are_exact_for_trig_polynomials():
    g = SpectralGrid(32, length=3.0, ndim=2, dtype=F64)
    x, y = g.mesh()
    k = 2 * math.pi / 3.0
    f = torch.sin(2 * k * x) * torch.cos(3 * k * y)
    assert torch.allclose(g.derivative(f, 1, "x"), 2 * k * torch.cos(2 * k * x) * torch.cos(3 * k * y), atol=1e-10)
    assert torch.allclose(g.derivative(f, 2, "y"), -9 * k * k * f, atol=1e-9)
    lap = g.laplacian(f)
    assert torch.allclose(lap, -13 * k * k * f, atol=1e-9)
    assert torch.allclose(g.to_physical(g.inverse_laplacian_hat(g.to_spectral(lap))), f, atol=1e-12)


def test_dealias_mask_keeps_two_thirds():
    g = SpectralGrid(48, ndim=2)  # 3 divides 48: K = 15 (3 K < n), not 48 // 3
    m = g.dealias
    assert g.dealias_cutoff == 15
    assert m[15, 15] == 1 and m[15, 16] == 0 and m[16, 0] == 0
    assert m[48 - 15, 0] == 1 and m[48 - 16, 0] == 0
    assert SpectralGrid(64, ndim=1).dealias.sum() == 64 // 3 + 1
