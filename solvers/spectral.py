"""The spectral toolkit: wavenumbers, real FFTs, derivatives, dealiasing, Poisson.

Conventions (docs/conventions.md):

- A periodic box [0, L)^d sampled at x_j = j L / n; fields are real, stored with a
  leading batch dimension, 2D fields indexed ``[y, x]`` and 3D fields ``[z, y, x]``
  (x the last axis).
- Spectral fields are ``torch.fft.rfftn`` over the trailing ``d`` axes (the half
  spectrum in x): shape ``(..., n // 2 + 1)`` in 1D, ``(..., n, n // 2 + 1)`` in 2D
  and ``(..., n, n, n // 2 + 1)`` in 3D.
- Integer mode numbers ``m`` (``fftfreq(n) * n``); physical wavenumbers
  ``k = 2 pi m / L``.
- Derivatives: ``d/dx -> i k_x``. Odd derivatives zero the Nyquist mode (its
  sign is ambiguous for a real field); even ones keep it.
- The 2/3 rule: the mask keeps the modes with ``|m_d| <= K``, ``K = (n - 1) // 3``,
  in every direction (Orszag 1971): the largest ``K`` with ``3 K < n``, so that a
  product of two kept modes (``|m| <= 2 K``) aliases only onto discarded ones
  (``2 K - n < -K``). ``K = n // 3`` except when 3 divides ``n``: there ``n // 3``
  would let the pair ``(K, K)`` alias onto the kept mode ``-K``.

All functions are pure and batched; `SpectralGrid` precomputes the wavenumber
tensors once for a given (n, length, ndim, dtype, device).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cached_property

import torch

__all__ = [
    "SpectralGrid",
    "complex_dtype",
    "mode_numbers",
    "rfft_mode_numbers",
]


def complex_dtype(dtype: torch.dtype) -> torch.dtype:
    """The complex dtype matching a real one (float32 -> complex64, float64 -> complex128)."""
    return {torch.float32: torch.complex64, torch.float64: torch.complex128,
            torch.float16: torch.complex32}[dtype]


def mode_numbers(n: int, device=None, dtype=torch.float64) -> torch.Tensor:
    """Integer mode numbers of a full FFT axis: 0, 1, ..., n/2 - 1, -n/2, ..., -1."""
    return torch.fft.fftfreq(n, d=1.0 / n, device=device, dtype=dtype)


def rfft_mode_numbers(n: int, device=None, dtype=torch.float64) -> torch.Tensor:
    """Integer mode numbers of a half (rfft) axis: 0, 1, ..., n/2."""
    return torch.fft.rfftfreq(n, d=1.0 / n, device=device, dtype=dtype)


@dataclass(frozen=True, eq=False)
class SpectralGrid:
    """A periodic grid of ``n`` points per direction on ``[0, length)^ndim``.

    Wavenumber tensors broadcast against spectral fields of shape
    ``(batch, *spectral_shape)``:

    - 1D: ``kx`` has shape ``(n//2+1,)``;
    - 2D: ``kx`` has shape ``(1, n//2+1)`` and ``ky`` shape ``(n, 1)``;
    - 3D: ``kx`` ``(1, 1, n//2+1)``, ``ky`` ``(1, n, 1)`` and ``kz`` ``(n, 1, 1)``.
    """

    n: int
    length: float = 2 * math.pi
    ndim: int = 2
    dtype: torch.dtype = torch.float64
    device: torch.device | str | None = None

    def __post_init__(self):
        if self.ndim not in (1, 2, 3):
            raise ValueError(f"ndim must be 1, 2 or 3, got {self.ndim}")
        if self.n < 4 or self.n % 2:
            raise ValueError(f"n must be even and >= 4, got {self.n}")

    # ------------------------------------------------------------------ shapes
    @property
    def shape(self) -> tuple[int, ...]:
        """Physical shape of one field."""
        return (self.n,) * self.ndim

    @property
    def spectral_shape(self) -> tuple[int, ...]:
        return (self.n,) * (self.ndim - 1) + (self.n // 2 + 1,)

    @property
    def dims(self) -> tuple[int, ...]:
        """The trailing axes the transforms act on."""
        return tuple(range(-self.ndim, 0))

    @property
    def spacing(self) -> float:
        return self.length / self.n

    @property
    def complex_dtype(self) -> torch.dtype:
        return complex_dtype(self.dtype)

    def coordinates(self) -> torch.Tensor:
        """Grid points ``x_j = j L / n`` (1D tensor of length n)."""
        return torch.arange(self.n, device=self.device, dtype=self.dtype) * self.spacing

    def mesh(self) -> tuple[torch.Tensor, ...]:
        """Coordinate arrays of shape ``self.shape``: ``(x,)`` in 1D, ``(x, y)`` in 2D, ``(x, y, z)`` in 3D."""
        x = self.coordinates()
        if self.ndim == 1:
            return (x,)
        if self.ndim == 2:
            y, xx = torch.meshgrid(x, x, indexing="ij")
            return xx, y
        z, y, xx = torch.meshgrid(x, x, x, indexing="ij")
        return xx, y, z

    # ------------------------------------------------------------------ wavenumbers
    @cached_property
    def _scale(self) -> float:
        return 2 * math.pi / self.length

    @cached_property
    def mx(self) -> torch.Tensor:
        """x mode numbers on the half axis (broadcast shape)."""
        return self._axis_shape(rfft_mode_numbers(self.n, self.device, self.dtype), -1)

    @cached_property
    def my(self) -> torch.Tensor:
        """y mode numbers on the full axis, shape (n, 1) in 2D, (1, n, 1) in 3D."""
        if self.ndim < 2:
            raise ValueError("my needs a 2D or 3D grid")
        return self._axis_shape(mode_numbers(self.n, self.device, self.dtype), -2)

    @cached_property
    def mz(self) -> torch.Tensor:
        """z mode numbers on the full axis, shape (n, 1, 1) (3D only)."""
        if self.ndim < 3:
            raise ValueError("mz needs a 3D grid")
        return self._axis_shape(mode_numbers(self.n, self.device, self.dtype), -3)

    def _axis_shape(self, m: torch.Tensor, axis: int) -> torch.Tensor:
        """``m`` reshaped to broadcast along spectral axis ``axis`` (negative) of this grid."""
        shape = [1] * self.ndim
        shape[axis] = -1
        return m.reshape(shape)

    @cached_property
    def modes(self) -> tuple[torch.Tensor, ...]:
        """The mode-number tensors ``(mx, my, mz)`` of the grid's directions (x first)."""
        return tuple(getattr(self, name) for name in ("mx", "my", "mz")[:self.ndim])

    @cached_property
    def kz(self) -> torch.Tensor:
        return self.mz * self._scale

    @cached_property
    def wavenumbers(self) -> tuple[torch.Tensor, ...]:
        """The physical wavenumber tensors ``(kx, ky, kz)`` of the grid's directions (x first)."""
        return tuple(m * self._scale for m in self.modes)

    @cached_property
    def kx(self) -> torch.Tensor:
        return self.mx * self._scale

    @cached_property
    def ky(self) -> torch.Tensor:
        return self.my * self._scale

    @cached_property
    def k2(self) -> torch.Tensor:
        """|k|^2 on the spectral grid (full spectral shape)."""
        return sum(k ** 2 for k in self.wavenumbers)

    @cached_property
    def k_magnitude(self) -> torch.Tensor:
        return torch.sqrt(self.k2)

    @cached_property
    def inverse_k2(self) -> torch.Tensor:
        """1 / |k|^2 with the mean mode set to zero (the Poisson solve's gauge)."""
        k2 = self.k2
        inv = torch.where(k2 > 0, 1.0 / torch.where(k2 > 0, k2, torch.ones_like(k2)), torch.zeros_like(k2))
        return inv

    def _odd(self, k: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
        """Wavenumber for an odd derivative: Nyquist mode set to zero."""
        return torch.where(m.abs() == self.n // 2, torch.zeros_like(k), k)

    @cached_property
    def ikx(self) -> torch.Tensor:
        """i k_x for first derivatives (Nyquist zeroed), complex."""
        return 1j * self._odd(self.kx, self.mx).to(self.complex_dtype)

    @cached_property
    def iky(self) -> torch.Tensor:
        return 1j * self._odd(self.ky, self.my).to(self.complex_dtype)

    @cached_property
    def ikz(self) -> torch.Tensor:
        return 1j * self._odd(self.kz, self.mz).to(self.complex_dtype)

    @cached_property
    def gradient_operators(self) -> tuple[torch.Tensor, ...]:
        """``(i k_x, i k_y, i k_z)`` of the grid's directions (Nyquist zeroed), complex."""
        return tuple(getattr(self, name) for name in ("ikx", "iky", "ikz")[:self.ndim])

    # ------------------------------------------------------------------ masks
    def truncation_mask(self, cutoff: int, strict: bool = False) -> torch.Tensor:
        """1 where ``|m_d| <= cutoff`` (``< cutoff`` if strict) in every direction, else 0."""
        def keep(m):
            return (m.abs() < cutoff) if strict else (m.abs() <= cutoff)

        mask = keep(self.mx)
        for m in self.modes[1:]:
            mask = mask & keep(m)
        return mask.to(self.dtype)

    @cached_property
    def dealias_cutoff(self) -> int:
        """``K = (n - 1) // 3``: the largest mode number the 2/3 rule keeps (``3 K < n``)."""
        return (self.n - 1) // 3

    @cached_property
    def dealias(self) -> torch.Tensor:
        """The 2/3-rule mask: keeps ``|m_d| <= dealias_cutoff`` in every direction."""
        return self.truncation_mask(self.dealias_cutoff)

    # ------------------------------------------------------------------ transforms
    def to_spectral(self, field: torch.Tensor) -> torch.Tensor:
        """Physical ``(..., *shape)`` -> spectral ``(..., *spectral_shape)`` (unnormalised rfft)."""
        return torch.fft.rfftn(field, dim=self.dims)

    def to_physical(self, field_hat: torch.Tensor) -> torch.Tensor:
        """Spectral -> physical; the inverse of `to_spectral`."""
        return torch.fft.irfftn(field_hat, s=self.shape, dim=self.dims)

    # ------------------------------------------------------------------ operators
    def derivative(self, field: torch.Tensor, order: int = 1, axis: str = "x") -> torch.Tensor:
        """``d^order field / d axis^order`` of a physical field, spectrally."""
        index = "xyz".index(axis)
        if index >= self.ndim:
            raise ValueError(f"a {axis} derivative needs a grid of at least {index + 1} dimensions")
        k, m = self.wavenumbers[index], self.modes[index]
        if order % 2:
            k = self._odd(k, m)
        factor = (1j * k.to(self.complex_dtype)) ** order
        return self.to_physical(factor * self.to_spectral(field))

    def laplacian_hat(self, field_hat: torch.Tensor) -> torch.Tensor:
        return -self.k2 * field_hat

    def laplacian(self, field: torch.Tensor) -> torch.Tensor:
        return self.to_physical(self.laplacian_hat(self.to_spectral(field)))

    def inverse_laplacian_hat(self, field_hat: torch.Tensor) -> torch.Tensor:
        """Solve ``lap(phi) = f`` in spectral space (mean of phi set to zero)."""
        return -self.inverse_k2 * field_hat

    def streamfunction_hat(self, vorticity_hat: torch.Tensor) -> torch.Tensor:
        """``psi`` with ``omega = -lap(psi)``, so that ``u = dpsi/dy, v = -dpsi/dx``."""
        return self.inverse_k2 * vorticity_hat

    def velocity_hat(self, vorticity_hat: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(u, v)`` in spectral space from the vorticity ``omega = dv/dx - du/dy``."""
        psi_hat = self.streamfunction_hat(vorticity_hat)
        return self.iky * psi_hat, -self.ikx * psi_hat

    def velocity(self, vorticity: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Physical ``(u, v)`` of a physical vorticity field (2D)."""
        self._require_2d("velocity")
        u_hat, v_hat = self.velocity_hat(self.to_spectral(vorticity))
        return self.to_physical(u_hat), self.to_physical(v_hat)

    def streamfunction(self, vorticity: torch.Tensor) -> torch.Tensor:
        return self.to_physical(self.streamfunction_hat(self.to_spectral(vorticity)))

    def _require_2d(self, what: str):
        if self.ndim != 2:
            raise ValueError(f"{what} needs a 2D grid")

    def __repr__(self) -> str:
        return f"SpectralGrid(n={self.n}, length={self.length:g}, ndim={self.ndim}, dtype={self.dtype}, device={self.device})"
