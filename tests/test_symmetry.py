"""Symmetries: D4 on 2D pseudo-scalar vorticity, x -> -x on the 1D Burgers velocity (a vector);
augmentation of (field, sgs) pairs and exact equivariance by group averaging."""

from __future__ import annotations

import math

import pytest
import torch

from closure.nn import (
    GroupAveraged,
    StencilClosure,
    augment,
    build_model,
    group_elements,
    inverse_transform,
    random_transform,
    reflect_x,
    rotate,
    transform,
)


@pytest.fixture(autouse=True)
def _float64(default_float64):
    """float64 for exact comparisons (conftest.default_float64)."""


def _grid(n):
    g = torch.arange(n) * 2 * math.pi / n
    return torch.meshgrid(g, g, indexing="ij")  # y, x


def test_group_sizes_and_inverses():
    assert len(group_elements(1)) == 2 and len(group_elements(2)) == 8
    f = torch.randn(2, 6, 6)
    images = [transform(f, g) for g in group_elements(2)]
    for g, im in zip(group_elements(2), images):
        torch.testing.assert_close(inverse_transform(im, g), f)
    # the 8 images are distinct for a generic field
    flat = torch.stack([im.flatten() for im in images])
    assert torch.cdist(flat, flat).add(torch.eye(8)).min() > 1e-3


def test_reflection_is_about_the_origin_and_rotation_is_a_quarter_turn():
    y, x = _grid(8)
    f = (torch.sin(x) + 2 * torch.cos(2 * y) + torch.sin(x + y))[None]
    torch.testing.assert_close(reflect_x(f), (torch.sin(-x) + 2 * torch.cos(2 * y) + torch.sin(-x + y))[None])
    # one turn: f(x, y) -> f(-y, x)
    torch.testing.assert_close(rotate(f), (torch.sin(-y) + 2 * torch.cos(2 * x) + torch.sin(-y + x))[None])
    torch.testing.assert_close(rotate(f, 4), f)


def _ddx(f, axis):
    n = f.shape[axis]
    k = torch.fft.fftfreq(n, 1 / n).reshape([-1 if a == axis % f.dim() else 1 for a in range(f.dim())])
    return torch.fft.ifft(1j * k * torch.fft.fft(f, dim=axis), dim=axis).real


def _vorticity(u, v):
    return _ddx(v, -1) - _ddx(u, -2)  # omega = v_x - u_y, arrays indexed [y, x]


def test_vorticity_is_a_pseudo_scalar():
    """Reflect / rotate a velocity field as a vector; its vorticity moves with parity -1."""
    y, x = _grid(16)
    u = (torch.sin(y) * torch.cos(2 * x) + torch.cos(3 * x))[None]
    v = (torch.cos(x + 0.3) * torch.sin(2 * y))[None]
    omega = _vorticity(u, v)
    # x -> -x: (u, v)(x, y) -> (-u, v)(-x, y)
    reflected = _vorticity(-reflect_x(u), reflect_x(v))
    torch.testing.assert_close(reflected, transform(omega, (0, True), parity=-1))
    # rotate(f)(x, y) = f(-y, x) = f(R^-1 p) with R (x, y) = (y, -x); the velocity turns too:
    # (u, v) -> R (u, v)(R^-1 p) = (v, -u)(R^-1 p)
    turned_u, turned_v = rotate(v), -rotate(u)
    torch.testing.assert_close(_vorticity(turned_u, turned_v), transform(omega, (1, False), parity=-1))


def test_augment_pairs_and_random_transform():
    field, sgs = torch.randn(3, 6, 6), torch.randn(3, 6, 6)
    fa, sa = augment(field, sgs)
    assert fa.shape == (24, 6, 6) and sa.shape == (24, 6, 6)
    torch.testing.assert_close(fa[:3], field)
    reflected = group_elements(2)[4]  # (0, True)
    torch.testing.assert_close(fa[12:15], -reflect_x(field))
    torch.testing.assert_close(sa[12:15], -reflect_x(sgs))
    u, s = torch.randn(4, 10), torch.randn(4, 10)
    ua, sa1 = augment(u, s)
    torch.testing.assert_close(ua[4:], -torch.roll(torch.flip(u, [-1]), 1, -1))
    rf, rs = random_transform(field, sgs, generator=torch.Generator().manual_seed(0))
    for i in range(3):  # each pair moved by one common element
        matches = [g for g in group_elements(2) if torch.allclose(rf[i], transform(field[i : i + 1], g)[0])]
        assert any(torch.allclose(rs[i], transform(sgs[i : i + 1], g)[0]) for g in matches)
    assert reflected == (0, True)


def test_exact_sgs_map_is_equivariant_burgers():
    """The 1D Burgers advection term -(u^2/2)_x (an SGS-like map) is equivariant with u -> -u(-x)."""
    n = 32
    k = torch.fft.rfftfreq(n, 1 / n)

    def advection(u):
        return -torch.fft.irfft(1j * k * torch.fft.rfft(0.5 * u**2), n=n)

    u = torch.randn(2, n)
    g = (0, True)
    torch.testing.assert_close(advection(transform(u, g)), transform(advection(u), g))


@pytest.mark.parametrize("features", [[], ["velocity_gradient"]])
def test_group_averaged_model_is_exactly_equivariant_2d(features):
    torch.manual_seed(0)
    base = StencilClosure(2, stencil=3, hidden=[16], features=features)
    model = GroupAveraged(base, ndim=2, parity=-1)
    omega = torch.randn(2, 12, 12)
    out = model(omega)
    for g in group_elements(2):
        torch.testing.assert_close(model(transform(omega, g)), transform(out, g))
    # the bare model is not equivariant (so the check above is not vacuous)
    g = (1, True)
    assert not torch.allclose(base(transform(omega, g)), transform(base(omega), g))


def test_group_averaged_model_is_exactly_equivariant_1d():
    torch.manual_seed(0)
    model = build_model({"type": "cnn", "stencil": 3, "hidden": [8], "gammas": [1.0], "symmetry": "average"}, 1)
    u = torch.randn(3, 20)
    g = (0, True)
    torch.testing.assert_close(model(transform(u, g)), transform(model(u), g))
    torch.testing.assert_close(model(torch.roll(u, 3, -1)), torch.roll(model(u), 3, -1))


def test_rotation_needs_a_square_grid():
    with pytest.raises(ValueError, match="square"):
        GroupAveraged(StencilClosure(2, 3, [4]), 2)(torch.randn(1, 4, 6))
