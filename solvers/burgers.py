"""The viscous Burgers equation in one dimension.

    u_t + (u^2 / 2)_x = nu u_xx - drag * u + f

on ``[0, L)``, state ``(batch, n)``. The conservative form is dealiased by the
2/3 rule: ``u`` is truncated to ``|m| <= K = (n - 1) // 3`` before squaring and the
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
    _owns_nonlinear = True

    def __init__(self, n, viscosity, length=2 * math.pi, forcing=None, drag=0.0,
                 dtype=torch.float32, device=None):
        super().__init__(n, viscosity, drag=drag, forcing=forcing, length=length, dtype=dtype, device=device)
        g = self.grid
        self._truncate = g.dealias
        self._flux_op = -0.5 * g.ikx * g.dealias  # -(1/2) d/dx, truncated
        # the hot loop only touches the kept modes m <= K (pruned transforms)
        self._kept = g.dealias_cutoff + 1
        self._flux_op_kept = self._flux_op[:self._kept].contiguous()

    def nonlinear_hat(self, state_hat: torch.Tensor) -> torch.Tensor:
        """``-P_{2/3}[(u^2 / 2)_x]`` of the truncated velocity (2 real FFTs).

        Only the kept modes ``m <= K`` enter the transforms (the inverse
        zero-pads them); the result is zero beyond them.
        """
        n, kept = self.n, self._kept
        u = torch.fft.irfft(state_hat[..., :kept], n=n, dim=-1)  # the 2/3 truncation
        if torch.is_grad_enabled() and state_hat.requires_grad:
            out = self._flux_op_kept * torch.fft.rfft(u * u, dim=-1)[..., :kept]
            return torch.nn.functional.pad(out, (0, n // 2 + 1 - kept))
        square_hat = torch.fft.rfft(u.mul_(u), dim=-1)[..., :kept]
        out = state_hat.new_zeros(state_hat.shape[:-1] + (n // 2 + 1,))
        torch.mul(square_hat, self._flux_op_kept, out=out[..., :kept])
        return out

    def max_speed(self, state: torch.Tensor) -> torch.Tensor:
        return state.abs().amax(dim=-1)

    def energy(self, state: torch.Tensor) -> torch.Tensor:
        """Mean energy ``<u^2> / 2`` per batch member."""
        return 0.5 * (state ** 2).mean(dim=-1)
