"""Two-dimensional incompressible Navier-Stokes in vorticity form.

    d(omega)/dt + u . grad(omega) = nu lap(omega) - drag * omega + f

on ``[0, L)^2``, ``omega = dv/dx - du/dy``, streamfunction ``omega = -lap(psi)``,
``u = dpsi/dy``, ``v = -dpsi/dx``. State ``(batch, n, n)`` indexed ``[y, x]``.

The advection term uses the form of Basdevant et al. (1981, Mon. Wea. Rev.
109), which needs only the two velocity components:

    u . grad(omega) = (d_xx - d_yy)(u v) + d_xy (v^2 - u^2)

so a stage costs 2 inverse + 2 forward real FFTs (instead of 3 + 2). Dealiasing
by the 2/3 rule (Orszag 1971): the velocities are built from the modes
``|m_d| <= n // 3`` only and the product's spectrum is truncated to the same
set, which makes ``N`` the exact Galerkin projection of the advection of the
truncated field (no aliasing for ``n`` not divisible by 3).
"""

from __future__ import annotations

import torch

from solvers.equation import SpectralEquation

__all__ = ["NavierStokes2D"]


class NavierStokes2D(SpectralEquation):
    """``omega_t = -u . grad(omega) + nu lap(omega) - drag omega + f``, pseudo-spectral, batched.

    Parameters follow CONTRACT.md: ``NavierStokes2D(n, viscosity=..., drag=0.0,
    forcing=None, length=2*pi, dtype=..., device=...)``.
    """

    ndim = 2
    field_name = "omega"

    def __init__(self, n, viscosity, drag=0.0, forcing=None, length=2 * 3.141592653589793,
                 dtype=torch.float32, device=None):
        super().__init__(n, viscosity, drag=drag, forcing=forcing, length=length, dtype=dtype, device=device)
        g = self.grid
        mask = g.dealias
        # omega_hat -> (u_hat, v_hat) of the truncated field, stacked on a new axis -3
        self._velocity_ops = torch.stack([g.iky * g.inverse_k2 * mask, -g.ikx * g.inverse_k2 * mask])
        # -(FFT of u.grad(omega)) = (kx^2 - ky^2) FFT(uv) + kx ky FFT(v^2 - u^2), truncated
        self._advection_ops = torch.stack([(g.kx ** 2 - g.ky ** 2) * mask, g.kx * g.ky * mask])

    def velocity_hat(self, vorticity_hat: torch.Tensor) -> torch.Tensor:
        """``(u_hat, v_hat)`` of the 2/3-truncated vorticity, stacked: ``(..., 2, n, n//2+1)``."""
        return self._velocity_ops * vorticity_hat.unsqueeze(-3)

    def nonlinear_hat(self, state_hat: torch.Tensor) -> torch.Tensor:
        """``-P_{2/3}[u . grad(omega)]`` with u from the truncated vorticity (4 real FFTs)."""
        uv = self.grid.to_physical(self.velocity_hat(state_hat))
        u, v = uv.unbind(-3)
        products = torch.stack([u * v, (v - u) * (v + u)], dim=-3)
        products_hat = self.grid.to_spectral(products)
        return (self._advection_ops * products_hat).sum(dim=-3)

    def velocity(self, vorticity: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Physical velocity ``(u, v)`` of a vorticity field (all modes)."""
        return self.grid.velocity(vorticity)

    def streamfunction(self, vorticity: torch.Tensor) -> torch.Tensor:
        return self.grid.streamfunction(vorticity)

    def max_speed(self, state: torch.Tensor) -> torch.Tensor:
        u, v = self.velocity(state)
        return u.abs().amax(dim=(-2, -1)) + v.abs().amax(dim=(-2, -1))

    # ------------------------------------------------------------------ diagnostics
    def energy(self, state: torch.Tensor) -> torch.Tensor:
        """Mean kinetic energy ``<u^2 + v^2> / 2`` per batch member."""
        u, v = self.velocity(state)
        return 0.5 * (u ** 2 + v ** 2).mean(dim=(-2, -1))

    def enstrophy(self, state: torch.Tensor) -> torch.Tensor:
        """Mean enstrophy ``<omega^2> / 2`` per batch member."""
        return 0.5 * (state ** 2).mean(dim=(-2, -1))
