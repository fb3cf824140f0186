"""Two-dimensional incompressible Navier-Stokes in vorticity form.

    d(omega)/dt + u . grad(omega) = nu lap(omega) - drag * omega + f

on ``[0, L)^2``, ``omega = dv/dx - du/dy``, streamfunction ``omega = -lap(psi)``,
``u = dpsi/dy``, ``v = -dpsi/dx``. State ``(batch, n, n)`` indexed ``[y, x]``.

The advection term uses the form of Basdevant et al. (1981, Mon. Wea. Rev.
109), which needs only the two velocity components:

    u . grad(omega) = (d_xx - d_yy)(u v) + d_xy (v^2 - u^2)

so a stage costs 2 inverse + 2 forward real FFTs (instead of 3 + 2). Dealiasing
by the 2/3 rule (Orszag 1971): the velocities are built from the modes
``|m_d| <= K = (n - 1) // 3`` only (`SpectralGrid.dealias_cutoff`) and the product's spectrum is truncated to the same
set, which makes ``N`` the exact Galerkin projection of the advection of the
truncated field (no aliasing: ``3 K < n``).
"""

from __future__ import annotations

import threading

import torch

from solvers.equation import SpectralEquation
from solvers.integrators import HeldTendency

__all__ = ["NavierStokes2D"]


class NavierStokes2D(SpectralEquation):
    """``omega_t = -u . grad(omega) + nu lap(omega) - drag omega + f``, pseudo-spectral, batched.

    ``NavierStokes2D(n, viscosity=..., drag=0.0,
    forcing=None, length=2*pi, dtype=..., device=...)``.
    """

    ndim = 2
    field_name = "omega"
    _owns_nonlinear = True

    def __init__(self, n, viscosity, drag=0.0, forcing=None, length=2 * 3.141592653589793,
                 dtype=torch.float32, device=None):
        super().__init__(n, viscosity, drag=drag, forcing=forcing, length=length, dtype=dtype, device=device)
        g = self.grid
        mask = g.dealias
        # omega_hat -> (u_hat, v_hat) of the truncated field, stacked on a new axis -3
        self._velocity_ops = torch.stack([g.iky * g.inverse_k2 * mask, -g.ikx * g.inverse_k2 * mask])
        # -(FFT of u.grad(omega)) = (kx^2 - ky^2) FFT(uv) + kx ky FFT(v^2 - u^2), truncated
        self._advection_ops = torch.stack([(g.kx ** 2 - g.ky ** 2) * mask, g.kx * g.ky * mask])
        # The hot loop works on the columns m_x <= K only (the others are zero
        # after the 2/3 truncation): pruned transforms and smaller elementwise work.
        self._kept_columns = g.dealias_cutoff + 1
        self._velocity_ops_kept = self._velocity_ops[..., :self._kept_columns].contiguous()
        # real (2, n, kept, 2): multiplies torch.view_as_real of a spectral field (the
        # trailing axis duplicated, not broadcast: much faster elementwise kernels)
        ops = self._advection_ops[..., :self._kept_columns, None]
        self._advection_ops_kept = ops.expand(*ops.shape[:-1], 2).contiguous()
        # the same, [m_x, m_y]-ordered: the y transform's natural output layout
        self._advection_ops_kept_t = self._advection_ops_kept.transpose(-2, -3).contiguous()

    def velocity_hat(self, vorticity_hat: torch.Tensor) -> torch.Tensor:
        """``(u_hat, v_hat)`` of the 2/3-truncated vorticity, stacked: ``(..., 2, n, n//2+1)``."""
        return self._velocity_ops * vorticity_hat.unsqueeze(-3)

    def nonlinear_hat(self, state_hat: torch.Tensor) -> torch.Tensor:
        """``-P_{2/3}[u . grad(omega)]`` with u from the truncated vorticity (4 real FFTs).

        The transforms are pruned to the kept columns ``m_x <= K``: the inverse
        is a complex FFT over y on those columns then a real inverse FFT over x
        (zero-padded), the forward a real FFT over x then a complex FFT over y on
        the kept columns only (the same sums as ``irfftn``/``rfftn``, about half the
        work). Without autograd recording, the elementwise work is fused in place.
        """
        g = self.grid
        n, kept = g.n, self._kept_columns
        uv_hat = self._velocity_ops_kept * state_hat[..., :kept].unsqueeze(-3)
        uv = torch.fft.irfft(torch.fft.ifft(uv_hat, dim=-2), n=n, dim=-1)
        u, v = uv.unbind(-3)
        if torch.is_grad_enabled() and state_hat.requires_grad:
            products = torch.stack([u * v, v * v - u * u], dim=-3)
            products_hat = torch.fft.fft(torch.fft.rfft(products, dim=-1)[..., :kept], dim=-2)
            out = (self._advection_ops_kept[..., 0] * products_hat).sum(dim=-3)
            return torch.nn.functional.pad(out, (0, n // 2 + 1 - kept))
        products = _advection_products(u, v, torch.empty_like(uv))
        # the y transform on the transposed kept columns: its output is [m_x, m_y]-ordered
        # and contiguous, so the multiply-adds stream; one transposing copy into `out`
        products_hat = torch.fft.fft(torch.fft.rfft(products, dim=-1)[..., :kept].transpose(-1, -2), dim=-1)
        products_hat = torch.view_as_real(products_hat)
        ops = self._advection_ops_kept_t
        adv = products_hat[..., 0, :, :, :] * ops[0]
        adv.addcmul_(products_hat[..., 1, :, :, :], ops[1])
        out = state_hat.new_zeros(state_hat.shape[:-2] + g.spectral_shape)
        out[..., :kept] = torch.view_as_complex(adv).transpose(-1, -2)
        return out

    def kept_block(self, closure=None) -> "KeptColumns | None":
        """The kept-columns layout of the fused step (`KeptColumns`), or None where it does
        not apply: with a closure called at the stages (a `HeldTendency`, the closure held
        over the step, does apply), or a forcing that is unsteady or has modes ``m_x > K``."""
        held = isinstance(closure, HeldTendency)
        if (closure is not None and not held) or (self.forcing is not None and self._steady_forcing_hat is None):
            return None
        if "_kept_block" not in self.__dict__:
            f = self._steady_forcing_hat
            ok = f is None or not bool(f[..., self._kept_columns:].abs().amax() > 0)
            self._kept_block = KeptColumns(self) if ok else None
        return self._kept_block

    def velocity(self, vorticity: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Physical velocity ``(u, v)`` of a vorticity field (all modes)."""
        return self.grid.velocity(vorticity)

    def streamfunction(self, vorticity: torch.Tensor) -> torch.Tensor:
        return self.grid.streamfunction(vorticity)

    def max_speed(self, state: torch.Tensor) -> torch.Tensor:
        u, v = self.velocity(state)
        return u.abs().amax(dim=(-2, -1)) + v.abs().amax(dim=(-2, -1))

    def max_speed_hat(self, state_hat: torch.Tensor) -> torch.Tensor:
        """``max|u| + max|v|`` of the 2/3-truncated field (the velocity that advects), per
        batch member, from the spectral state: the pruned inverse transforms of the step."""
        n, kept = self.n, self._kept_columns
        uv_hat = self._velocity_ops_kept * state_hat[..., :kept].unsqueeze(-3)
        uv = torch.fft.irfft(torch.fft.ifft(uv_hat, dim=-2), n=n, dim=-1)
        return uv.abs().amax(dim=(-2, -1)).sum(dim=-1)

    # ------------------------------------------------------------------ diagnostics
    def energy(self, state: torch.Tensor) -> torch.Tensor:
        """Mean kinetic energy ``<u^2 + v^2> / 2`` per batch member."""
        u, v = self.velocity(state)
        return 0.5 * (u ** 2 + v ** 2).mean(dim=(-2, -1))

    def enstrophy(self, state: torch.Tensor) -> torch.Tensor:
        """Mean enstrophy ``<omega^2> / 2`` per batch member."""
        return 0.5 * (state ** 2).mean(dim=(-2, -1))


class KeptColumns:
    """The state of the fused (no-autograd) ETDRK4 step: the kept columns ``m_x <= K`` only.

    Outside them the explicit term ``N(w) + f`` is zero (2/3 truncation, forcing checked
    by `NavierStokes2D.kept_block`), so those modes evolve by the exact linear factor
    ``e^{dt L}`` and only the kept columns enter the stages. A closure held over the step
    (`HeldTendency`, value ``c``) joins the forcing on the kept columns (`source`); elsewhere
    it is a constant source, ``w -> R w + S c`` with the integrator's factors (the stages'
    sums with ``N = 0``, formed by the integrator). Inside, fields are stored
    ``[m_x, m_y]``-ordered, ``(batch, kept, n)``, as real views ``(batch, kept, n, 2)``:
    the y transforms then run on contiguous rows and every transposition is one copy
    whose source rows are not a power-of-two bytes apart (rows padded by ``_PAD``
    entries: a power-of-two stride maps a column onto one cache set and made these
    copies ~6x slower). Same sums as `NavierStokes2D.nonlinear_hat`, other rounding.
    Work buffers are cached per thread, batch and dtype.
    """

    _PAD = 8

    def __init__(self, equation: NavierStokes2D):
        g = equation.grid
        self.n, self.kept, self.half = g.n, equation._kept_columns, g.n // 2 + 1
        self.device, self.real_dtype, self.complex_dtype = g.device, g.dtype, g.complex_dtype
        self.velocity_ops = equation._velocity_ops_kept.transpose(-1, -2).contiguous()   # (2, kept, n)
        self.advection_ops = equation._advection_ops_kept_t                                # (2, kept, n, 2)
        f = equation._steady_forcing_hat
        self.forcing = None if f is None else torch.view_as_real(self._columns(f)).contiguous()
        self._buffers: dict = {}

    def _columns(self, c: torch.Tensor) -> torch.Tensor:
        """``c[..., m_y, m_x]`` on the kept columns, ``[m_x, m_y]``-ordered and contiguous."""
        return c[..., :self.kept].transpose(-1, -2).contiguous()

    def coefficient(self, c: torch.Tensor) -> torch.Tensor:
        """A real diagonal coefficient on the spectral grid -> ``(kept, n, 2)`` (the real
        views' trailing axis duplicated, as in `solvers.integrators`)."""
        c = self._columns(c)
        return c.unsqueeze(-1).expand(*c.shape, 2).contiguous()

    def _work(self, batch: int) -> dict:
        key = (threading.get_ident(), batch)
        if key not in self._buffers:
            n, kept, pad = self.n, self.kept, self._PAD
            cd = dict(device=self.device, dtype=self.complex_dtype)
            self._buffers[key] = {
                "padded": torch.empty(batch, 2, kept, n + pad, **cd)[..., :n],
                "spectrum": torch.zeros(batch, 2, n, self.half, **cd),   # zero beyond the kept columns
                "products": torch.empty(batch, 2, n, n, device=self.device, dtype=self.real_dtype),
            }
        return self._buffers[key]

    def new_state(self, batch: int) -> torch.Tensor:
        """An uninitialised real state ``(batch, kept, n, 2)`` with padded rows (for `unpack`)."""
        n = self.n
        storage = torch.empty(batch, self.kept, n + self._PAD, device=self.device, dtype=self.complex_dtype)
        return torch.view_as_real(storage[..., :n])

    def pack(self, w_hat: torch.Tensor) -> torch.Tensor:
        """Spectral state ``(batch, n, n//2+1)`` -> real kept-columns state ``(batch, kept, n, 2)``."""
        return torch.view_as_real(w_hat[..., :self.kept].transpose(-1, -2).contiguous())

    def unpack(self, state: torch.Tensor, w_hat: torch.Tensor, rest: torch.Tensor) -> torch.Tensor:
        """The full spectral state: ``state`` on the kept columns, ``rest * w_hat`` on the others."""
        out = torch.empty_like(w_hat)
        out[..., :self.kept] = torch.view_as_complex(state).transpose(-1, -2)
        torch.mul(w_hat[..., self.kept:], rest[..., self.kept:], out=out[..., self.kept:])
        return out

    def source(self, held: "HeldTendency | None" = None) -> "torch.Tensor | None":
        """``f + c`` on the kept columns, real ``(kept, n, 2)`` or ``(batch, kept, n, 2)``, for
        `explicit` (``c`` the value of a held closure; None without forcing and closure)."""
        if held is None:
            return self.forcing
        c = torch.view_as_real(self._columns(held.value_hat))
        return c if self.forcing is None else c.add_(self.forcing)

    def add_held(self, out: torch.Tensor, held: "HeldTendency | None", factor: torch.Tensor) -> torch.Tensor:
        """``out + factor * c`` beyond the kept columns (in place; ``out`` from `unpack`), where
        a held closure ``c`` is the only explicit term; ``out`` unchanged without one."""
        if held is not None:
            kept = self.kept
            out[..., kept:].addcmul_(held.value_hat[..., kept:], factor[..., kept:])
        return out

    def explicit(self, state: torch.Tensor, source: "torch.Tensor | None" = None) -> torch.Tensor:
        """``N(w) + f`` on the kept columns, real ``(batch, kept, n, 2)`` (a fresh tensor);
        ``source`` (from `source`) replaces the forcing ``f``."""
        source = self.forcing if source is None else source
        n, kept = self.n, self.kept
        work = self._work(state.shape[0])
        w = torch.view_as_complex(state)
        # velocities: y transform on contiguous [m_x, m_y] rows, one transposition into the
        # zero-padded half spectrum, x transform
        uv_hat = torch.fft.ifft(self.velocity_ops * w.unsqueeze(-3), dim=-1)
        work["padded"].copy_(uv_hat)
        work["spectrum"][..., :kept].copy_(work["padded"].transpose(-1, -2))
        uv = torch.fft.irfft(work["spectrum"], n=n, dim=-1)
        u, v = uv.unbind(-3)
        products = _advection_products(u, v, work["products"])
        # x transform, then the y transform of the kept columns (torch transposes them into
        # contiguous rows on the way: a copy with a non-power-of-two source stride)
        products_hat = torch.fft.fft(torch.fft.rfft(products, dim=-1)[..., :kept].transpose(-1, -2), dim=-1)
        products_hat = torch.view_as_real(products_hat)
        ops = self.advection_ops
        out = (products_hat[:, 0] * ops[0] if source is None
               else torch.addcmul(source, products_hat[:, 0], ops[0]))
        return out.addcmul_(products_hat[:, 1], ops[1])


def _advection_products(u: torch.Tensor, v: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """``(u v, v^2 - u^2)`` written into ``out[..., 0 | 1, :, :]`` without temporaries (the
    products whose transforms give the Basdevant advection term)."""
    uu, vv = out.unbind(-3)
    torch.mul(u, v, out=uu)
    torch.mul(v, v, out=vv).addcmul_(u, u, value=-1)
    return out
