"""Classical subgrid-scale closures for the LES: eddy-viscosity baselines.

A closure is a ``torch.nn.Module`` mapping a physical LES state to an extra
tendency of the same shape (docs/conventions.md: ``d(field)/dt = R_les(field) + c(field)``):
1D Burgers velocity ``(batch, n)`` or 2D vorticity ``(batch, n, n)`` indexed
``[y, x]``. All are batched, differentiable and follow the device and dtype of
the state they are given (the spectral operators are built on first use and
cached per device/dtype). Closures compose: ``smagorinsky + learned`` or
``Sum(a, b, ...)`` adds their tendencies, the way pyqg adds parameterizations.

Models (``D`` is the LES grid spacing ``length / n_les``; see "Length scale"):

- ``none``: the zero tendency (a plain, under-resolved LES).
- ``smagorinsky`` (Smagorinsky 1963, vorticity form):

      2D:  nu_e = (Cs D)^2 |S|,  |S| = sqrt(4 psi_xy^2 + (psi_xx - psi_yy)^2),
           c(omega) = div(nu_e grad omega)
      1D:  nu_e = (Cs D)^2 |u_x|,  tau = -2 nu_e u_x,
           c(u) = -(1/2) d tau / dx = d/dx(nu_e u_x)

  The 1D form is the convention of the filtered Burgers equation,
  ``u_t + (u^2/2)_x = nu u_xx - (1/2) tau_x`` with ``tau = bar(uu) - bar(u) bar(u)``
  (the factor 1/2 of the advection ``(u^2/2)_x``), that pyBurgers uses with its
  ``Cs = 0.16``: ``tau = -2 Cs^2 D^2 |u_x| u_x``. Both drain the resolved
  invariant exactly (also discretely: the spectral derivative is skew-adjoint
  on the periodic grid), since ``<omega div(nu grad omega)> = -<nu |grad omega|^2> <= 0``
  and ``<u d/dx(nu u_x)> = -<nu u_x^2> <= 0``.

- ``leith`` (Leith 1968/1996): ``nu_e = (C_L D)^3 |grad omega|`` and the same
  divergence form. In 1D the vorticity gradient's analogue is the strain
  gradient: ``nu_e = (C_L D)^3 |u_xx|``, ``c(u) = d/dx(nu_e u_x)``.

- ``dynamic_smagorinsky`` (Germano et al. 1991, least squares of Lilly 1992):
  with the test filter ``T`` (see "Filter widths of the dynamic model"), the
  solver's dealiased nonlinear term ``N`` (2D: ``-u . grad omega``; 1D:
  ``-(u^2/2)_x``) and the unit-coefficient model ``m_D(w) = D^2 div(|S(w)| grad w)``
  (1D: ``D^2 d/dx(|u_x| u_x)``), the Germano identity for the SGS tendency reads
  ``L = c M`` with

      L = T N(w) - N(T w)                      (resolved part of the test-level SGS term)
      M = m_{alpha D}(T w) - T m_D(w)          (the model at the two levels)

  and ``c = <L M>_+ / <M M>`` (``c = Cs^2``), averaged over the whole domain
  per batch member (default) or locally (``averaging="local"``: the products
  are smoothed by the test filter and ``c(x) = max(<LM>, 0) / <MM>`` is used
  inside the divergence, ``div(c D^2 |S| grad w)``, which keeps the drain).
  Clipping at zero removes backscatter and keeps the model dissipative.

- ``dealias_residual``: ``c(w) = N(w) - N_les(w)``, the field's own advection
  computed exactly (products on a 2n grid, modes ``|m| < n/2``) minus the LES's
  2/3-dealiased one (`closure.nn.features.dealias_residual`): what the LES's 2/3
  rule discards of the resolved field's advection. Not dissipative by itself; a
  learned closure fed this feature must beat it (and ``smagorinsky+dealias_residual``)
  to claim it learned more than the truncation.

Length scale of the constant-coefficient models: ``D = length / n_les``, the
LES grid spacing. The LES fields are the spectrally truncated ``P G w``; for
the spectral filter the cutoff scale is exactly the grid spacing, and for
Gaussian/box filters any ratio to the filter width is absorbed in the constant
(Cs = 0.17 with D = dx is the usual 2D value, 0.16 in 1D after pyBurgers;
`run.smagorinsky_cs`, `run.leith_cl` set them; `closure calibrate` fits them).

Filter widths of the dynamic model. Only the ratio ``alpha`` of the test-level
to the grid-level filter width enters ``c D^2`` (the closure's tendency), and
it follows from the dataset's filter ``G`` (type, width ``D_f`` in LES spacings
``dx``) and the test filter ``T`` (width ``D_t``, default 2 dx), whose
composition ``T G`` is the filter of the test-level field ``T P G w``:

- gaussian: ``D = D_f``; ``T`` Gaussian; the transfer functions multiply,
  ``exp(-k^2 D_f^2 / 24) exp(-k^2 D_t^2 / 24) = exp(-k^2 (D_f^2 + D_t^2) / 24)``,
  so ``T G`` is the Gaussian of width ``alpha D``, ``alpha = sqrt(1 + (D_t / D_f)^2)``
  (exact; the dataset's Gaussian of width 2 dx with ``D_t = 2 dx``: grid 2 dx,
  test level sqrt(8) dx, alpha = sqrt(2));
- box: ``D = D_f``; ``T`` a box; second moments add (a box of width ``D`` has
  variance ``D^2 / 12``, as the Gaussian above), so the same
  ``alpha = sqrt(1 + (D_t / D_f)^2)`` holds to second order in ``k D``;
- spectral: ``D = dx`` (the cutoff ``pi / dx`` of ``P``); ``T`` the sharp cutoff
  at ``pi / D_t`` (modes ``|m_d| < n / (2 D_t / dx)``), and the composition of
  two cutoffs is the narrower one: ``alpha = D_t / dx`` exactly.

A fixed ratio of 2 with a Gaussian test filter, whatever the dataset's filter,
underestimates the dissipation on Gaussian-filtered data (alpha = sqrt(2)
there): over the quickstart dataset the enstrophy transfer ``<omega c>`` is
-1.06 for the exact SGS, -0.33 with a ratio of 2, -0.82 with alpha = sqrt(2)
(docs/baselines.md).

Factory: ``make_closure(name, les_equation, config, model_dir=None)`` with
``name`` one of ``none``, ``smagorinsky``, ``dynamic_smagorinsky``, ``leith``,
``dealias_residual``, ``learned`` (or a training run directory), a calibration
run directory (``calibration.json``: the classical closure with its fitted
constant), or a ``+``-separated sum of them.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Callable, Optional, Sequence

import torch
from torch import nn

from closure.data.filters import Filter
from closure.errors import ClosureError
from closure.nn import load_closure
from closure.nn.features import dealias_residual
from solvers.spectral import SpectralGrid

__all__ = [
    "Closure", "NoClosure", "Smagorinsky", "Leith", "DynamicSmagorinsky", "DealiasResidual", "Sum",
    "BASELINES", "CLOSURES", "CALIBRATION_FILE", "CALIBRATED_CONSTANTS", "make_closure", "classical_closure",
    "is_baseline", "is_calibrated_run", "dynamic_widths",
]


class _Ops:
    """Spectral operators of an ``n``-point periodic grid of ``length`` on one device and dtype.

    Taken from a float64 `solvers.SpectralGrid` and cast (the same operators as the solver's).
    """

    def __init__(self, n: int, length: float, ndim: int, dtype: torch.dtype, device: torch.device):
        g = SpectralGrid(n, length, ndim, torch.float64, torch.device(device))
        cdtype = torch.complex64 if dtype == torch.float32 else torch.complex128
        self.ndim, self.n = ndim, n
        self.ikx = g.ikx.to(cdtype)
        self.k2 = g.k2.to(dtype)
        self.dealias = g.dealias.to(dtype)
        self.shape = g.shape
        self.dims = g.dims
        if ndim == 2:
            inv = g.inverse_k2
            self.iky = g.iky.to(cdtype)
            self.inverse_k2 = inv.to(dtype)
            # psi_xx, psi_yy, psi_xy from omega_hat (psi_hat = omega_hat / k^2)
            self.psi_xx = (-(g.kx ** 2) * inv).to(dtype)
            self.psi_yy = (-(g.ky ** 2) * inv).to(dtype)
            self.psi_xy = (-(g.kx * g.ky) * inv).to(dtype)

    def fft(self, f: torch.Tensor) -> torch.Tensor:
        return torch.fft.rfftn(f, dim=self.dims)

    def ifft(self, f_hat: torch.Tensor) -> torch.Tensor:
        return torch.fft.irfftn(f_hat, s=self.shape, dim=self.dims)


class Closure(nn.Module):
    """Base class of the SGS closures: ``closure(state) -> tendency``; ``a + b`` composes."""

    def __add__(self, other):
        return Sum(self, other)

    def __radd__(self, other):
        if other == 0:  # sum([...]) starts from 0
            return self
        return Sum(other, self)


class _GridClosure(Closure):
    """A closure on an ``n``-point periodic LES grid (1D or 2D) with cached spectral operators."""

    def __init__(self, n: int, length: float = 2 * math.pi, ndim: int = 2):
        super().__init__()
        if ndim not in (1, 2):
            raise ValueError(f"ndim must be 1 or 2, got {ndim}")
        self.n, self.length, self.ndim = int(n), float(length), int(ndim)
        self._cache: dict = {}

    @classmethod
    def for_equation(cls, equation, **kwargs):
        """Build for an LES equation (its grid's size, length and dimension)."""
        return cls(equation.grid.n, equation.grid.length, equation.grid.ndim, **kwargs)

    @property
    def spacing(self) -> float:
        """``D = length / n``: the LES grid spacing."""
        return self.length / self.n

    def ops(self, state: torch.Tensor) -> _Ops:
        key = (state.device, state.dtype)
        if key not in self._cache:
            if state.dtype not in (torch.float32, torch.float64):
                raise ValueError(f"{type(self).__name__}: state dtype must be float32 or float64, got {state.dtype}")
            self._cache[key] = _Ops(self.n, self.length, self.ndim, state.dtype, state.device)
        return self._cache[key]

    def _check(self, state: torch.Tensor):
        shape = tuple(state.shape[-self.ndim:])
        if state.dim() < self.ndim + 1 or shape != (self.n,) * self.ndim:
            raise ValueError(f"{type(self).__name__}: expected a state (batch, {', '.join([str(self.n)] * self.ndim)}), "
                             f"got {tuple(state.shape)}")

    # ---------------------------------------------------------------- shared pieces
    def _gradient_hat(self, o: _Ops, w_hat: torch.Tensor) -> list[torch.Tensor]:
        return [o.ikx * w_hat] if self.ndim == 1 else [o.ikx * w_hat, o.iky * w_hat]

    def _divergence(self, o: _Ops, fluxes: Sequence[torch.Tensor]) -> torch.Tensor:
        """``sum_d d/dx_d flux_d`` of physical fluxes, physical."""
        if self.ndim == 1:
            return o.ifft(o.ikx * o.fft(fluxes[0]))
        return o.ifft(o.ikx * o.fft(fluxes[0]) + o.iky * o.fft(fluxes[1]))

    def _strain(self, o: _Ops, w_hat: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """(|S|, grad w) physical. 2D: |S| = sqrt(4 psi_xy^2 + (psi_xx - psi_yy)^2); 1D: |u_x|."""
        grads = [o.ifft(g) for g in self._gradient_hat(o, w_hat)]
        if self.ndim == 1:
            return grads[0].abs(), grads
        pxy = o.ifft(o.psi_xy * w_hat)
        diff = o.ifft((o.psi_xx - o.psi_yy) * w_hat)
        return torch.sqrt(4 * pxy ** 2 + diff ** 2), grads

    def _eddy_flux_divergence(self, o: _Ops, nu: torch.Tensor, grads: Sequence[torch.Tensor]) -> torch.Tensor:
        """``div(nu grad w)``: 2D ``div(nu grad omega)``, 1D ``d/dx(nu u_x) = -(1/2) d/dx(-2 nu u_x)``."""
        return self._divergence(o, [nu * g for g in grads])

    def extra_repr(self) -> str:
        return f"n={self.n}, length={self.length:g}, ndim={self.ndim}"


class NoClosure(Closure):
    """The zero closure (``none``): a plain LES."""

    def forward(self, state: torch.Tensor) -> torch.Tensor:
        return torch.zeros_like(state)


class Smagorinsky(_GridClosure):
    """Smagorinsky eddy viscosity ``nu_e = (Cs D)^2 |S|`` in vorticity (2D) or velocity (1D) form."""

    def __init__(self, n: int, length: float = 2 * math.pi, ndim: int = 2, cs: float = 0.17):
        super().__init__(n, length, ndim)
        self.cs = float(cs)

    def eddy_viscosity(self, state: torch.Tensor) -> torch.Tensor:
        o = self.ops(state)
        s, _ = self._strain(o, o.fft(state))
        return (self.cs * self.spacing) ** 2 * s

    def forward(self, state: torch.Tensor) -> torch.Tensor:
        self._check(state)
        o = self.ops(state)
        s, grads = self._strain(o, o.fft(state))
        return self._eddy_flux_divergence(o, (self.cs * self.spacing) ** 2 * s, grads)

    def extra_repr(self) -> str:
        return super().extra_repr() + f", cs={self.cs:g}"


class Leith(_GridClosure):
    """Leith eddy viscosity ``nu_e = (C_L D)^3 |grad omega|`` (1D: ``|u_xx|``)."""

    def __init__(self, n: int, length: float = 2 * math.pi, ndim: int = 2, cl: float = 0.2):
        super().__init__(n, length, ndim)
        self.cl = float(cl)

    def forward(self, state: torch.Tensor) -> torch.Tensor:
        self._check(state)
        o = self.ops(state)
        w_hat = o.fft(state)
        grads_hat = self._gradient_hat(o, w_hat)
        grads = [o.ifft(g) for g in grads_hat]
        if self.ndim == 1:
            magnitude = o.ifft(o.ikx * grads_hat[0]).abs()
        else:
            magnitude = torch.sqrt(grads[0] ** 2 + grads[1] ** 2)
        return self._eddy_flux_divergence(o, (self.cl * self.spacing) ** 3 * magnitude, grads)

    def extra_repr(self) -> str:
        return super().extra_repr() + f", cl={self.cl:g}"


def dynamic_widths(filter_type: str, filter_width: float, test_width: float) -> tuple[float, float]:
    """``(D, alpha D)`` in LES grid spacings: the grid-level and test-level filter widths of the
    dynamic model for a dataset filter ``filter_type`` of ``filter_width`` spacings and a test
    filter of ``test_width`` spacings (module docstring, "Filter widths of the dynamic model")."""
    if filter_type not in ("spectral", "gaussian", "box"):
        raise ValueError(f"unknown filter type {filter_type!r}")
    if filter_width <= 0 or test_width <= 0:
        raise ValueError(f"filter widths must be positive, got {filter_width}, {test_width}")
    if filter_type == "spectral":
        if test_width <= 1:
            raise ValueError(f"the spectral test filter must be wider than the grid (test_width > 1), got {test_width}")
        return 1.0, float(test_width)
    return float(filter_width), math.sqrt(filter_width ** 2 + test_width ** 2)


class DynamicSmagorinsky(_GridClosure):
    """Germano-Lilly dynamic Smagorinsky with filter widths derived from the dataset's filter.

    ``filter_type``/``filter_width`` describe the dataset's filter ``G`` (width in LES
    grid spacings); the test filter ``T`` has the same type (a sharp cutoff for
    ``spectral``) and ``test_width`` spacings. `dynamic_widths` gives the grid width
    ``D`` and the ratio ``alpha`` (module docstring). ``averaging``: ``"domain"`` (one
    coefficient per batch member) or ``"local"`` (products smoothed by the test filter,
    a coefficient per point). ``coefficient(state)`` returns ``c = Cs^2`` relative to
    ``D`` (``(batch,)`` or ``(batch, *grid)``).
    """

    def __init__(self, n: int, length: float = 2 * math.pi, ndim: int = 2, averaging: str = "domain",
                 test_width: float = 2.0, filter_type: str = "spectral", filter_width: float = 1.0,
                 scale: float = 1.0):
        super().__init__(n, length, ndim)
        self.scale = float(scale)  # multiplies the dynamic coefficient (closure calibrate); 1 = Germano-Lilly
        if averaging not in ("domain", "local"):
            raise ValueError(f"averaging must be 'domain' or 'local', got {averaging!r}")
        self.averaging = averaging
        self.filter_type, self.filter_width, self.test_width = filter_type, float(filter_width), float(test_width)
        grid, test = dynamic_widths(filter_type, filter_width, test_width)
        self.grid_width = grid * self.spacing      # D, physical units
        self.ratio = test / grid                   # alpha
        self._transfer: dict = {}

    @classmethod
    def for_filter(cls, equation, filter_config, **kwargs):
        """For an LES equation and the dataset's filter section (``type``, ``width``)."""
        return cls.for_equation(equation, filter_type=filter_config.type, filter_width=filter_config.width, **kwargs)

    def _test_transfer(self, state: torch.Tensor) -> torch.Tensor:
        key = (state.device, state.dtype)
        if key not in self._transfer:
            grid = SpectralGrid(self.n, self.length, self.ndim, state.dtype, state.device)
            if self.filter_type == "spectral":  # sharp cutoff at pi / D_t: modes |m_d| < n / (2 test_width)
                self._transfer[key] = grid.truncation_mask(self.n / (2 * self.test_width), strict=True).to(state.dtype)
            else:
                self._transfer[key] = Filter(self.filter_type, self.n, self.length, self.test_width).transfer(grid)
        return self._transfer[key]

    def nonlinear_hat(self, o: _Ops, w_hat: torch.Tensor) -> torch.Tensor:
        """The LES solver's dealiased nonlinear term (exact Galerkin projection), spectral."""
        w_hat = o.dealias * w_hat
        if self.ndim == 1:
            u = o.ifft(w_hat)
            return -0.5 * o.dealias * o.ikx * o.fft(u * u)
        psi = o.inverse_k2 * w_hat
        u, v = o.ifft(o.iky * psi), o.ifft(-o.ikx * psi)
        wx, wy = o.ifft(o.ikx * w_hat), o.ifft(o.iky * w_hat)
        return -o.dealias * o.fft(u * wx + v * wy)

    def _unit_model(self, o: _Ops, w_hat: torch.Tensor, width: float):
        """(|S| grad-fluxes factor, grads) and the unit model ``width^2 div(|S| grad w)``."""
        s, grads = self._strain(o, w_hat)
        nu = width ** 2 * s
        return nu, grads, self._eddy_flux_divergence(o, nu, grads)

    def germano(self, state: torch.Tensor):
        """``(L, M, nu1, grads)``: the Germano identity's terms and the unit-coefficient viscosity."""
        o = self.ops(state)
        T = self._test_transfer(state)
        D = self.grid_width
        w_hat = o.fft(state)
        tw_hat = T * w_hat
        L = o.ifft(T * self.nonlinear_hat(o, w_hat) - self.nonlinear_hat(o, tw_hat))
        nu1, grads, m1 = self._unit_model(o, w_hat, D)
        _, _, m2 = self._unit_model(o, tw_hat, self.ratio * D)
        M = m2 - o.ifft(T * o.fft(m1))
        return L, M, nu1, grads

    def _coefficient(self, state: torch.Tensor):
        o = self.ops(state)
        L, M, nu1, grads = self.germano(state)
        dims = tuple(range(-self.ndim, 0))
        if self.averaging == "domain":
            lm = (L * M).mean(dim=dims)
            mm = (M * M).mean(dim=dims)
            c = lm.clamp_min(0) / mm.clamp_min(torch.finfo(state.dtype).tiny)
            return c, nu1, grads
        T = self._test_transfer(state)
        lm = o.ifft(T * o.fft(L * M))
        mm = o.ifft(T * o.fft(M * M))
        # the spectral Gaussian can undershoot slightly below zero: floor <MM> at a small
        # fraction of its domain mean so that c stays finite where M vanishes
        floor = 1e-6 * mm.mean(dim=dims, keepdim=True).clamp_min(torch.finfo(state.dtype).tiny)
        c = lm.clamp_min(0) / torch.maximum(mm, floor)
        return c, nu1, grads

    def coefficient(self, state: torch.Tensor) -> torch.Tensor:
        """``c = Cs^2``: ``(batch,)`` for domain averaging, ``(batch, *grid)`` for local."""
        self._check(state)
        return self._coefficient(state)[0]

    def forward(self, state: torch.Tensor) -> torch.Tensor:
        self._check(state)
        o = self.ops(state)
        c, nu1, grads = self._coefficient(state)
        if self.averaging == "domain":
            c = c.reshape(c.shape + (1,) * self.ndim)
        return self._eddy_flux_divergence(o, self.scale * c * nu1, grads)

    def extra_repr(self) -> str:
        return super().extra_repr() + (f", averaging={self.averaging}, filter={self.filter_type} "
                                       f"{self.filter_width:g}, test_width={self.test_width:g}, alpha={self.ratio:.4g}")


class DealiasResidual(Closure):
    """``c(w) = N(w) - N_les(w)``: the resolved advection that the LES's 2/3 rule discards."""

    def __init__(self, n: int, length: float = 2 * math.pi, ndim: int = 2):
        super().__init__()
        self.n, self.length, self.ndim = int(n), float(length), int(ndim)

    @classmethod
    def for_equation(cls, equation):
        return cls(equation.grid.n, equation.grid.length, equation.grid.ndim)

    def forward(self, state: torch.Tensor) -> torch.Tensor:
        return dealias_residual(state, self.ndim, self.length)

    def extra_repr(self) -> str:
        return f"n={self.n}, length={self.length:g}, ndim={self.ndim}"


class Sum(Closure):
    """The sum of closures' tendencies: ``Sum(a, b)(w) = a(w) + b(w)`` (also ``a + b``)."""

    def __init__(self, *closures: Callable[[torch.Tensor], torch.Tensor]):
        super().__init__()
        flat = []
        for c in closures:
            flat.extend(c.terms if isinstance(c, Sum) else [c])
        if not flat:
            raise ValueError("Sum needs at least one closure")
        modules = [c for c in flat if isinstance(c, nn.Module)]
        self.modules_ = nn.ModuleList(modules)  # registers parameters/buffers of module terms
        self.terms = flat

    def forward(self, state: torch.Tensor) -> torch.Tensor:
        out = self.terms[0](state)
        for term in self.terms[1:]:
            out = out + term(state)
        return out


# ------------------------------------------------------------------------------- factory
CALIBRATION_FILE = "calibration.json"  # a calibrated classical closure's run directory (closure calibrate)
# the calibrated constant of each classical closure (closure.training.calibrate)
CALIBRATED_CONSTANTS = {"smagorinsky": "smagorinsky_cs", "leith": "leith_cl", "dynamic_smagorinsky": "dynamic_scale"}


def _dynamic(equation, les, scale: float) -> nn.Module:
    """The Germano-Lilly model with the test filter of the dataset's filter ``les.filter`` when known."""
    if les is not None:
        return DynamicSmagorinsky.for_filter(equation, les.filter, scale=scale)
    return DynamicSmagorinsky.for_equation(equation, scale=scale)


# name -> closure(les_equation, les section or None, constants); the constants are
# smagorinsky_cs, leith_cl and dynamic_scale (`classical_closure` fills them in)
CLOSURES: dict[str, Callable] = {
    "none": lambda eq, les, c: NoClosure(),
    "smagorinsky": lambda eq, les, c: Smagorinsky.for_equation(eq, cs=c["smagorinsky_cs"]),
    "dynamic_smagorinsky": lambda eq, les, c: _dynamic(eq, les, c["dynamic_scale"]),
    "leith": lambda eq, les, c: Leith.for_equation(eq, cl=c["leith_cl"]),
    "dealias_residual": lambda eq, les, c: DealiasResidual.for_equation(eq),
}
BASELINES = tuple(CLOSURES)


def is_baseline(name: str) -> bool:
    """Whether ``name`` is a baseline of `CLOSURES` or a ``+`` sum of baselines."""
    return all(part.strip() in CLOSURES for part in str(name).split("+"))


def is_calibrated_run(path) -> bool:
    """Whether ``path`` is a calibrated classical closure's run directory (`closure calibrate`)."""
    return Path(str(path)).is_dir() and (Path(str(path)) / CALIBRATION_FILE).is_file()


def _load_calibrated(run_dir, equation, config) -> nn.Module:
    """The classical closure of a calibration run with its fitted constants (``calibration.json``)."""
    path = Path(run_dir) / CALIBRATION_FILE
    try:
        record = json.loads(path.read_text())
        name, constants = record["model"], {k: float(v) for k, v in record["constants"].items()}
    except (ValueError, KeyError, TypeError, AttributeError):
        raise ClosureError(f"{path}: malformed (expected a JSON object with 'model' and 'constants')") from None
    if name not in CALIBRATED_CONSTANTS or set(constants) != {CALIBRATED_CONSTANTS[name]}:
        raise ClosureError(f"{path}: model {name!r} with constants {sorted(constants)} is not a calibrated "
                           f"closure ({', '.join(f'{k}: {v}' for k, v in CALIBRATED_CONSTANTS.items())})")
    return classical_closure(name, equation, config, **constants)


def classical_closure(name: str, les_equation, config=None, smagorinsky_cs: Optional[float] = None,
                      leith_cl: Optional[float] = None, dynamic_scale: float = 1.0) -> nn.Module:
    """The baseline ``name`` of `CLOSURES` for an LES equation; constants default to ``config.run``'s.

    ``dynamic_scale`` multiplies the dynamic coefficient (1: the Germano-Lilly model).
    """
    if name not in CLOSURES:
        raise ClosureError(f"model {name!r} is not one of {', '.join(BASELINES)}")
    run = getattr(config, "run", None)
    constants = {
        "smagorinsky_cs": smagorinsky_cs if smagorinsky_cs is not None else (run.smagorinsky_cs if run else 0.17),
        "leith_cl": leith_cl if leith_cl is not None else (run.leith_cl if run else 0.2),
        "dynamic_scale": dynamic_scale,
    }
    les = getattr(config, "les", None)
    if name in ("smagorinsky", "leith", "dynamic_smagorinsky") and les_equation.grid.ndim == 3:
        return _velocity_closure(name, les_equation, les, constants)
    return CLOSURES[name](les_equation, les, constants)


def _velocity_closure(name: str, les_equation, les, constants: dict) -> nn.Module:
    """The 3D velocity-form eddy viscosities (`closure.les.baselines_3d`); ``none`` and
    ``dealias_residual`` are the same in every dimension."""
    # imported here: the 3D module builds on this one (Closure, dynamic_widths)
    from closure.les.baselines_3d import DynamicSmagorinsky3D, Leith3D, Smagorinsky3D

    if name == "smagorinsky":
        return Smagorinsky3D.for_equation(les_equation, cs=constants["smagorinsky_cs"])
    if name == "leith":
        return Leith3D.for_equation(les_equation, cl=constants["leith_cl"])
    scale = constants["dynamic_scale"]
    if les is not None:
        return DynamicSmagorinsky3D.for_filter(les_equation, les.filter, scale=scale)
    return DynamicSmagorinsky3D.for_equation(les_equation, scale=scale)


def make_closure(name: str, les_equation, config=None, model_dir: Optional[str | Path] = None) -> nn.Module:
    """The closure called ``name`` for an LES equation (its grid, device and dtype).

    ``name``: a baseline of `CLOSURES` (``none``, ``smagorinsky``,
    ``dynamic_smagorinsky``, ``leith``, ``dealias_residual``), ``learned`` (the
    model of the training run directory ``model_dir``), a path to a training run
    directory or to a calibration run directory (`closure calibrate`: the
    classical closure with its fitted constant), or a ``+``-separated sum such as
    ``smagorinsky+dealias_residual``. Constants come from ``config.run``
    (``smagorinsky_cs``, ``leith_cl``); the dynamic model's filter widths from
    ``config.les.filter`` (the dataset's filter).
    """
    parts = [p.strip() for p in str(name).split("+")]
    if len(parts) > 1:
        return Sum(*[make_closure(p, les_equation, config, model_dir) for p in parts])
    name = parts[0]
    if name in CLOSURES:
        return classical_closure(name, les_equation, config)
    if name == "learned":
        if model_dir is None:
            raise ClosureError("model 'learned' needs a training run directory (model_dir)")
        return load_closure(model_dir, les_equation.device, les_equation.dtype)
    if is_calibrated_run(name):
        return _load_calibrated(name, les_equation, config)
    if Path(name).exists():
        return load_closure(name, les_equation.device, les_equation.dtype)
    raise ClosureError(f"model {name!r} is neither a training run directory nor one of {', '.join(BASELINES)}")
