"""Classical eddy-viscosity closures of the 3D velocity LES (``navier_stokes_3d``).

The state is the LES velocity ``u`` ``(batch, 3, n, n, n)``; the tendency is
``c(u) = div(2 nu_e S)`` with the resolved strain rate
``S_ij = (d_j u_i + d_i u_j) / 2`` and ``|S| = sqrt(2 S_ij S_ij)`` (the LES solver
projects ``c`` onto divergence-free fields; the pressure absorbs the trace).
``D = length / n`` is the LES grid spacing (as in 1D/2D, see `closure.les.baselines`).

- `Smagorinsky3D` (Smagorinsky 1963): ``nu_e = (Cs D)^2 |S|``, ``Cs = run.smagorinsky_cs``
  (0.17 for the sharp spectral cutoff: Lilly 1967's value for a k^-5/3 inertial range).
  It drains energy: ``<u . div(2 nu_e S)> = -<2 nu_e S_ij S_ij> <= 0``.
- `Leith3D` (Leith 1968/1996, in its 3D form): ``nu_e = (C_L D)^3 |grad omega|`` with
  ``|grad omega| = sqrt(d_j omega_i d_j omega_i)``, ``C_L = run.leith_cl``; the same
  stress form, so it drains energy too. Like its 2D namesake it switches off in
  smooth (small vorticity-gradient) regions where Smagorinsky's ``|S|`` does not.
- `DynamicSmagorinsky3D` (Germano et al. 1991, least squares of Lilly 1992), in
  the tendency form used for 1D/2D: with the test filter ``T``, the LES's own
  dealiased nonlinear term ``N`` and the unit model ``m_D(u) = P div(2 D^2 |S| S)``,

      L = T N(u) - N(T u),   M = m_{alpha D}(T u) - T m_D(u),   c = <L . M>_+ / <M . M>

  averaged over the homogeneous directions (the whole periodic box) per batch
  member and clipped at zero (no backscatter). ``alpha`` and ``D`` follow the
  dataset's filter exactly as in 2D (`closure.les.baselines.dynamic_widths`).
"""

from __future__ import annotations

import math

import torch

import solvers
from closure.data.filters import Filter
from closure.les.baselines import Closure, dynamic_widths
from solvers.spectral import SpectralGrid

__all__ = ["Smagorinsky3D", "Leith3D", "DynamicSmagorinsky3D"]


class _VelocityClosure(Closure):
    """A closure of the 3D LES velocity on an ``n^3`` periodic grid (operators cached per device/dtype)."""

    ndim = 3

    def __init__(self, n: int, length: float = 2 * math.pi):
        super().__init__()
        self.n, self.length = int(n), float(length)
        self._grids: dict = {}

    @classmethod
    def for_equation(cls, equation, **kwargs):
        return cls(equation.grid.n, equation.grid.length, **kwargs)

    @property
    def spacing(self) -> float:
        return self.length / self.n

    def grid(self, state: torch.Tensor) -> SpectralGrid:
        key = (state.device, state.dtype)
        if key not in self._grids:
            self._grids[key] = SpectralGrid(self.n, self.length, 3, state.dtype, state.device)
        return self._grids[key]

    def _check(self, state: torch.Tensor):
        if state.dim() != 5 or tuple(state.shape[1:]) != (3, self.n, self.n, self.n):
            raise ValueError(f"{type(self).__name__}: expected a velocity (batch, 3, {self.n}, {self.n}, {self.n}), "
                             f"got {tuple(state.shape)}")

    @staticmethod
    def strain(g: SpectralGrid, u_hat: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(S, |S|)``: the strain-rate tensor ``(batch, 3, 3, *grid)`` and ``sqrt(2 S_ij S_ij)``."""
        grad = g.to_physical(torch.stack([ik * u_hat for ik in g.gradient_operators], dim=2))  # d_j u_i
        S = 0.5 * (grad + grad.transpose(1, 2))
        return S, torch.sqrt(2 * (S * S).sum(dim=(1, 2)))

    @staticmethod
    def stress_divergence(g: SpectralGrid, nu: torch.Tensor, S: torch.Tensor) -> torch.Tensor:
        """``div(2 nu S)_i = sum_j d_j (2 nu S_ij)`` of a viscosity ``(batch, *grid)``, physical."""
        flux_hat = g.to_spectral(2 * nu.unsqueeze(1).unsqueeze(1) * S)
        return g.to_physical(sum(ik * flux_hat[:, :, j] for j, ik in enumerate(g.gradient_operators)))

    def extra_repr(self) -> str:
        return f"n={self.n}, length={self.length:g}, ndim=3"


class Smagorinsky3D(_VelocityClosure):
    """``c(u) = div(2 (Cs D)^2 |S| S)``."""

    def __init__(self, n: int, length: float = 2 * math.pi, cs: float = 0.17):
        super().__init__(n, length)
        self.cs = float(cs)

    def eddy_viscosity(self, state: torch.Tensor) -> torch.Tensor:
        g = self.grid(state)
        return (self.cs * self.spacing) ** 2 * self.strain(g, g.to_spectral(state))[1]

    def forward(self, state: torch.Tensor) -> torch.Tensor:
        self._check(state)
        g = self.grid(state)
        S, magnitude = self.strain(g, g.to_spectral(state))
        return self.stress_divergence(g, (self.cs * self.spacing) ** 2 * magnitude, S)

    def extra_repr(self) -> str:
        return super().extra_repr() + f", cs={self.cs:g}"


class Leith3D(_VelocityClosure):
    """``c(u) = div(2 (C_L D)^3 |grad omega| S)``."""

    def __init__(self, n: int, length: float = 2 * math.pi, cl: float = 0.2):
        super().__init__(n, length)
        self.cl = float(cl)

    @staticmethod
    def vorticity_gradient(g: SpectralGrid, u_hat: torch.Tensor) -> torch.Tensor:
        """``|grad omega| = sqrt(d_j omega_i d_j omega_i)``, ``(batch, *grid)``."""
        ikx, iky, ikz = g.gradient_operators
        ux, uy, uz = u_hat.unbind(1)
        omega_hat = torch.stack([iky * uz - ikz * uy, ikz * ux - ikx * uz, ikx * uy - iky * ux], dim=1)
        grad = g.to_physical(torch.stack([ik * omega_hat for ik in g.gradient_operators], dim=2))
        return torch.sqrt((grad * grad).sum(dim=(1, 2)))

    def eddy_viscosity(self, state: torch.Tensor) -> torch.Tensor:
        g = self.grid(state)
        return (self.cl * self.spacing) ** 3 * self.vorticity_gradient(g, g.to_spectral(state))

    def forward(self, state: torch.Tensor) -> torch.Tensor:
        self._check(state)
        g = self.grid(state)
        u_hat = g.to_spectral(state)
        S, _ = self.strain(g, u_hat)
        return self.stress_divergence(g, (self.cl * self.spacing) ** 3 * self.vorticity_gradient(g, u_hat), S)

    def extra_repr(self) -> str:
        return super().extra_repr() + f", cl={self.cl:g}"


class DynamicSmagorinsky3D(_VelocityClosure):
    """Germano-Lilly dynamic Smagorinsky, coefficient averaged over the box (module docstring)."""

    def __init__(self, n: int, length: float = 2 * math.pi, test_width: float = 2.0,
                 filter_type: str = "spectral", filter_width: float = 1.0, scale: float = 1.0):
        super().__init__(n, length)
        self.scale = float(scale)
        self.filter_type, self.filter_width, self.test_width = filter_type, float(filter_width), float(test_width)
        grid, test = dynamic_widths(filter_type, filter_width, test_width)
        self.grid_width = grid * self.spacing
        self.ratio = test / grid
        self._equations: dict = {}
        self._transfer: dict = {}

    @classmethod
    def for_filter(cls, equation, filter_config, **kwargs):
        return cls.for_equation(equation, filter_type=filter_config.type, filter_width=filter_config.width, **kwargs)

    def _les(self, state: torch.Tensor):
        """The LES's nonlinear operator (same grid and 2/3 rule; no viscosity or forcing needed)."""
        key = (state.device, state.dtype)
        if key not in self._equations:
            self._equations[key] = solvers.NavierStokes3D(self.n, viscosity=0.0, length=self.length,
                                                          dtype=state.dtype, device=state.device)
        return self._equations[key]

    def _test_transfer(self, state: torch.Tensor) -> torch.Tensor:
        key = (state.device, state.dtype)
        if key not in self._transfer:
            g = self.grid(state)
            if self.filter_type == "spectral":
                self._transfer[key] = g.truncation_mask(self.n / (2 * self.test_width), strict=True)
            else:
                self._transfer[key] = Filter(self.filter_type, self.n, self.length, self.test_width).transfer(g)
        return self._transfer[key]

    def _unit_model_hat(self, g: SpectralGrid, u_hat: torch.Tensor, width: float):
        S, magnitude = self.strain(g, u_hat)
        nu = width ** 2 * magnitude
        return nu, S, solvers.solenoidal_projection(g.to_spectral(self.stress_divergence(g, nu, S)), g)

    def germano(self, state: torch.Tensor):
        """``(L, M, nu1, S)``: the Germano identity's terms (physical) and the unit model's pieces."""
        g, les, T = self.grid(state), self._les(state), self._test_transfer(state)
        u_hat = g.to_spectral(state)
        tu_hat = T * u_hat
        L = g.to_physical(T * les.nonlinear_hat(u_hat) - les.nonlinear_hat(tu_hat))
        nu1, S, m1_hat = self._unit_model_hat(g, u_hat, self.grid_width)
        _, _, m2_hat = self._unit_model_hat(g, tu_hat, self.ratio * self.grid_width)
        return L, g.to_physical(m2_hat - T * m1_hat), nu1, S

    def coefficient(self, state: torch.Tensor) -> torch.Tensor:
        """``c = Cs^2`` relative to ``D``, one per batch member ``(batch,)``."""
        self._check(state)
        return self._coefficient(*self.germano(state)[:2], state.dtype)

    @staticmethod
    def _coefficient(L, M, dtype) -> torch.Tensor:
        dims = (1, 2, 3, 4)
        lm, mm = (L * M).mean(dim=dims), (M * M).mean(dim=dims)
        return lm.clamp_min(0) / mm.clamp_min(torch.finfo(dtype).tiny)

    def forward(self, state: torch.Tensor) -> torch.Tensor:
        self._check(state)
        L, M, nu1, S = self.germano(state)
        c = self._coefficient(L, M, state.dtype).reshape(-1, 1, 1, 1)
        return self.stress_divergence(self.grid(state), self.scale * c * nu1, S)

    def extra_repr(self) -> str:
        return super().extra_repr() + (f", filter={self.filter_type} {self.filter_width:g}, "
                                       f"test_width={self.test_width:g}, alpha={self.ratio:.4g}")
