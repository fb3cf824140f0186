"""The viscous Burgers equation in one dimension.

    u_t + (u^2 / 2)_x = nu u_xx - drag * u + f

on ``[0, L)``, state ``(batch, n)``. The conservative form is dealiased by the
2/3 rule: ``u`` is truncated to ``|m| <= n // 3`` before squaring and the
derivative of the square is truncated to the same modes, so the Galerkin-
truncated inviscid system conserves energy exactly in continuous time.
"""

from __future__ import annotations

import math

import torch

from solvers.equation import SpectralEquation

__all__ = ["Burgers1D"]


class Burgers1D(SpectralEquation):
    """``u_t = -(u^2/2)_x + nu u_xx - drag u + f``, pseudo-spectral, batched.

    ``Burgers1D(n, viscosity=..., length=2*pi, forcing=None, drag=0.0, dtype=..., device=...)``.
    """

    ndim = 1
    field_name = "u"

    def __init__(self, n, viscosity, length=2 * math.pi, forcing=None, drag=0.0,
                 dtype=torch.float32, device=None):
        super().__init__(n, viscosity, drag=drag, forcing=forcing, length=length, dtype=dtype, device=device)
        g = self.grid
        self._truncate = g.dealias
        self._flux_op = -0.5 * g.ikx * g.dealias  # -(1/2) d/dx, truncated

    def nonlinear_hat(self, state_hat: torch.Tensor) -> torch.Tensor:
        """``-P_{2/3}[(u^2 / 2)_x]`` of the truncated velocity (2 real FFTs)."""
        u = self.grid.to_physical(self._truncate * state_hat)
        return self._flux_op * self.grid.to_spectral(u * u)

    def max_speed(self, state: torch.Tensor) -> torch.Tensor:
        return state.abs().amax(dim=-1)

    def energy(self, state: torch.Tensor) -> torch.Tensor:
        """Mean energy ``<u^2> / 2`` per batch member."""
        return 0.5 * (state ** 2).mean(dim=-1)
