"""Filters G and restriction P (docs/conventions.md): transfer functions, G(0) = 1, sampling, Parseval."""

from __future__ import annotations

import math

import pytest
import torch

from closure.data.filters import Filter, prolong_hat, restrict_hat
from solvers.spectral import SpectralGrid

L = 2 * math.pi


def grids(ndim, n_fine=32, n_coarse=8, length=L):
    return (SpectralGrid(n_fine, length, ndim, torch.float64), SpectralGrid(n_coarse, length, ndim, torch.float64))


@pytest.mark.parametrize("ndim", [1, 2, 3])
@pytest.mark.parametrize("kind", ["spectral", "gaussian", "box"])
def test_transfer_is_one_at_zero_and_real_even(kind, ndim):
    fine, _ = grids(ndim)
    G = Filter(kind, 8, L, 2.0).transfer(fine)
    assert G.shape == fine.spectral_shape
    zero = (0,) * ndim
    assert float(G[zero]) == 1.0
    assert torch.all(G <= 1.0 + 1e-15)
    if ndim == 2:  # even in k_y (rows m and -m)
        assert torch.allclose(G[1:], torch.flip(G[1:], dims=[0]))


@pytest.mark.parametrize("length", [L, 100.0])
def test_transfer_functions_match_the_contract(length):
    n_les, width = 16, 2.0
    fine = SpectralGrid(64, length, 2, torch.float64)
    D = width * length / n_les
    kx, ky = fine.kx, fine.ky
    gauss = Filter("gaussian", n_les, length, width).transfer(fine)
    assert torch.allclose(gauss, torch.exp(-(kx ** 2 + ky ** 2) * D ** 2 / 24))
    box = Filter("box", n_les, length, width).transfer(fine)
    sinc = lambda z: torch.where(z == 0, torch.ones_like(z), torch.sin(z) / torch.where(z == 0, torch.ones_like(z), z))  # noqa: E731
    assert torch.allclose(box, sinc(kx * D / 2) * sinc(ky * D / 2))
    assert torch.all(Filter("spectral", n_les, length, width).transfer(fine) == 1)
    # physical wavenumbers: the Gaussian at mode m depends on m / n_les only
    m = 3
    g1 = Filter("gaussian", n_les, length, width).transfer(SpectralGrid(64, length, 1, torch.float64))[m]
    assert math.isclose(float(g1), math.exp(-((2 * math.pi * m / length) * D) ** 2 / 24), rel_tol=1e-12)


def test_box_filter_is_a_moving_average_on_the_grid():
    """A box of width 1 LES spacing = r DNS points has the transfer function of the centred mean
    only approximately (continuous sinc); its first zero lies at the mode n_les (the LES grid frequency)."""
    n_dns, n_les = 64, 8
    fine = SpectralGrid(n_dns, L, 1, torch.float64)
    G = Filter("box", n_les, L, 1.0).transfer(fine)
    assert abs(float(G[n_les])) < 1e-14
    assert float(G[n_les // 2]) == pytest.approx(2 / math.pi, rel=1e-12)  # sinc(pi/2)


@pytest.mark.parametrize("ndim", [1, 2, 3])
def test_restriction_of_a_band_limited_field_is_sampling(ndim):
    fine, coarse = grids(ndim, 48, 12)
    torch.manual_seed(0)
    # random field with modes |m_d| < n_coarse / 2 only
    noise_hat = fine.to_spectral(torch.randn(3, *fine.shape, dtype=torch.float64))
    band = fine.truncation_mask(coarse.n // 2, strict=True)
    field = fine.to_physical(noise_hat * band)
    r = fine.n // coarse.n
    sampled = field[(...,) + (slice(None, None, r),) * ndim]
    restricted = coarse.to_physical(restrict_hat(fine.to_spectral(field), fine, coarse))
    assert torch.allclose(restricted, sampled, atol=1e-12)
    # the spectral filter with P reproduces the same samples
    pg = Filter("spectral", coarse.n, L).coarse_grain(field, fine, coarse)
    assert torch.allclose(pg, sampled, atol=1e-12)


@pytest.mark.parametrize("ndim", [1, 2, 3])
def test_restriction_drops_modes_at_and_beyond_les_nyquist(ndim):
    fine, coarse = grids(ndim, 32, 8)
    x = fine.mesh()[0]
    nyq = torch.cos(4 * x).unsqueeze(0)  # mode n_les / 2 = 4: zeroed by P
    out = coarse.to_physical(restrict_hat(fine.to_spectral(nyq), fine, coarse))
    assert float(out.abs().max()) < 1e-12
    high = torch.sin(9 * x).unsqueeze(0)
    assert float(coarse.to_physical(restrict_hat(fine.to_spectral(high), fine, coarse)).abs().max()) < 1e-12


@pytest.mark.parametrize("ndim", [1, 2, 3])
def test_parseval_and_energy_of_restriction(ndim):
    fine, coarse = grids(ndim, 32, 8)
    torch.manual_seed(1)
    u = torch.randn(2, *fine.shape, dtype=torch.float64)
    u_hat = fine.to_spectral(u)
    # Parseval for the rfft: mean(u^2) = sum over the full spectrum |u_hat|^2 / n^(2d)
    full = torch.fft.fftn(u, dim=fine.dims)
    assert torch.allclose((u ** 2).mean(dim=fine.dims), (full.abs() ** 2).sum(dim=fine.dims) / fine.n ** (2 * ndim))
    # restriction keeps exactly the energy of the kept modes (values keep physical units)
    band = fine.truncation_mask(coarse.n // 2, strict=True)
    u_band = fine.to_physical(u_hat * band)
    v = coarse.to_physical(restrict_hat(u_hat, fine, coarse))
    assert torch.allclose((v ** 2).mean(dim=coarse.dims), (u_band ** 2).mean(dim=fine.dims), rtol=1e-12)
    # and the filter only removes energy
    for kind in ("gaussian", "box"):
        g = Filter(kind, coarse.n, L).coarse_grain(u, fine, coarse)
        assert torch.all((g ** 2).mean(dim=coarse.dims) <= (v ** 2).mean(dim=coarse.dims) + 1e-12)


@pytest.mark.parametrize("ndim", [1, 2, 3])
def test_prolongation_is_a_right_inverse_of_restriction(ndim):
    fine, coarse = grids(ndim, 32, 8)
    torch.manual_seed(2)
    v_hat = coarse.to_spectral(torch.randn(2, *coarse.shape, dtype=torch.float64))
    v_hat = v_hat * coarse.truncation_mask(coarse.n // 2, strict=True)
    back = restrict_hat(prolong_hat(v_hat, coarse, fine), fine, coarse)
    assert torch.allclose(back, v_hat, atol=1e-12)


def test_filter_width_and_validation():
    f = Filter("gaussian", 64, L, 2.0)
    assert f.filter_width == pytest.approx(2 * L / 64)
    with pytest.raises(ValueError):
        Filter("tophat", 64, L)
    with pytest.raises(ValueError):
        Filter("box", 64, L, 0.0)


def test_constant_field_is_preserved_by_every_filter():
    fine, coarse = grids(2, 32, 8)
    c = torch.full((1, *fine.shape), 3.5, dtype=torch.float64)
    for kind in ("spectral", "gaussian", "box"):
        out = Filter(kind, coarse.n, L).coarse_grain(c, fine, coarse)
        assert torch.allclose(out, torch.full_like(out, 3.5))
