"""Three-dimensional incompressible Navier-Stokes in velocity form, triply periodic.

    du/dt = u x omega - grad(p + |u|^2 / 2) + nu lap(u) - drag u + f,   div u = 0

on ``[0, L)^3``, ``omega = curl u``. State ``(batch, 3, n, n, n)``: the components
``(u_x, u_y, u_z)`` on axis 1, each field indexed ``[z, y, x]`` (x the last axis).

The nonlinear term is taken in rotational form and projected onto divergence-free
fields (the Leray projector ``P_ij = delta_ij - k_i k_j / |k|^2`` removes the
pressure and the kinetic-energy gradient together):

    N(u)_hat = P(k) [ (u x omega)_hat ]

Dealiasing by the 2/3 rule (Orszag 1971): ``u`` and ``omega`` are built from the
modes ``|m_d| <= K = (n - 1) // 3`` only (`SpectralGrid.dealias_cutoff`) and the product's spectrum is truncated to the same
set, so ``N`` is the exact Galerkin projection of the truncated field's nonlinear
term (no aliasing for the quadratic product; the rotational form then conserves
energy exactly in the semi-discrete system, ``sum_k u_k^* . N_k = 0``). The mean
mode of ``N`` is zero (a periodic flow exerts no net force on itself). A stage
costs 6 inverse and 3 forward real 3D FFTs, pruned to the kept x columns
``m_x <= K`` (``rfft`` on the last axis). The linear part
``-nu |k|^2 - drag`` (plus a linear forcing's coefficient) is diagonal and acts on
each component; it keeps a divergence-free field divergence-free. A closure's
tendency is projected too (``explicit_hat``), so the LES stays divergence-free
whatever the closure returns.
"""

from __future__ import annotations

import math

import torch

from solvers.equation import SpectralEquation
from solvers.forcing import solenoidal_projection
from solvers.integrators import closure_tendency_hat

__all__ = ["NavierStokes3D"]

COMPONENTS = ("u", "v", "w")  # (u_x, u_y, u_z)


class NavierStokes3D(SpectralEquation):
    """``u_t = P[u x omega] + nu lap(u) - drag u + f``, pseudo-spectral, batched.

    ``NavierStokes3D(n, viscosity=..., drag=0.0, forcing=None, length=2*pi,
    dtype=..., device=...)``; the state is the velocity ``(batch, 3, n, n, n)``.
    Forcings: `solvers.LinearForcing` (any grid) or `solvers.BandForcing`.
    """

    ndim = 3
    field_name = "velocity"
    components = 3
    _owns_nonlinear = True

    def __init__(self, n, viscosity, drag=0.0, forcing=None, length=2 * math.pi,
                 dtype=torch.float32, device=None):
        super().__init__(n, viscosity, drag=drag, forcing=forcing, length=length, dtype=dtype, device=device)
        g = self.grid
        kept = self._kept_columns = g.dealias_cutoff + 1

        def cut(x):
            return x[..., :kept].contiguous() if x.shape[-1] > 1 else x

        self._mask = cut(g.dealias)
        self._k = tuple(cut(k) for k in g.wavenumbers)                 # (kx, ky, kz), real
        self._ik = tuple(cut(ik) for ik in g.gradient_operators)      # (i kx, i ky, i kz), Nyquist zeroed
        self._inverse_k2 = cut(g.inverse_k2)
        no_mean = torch.ones_like(self._mask)
        no_mean[0, 0, 0] = 0
        self._mask_no_mean = self._mask * no_mean

    # ------------------------------------------------------------------ transforms
    def _inverse_kept(self, fields_hat: torch.Tensor) -> torch.Tensor:
        """Physical fields from spectral ones given on the kept columns ``m_x <= K`` (zero beyond)."""
        return torch.fft.irfft(torch.fft.ifftn(fields_hat, dim=(-3, -2)), n=self.grid.n, dim=-1)

    def _forward_kept(self, fields: torch.Tensor) -> torch.Tensor:
        """The kept columns ``m_x <= K`` of ``rfftn`` of physical fields."""
        return torch.fft.fftn(torch.fft.rfft(fields, dim=-1)[..., :self._kept_columns], dim=(-3, -2))

    def _curl_kept(self, u_hat: torch.Tensor) -> torch.Tensor:
        ikx, iky, ikz = self._ik
        ux, uy, uz = u_hat.unbind(-4)
        return torch.stack([iky * uz - ikz * uy, ikz * ux - ikx * uz, ikx * uy - iky * ux], dim=-4)

    def _project_kept(self, c_hat: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        kx, ky, kz = self._k
        cx, cy, cz = c_hat.unbind(-4)
        kc = (kx * cx + ky * cy + kz * cz) * self._inverse_k2
        return torch.stack([(cx - kx * kc) * mask, (cy - ky * kc) * mask, (cz - kz * kc) * mask], dim=-4)

    # ------------------------------------------------------------------ terms
    def nonlinear_hat(self, state_hat: torch.Tensor) -> torch.Tensor:
        """``P_{2/3} P(k) [u x omega]`` of the 2/3-truncated velocity, spectral ``(..., 3, n, n, n//2+1)``."""
        n, kept = self.grid.n, self._kept_columns
        u_hat = state_hat[..., :kept] * self._mask
        fields = self._inverse_kept(torch.cat([u_hat, self._curl_kept(u_hat)], dim=-4))
        u, omega = fields[..., :3, :, :, :], fields[..., 3:, :, :, :]
        c_hat = self._forward_kept(torch.linalg.cross(u, omega, dim=-4))
        out = self._project_kept(c_hat, self._mask_no_mean)
        return torch.nn.functional.pad(out, (0, n // 2 + 1 - kept))

    def explicit_hat(self, state_hat: torch.Tensor, t: float = 0.0, closure=None) -> torch.Tensor:
        """``N(u) + f(t) + P(k) closure(u)``: a closure's tendency is projected onto
        divergence-free fields (the pressure takes up its gradient part)."""
        out = super().explicit_hat(state_hat, t, None)
        if closure is not None:
            out = out + solenoidal_projection(closure_tendency_hat(self, closure, state_hat), self.grid)
        return out

    def tendency(self, state: torch.Tensor, closure=None, t: float = 0.0) -> torch.Tensor:
        """The full right-hand side ``L u + N(u) + f + P closure(u)`` in physical space."""
        self.check_state(state)
        return self.grid.to_physical(self.tendency_hat(self.grid.to_spectral(state), t, closure))

    # ------------------------------------------------------------------ fields
    def project(self, velocity: torch.Tensor) -> torch.Tensor:
        """The divergence-free part of a velocity field (Leray projection; the mean is kept)."""
        g = self.grid
        return g.to_physical(solenoidal_projection(g.to_spectral(velocity), g))

    def vorticity(self, velocity: torch.Tensor) -> torch.Tensor:
        """``omega = curl u`` (all modes), ``(batch, 3, n, n, n)``."""
        g = self.grid
        ikx, iky, ikz = g.gradient_operators
        ux, uy, uz = g.to_spectral(velocity).unbind(-4)
        return g.to_physical(torch.stack([iky * uz - ikz * uy, ikz * ux - ikx * uz, ikx * uy - iky * ux], dim=-4))

    def divergence(self, velocity: torch.Tensor) -> torch.Tensor:
        """``div u``, ``(batch, n, n, n)``."""
        g = self.grid
        u_hat = g.to_spectral(velocity)
        return g.to_physical(sum(ik * u_hat.select(-4, i) for i, ik in enumerate(g.gradient_operators)))

    def max_speed(self, state: torch.Tensor) -> torch.Tensor:
        return state.abs().amax(dim=(-3, -2, -1)).sum(dim=-1)

    # ------------------------------------------------------------------ diagnostics
    def energy(self, state: torch.Tensor) -> torch.Tensor:
        """Mean kinetic energy ``<|u|^2> / 2`` per batch member."""
        return 0.5 * (state ** 2).sum(dim=-4).mean(dim=(-3, -2, -1))

    def enstrophy(self, state: torch.Tensor) -> torch.Tensor:
        """Mean enstrophy ``<|omega|^2> / 2`` per batch member."""
        return 0.5 * (self.vorticity(state) ** 2).sum(dim=-4).mean(dim=(-3, -2, -1))

    def dissipation(self, state: torch.Tensor) -> torch.Tensor:
        """Viscous dissipation rate ``epsilon = nu <|omega|^2> = 2 nu <S_ij S_ij>`` (periodic box)."""
        return 2 * self.viscosity * self.enstrophy(state)

    # ------------------------------------------------------------------ checks
    def check_state(self, state: torch.Tensor):
        if state.dim() < 5 or tuple(state.shape[-4:]) != (3,) + self.grid.shape:
            n = self.grid.n
            raise ValueError(f"NavierStokes3D: state must have shape (batch, 3, {n}, {n}, {n}), got {tuple(state.shape)}")
