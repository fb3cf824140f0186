"""The LES filter ``G`` and the restriction ``P`` to the LES grid (docs/conventions.md).

- ``G`` acts by its transfer function on Fourier modes, with width
  ``D = width * length / n_les`` (``width`` in LES grid spacings) and ``k`` the
  physical wavenumber:

      spectral:  G(k) = 1                       (the cutoff is done by P alone)
      gaussian:  G(k) = exp(-|k|^2 D^2 / 24)
      box:       G(k) = prod_d sin(k_d D / 2) / (k_d D / 2)

- ``P`` keeps the modes with ``|m_d| < n_les / 2`` in every direction (the LES
  Nyquist mode is zero) and evaluates them on the LES grid, so values keep their
  physical units: with unnormalised FFTs, ``P w_hat = (n_les / n_dns)^d w_hat`` on
  the kept modes.

The coarse-grained field is ``P G w``. All operations are batched torch ops on
spectral arrays of shape ``(..., *grid.spectral_shape)``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from solvers.spectral import SpectralGrid

__all__ = ["Filter", "restrict_hat", "prolong_hat", "kept_mode_indices"]

FILTER_TYPES = ("spectral", "gaussian", "box")


@dataclass(frozen=True)
class Filter:
    """A filter of kind ``type`` and ``width`` LES grid spacings for an LES grid of ``n_les`` points."""

    type: str
    n_les: int
    length: float = 2 * math.pi
    width: float = 2.0

    def __post_init__(self):
        if self.type not in FILTER_TYPES:
            raise ValueError(f"unknown filter type {self.type!r}; choose from {FILTER_TYPES}")
        if self.width <= 0:
            raise ValueError(f"filter width must be positive, got {self.width}")

    @classmethod
    def from_config(cls, les_config, length: float) -> "Filter":
        return cls(les_config.filter.type, les_config.resolution, length, les_config.filter.width)

    @property
    def filter_width(self) -> float:
        """``D = width * length / n_les`` in physical units."""
        return self.width * self.length / self.n_les

    def transfer(self, grid: SpectralGrid) -> torch.Tensor:
        """``G(k)`` on the spectral grid of ``grid`` (real tensor, spectral shape)."""
        D = self.filter_width
        if self.type == "spectral":
            return torch.ones(grid.spectral_shape, dtype=grid.dtype, device=grid.device)
        if self.type == "gaussian":
            return torch.exp(-grid.k2 * D ** 2 / 24)
        out = _sinc(grid.kx * D / 2)
        for k in grid.wavenumbers[1:]:
            out = out * _sinc(k * D / 2)
        return out

    def apply_hat(self, field_hat: torch.Tensor, grid: SpectralGrid) -> torch.Tensor:
        """``G w`` in spectral space on the same grid."""
        return self.transfer(grid) * field_hat

    def coarse_grain_hat(self, field_hat: torch.Tensor, fine: SpectralGrid, coarse: SpectralGrid) -> torch.Tensor:
        """``P G w``: spectral on the fine grid -> spectral on the coarse grid."""
        return restrict_hat(self.apply_hat(field_hat, fine), fine, coarse)

    def coarse_grain(self, field: torch.Tensor, fine: SpectralGrid, coarse: SpectralGrid) -> torch.Tensor:
        """``P G w``: physical on the fine grid -> physical on the coarse grid."""
        return coarse.to_physical(self.coarse_grain_hat(fine.to_spectral(field), fine, coarse))

    def to_dict(self) -> dict:
        return {"type": self.type, "width": self.width, "n_les": self.n_les, "length": self.length}


def _sinc(z: torch.Tensor) -> torch.Tensor:
    """``sin(z) / z`` with the value 1 at z = 0."""
    safe = torch.where(z == 0, torch.ones_like(z), z)
    return torch.where(z == 0, torch.ones_like(z), torch.sin(safe) / safe)


def kept_mode_indices(n_fine: int, n_coarse: int, device=None) -> torch.Tensor:
    """Indices (on a full FFT axis of ``n_fine``) of the modes ``|m| < n_coarse / 2``, in coarse order.

    The coarse axis has ``n_coarse`` entries; its Nyquist entry ``n_coarse / 2`` is
    left out of the returned list (it stays zero).
    """
    half = n_coarse // 2
    pos = torch.arange(0, half, device=device)
    neg = torch.arange(n_fine - half + 1, n_fine, device=device)
    return torch.cat([pos, neg])


def _coarse_rows(n_coarse: int, device=None) -> torch.Tensor:
    half = n_coarse // 2
    return torch.cat([torch.arange(0, half, device=device), torch.arange(half + 1, n_coarse, device=device)])


def _transfer_modes(field_hat: torch.Tensor, source: SpectralGrid, target: SpectralGrid, small: SpectralGrid,
                    to_fine: bool) -> torch.Tensor:
    """Copy the modes ``|m_d| < small.n / 2`` from ``source``'s layout into a zero ``target`` array,
    rescaled to the target grid's unnormalised FFT."""
    half = small.n // 2
    scale = (target.n / source.n) ** target.ndim
    out = field_hat.new_zeros(field_hat.shape[:-target.ndim] + target.spectral_shape)
    if target.ndim == 1:
        out[..., :half] = field_hat[..., :half] * scale
        return out
    big = target if to_fine else source
    rows_fine = kept_mode_indices(big.n, small.n, field_hat.device)
    rows_coarse = _coarse_rows(small.n, field_hat.device)
    rows_out, rows_in = (rows_fine, rows_coarse) if to_fine else (rows_coarse, rows_fine)
    if target.ndim == 2:
        out[..., rows_out, :half] = field_hat[..., rows_in, :half] * scale
    else:  # the same rows on the z and y axes
        out[..., rows_out[:, None], rows_out[None, :], :half] = field_hat[..., rows_in[:, None], rows_in[None, :], :half] * scale
    return out


def restrict_hat(field_hat: torch.Tensor, fine: SpectralGrid, coarse: SpectralGrid) -> torch.Tensor:
    """``P``: keep ``|m_d| < n_c / 2`` and rescale to the coarse grid's unnormalised FFT."""
    if fine.ndim != coarse.ndim or coarse.n > fine.n:
        raise ValueError(f"cannot restrict from {fine} to {coarse}")
    return _transfer_modes(field_hat, fine, coarse, coarse, to_fine=False)


def prolong_hat(field_hat: torch.Tensor, coarse: SpectralGrid, fine: SpectralGrid) -> torch.Tensor:
    """Zero-padding interpolation, the right inverse of `restrict_hat` on the kept modes."""
    if fine.ndim != coarse.ndim or coarse.n > fine.n:
        raise ValueError(f"cannot prolong from {coarse} to {fine}")
    return _transfer_modes(field_hat, coarse, fine, coarse, to_fine=True)
