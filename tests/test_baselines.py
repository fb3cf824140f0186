"""Classical SGS closures: dissipation, the dynamic coefficient, composition, batching, the factory."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import solvers
from closure.les.baselines import (DynamicSmagorinsky, Leith, NoClosure, Smagorinsky, Sum, is_baseline,
                               make_closure)
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
    if cls is not DynamicSmagorinsky:  # the dynamic coefficient may clip to zero
        assert torch.all(drain < 0)


@pytest.mark.parametrize("cls", [Smagorinsky, Leith, DynamicSmagorinsky])
def test_eddy_viscosity_drains_energy_1d(cls):
    eq = solvers.Burgers1D(64, viscosity=1e-2, dtype=torch.float64)
    u = _random_velocity(eq, list(range(6)))
    c = cls.for_equation(eq)(u)
    drain = (u * c).mean(dim=-1)
    assert torch.all(drain <= 1e-12)
    if cls is not DynamicSmagorinsky:
        assert torch.all(drain < 0)


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


def _hand_dynamic_coefficient(w: np.ndarray, length: float = 2 * math.pi) -> float:
    """Germano-Lilly c = <LM>_+ / <MM> of one 2D vorticity field, written out with numpy FFTs."""
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
    keep = ((np.abs(mx) <= n // 3) & (np.abs(my) <= n // 3)).astype(float)
    T = np.exp(-k2 * (2 * D) ** 2 / 24)
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
    M = model(T * wh, 2 * D) - Fi(T * F(model(wh, D)))
    return max(float(np.mean(L * M)), 0.0) / float(np.mean(M * M))


def test_dynamic_coefficient_matches_hand_computation_and_is_clipped():
    eq = _ns(16)
    w = _random_vorticity(eq, list(range(8)), peak=5.0)
    c = DynamicSmagorinsky.for_equation(eq).coefficient(w)
    expected = torch.tensor([_hand_dynamic_coefficient(f) for f in w.numpy()], dtype=torch.float64)
    assert torch.all(c >= 0)
    assert torch.any(c > 0)
    torch.testing.assert_close(c, expected, rtol=1e-8, atol=1e-14)


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
