"""Random initial fields with a prescribed energy spectrum, seeded per trajectory.

Each trajectory's noise is drawn on the CPU in float64 from its own
`torch.Generator` (seeded from its seed), then shaped in Fourier space, so a
trajectory's initial field is the same whatever batch it is drawn in and
whatever device or dtype the run uses.

- 2D vorticity: ``E(k) ~ k^4 exp(-(k / k_p)^2)`` (e.g. McWilliams 1984; Guan et
  al. 2022's decaying case), random phases, mean energy ``E = <u^2 + v^2> / 2``.
- 1D velocity: random amplitudes and phases on modes ``1..k_p`` with a flat band
  spectrum, mean energy ``E = <u^2> / 2``.

Wavenumbers are mode numbers. The fields are truncated by the 2/3 rule.
"""

from __future__ import annotations

from typing import Sequence

import torch

from solvers.forcing import seed_for
from solvers.spectral import SpectralGrid

__all__ = ["white_noise", "random_vorticity", "random_velocity", "vortex_spectrum"]


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
