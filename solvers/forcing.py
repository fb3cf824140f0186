"""Forcing terms ``f`` of the tendency ``d(w)/dt = L w + N(w) + f``.

A forcing returns its spectral coefficients on any `SpectralGrid` at a model
time ``t``: ``forcing.spectral(grid, t)``, shape broadcastable against the
spectral state ``(batch, *grid.spectral_shape)``. Deterministic forcings are
steady (``steady = True``): equations evaluate them once and cache them.
A forcing that is constant on the intervals ``[j tau, (j + 1) tau)`` declares
``piecewise_constant = True``: the time steppers then evaluate it at every
stage of a step at the step's start time (`solvers.integrators.stage_time`),
whereas a smooth time-dependent forcing is evaluated at the exact stage times.

- `Kolmogorov`: velocity forcing ``(A sin(k y), 0)``, i.e. vorticity forcing
  ``-A k cos(k y)`` (Kochkov et al. 2021, PNAS; jax-cfd).
- `Guan`: vorticity forcing ``-A k_f (cos k_f x + cos k_f y)`` (Guan et al. 2022,
  JCP; py2d, where the equation reads ``omega_t + N = nu lap(omega) - f - r omega``
  with ``f = k_f (cos k_f x + cos k_f y)``).
- `StochasticBurgers`: ``f = sum_{m=1..M} A xi_m / sqrt(m tau) cos(2 pi m x / L + 2 pi eta_m)``
  with ``xi, eta ~ N(0, 1)`` redrawn every ``tau`` model-time units (Subel et al. 2021,
  Phys. Fluids, where ``tau = s dt``). Each trajectory has its own seed and the draw
  for interval ``j`` comes from a `torch.Generator` seeded by ``(seed, j)``: the
  forcing of a trajectory does not depend on the batch it runs in, nor on the
  order in which times are queried (gradient checkpointing may re-query).

- `LinearForcing` (3D turbulence; any dimension): ``f = A u`` on the modes
  ``0 < |m| <= m_f`` (all non-mean modes without ``m_f``): the linear forcing of
  Lundgren (2003, CTR Annual Research Briefs) as studied by Rosales & Meneveau
  (2005, Phys. Fluids 17, 095106), optionally band-limited to low wavenumbers as
  in spectral codes. Linear in the state, it is part of the diagonal ``L``
  (``linear_coefficient``), treated exactly by ETDRK4. Its power is
  ``2 A E_f`` (``E_f`` the energy of the forced modes): a statistically steady
  state has ``epsilon = 2 A E_f``.
- `BandForcing` (3D): a steady solenoidal velocity forcing whose Fourier modes
  fill the shell ``m_low <= |m| <= m_high`` with seeded random phases and a
  flat shell spectrum, rms magnitude ``<|f|^2>^(1/2) = A``. Its coefficients are
  drawn once per mode (independently of the grid), so every grid that resolves
  the shell sees the same forcing.

Wavenumbers are integer mode numbers; the physical wavenumber is ``2 pi m / L``.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import torch

from solvers.spectral import SpectralGrid

__all__ = ["Forcing", "Kolmogorov", "Guan", "StochasticBurgers", "LinearForcing", "BandForcing", "seed_for"]


class Forcing:
    """Base class: a forcing term evaluated spectrally on a grid."""

    steady: bool = True
    piecewise_constant: bool = False  # constant on [j tau, (j + 1) tau): sampled at step starts
    ndim: int | None = None  # dimensionality it is defined for (None: any)

    def spectral(self, grid: SpectralGrid, t: float = 0.0) -> torch.Tensor:
        return grid.to_spectral(self.physical(grid, t))

    def physical(self, grid: SpectralGrid, t: float = 0.0) -> torch.Tensor:
        raise NotImplementedError

    def linear_coefficient(self, grid: SpectralGrid):
        """A real tensor added to the equation's diagonal ``L`` (forcings linear in the state), or None."""
        return None

    def check_grid(self, grid: SpectralGrid):
        if self.ndim is not None and grid.ndim != self.ndim:
            raise ValueError(f"{type(self).__name__} forcing is {self.ndim}D, the grid is {grid.ndim}D")


class _SingleWavenumber(Forcing):
    """A steady 2D forcing at one integer wavenumber ``k`` with amplitude ``A``."""

    ndim = 2

    def __init__(self, wavenumber: int = 4, amplitude: float = 1.0):
        self.wavenumber = wavenumber
        self.amplitude = amplitude

    def physical_wavenumber(self, grid: SpectralGrid) -> float:
        return 2 * math.pi * self.wavenumber / grid.length

    def __repr__(self):
        return f"{type(self).__name__}(wavenumber={self.wavenumber}, amplitude={self.amplitude})"


class Kolmogorov(_SingleWavenumber):
    """Vorticity forcing ``-A k cos(k y)`` of the velocity forcing ``(A sin(k y), 0)``."""

    def physical(self, grid: SpectralGrid, t: float = 0.0) -> torch.Tensor:
        self.check_grid(grid)
        _, y = grid.mesh()
        k = self.physical_wavenumber(grid)
        return -self.amplitude * k * torch.cos(k * y)


class Guan(_SingleWavenumber):
    """Vorticity forcing ``-A k_f (cos k_f x + cos k_f y)`` (Guan et al. 2022)."""

    def physical(self, grid: SpectralGrid, t: float = 0.0) -> torch.Tensor:
        self.check_grid(grid)
        x, y = grid.mesh()
        k = self.physical_wavenumber(grid)
        return -self.amplitude * k * (torch.cos(k * x) + torch.cos(k * y))


def seed_for(*keys: int) -> int:
    """A well-mixed 63-bit seed from integer keys (numpy's SeedSequence hashing)."""
    state = np.random.SeedSequence([int(k) % (2 ** 63) for k in keys]).generate_state(2, dtype=np.uint32)
    return int(state[0]) << 31 ^ int(state[1])


class StochasticBurgers(Forcing):
    """Large-scale random forcing of Subel et al. (2021), redrawn every ``interval``.

    ``seeds`` holds one integer per trajectory (batch member); ``subset`` keeps
    the forcing aligned with a batch from which members were dropped.
    """

    steady = False
    piecewise_constant = True
    ndim = 1

    def __init__(self, seeds: Sequence[int], amplitude: float = math.sqrt(2) * 1e-2,
                 interval: float = 0.2, modes: int = 3):
        self.seeds = [int(s) for s in seeds]
        self.amplitude = float(amplitude)
        self.interval = float(interval)
        self.modes = int(modes)
        self._cache: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

    def subset(self, index: Sequence[int]) -> "StochasticBurgers":
        return StochasticBurgers([self.seeds[i] for i in index], self.amplitude, self.interval, self.modes)

    def interval_index(self, t: float) -> int:
        # a small tolerance so that t = j * interval computed in floating point lands in interval j
        return int(math.floor(t / self.interval + 1e-9))

    def draws(self, j: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``(xi, eta)`` of interval ``j``, each ``(batch, modes)`` float64 on the CPU."""
        if j not in self._cache:
            xi, eta = [], []
            for seed in self.seeds:  # `modes` scalars per trajectory, once per interval
                gen = torch.Generator().manual_seed(seed_for(seed, j, 0x5EED))
                draw = torch.randn(2, self.modes, generator=gen, dtype=torch.float64)
                xi.append(draw[0])
                eta.append(draw[1])
            if len(self._cache) > 64:
                self._cache.clear()
            self._cache[j] = (torch.stack(xi), torch.stack(eta))
        return self._cache[j]

    def amplitudes(self, t: float) -> torch.Tensor:
        """Complex amplitudes ``a_m e^{i 2 pi eta_m}`` of modes 1..M, shape (batch, M)."""
        xi, eta = self.draws(self.interval_index(t))
        m = torch.arange(1, self.modes + 1, dtype=torch.float64)
        a = self.amplitude * xi / torch.sqrt(m * self.interval)
        return a * torch.exp(2j * math.pi * eta)

    def spectral(self, grid: SpectralGrid, t: float = 0.0) -> torch.Tensor:
        self.check_grid(grid)
        if self.modes >= grid.n // 2:
            raise ValueError(f"forcing modes 1..{self.modes} do not fit a grid of {grid.n} points")
        # cos(k x + phi) has rfft coefficient (n / 2) e^{i phi} at mode k
        coeffs = self.amplitudes(t) * (grid.n / 2)
        out = torch.zeros(len(self.seeds), grid.n // 2 + 1, dtype=torch.complex128)
        out[:, 1:self.modes + 1] = coeffs
        return out.to(device=grid.device, dtype=grid.complex_dtype)

    def physical(self, grid: SpectralGrid, t: float = 0.0) -> torch.Tensor:
        return grid.to_physical(self.spectral(grid, t))

    def __repr__(self):
        return (f"StochasticBurgers(seeds=[{len(self.seeds)} seeds], amplitude={self.amplitude:g}, "
                f"interval={self.interval:g}, modes={self.modes})")


class LinearForcing(Forcing):
    """``f = A w`` on the modes ``0 < |m| <= max_wavenumber`` (all non-mean modes when None).

    Lundgren's linear forcing (Rosales & Meneveau 2005); ``A`` in 1/time units.
    The band is set by the integer shell radius ``|m|`` (mode numbers), so the
    same forcing on a coarser grid that resolves the band commutes with the LES
    filter and restriction.
    """

    def __init__(self, coefficient: float, max_wavenumber: float | None = None):
        if coefficient < 0:
            raise ValueError(f"the linear forcing coefficient must be >= 0, got {coefficient}")
        self.coefficient = float(coefficient)
        self.max_wavenumber = None if max_wavenumber is None else float(max_wavenumber)

    def band(self, grid: SpectralGrid) -> torch.Tensor:
        """1 on the forced modes, else 0 (real, spectral shape)."""
        m2 = sum(m ** 2 for m in grid.modes)
        keep = m2 > 0
        if self.max_wavenumber is not None:
            keep = keep & (m2 <= self.max_wavenumber ** 2 + 1e-9)
        return keep.to(grid.dtype)

    def linear_coefficient(self, grid: SpectralGrid) -> torch.Tensor:
        return self.coefficient * self.band(grid)

    def spectral(self, grid: SpectralGrid, t: float = 0.0):
        return None  # no state-independent part

    def physical(self, grid: SpectralGrid, t: float = 0.0):
        return None

    def __repr__(self):
        return f"LinearForcing(coefficient={self.coefficient:g}, max_wavenumber={self.max_wavenumber})"


class BandForcing(Forcing):
    """A steady solenoidal 3D velocity forcing on the shell ``low <= |m| <= high``, rms magnitude ``amplitude``."""

    ndim = 3

    def __init__(self, low: float = 1.0, high: float = 2.0, amplitude: float = 1.0, seed: int = 0):
        if not 0 < low <= high:
            raise ValueError(f"the forcing band needs 0 < low <= high, got [{low}, {high}]")
        self.low, self.high, self.amplitude, self.seed = float(low), float(high), float(amplitude), int(seed)

    def _reference(self) -> tuple[int, torch.Tensor]:
        """The forcing on the smallest grid that holds the band: ``(n0, spectral coefficients)``, float64."""
        n0 = 2 * (int(math.floor(self.high)) + 1)
        grid = SpectralGrid(n0, 2 * math.pi, 3, torch.float64, "cpu")
        gen = torch.Generator().manual_seed(seed_for(self.seed, 0xF0))
        noise = grid.to_spectral(torch.randn((3,) + grid.shape, generator=gen, dtype=torch.float64))
        m = torch.sqrt(sum(mm ** 2 for mm in grid.modes))
        shell = ((m >= self.low - 1e-9) & (m <= self.high + 1e-9)).to(torch.float64)
        # flat shell spectrum: each mode's variance ~ 1 / (number of modes in its shell) ~ 1 / m^2
        f_hat = solenoidal_projection(noise * shell / torch.where(m > 0, m, torch.ones_like(m)), grid)
        f = grid.to_physical(f_hat)
        rms = torch.sqrt((f ** 2).sum(dim=0).mean())
        return n0, f_hat * (self.amplitude / rms)

    def spectral(self, grid: SpectralGrid, t: float = 0.0) -> torch.Tensor:
        self.check_grid(grid)
        if self.high >= grid.n // 3:
            raise ValueError(f"the forcing band |m| <= {self.high:g} does not fit the 2/3-dealiased grid of {grid.n} points")
        n0, small = self._reference()
        half = n0 // 2
        rows = torch.cat([torch.arange(0, half), torch.arange(-half + 1, 0)])  # |m| < n0 / 2
        out = torch.zeros((3,) + grid.spectral_shape, dtype=torch.complex128)
        rz, ry = rows.reshape(-1, 1), rows.reshape(1, -1)
        out[:, rz % grid.n, ry % grid.n, :half] = small[:, rz % n0, ry % n0, :half] * (grid.n / n0) ** 3
        return out.to(device=grid.device, dtype=grid.complex_dtype)

    def physical(self, grid: SpectralGrid, t: float = 0.0) -> torch.Tensor:
        return grid.to_physical(self.spectral(grid, t))

    def __repr__(self):
        return f"BandForcing(low={self.low:g}, high={self.high:g}, amplitude={self.amplitude:g}, seed={self.seed})"


def solenoidal_projection(velocity_hat: torch.Tensor, grid: SpectralGrid) -> torch.Tensor:
    """Leray projection ``u_hat - k (k . u_hat) / |k|^2`` of a spectral vector field ``(..., ndim, *spectral_shape)``.

    The wavenumbers are those of first derivatives (a Nyquist component is zero, as in
    ``grid.gradient_operators``), so that the spectral divergence of the result vanishes
    exactly; modes whose wavenumber is then zero (the mean) are kept. The components are
    ordered as the grid's directions (x first).
    """
    ks = tuple((ik / 1j).real for ik in grid.gradient_operators)
    axis = -grid.ndim - 1
    k2 = sum(k ** 2 for k in ks)
    inverse = torch.where(k2 > 0, 1.0 / torch.where(k2 > 0, k2, torch.ones_like(k2)), torch.zeros_like(k2))
    k_dot_u = sum(k * velocity_hat.select(axis, i) for i, k in enumerate(ks)) * inverse
    return velocity_hat - torch.stack([k * k_dot_u for k in ks], dim=axis)
