"""Classical SGS closures: dissipation, the dynamic coefficient, composition, batching, the factory."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import solvers
from closure.data.filters import Filter
from closure.les.baselines import (DealiasResidual, DynamicSmagorinsky, Leith, NoClosure, Smagorinsky, Sum,
                                   dynamic_widths, is_baseline, make_closure)
from closure.config import config_from_dict
from closure.errors import ClosureError


def _ns(n=32, dtype=torch.float64):
    return solvers.NavierStokes2D(n, viscosity=1e-3, drag=0.1, dtype=dtype)


def _random_vorticity(eq, seeds, peak=6.0):
    return solvers.random_vorticity(eq.grid, seeds, peak_wavenumber=peak, energy=0.5)


def _random_velocity(eq, seeds, peak=6.0):
    return solvers.random_velocity(eq.grid, seeds, peak_wavenumber=peak, energy=0.5)


@pytest.mark.parametrize("cls", [Smagorinsky, Leith, DynamicSmagorinsky])
def test_eddy_viscosity_drains_enstrophy_2d(cls):
    eq = _ns()
    w = _random_vorticity(eq, list(range(6)))
    c = cls.for_equation(eq)(w)
    assert c.shape == w.shape
    drain = (w * c).mean(dim=(-2, -1))
    assert torch.all(drain <= 1e-12)
    if cls is not DynamicSmagorinsky:  # the dynamic coefficient may clip to zero (not on all six fields)
        assert torch.all(drain < -1e-8), drain
    assert torch.any(drain < -1e-8), drain


@pytest.mark.parametrize("cls", [Smagorinsky, Leith, DynamicSmagorinsky])
def test_eddy_viscosity_drains_energy_1d(cls):
    eq = solvers.Burgers1D(64, viscosity=1e-2, dtype=torch.float64)
    # steepened (t = 0.5) so that energy cascades to the grid scale and the dynamic coefficient is positive
    u = eq.simulate(_random_velocity(eq, list(range(6))), dt=1e-3, steps=500)
    c = cls.for_equation(eq)(u)
    drain = (u * c).mean(dim=-1)
    assert torch.all(drain <= 1e-12)
    if cls is not DynamicSmagorinsky:
        assert torch.all(drain < -1e-8), drain
    assert torch.any(drain < -1e-8), drain


def test_local_dynamic_model_drains_and_is_finite():
    eq = _ns()
    w = _random_vorticity(eq, list(range(4)))
    model = DynamicSmagorinsky.for_equation(eq, averaging="local")
    c = model.coefficient(w)
    assert c.shape == w.shape and torch.all(torch.isfinite(c)) and torch.all(c >= 0)
    assert torch.all((w * model(w)).mean(dim=(-2, -1)) <= 1e-12)


def test_smagorinsky_matches_formula_on_a_single_mode():
    # omega = cos(x) cos(y): psi = omega / 2, |S| = |psi_xx - psi_yy| = 0 and 4 psi_xy^2 = sin^2 x sin^2 y
    eq = _ns(16)
    x, y = eq.grid.mesh()
    w = (torch.cos(x) * torch.cos(y))[None]
    model = Smagorinsky.for_equation(eq, cs=0.2)
    nu = model.eddy_viscosity(w)[0]
    expected = (0.2 * 2 * math.pi / 16) ** 2 * torch.abs(torch.sin(x) * torch.sin(y))
    torch.testing.assert_close(nu, expected, atol=1e-12, rtol=1e-10)


def _numpy_spectral(n: int, length: float = 2 * math.pi):
    """Wavenumbers and FFTs of an n^2 periodic grid in numpy (independent of the closures' operators)."""
    m = np.fft.fftfreq(n, 1.0 / n)
    m_odd = np.where(np.abs(m) == n // 2, 0.0, m)
    my, mx = np.meshgrid(m, m, indexing="ij")
    oy, ox = np.meshgrid(m_odd, m_odd, indexing="ij")
    s = 2 * math.pi / length
    kx, ky = mx * s, my * s
    k2 = kx ** 2 + ky ** 2
    inv = np.where(k2 > 0, 1 / np.where(k2 > 0, k2, 1), 0)
    return dict(kx=kx, ky=ky, ikx=1j * ox * s, iky=1j * oy * s, inv=inv, F=np.fft.fft2,
                Fi=lambda a: np.real(np.fft.ifft2(a)))


def _hand_eddy_tendency(w: np.ndarray, kind: str, constant: float, length: float = 2 * math.pi) -> np.ndarray:
    """div(nu grad w) with nu = (C D)^2 |S| (smagorinsky) or (C D)^3 |grad w| (leith), numpy."""
    o = _numpy_spectral(w.shape[-1], length)
    F, Fi, ikx, iky = o["F"], o["Fi"], o["ikx"], o["iky"]
    D = length / w.shape[-1]
    wh = F(w)
    wx, wy = Fi(ikx * wh), Fi(iky * wh)
    if kind == "smagorinsky":
        pxy, diff = Fi(-o["kx"] * o["ky"] * o["inv"] * wh), Fi((o["ky"] ** 2 - o["kx"] ** 2) * o["inv"] * wh)
        nu = (constant * D) ** 2 * np.sqrt(4 * pxy ** 2 + diff ** 2)
    else:
        nu = (constant * D) ** 3 * np.sqrt(wx ** 2 + wy ** 2)
    return Fi(ikx * F(nu * wx) + iky * F(nu * wy))


@pytest.mark.parametrize("cls, kind, constant", [(Smagorinsky, "smagorinsky", 0.2), (Leith, "leith", 0.3)])
def test_eddy_viscosity_tendency_matches_hand_computation_2d(cls, kind, constant):
    eq = _ns(24)
    w = _random_vorticity(eq, [3, 4], peak=4.0)
    out = (cls.for_equation(eq, cs=constant) if cls is Smagorinsky else cls.for_equation(eq, cl=constant))(w)
    expected = torch.tensor(np.stack([_hand_eddy_tendency(f, kind, constant) for f in w.numpy()]))
    assert float(expected.abs().max()) > 1e-6
    torch.testing.assert_close(out, expected, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("cls, nu_of", [
    (Smagorinsky, lambda ux, uxx, d: (0.16 * d) ** 2 * np.abs(ux)),
    (Leith, lambda ux, uxx, d: (0.16 * d) ** 3 * np.abs(uxx)),
])
def test_1d_eddy_viscosity_follows_the_filtered_burgers_convention(cls, nu_of):
    # u_t + (u^2/2)_x = ... - (1/2) tau_x with tau = -2 nu_e u_x (pyBurgers, Cs = 0.16): c = -(1/2) tau_x
    n, length = 48, 2 * math.pi
    eq = solvers.Burgers1D(n, viscosity=1e-2, dtype=torch.float64)
    u = _random_velocity(eq, [5, 6], peak=4.0)
    closure = cls.for_equation(eq, cs=0.16) if cls is Smagorinsky else cls.for_equation(eq, cl=0.16)
    m = np.fft.rfftfreq(n, 1.0 / n)
    ik = 1j * np.where(m == n // 2, 0.0, m) * 2 * math.pi / length
    dx = lambda f: np.fft.irfft(ik * np.fft.rfft(f), n)  # noqa: E731
    for row, c in zip(u.numpy(), closure(u).numpy()):
        ux = dx(row)
        tau = -2 * nu_of(ux, dx(ux), length / n) * ux
        np.testing.assert_allclose(c, -0.5 * dx(tau), rtol=1e-9, atol=1e-12)


def test_dealias_residual_is_the_exact_sgs_of_a_field_the_les_grid_resolves():
    # a DNS field with modes |m| < n_les / 2 only, spectral filter: sgs = P N(w) - N_les(P w) is
    # exactly what the LES's 2/3 rule discards of the resolved advection
    from closure.data.filters import prolong_hat
    from closure.data.sgs import filtered_field_and_sgs

    les, dns = _ns(16), _ns(48)
    coarse = _random_vorticity(les, [0, 1], peak=4.0)
    w = dns.grid.to_physical(prolong_hat(les.grid.to_spectral(coarse), les.grid, dns.grid))
    field, sgs = filtered_field_and_sgs(w, dns, les, Filter("spectral", 16, les.grid.length))
    residual = make_closure("dealias_residual", les)(field)
    assert isinstance(make_closure("dealias_residual", les), DealiasResidual)
    assert float(sgs.abs().max()) > 1e-3
    torch.testing.assert_close(residual, sgs, rtol=1e-9, atol=1e-10)
    both = make_closure("smagorinsky+dealias_residual", les)(field)
    torch.testing.assert_close(both, residual + Smagorinsky.for_equation(les)(field))


def _hand_dynamic_coefficient(w: np.ndarray, test_filter: str, grid_width: float, test_width: float,
                              length: float = 2 * math.pi) -> float:
    """Germano-Lilly ``c = <LM>_+ / <MM>`` (relative to ``grid_width``) of one 2D vorticity field,
    written out with numpy FFTs; the test filter and both widths (in grid spacings) are given by hand."""
    n = w.shape[-1]
    D = length / n
    m = np.fft.fftfreq(n, 1.0 / n)
    m_odd = np.where(np.abs(m) == n // 2, 0.0, m)
    my, mx = np.meshgrid(m, m, indexing="ij")
    oy, ox = np.meshgrid(m_odd, m_odd, indexing="ij")
    s = 2 * math.pi / length
    kx, ky, ikx, iky = mx * s, my * s, 1j * ox * s, 1j * oy * s
    k2 = kx ** 2 + ky ** 2
    inv = np.where(k2 > 0, 1 / np.where(k2 > 0, k2, 1), 0)
    keep = ((np.abs(mx) <= (n - 1) // 3) & (np.abs(my) <= (n - 1) // 3)).astype(float)
    if test_filter == "gaussian_2dx":   # Gaussian of width 2 dx
        T = np.exp(-k2 * (2 * D) ** 2 / 24)
    else:                               # "cutoff_half": sharp cutoff at half the grid's, |m_d| < n / 4
        T = ((np.abs(mx) < n / 4) & (np.abs(my) < n / 4)).astype(float)
    F, Fi = np.fft.fft2, lambda a: np.real(np.fft.ifft2(a))

    def N(wh):  # -P23(u . grad w) of the truncated field
        wh = wh * keep
        u, v = Fi(iky * inv * wh), Fi(-ikx * inv * wh)
        return -keep * F(u * Fi(ikx * wh) + v * Fi(iky * wh))

    def model(wh, width):  # width^2 div(|S| grad w)
        pxy, diff = Fi(-kx * ky * inv * wh), Fi((ky ** 2 - kx ** 2) * inv * wh)
        S = np.sqrt(4 * pxy ** 2 + diff ** 2)
        return Fi(ikx * F(width ** 2 * S * Fi(ikx * wh)) + iky * F(width ** 2 * S * Fi(iky * wh)))

    wh = F(w)
    L = Fi(T * N(wh) - N(T * wh))
    M = model(T * wh, test_width * D) - Fi(T * F(model(wh, grid_width * D)))
    return max(float(np.mean(L * M)), 0.0) / float(np.mean(M * M))


@pytest.mark.parametrize("filter_type, width, test_filter, grid_width, test_width", [
    # Gaussian data of width 2 dx, Gaussian test filter 2 dx: T G is the Gaussian of width sqrt(8) dx
    ("gaussian", 2.0, "gaussian_2dx", 2.0, math.sqrt(8)),
    # spectral data (cutoff at the grid), test cutoff at half of it: widths dx and 2 dx
    ("spectral", 1.0, "cutoff_half", 1.0, 2.0),
])
def test_dynamic_coefficient_matches_hand_computation_and_is_clipped(filter_type, width, test_filter,
                                                                     grid_width, test_width):
    eq = _ns(16)
    w = _random_vorticity(eq, list(range(8)), peak=5.0)
    model = DynamicSmagorinsky.for_equation(eq, filter_type=filter_type, filter_width=width)
    c = model.coefficient(w)
    expected = torch.tensor([_hand_dynamic_coefficient(f, test_filter, grid_width, test_width) for f in w.numpy()],
                            dtype=torch.float64)
    assert torch.all(c >= 0)
    assert torch.any(c > 0)
    torch.testing.assert_close(c, expected, rtol=1e-8, atol=1e-14)


def test_dynamic_widths_follow_the_dataset_filter():
    assert dynamic_widths("gaussian", 2.0, 2.0) == pytest.approx((2.0, math.sqrt(8)))
    assert dynamic_widths("box", 1.0, 2.0) == pytest.approx((1.0, math.sqrt(5)))
    assert dynamic_widths("spectral", 1.0, 2.0) == pytest.approx((1.0, 2.0))
    # the rules, checked on the filters themselves: Gaussians compose exactly ...
    grid = solvers.NavierStokes2D(32, viscosity=0.0, dtype=torch.float64).grid
    g = lambda width: Filter("gaussian", 32, grid.length, width).transfer(grid)  # noqa: E731
    torch.testing.assert_close(g(2.0) * g(2.0), g(math.sqrt(8)), rtol=1e-12, atol=1e-14)
    # ... and boxes to second order: 1 - G_f G_t = k^2 (D_f^2 + D_t^2) / 24 + O(k^4)
    k, df, dt = 1e-3, 1.0, 2.0
    sinc = lambda z: math.sin(z) / z  # noqa: E731
    assert (1 - sinc(k * df / 2) * sinc(k * dt / 2)) / k ** 2 == pytest.approx((df ** 2 + dt ** 2) / 24, rel=1e-5)


def test_dynamic_model_uses_the_config_filter(tiny_config):
    config = config_from_dict({**tiny_config, "les": {**tiny_config.get("les", {}),
                                                     "filter": {"type": "gaussian", "width": 2.0}}})
    model = make_closure("dynamic_smagorinsky", _ns(16), config)
    assert model.ratio == pytest.approx(math.sqrt(2)) and model.grid_width == pytest.approx(2 * 2 * math.pi / 16)


def test_dynamic_nonlinear_term_is_the_solvers():
    eq = _ns(32)  # not a multiple of 3: the 2/3 rule is then alias-free and every form of N agrees
    w = _random_vorticity(eq, [0, 1])
    model = DynamicSmagorinsky.for_equation(eq)
    ops = model.ops(w)
    torch.testing.assert_close(model.nonlinear_hat(ops, ops.fft(w)), eq.nonlinear_hat(eq.grid.to_spectral(w)),
                               atol=1e-9, rtol=1e-9)
    b = solvers.Burgers1D(32, viscosity=1e-2, dtype=torch.float64)
    u = _random_velocity(b, [0, 1])
    mb = DynamicSmagorinsky.for_equation(b)
    ob = mb.ops(u)
    torch.testing.assert_close(mb.nonlinear_hat(ob, ob.fft(u)), b.nonlinear_hat(b.grid.to_spectral(u)))


def test_closures_compose():
    eq = _ns()
    w = _random_vorticity(eq, [0, 1, 2])
    smag, leith = Smagorinsky.for_equation(eq), Leith.for_equation(eq)
    both = smag + leith
    torch.testing.assert_close(both(w), smag(w) + leith(w))
    scaled = torch.nn.Identity()
    three = both + NoClosure() + scaled  # any callable module composes
    assert isinstance(three, Sum) and len(three.terms) == 4
    torch.testing.assert_close(three(w), smag(w) + leith(w) + w)
    torch.testing.assert_close(sum([smag, leith])(w), both(w))


def test_batched_dtype_and_device_agnostic():
    eq = _ns(32, torch.float32)
    w = _random_vorticity(eq, [0, 1, 2]).float()
    for model in (Smagorinsky.for_equation(eq), Leith.for_equation(eq), DynamicSmagorinsky.for_equation(eq)):
        out = model(w)
        assert out.dtype == torch.float32
        single = torch.cat([model(w[i:i + 1]) for i in range(3)])
        torch.testing.assert_close(out, single, atol=1e-5, rtol=1e-4)
        out64 = model(w.double())  # the same module, another dtype
        assert out64.dtype == torch.float64
        torch.testing.assert_close(out64.float(), out, atol=1e-4, rtol=1e-3)


def test_closure_is_differentiable():
    eq = _ns(16)
    w = _random_vorticity(eq, [0]).requires_grad_(True)
    (Smagorinsky.for_equation(eq)(w) ** 2).sum().backward()
    assert torch.all(torch.isfinite(w.grad))


def test_make_closure(tiny_config):
    config = config_from_dict(tiny_config)
    eq = _ns(16)
    assert isinstance(make_closure("none", eq, config), NoClosure)
    smag = make_closure("smagorinsky", eq, config)
    assert isinstance(smag, Smagorinsky) and smag.cs == config.run.smagorinsky_cs
    assert isinstance(make_closure("leith", eq, config), Leith)
    assert isinstance(make_closure("dynamic_smagorinsky", eq, config), DynamicSmagorinsky)
    assert isinstance(make_closure("smagorinsky+leith", eq, config), Sum)
    assert is_baseline("none") and is_baseline("smagorinsky+leith") and not is_baseline("runs/x")
    with pytest.raises(ClosureError, match="neither"):
        make_closure("no-such-model", eq, config)
    with pytest.raises(ClosureError):
        make_closure("learned", eq, config)
