"""Three-dimensional Navier-Stokes: exact solutions, invariants, orders, devices (float64, small grids).

References: the Arnold-Beltrami-Childress flow (curl u = k u, so u x omega = 0 and
the field decays as exp(-nu k^2 t)); a z-independent field is 2D Navier-Stokes;
the semi-discrete energy budget of the rotational form with the 2/3 rule.
"""

import math

import pytest
import torch

import solvers

F64 = torch.float64
cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def ns3d(n=16, nu=0.05, drag=0.0, forcing=None, length=2 * math.pi, dtype=F64, device="cpu"):
    return solvers.NavierStokes3D(n, viscosity=nu, drag=drag, forcing=forcing, length=length, dtype=dtype,
                                  device=device)


def smooth_velocity(eq, seeds=(3,), energy=0.5):
    return solvers.random_solenoidal_velocity(eq.grid, list(seeds), peak_wavenumber=2, energy=energy)


@pytest.mark.parametrize("method", ["etdrk4", "cnrk4"])
@pytest.mark.parametrize("wavenumber,length", [(1, 2 * math.pi), (2, 3.0)])
def test_abc_flow_decays_exactly(method, wavenumber, length):
    nu, drag = 0.05, 0.1
    eq = ns3d(16, nu, drag, length=length)
    u0 = solvers.abc_flow(eq.grid, 1.0, 0.7, 0.4, wavenumber=wavenumber)
    k = 2 * math.pi * wavenumber / length
    assert torch.allclose(eq.vorticity(u0), k * u0, atol=1e-12)
    assert eq.nonlinear(u0).abs().max() < 1e-12
    u = eq.simulate(u0, dt=0.05, steps=20, method=method)
    expected = u0 * math.exp(-(nu * k ** 2 + drag) * 1.0)
    rel = ((u - expected).abs().max() / expected.abs().max()).item()
    assert rel < (1e-12 if method == "etdrk4" else 1e-4), rel


def test_linear_forcing_is_exact_on_the_abc_flow():
    nu, A = 0.05, 0.3
    eq = ns3d(12, nu, forcing=solvers.LinearForcing(A))
    u0 = solvers.abc_flow(eq.grid)
    u = eq.simulate(u0, dt=0.1, steps=10)
    assert torch.allclose(u, u0 * math.exp(A - nu), atol=1e-12, rtol=0)
    # band-limited: modes with |m| = 1 are inside a band of radius 1.5, outside a band of radius 0.5
    inside = ns3d(12, nu, forcing=solvers.LinearForcing(A, max_wavenumber=1.5)).simulate(u0, dt=0.1, steps=10)
    outside = ns3d(12, nu, forcing=solvers.LinearForcing(A, max_wavenumber=0.5)).simulate(u0, dt=0.1, steps=10)
    assert torch.allclose(inside, u, atol=1e-12, rtol=0)
    assert torch.allclose(outside, u0 * math.exp(-nu), atol=1e-12, rtol=0)


@pytest.mark.parametrize("method", ["etdrk4", "cnrk4"])
def test_z_independent_flow_reproduces_navier_stokes_2d(method):
    n, nu, drag = 16, 0.02, 0.1
    eq2 = solvers.NavierStokes2D(n, viscosity=nu, drag=drag, dtype=F64)
    eq3 = ns3d(n, nu, drag)
    omega0 = solvers.random_vorticity(eq2.grid, [5], peak_wavenumber=3, energy=0.5)
    u, v = eq2.velocity(omega0)
    u3 = torch.stack([u, v, torch.zeros_like(u)], dim=1)[:, :, None].expand(1, 3, n, n, n).contiguous()
    omega2 = eq2.simulate(omega0, dt=0.02, steps=25, method=method)
    out3 = eq3.simulate(u3, dt=0.02, steps=25, method=method)
    vort = eq3.vorticity(out3)
    assert omega2.abs().max() > 0.1
    assert (vort[:, 2] - omega2[:, None]).abs().max() < 1e-12 * omega2.abs().max() * 100
    assert vort[:, :2].abs().max() < 1e-12 and out3[:, 2].abs().max() < 1e-12


def test_divergence_stays_at_roundoff_with_band_forcing():
    eq = ns3d(16, 0.02, forcing=solvers.BandForcing(1, 2, amplitude=0.5, seed=4))
    u = eq.simulate(smooth_velocity(eq, seeds=(1, 2)), dt=0.02, steps=25)
    assert eq.energy(u).min() > 0.1
    assert eq.divergence(u).abs().max() < 1e-12


def test_band_forcing_is_solenoidal_grid_independent_and_normalised():
    f = solvers.BandForcing(1, 2.5, amplitude=0.7, seed=9)
    coarse = solvers.SpectralGrid(16, 2 * math.pi, 3, F64)
    fine = solvers.SpectralGrid(24, 2 * math.pi, 3, F64)
    fc, ff = f.physical(coarse), f.physical(fine)
    rms = torch.sqrt((ff ** 2).sum(0).mean()).item()
    assert abs(rms - 0.7) < 1e-12
    eq = ns3d(24)
    assert eq.divergence(ff[None]).abs().max() < 1e-12
    g8 = solvers.SpectralGrid(8, 2 * math.pi, 3, F64)
    with pytest.raises(ValueError):
        f.physical(g8)  # the band does not fit the 2/3-dealiased 8^3 grid
    # the same Fourier series on both grids: equal at the common points x = 2 pi j / 8
    assert torch.allclose(fc[:, ::2, ::2, ::2], ff[:, ::3, ::3, ::3], atol=1e-12)


def test_semi_discrete_energy_budget_is_exact():
    """<u . R(u)> = -2 nu Z - 2 drag E + forcing power, in the semi-discrete system."""
    nu, drag, A = 0.03, 0.05, 0.2
    for forcing, power in [(solvers.LinearForcing(A, max_wavenumber=2.0), "linear"),
                           (solvers.BandForcing(1, 2, amplitude=0.5), "band")]:
        eq = ns3d(16, nu, drag, forcing)
        u = smooth_velocity(eq, seeds=(7,))
        rate = (u * eq.tendency(u)).sum(1).mean(dim=(-3, -2, -1))
        if power == "linear":
            band = forcing.band(eq.grid)
            u_hat = eq.grid.to_spectral(u)
            forced = solvers.SpectralGrid(16, 2 * math.pi, 3, F64).to_physical(u_hat * band)
            p = 2 * A * eq.energy(forced)
        else:
            p = (u * forcing.physical(eq.grid)[None]).sum(1).mean(dim=(-3, -2, -1))
        expected = -2 * nu * eq.enstrophy(u) - 2 * drag * eq.energy(u) + p
        assert abs(p.item()) > 1e-3
        assert torch.allclose(rate, expected, atol=1e-13, rtol=1e-12), (rate, expected)


def test_energy_budget_holds_to_the_integrators_order():
    """E(T) - E(0) = int_0^T (-2 nu Z + P) dt, with the integral by Simpson's rule on the saved steps:
    the residual falls ~16x when dt halves (fourth order of ETDRK4 and of the quadrature)."""
    nu, A = 0.02, 0.3
    forcing = solvers.LinearForcing(A)
    eq = ns3d(16, nu, forcing=forcing)
    u0 = smooth_velocity(eq, seeds=(2,))
    residuals = []
    for steps in (8, 16):
        traj = eq.simulate(u0, dt=0.8 / steps, steps=steps, save_every=1)[0]
        E = eq.energy(traj)
        rate = -2 * nu * eq.enstrophy(traj) + 2 * A * E  # all non-mean modes forced, mean is zero
        h = 0.8 / steps
        integral = h / 3 * (rate[0] + rate[-1] + 4 * rate[1:-1:2].sum() + 2 * rate[2:-1:2].sum())
        residuals.append(abs((E[-1] - E[0] - integral).item()))
    assert residuals[0] / residuals[1] > 10, residuals
    assert residuals[1] < 1e-5


def observed_orders(eq, u0, method, dts, t_end):
    ref = eq.simulate(u0, dt=dts[-1] / 4, steps=int(round(t_end / (dts[-1] / 4))), method=method)
    errs = [(eq.simulate(u0, dt=dt, steps=int(round(t_end / dt)), method=method) - ref).abs().max().item()
            for dt in dts]
    return [math.log2(a / b) for a, b in zip(errs, errs[1:])]


def test_etdrk4_is_fourth_order_in_3d():
    eq = ns3d(12, 0.05, forcing=solvers.BandForcing(1, 2, amplitude=1.0))
    orders = observed_orders(eq, smooth_velocity(eq, energy=1.0), "etdrk4", [0.2, 0.1, 0.05], 0.8)
    assert min(orders) >= 3.7, orders


def test_cnrk4_is_second_order_in_3d():
    eq = ns3d(12, 0.2)  # viscous enough that the implicit part's second-order error dominates
    orders = observed_orders(eq, smooth_velocity(eq, energy=0.5), "cnrk4", [0.1, 0.05, 0.025], 0.4)
    assert all(1.8 <= o <= 2.3 for o in orders), orders


def test_taylor_green_vortex_initial_invariants():
    eq = ns3d(16, 1 / 1600)
    u = solvers.taylor_green_vortex(eq.grid, batch=2)
    assert u.shape == (2, 3, 16, 16, 16)
    assert torch.allclose(eq.energy(u), torch.full((2,), 1 / 8, dtype=F64), atol=1e-14)
    assert torch.allclose(eq.enstrophy(u), torch.full((2,), 3 / 8, dtype=F64), atol=1e-14)
    assert eq.divergence(u).abs().max() < 1e-13


def test_random_solenoidal_velocity_is_reproducible_normalised_and_divergence_free():
    eq = ns3d(16)
    a = solvers.random_solenoidal_velocity(eq.grid, [1, 2], peak_wavenumber=3, energy=0.8)
    b = solvers.random_solenoidal_velocity(eq.grid, [2], peak_wavenumber=3, energy=0.8)
    assert torch.equal(a[1:], b)
    assert torch.allclose(eq.energy(a), torch.full((2,), 0.8, dtype=F64))
    assert eq.divergence(a).abs().max() < 1e-12
    assert not torch.allclose(a[0], a[1])


def test_batch_float32_and_gradients():
    eq = ns3d(8, 0.05)
    u0 = smooth_velocity(eq, seeds=(1, 2))
    both = eq.simulate(u0, dt=0.05, steps=4)
    one = eq.simulate(u0[1:], dt=0.05, steps=4)
    assert torch.allclose(both[1:], one, atol=1e-14)
    eq32 = ns3d(8, 0.05, dtype=torch.float32)
    u32 = eq32.simulate(u0.float(), dt=0.05, steps=4)
    assert u32.dtype == torch.float32 and ((u32.double() - both).norm() / both.norm()) < 1e-5
    # the gradient against a central difference along a random solenoidal direction
    w = u0[:1].clone().requires_grad_(True)
    loss = lambda x: eq.simulate(x, dt=0.1, steps=2).pow(3).sum()  # noqa: E731
    (grad,) = torch.autograd.grad(loss(w), w)
    d, eps = smooth_velocity(eq, seeds=(9,)), 1e-6
    fd = (loss(u0[:1] + eps * d) - loss(u0[:1] - eps * d)) / (2 * eps)
    assert abs((grad * d).sum().item() - fd.item()) < 1e-6 * abs(fd.item())
    closure_calls = []
    eq.simulate(u0, dt=0.05, steps=2, closure=lambda s: closure_calls.append(s.shape) or torch.zeros_like(s))
    assert len(closure_calls) == 8 and closure_calls[0] == u0.shape


def test_bad_state_shape_is_rejected():
    eq = ns3d(8)
    with pytest.raises(ValueError, match=r"\(batch, 3, 8, 8, 8\)"):
        eq.simulate(torch.zeros(1, 8, 8, 8, dtype=F64), dt=0.1, steps=1)


@cuda
@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_cuda_matches_cpu_3d(dtype):
    forcing = solvers.LinearForcing(0.2, max_wavenumber=2)
    cpu = ns3d(32, 0.01, forcing=forcing, dtype=dtype)
    gpu = ns3d(32, 0.01, forcing=forcing, dtype=dtype, device="cuda")
    u = smooth_velocity(cpu, seeds=(1, 2)).to(dtype)
    a = cpu.simulate(u, dt=0.01, steps=20)
    b = gpu.simulate(u.cuda(), dt=0.01, steps=20).cpu()
    tol = 1e-10 if dtype == F64 else 1e-4
    assert ((a - b).norm() / a.norm()).item() < tol


def test_closure_tendency_is_projected():
    """A gradient closure (pure pressure) changes nothing; a general one keeps div u = 0."""
    eq = ns3d(12, 0.05)
    u0 = smooth_velocity(eq, seeds=(4,))
    x, y, z = eq.grid.mesh()
    grad = torch.stack([torch.cos(x) * torch.sin(2 * y), 2 * torch.sin(x) * torch.cos(2 * y), torch.zeros_like(x)])
    plain = eq.simulate(u0, dt=0.05, steps=4)
    assert torch.allclose(eq.simulate(u0, dt=0.05, steps=4, closure=lambda s: grad.expand_as(s)), plain, atol=1e-13)
    assert torch.allclose(eq.tendency(u0, closure=lambda s: grad.expand_as(s)), eq.tendency(u0), atol=1e-12)
    out = eq.simulate(u0, dt=0.05, steps=4, closure=lambda s: s ** 2)
    assert eq.divergence(out).abs().max() < 1e-12 and (out - plain).abs().max() > 1e-3


def test_a_closure_held_over_the_step_is_projected_and_a_constant_is_unchanged():
    """closure_per_stage=False in 3D: the held tendency is projected at every stage like a
    per-stage closure's, so a state-independent closure gives the same run either way."""
    eq = ns3d(12)
    u0 = smooth_velocity(eq, seeds=(0, 1))
    force = 0.2 * torch.randn(u0.shape[1:], dtype=F64, generator=torch.Generator().manual_seed(3))
    calls = []

    def constant(u):  # not divergence-free: the projection matters
        calls.append(1)
        return force.expand_as(u)

    held = eq.simulate(u0, dt=0.01, steps=3, closure=constant, closure_per_stage=False)
    assert len(calls) == 3
    staged = eq.simulate(u0, dt=0.01, steps=3, closure=constant)
    torch.testing.assert_close(held, staged, rtol=1e-12, atol=1e-12)
