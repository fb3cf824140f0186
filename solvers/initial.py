"""Random initial fields with a prescribed energy spectrum, seeded per trajectory.

Each trajectory's noise is drawn on the CPU in float64 from its own
`torch.Generator` (seeded from its seed), then shaped in Fourier space, so a
trajectory's initial field is the same whatever batch it is drawn in and
whatever device or dtype the run uses.

- 2D vorticity: ``E(k) ~ k^4 exp(-(k / k_p)^2)`` (e.g. McWilliams 1984; Guan et
  al. 2022's decaying case), random phases, mean energy ``E = <u^2 + v^2> / 2``.
- 1D velocity: random amplitudes and phases on modes ``1..k_p`` with a flat band
  spectrum, mean energy ``E = <u^2> / 2``.

- 3D velocity (`random_solenoidal_velocity`): a divergence-free field with the
  shell spectrum ``E(k) ~ k^4 exp(-2 (k / k_p)^2)`` by default (any callable
  ``spectrum(k)`` may be given), random phases, mean energy ``E = <|u|^2> / 2``.
- 3D deterministic fields: the Taylor-Green vortex (`taylor_green_vortex`,
  Brachet et al. 1983, the initial field of the high-order CFD workshop case)
  and the Arnold-Beltrami-Childress flow (`abc_flow`, an eigenfunction of the
  curl: ``omega = k u``, so its nonlinear term is a pure gradient).

Wavenumbers are mode numbers. The random fields are truncated by the 2/3 rule.
"""

from __future__ import annotations

import math
from typing import Callable, Optional, Sequence

import torch

from solvers.forcing import seed_for, solenoidal_projection
from solvers.spectral import SpectralGrid

__all__ = ["white_noise", "random_vorticity", "random_velocity", "vortex_spectrum",
           "random_solenoidal_velocity", "turbulence_spectrum", "taylor_green_vortex", "abc_flow"]


def white_noise(seeds: Sequence[int], shape: tuple[int, ...]) -> torch.Tensor:
    """Standard normal noise ``(len(seeds), *shape)``, float64 on the CPU, one generator per seed."""
    out = torch.empty((len(seeds),) + tuple(shape), dtype=torch.float64)
    for i, seed in enumerate(seeds):  # once per trajectory, at set-up only
        gen = torch.Generator().manual_seed(seed_for(seed, 0x1C))
        out[i] = torch.randn(shape, generator=gen, dtype=torch.float64)
    return out


def vortex_spectrum(k: torch.Tensor, peak_wavenumber: float) -> torch.Tensor:
    """``E(k) = k^4 exp(-(k / k_p)^2)`` (unnormalised)."""
    return k ** 4 * torch.exp(-(k / peak_wavenumber) ** 2)


def _shape_spectrum(grid64: SpectralGrid, noise: torch.Tensor, amplitude: torch.Tensor) -> torch.Tensor:
    noise_hat = grid64.to_spectral(noise)
    return grid64.to_physical(noise_hat * amplitude * grid64.dealias)


def random_vorticity(grid: SpectralGrid, seeds: Sequence[int], peak_wavenumber: float = 10.0,
                     energy: float = 0.5) -> torch.Tensor:
    """Random vorticity ``(batch, n, n)`` with ``E(k) ~ k^4 exp(-(k/k_p)^2)`` and mean energy ``energy``.

    The shell spectrum of a field whose Fourier amplitudes have variance ``S(k)`` is
    ``~ 2 pi k S(k)`` in 2D; for vorticity ``|omega_k|^2 = k^2 |u_k|^2``, so the
    noise is scaled by ``sqrt(k^2 E(k) / k) = sqrt(k E(k))`` (mode-number units).
    """
    g = SpectralGrid(grid.n, grid.length, 2, torch.float64, "cpu")
    k = torch.sqrt(g.mx ** 2 + g.my ** 2)
    amplitude = torch.sqrt(k * vortex_spectrum(k, peak_wavenumber))
    omega = _shape_spectrum(g, white_noise(seeds, g.shape), amplitude)
    u, v = g.velocity(omega)
    mean_energy = 0.5 * (u ** 2 + v ** 2).mean(dim=(-2, -1), keepdim=True)
    omega = omega * torch.sqrt(energy / mean_energy)
    return omega.to(device=grid.device, dtype=grid.dtype)


def random_velocity(grid: SpectralGrid, seeds: Sequence[int], peak_wavenumber: float = 4,
                    energy: float = 0.5) -> torch.Tensor:
    """Random 1D velocity ``(batch, n)``: random amplitudes and phases on modes ``1..k_p``."""
    g = SpectralGrid(grid.n, grid.length, 1, torch.float64, "cpu")
    band = ((g.mx >= 1) & (g.mx <= peak_wavenumber)).to(torch.float64)
    u = _shape_spectrum(g, white_noise(seeds, g.shape), band)
    mean_energy = 0.5 * (u ** 2).mean(dim=-1, keepdim=True)
    u = u * torch.sqrt(energy / mean_energy)
    return u.to(device=grid.device, dtype=grid.dtype)


def turbulence_spectrum(k: torch.Tensor, peak_wavenumber: float) -> torch.Tensor:
    """``E(k) = k^4 exp(-2 (k / k_p)^2)`` (unnormalised; peak at ``k_p``)."""
    return k ** 4 * torch.exp(-2 * (k / peak_wavenumber) ** 2)


def random_solenoidal_velocity(grid: SpectralGrid, seeds: Sequence[int], peak_wavenumber: float = 4.0,
                               energy: float = 0.5,
                               spectrum: Optional[Callable[[torch.Tensor], torch.Tensor]] = None) -> torch.Tensor:
    """A random divergence-free 3D velocity ``(batch, 3, n, n, n)`` with shell spectrum ``E(k)``.

    The shell spectrum of a field whose Fourier amplitudes have variance ``S(k)``
    is ``~ 4 pi k^2 S(k)`` in 3D, and the projection keeps two of the three
    components' variance, so the noise is scaled by ``sqrt(E(k)) / k``
    (mode-number units), projected, truncated by the 2/3 rule and normalised to
    the mean energy ``energy``. ``spectrum`` defaults to `turbulence_spectrum`.
    """
    g = SpectralGrid(grid.n, grid.length, 3, torch.float64, "cpu")
    k = torch.sqrt(sum(m ** 2 for m in g.modes))
    e = spectrum(k) if spectrum is not None else turbulence_spectrum(k, peak_wavenumber)
    amplitude = torch.where(k > 0, torch.sqrt(e) / torch.where(k > 0, k, torch.ones_like(k)), torch.zeros_like(k))
    noise_hat = g.to_spectral(white_noise(seeds, (3,) + g.shape))
    u = g.to_physical(solenoidal_projection(noise_hat * amplitude * g.dealias, g))
    mean_energy = 0.5 * (u ** 2).sum(dim=1, keepdim=True).mean(dim=(-3, -2, -1), keepdim=True)
    u = u * torch.sqrt(energy / mean_energy)
    return u.to(device=grid.device, dtype=grid.dtype)


def taylor_green_vortex(grid: SpectralGrid, amplitude: float = 1.0, batch: int = 1) -> torch.Tensor:
    """``u = V (sin x cos y cos z, -cos x sin y cos z, 0)`` (``x`` scaled by ``2 pi / L``), ``(batch, 3, n, n, n)``."""
    x, y, z = (c * (2 * math.pi / grid.length) for c in grid.mesh())
    u = amplitude * torch.sin(x) * torch.cos(y) * torch.cos(z)
    v = -amplitude * torch.cos(x) * torch.sin(y) * torch.cos(z)
    return torch.stack([u, v, torch.zeros_like(u)]).expand(batch, 3, *grid.shape).clone()


def abc_flow(grid: SpectralGrid, a: float = 1.0, b: float = 1.0, c: float = 1.0, wavenumber: int = 1,
             batch: int = 1) -> torch.Tensor:
    """The ABC flow ``(A sin kz + C cos ky, B sin kx + A cos kz, C sin ky + B cos kx)``, ``(batch, 3, n, n, n)``.

    ``curl u = k u`` (physical ``k = 2 pi m / L``): a Beltrami field, steady under
    the Euler equations and decaying as ``exp(-nu k^2 t)`` under Navier-Stokes.
    """
    k = 2 * math.pi * wavenumber / grid.length
    x, y, z = (k * c_ for c_ in grid.mesh())
    u = a * torch.sin(z) + c * torch.cos(y)
    v = b * torch.sin(x) + a * torch.cos(z)
    w = c * torch.sin(y) + b * torch.cos(x)
    return torch.stack([u, v, w]).expand(batch, 3, *grid.shape).clone()
