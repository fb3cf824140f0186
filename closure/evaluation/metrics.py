"""A-posteriori metrics of an LES against the filtered DNS (numpy, batched over leading axes).

Fields are ``(..., n)`` (1D velocity), ``(..., n, n)`` (2D vorticity, ``[y, x]``)
or ``(..., 3, n, n, n)`` (3D velocity, components (u_x, u_y, u_z), ``[z, y, x]``) on
``[0, length)^d``. Wavenumbers are integer mode numbers. In 3D the spectrum sums
``|u_hat|^2 / 2`` of the three components over the shells, the PDFs pool the
components, the correlation runs over components and space, the "enstrophy" is
``<|omega|^2>/2``, and `longitudinal_gradients` gives the samples of the
velocity-gradient PDF (``du/dx``, ``dv/dy``, ``dw/dz``: negatively skewed in
turbulence).

- `energy_spectrum`: the kinetic-energy spectrum ``E(k)``, ``k = 1..n/2 - 1`` (the
  LES cutoff ``k_les``: the LES grid's Nyquist mode is zero by construction).
  2D: shell-integrated over ``round(|m|) = k`` with ``|u_hat|^2 = |omega_hat|^2 / |k|^2``;
  1D: ``E(k) = |u_hat(k)|^2 + |u_hat(-k)|^2`` over 2. Normalised so that
  ``sum_k E(k)`` is the mean energy (Parseval), the corners ``|m| > n/2`` excluded.
- `spectrum_error`: ``mean_{1 <= k <= k_les} |log10 E(k) - log10 E_ref(k)|``.
- `hellinger`: ``sqrt(1 - sum_i sqrt(p_i q_i))`` of two histograms on common bins.
- `pdf_edges`: common bins from the reference's range widened by half of it on
  each side, plus two open-ended overflow bins (so every finite value counts).
- `pearson`: the correlation coefficient over the spatial axes.
- `decorrelation_times`: per trajectory, the first time at which the correlation
  falls below 0.95 (a non-finite field counts as decorrelated); a trajectory that
  never falls below it gets the window length (censored, reported as such).
- `energy`, `enstrophy`: per snapshot; 2D ``<|u|^2>/2`` and ``<omega^2>/2``; 1D
  ``<u^2>/2`` and ``<u_x^2>/2`` (the velocity-gradient analogue).
- `similarity`: ``1 - d(model) / d(none)`` (pyqg's parameterization benchmark).
"""

from __future__ import annotations

import math
from typing import Optional

import numpy as np

from closure.training.apriori import hellinger  # (one definition, shared with the a-priori metrics)

__all__ = [
    "wavenumbers", "energy_spectrum", "spectrum_error", "pdf_edges", "histogram", "hellinger", "pearson",
    "decorrelation_times", "energy", "enstrophy", "similarity", "THRESHOLD", "longitudinal_gradients",
    "field_axes",
]

THRESHOLD = 0.95


def _ndim_of(field: np.ndarray, ndim: Optional[int]) -> int:
    return ndim if ndim is not None else (1 if field.ndim <= 2 else 2)


def field_axes(ndim: int) -> tuple[int, ...]:
    """The trailing axes of one field: the grid's, and the component axis in 3D."""
    return tuple(range(-(ndim + 1 if ndim == 3 else ndim), 0))


def _modes_3d(n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mode numbers ``(mx, my, mz)`` broadcast on a full 3D FFT grid ``[z, y, x]``, Nyquist zeroed."""
    m = np.fft.fftfreq(n, 1.0 / n)
    m = np.where(np.abs(m) == n // 2, 0.0, m)
    return m[None, None, :], m[None, :, None], m[:, None, None]


def _spectrum_3d(field: np.ndarray, kmax: int) -> np.ndarray:
    n = field.shape[-1]
    f_hat = np.fft.fftn(field, axes=(-3, -2, -1)) / n ** 3
    density = 0.5 * (np.abs(f_hat) ** 2).sum(axis=-4)
    m = np.fft.fftfreq(n, 1.0 / n)
    shell = np.rint(np.sqrt(m[None, None, :] ** 2 + m[None, :, None] ** 2 + m[:, None, None] ** 2)).astype(int)
    flat, index = density.reshape(density.shape[:-3] + (-1,)), shell.reshape(-1)
    return np.stack([flat[..., index == k].sum(axis=-1) for k in range(1, kmax + 1)], axis=-1)


def longitudinal_gradients(field: np.ndarray, length: float = 2 * math.pi) -> np.ndarray:
    """``(du/dx, dv/dy, dw/dz)`` of 3D velocities ``(..., 3, n, n, n)`` (spectral), same shape."""
    field = np.asarray(field, dtype=np.float64)
    n = field.shape[-1]
    scale = 2 * math.pi / length
    out = np.empty_like(field)
    for i, m in enumerate(_modes_3d(n)):
        f_hat = np.fft.fftn(field[..., i, :, :, :], axes=(-3, -2, -1))
        out[..., i, :, :, :] = np.real(np.fft.ifftn(1j * m * scale * f_hat, axes=(-3, -2, -1)))
    return out


def wavenumbers(n: int) -> np.ndarray:
    """The shells ``k = 1..n/2 - 1`` of `energy_spectrum` for an ``n``-point grid."""
    return np.arange(1, n // 2)


def energy_spectrum(field: np.ndarray, ndim: Optional[int] = None, length: float = 2 * math.pi) -> np.ndarray:
    """``E(k)`` for ``k = 1..n/2 - 1`` of each field: shape ``(..., n/2 - 1)`` (float64)."""
    field = np.asarray(field, dtype=np.float64)
    ndim = _ndim_of(field, ndim)
    n = field.shape[-1]
    kmax = n // 2 - 1
    if ndim == 3:
        return _spectrum_3d(field, kmax)
    if ndim == 1:
        f_hat = np.fft.fft(field, axis=-1) / n
        power = np.abs(f_hat) ** 2
        m = np.abs(np.fft.fftfreq(n, 1.0 / n))
        out = np.zeros(field.shape[:-1] + (kmax,))
        for k in range(1, kmax + 1):
            out[..., k - 1] = 0.5 * power[..., m == k].sum(axis=-1)
        return out
    f_hat = np.fft.fft2(field, axes=(-2, -1)) / n ** 2
    m = np.fft.fftfreq(n, 1.0 / n)
    my, mx = np.meshgrid(m, m, indexing="ij")
    m2 = mx ** 2 + my ** 2
    shell = np.rint(np.sqrt(m2)).astype(int)
    # |u_hat|^2 = |omega_hat|^2 / |k|^2 with the physical |k| = 2 pi |m| / length
    inv = np.where(m2 > 0, 1.0 / np.where(m2 > 0, m2, 1.0), 0.0) * (length / (2 * math.pi)) ** 2
    density = 0.5 * np.abs(f_hat) ** 2 * inv
    flat = density.reshape(field.shape[:-2] + (n * n,))
    index = shell.reshape(-1)
    keep = (index >= 1) & (index <= kmax)
    out = np.zeros(field.shape[:-2] + (kmax + 1,))
    # accumulate shells (vectorised over leading axes)
    for k in range(1, kmax + 1):
        sel = keep & (index == k)
        out[..., k] = flat[..., sel].sum(axis=-1)
    return out[..., 1:]


def spectrum_error(E: np.ndarray, E_ref: np.ndarray) -> float:
    """``mean_k |log10 E(k) - log10 E_ref(k)|`` over the shells given (1..k_les)."""
    E, E_ref = np.asarray(E, dtype=np.float64), np.asarray(E_ref, dtype=np.float64)
    if not (np.all(np.isfinite(E)) and np.all(np.isfinite(E_ref))):
        return float("nan")
    tiny = np.finfo(np.float64).tiny
    return float(np.mean(np.abs(np.log10(np.maximum(E, tiny)) - np.log10(np.maximum(E_ref, tiny)))))


def pdf_edges(reference: np.ndarray, bins: int = 100, widen: float = 0.5) -> np.ndarray:
    """Common bin edges: the reference's finite range widened by ``widen`` of it per side, plus overflow bins."""
    ref = np.asarray(reference, dtype=np.float64)
    ref = ref[np.isfinite(ref)]
    lo, hi = (float(ref.min()), float(ref.max())) if ref.size else (-1.0, 1.0)
    if hi <= lo:
        lo, hi = lo - 1.0, hi + 1.0
    pad = widen * (hi - lo)
    inner = np.linspace(lo - pad, hi + pad, bins + 1)
    return np.concatenate([[-np.inf], inner, [np.inf]])


def histogram(values: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Probabilities (summing to 1) of the finite values in the bins of ``edges``."""
    v = np.asarray(values, dtype=np.float64).reshape(-1)
    v = v[np.isfinite(v)]
    counts, _ = np.histogram(v, bins=edges)
    total = counts.sum()
    return counts / total if total else np.full(counts.shape, np.nan)


def pearson(a: np.ndarray, b: np.ndarray, ndim: Optional[int] = None) -> np.ndarray:
    """Pearson correlation over the trailing ``ndim`` spatial axes (NaN where a field is non-finite)."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    ndim = _ndim_of(a, ndim)
    axes = field_axes(ndim)
    a = a - a.mean(axis=axes, keepdims=True)
    b = b - b.mean(axis=axes, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        num = (a * b).sum(axis=axes)
        den = np.sqrt((a * a).sum(axis=axes) * (b * b).sum(axis=axes))
        r = num / den
    return np.where(np.isfinite(r), r, np.nan)


def decorrelation_times(correlation: np.ndarray, times: np.ndarray, threshold: float = THRESHOLD
                        ) -> tuple[np.ndarray, np.ndarray]:
    """``(t_d, censored)`` per trajectory from ``correlation (trajectory, time)`` and ``times`` since the start.

    ``t_d`` is the first time with correlation < threshold or non-finite; a trajectory that stays
    above it is censored at the window's end (``censored`` True).
    """
    corr = np.asarray(correlation, dtype=np.float64)
    times = np.asarray(times, dtype=np.float64)
    below = ~(corr >= threshold)  # NaN counts as below
    first = np.argmax(below, axis=-1)
    any_below = below.any(axis=-1)
    t_d = np.where(any_below, times[first], times[-1])
    return t_d, ~any_below


def _velocity_2d(omega: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    n = omega.shape[-1]
    m = np.fft.fftfreq(n, 1.0 / n)
    my, mx = np.meshgrid(m, m, indexing="ij")
    m2 = mx ** 2 + my ** 2
    inv = np.where(m2 > 0, 1.0 / np.where(m2 > 0, m2, 1.0), 0.0)
    psi = np.fft.fft2(omega, axes=(-2, -1)) * inv  # length 2 pi units; see energy()
    u = np.real(np.fft.ifft2(1j * my * psi, axes=(-2, -1)))
    v = np.real(np.fft.ifft2(-1j * mx * psi, axes=(-2, -1)))
    return u, v


def energy(field: np.ndarray, ndim: Optional[int] = None, length: float = 2 * math.pi) -> np.ndarray:
    """Mean kinetic energy per field (leading axes kept)."""
    field = np.asarray(field, dtype=np.float64)
    ndim = _ndim_of(field, ndim)
    if ndim == 1:
        return 0.5 * (field ** 2).mean(axis=-1)
    if ndim == 3:
        return 0.5 * (field ** 2).sum(axis=-4).mean(axis=(-3, -2, -1))
    u, v = _velocity_2d(field)
    scale = (length / (2 * math.pi)) ** 2  # psi = omega / |k|^2 with k = 2 pi m / length
    return 0.5 * scale * (u ** 2 + v ** 2).mean(axis=(-2, -1))


def enstrophy(field: np.ndarray, ndim: Optional[int] = None, length: float = 2 * math.pi) -> np.ndarray:
    """2D: ``<omega^2>/2``; 1D: ``<u_x^2>/2``; 3D: ``<|curl u|^2>/2``, per field."""
    field = np.asarray(field, dtype=np.float64)
    ndim = _ndim_of(field, ndim)
    if ndim == 3:
        n, scale = field.shape[-1], 2 * math.pi / length
        u_hat = np.fft.fftn(field, axes=(-3, -2, -1))
        kx, ky, kz = (scale * m for m in _modes_3d(n))
        ux, uy, uz = u_hat[..., 0, :, :, :], u_hat[..., 1, :, :, :], u_hat[..., 2, :, :, :]
        curl = [ky * uz - kz * uy, kz * ux - kx * uz, kx * uy - ky * ux]  # times i: |.|^2 unchanged
        # Parseval: mean |omega|^2 = sum |omega_hat|^2 / n^6
        return 0.5 * sum((np.abs(c) ** 2).sum(axis=(-3, -2, -1)) for c in curl) / n ** 6
    if ndim == 2:
        return 0.5 * (field ** 2).mean(axis=(-2, -1))
    n = field.shape[-1]
    m = np.fft.fftfreq(n, 1.0 / n)
    m = np.where(np.abs(m) == n // 2, 0.0, m)
    ux = np.real(np.fft.ifft(1j * m * (2 * math.pi / length) * np.fft.fft(field, axis=-1), axis=-1))
    return 0.5 * (ux ** 2).mean(axis=-1)


def similarity(d_model: float, d_none: float) -> Optional[float]:
    """``1 - d_model / d_none``; None when undefined (no baseline, or both zero)."""
    if d_model is None or d_none is None:
        return None
    if not (math.isfinite(d_model) and math.isfinite(d_none)):
        return None if not math.isfinite(d_none) else -math.inf
    if d_none == 0:
        return 1.0 if d_model == 0 else None
    return 1.0 - d_model / d_none
