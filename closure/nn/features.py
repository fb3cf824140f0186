"""Closure models on periodic fields: input features and stored normalization.

A ``FieldClosure`` maps a raw physical state, shape (batch, n) in 1D,
(batch, ny, nx) in 2D or the velocity (batch, 3, nz, ny, nx) in 3D, to the SGS
tendency of the same shape (in 3D the three velocity components are the input
channels and the three SGS components the outputs; one output scale for all,
as the statistics are isotropic):

    channels = [field, derived features...]                (batch, C, *grid)
    x        = (channels - input_mean) / input_std          per channel
    y        = network(x)                                    (batch, *grid)
    sgs      = y * output_std + output_mean

The statistics are buffers, so a saved state_dict carries them. Derived
features are computed spectrally on the periodic domain [0, length)^d:

    gradient            1D: u_x;  2D: (f_x, f_y);  3D: the velocity gradient d_j u_i
                        (9 channels, i-major)
    laplacian           f_xx (+ f_yy)
    velocity_gradient   2D vorticity only: psi_hat = omega_hat / |k|^2,
                        u = psi_y, v = -psi_x (so omega = v_x - u_y);
                        channels (u_x, u_y, v_x) (v_y = -u_x is redundant)
    dealias_residual    N(f) - N_les(f): the field's own nonlinear term computed
                        exactly (products on a 3n/2 grid, restricted to |m| < n/2)
                        minus the LES's 2/3-dealiased one, i.e. the part of the
                        resolved advection that the LES discards (the solvers'
                        Burgers1D / NavierStokes2D / NavierStokes3D nonlinear
                        terms; 3 channels in 3D)
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import nn

import solvers

from closure.nn.meanfield import ArchitectureError

DERIVED_FEATURES = {1: ("gradient", "laplacian", "dealias_residual"),
                    2: ("gradient", "laplacian", "velocity_gradient", "dealias_residual"),
                    3: ("gradient", "dealias_residual")}
FEATURE_CHANNELS = {"gradient": lambda ndim: ndim if ndim < 3 else 9, "laplacian": lambda ndim: 1,
                    "velocity_gradient": lambda ndim: 3, "dealias_residual": lambda ndim: 1 if ndim < 3 else 3}
FIELD_CHANNELS = {1: 1, 2: 1, 3: 3}  # the state's own channels: a scalar field, or the 3D velocity
_EQUATIONS: dict = {}


def exact_grid(n: int) -> int:
    """The smallest even grid on which the products of modes |m| < n/2 are exact on |m| < n/2.

    Products of two such modes reach |m| <= n - 2; on a grid of M points they alias to
    m -+ M, outside |m| < n/2 when M >= 3n/2 - 1 (Orszag's 3/2 rule; the equation's own
    2/3 truncation at M keeps every input mode as (M - 1) // 3 >= n/2 - 1). 48 points for n = 32:
    (48/64)^d of the cost of the twice-finer grid, with the same result to roundoff.
    """
    return 2 * ((3 * n // 2 + 1) // 2)


def _low_mode_blocks(h: int, ndim: int) -> list[tuple]:
    """Index tuples of the modes ``|m_d| < h`` in an rfft spectrum over the trailing ``ndim`` axes
    (the full axes in two blocks, ``[0, h)`` and ``(-h, 0)``; the half x axis ``[0, h)``)."""
    blocks = [(slice(0, h),)]
    for _ in range(ndim - 1):
        blocks = [(s,) + b for s in (slice(0, h), slice(-h + 1, None)) for b in blocks]
    return [(Ellipsis,) + b for b in blocks]


def dealias_residual(f: torch.Tensor, ndim: int, length: float, f_hat: torch.Tensor | None = None,
                     nonlinear_hat: torch.Tensor | None = None) -> torch.Tensor:
    """``N(f) - N_les(f)`` of a physical field (module docstring): ``(batch, n)``, ``(batch, n, n)``
    or the velocity ``(batch, 3, n, n, n)`` (then the projected ``P(u x omega)`` of `solvers.NavierStokes3D`).

    ``N(f)`` is computed on the `exact_grid` (zero-padded spectrum, products there,
    restricted back to |m| < n/2). ``f_hat``: the field's rfft if the caller has it;
    ``nonlinear_hat``: ``N_les(f)`` (the LES solver's `nonlinear_hat` of ``f_hat`` on
    this grid and length) if the caller has it.
    """
    n = f.shape[-1]
    m = exact_grid(n)
    key = (ndim, n, float(length), f.dtype, str(f.device))
    if key not in _EQUATIONS:
        cls = {1: solvers.Burgers1D, 2: solvers.NavierStokes2D, 3: solvers.NavierStokes3D}[ndim]
        _EQUATIONS[key] = tuple(cls(k, viscosity=1.0, length=length, dtype=f.dtype, device=f.device) for k in (n, m))
    les, fine = _EQUATIONS[key]
    f_hat = les.grid.to_spectral(f) if f_hat is None else f_hat
    scale = (m / n) ** ndim
    padded = torch.zeros(f.shape[:-ndim] + fine.grid.spectral_shape, dtype=f_hat.dtype, device=f.device)
    blocks = _low_mode_blocks(n // 2, ndim)
    for index in blocks:
        padded[index] = f_hat[index] * scale
    nl = fine.nonlinear_hat(padded)
    full = torch.zeros_like(f_hat)
    for index in blocks:
        full[index] = nl[index] / scale
    if nonlinear_hat is None:
        nonlinear_hat = les.nonlinear_hat(f_hat)
    return les.grid.to_physical(full - nonlinear_hat)


STD_FLOOR = 1e-12


def check_ndim(ndim: int) -> int:
    if ndim not in (1, 2, 3):
        raise ArchitectureError(f"ndim={ndim!r}: closures exist for 1D (Burgers), 2D (vorticity) and 3D "
                                "(velocity) fields")
    return int(ndim)


def check_features(features: Sequence[str] | None, ndim: int) -> list[str]:
    """The derived feature names (the field itself is always channel 0)."""
    names = list(features or [])
    for name in names:
        if name not in DERIVED_FEATURES[ndim]:
            raise ArchitectureError(
                f"feature {name!r} is not available in {ndim}D (expected some of {', '.join(DERIVED_FEATURES[ndim])})"
            )
    return names


_WAVENUMBERS: dict = {}


def _wavenumbers(n: int, length: float, like: torch.Tensor, real: bool) -> torch.Tensor:
    """Physical wavenumbers 2 pi m / length with the Nyquist mode set to zero.

    Made on ``like``'s device (no host-to-device copy, so a closure using them can be
    captured in a CUDA graph) and cached per grid, dtype and device.
    """
    key = (n, float(length), real, like.dtype, like.device)
    if key not in _WAVENUMBERS:
        freq = torch.fft.rfftfreq if real else torch.fft.fftfreq
        m = freq(n, 1.0 / n, dtype=like.dtype, device=like.device)
        if n % 2 == 0:
            m = torch.where(m.abs() == n // 2, torch.zeros_like(m), m)
        _WAVENUMBERS[key] = m * (2.0 * math.pi / length)
    return _WAVENUMBERS[key]


def _spectral_1d(u: torch.Tensor, length: float, features: Sequence[str]) -> list[torch.Tensor]:
    n = u.shape[-1]
    k = _wavenumbers(n, length, u, real=True)
    u_hat = torch.fft.rfft(u, dim=-1)
    out = []
    for name in features:
        if name == "dealias_residual":
            out.append(dealias_residual(u, 1, length))
            continue
        factor = 1j * k if name == "gradient" else -(k**2)
        out.append(torch.fft.irfft(factor * u_hat, n=n, dim=-1))
    return out


_GRADIENT_OPERATORS: dict = {}


def _gradient_operators(ny: int, nx: int, length: float, like: torch.Tensor) -> torch.Tensor:
    """``(i k_x, i k_y)`` stacked on the rfft grid, ``(2, ny, nx // 2 + 1)``, cached per grid,
    dtype and device (made on the device, like `_wavenumbers`)."""
    key = (ny, nx, float(length), like.dtype, like.device)
    if key not in _GRADIENT_OPERATORS:
        kx = _wavenumbers(nx, length, like, real=True)[None, :]
        ky = _wavenumbers(ny, length, like, real=False)[:, None]
        _GRADIENT_OPERATORS[key] = torch.stack(torch.broadcast_tensors(1j * kx, 1j * ky))
    return _GRADIENT_OPERATORS[key]


def _spectral_2d(f: torch.Tensor, length: float, features: Sequence[str], f_hat: torch.Tensor | None = None,
                 nonlinear_hat: torch.Tensor | None = None) -> list[torch.Tensor]:
    """The derived channels of a 2D field ``f``; ``f_hat`` (its unnormalised rfft2) and
    ``nonlinear_hat`` (the LES's `nonlinear_hat` of it) where the caller has them."""
    ny, nx = f.shape[-2:]
    kx = _wavenumbers(nx, length, f, real=True)[None, :]
    ky = _wavenumbers(ny, length, f, real=False)[:, None]
    f_hat = torch.fft.rfft2(f, dim=(-2, -1)) if f_hat is None else f_hat

    def back(factor):
        return torch.fft.irfft2(factor * f_hat, s=(ny, nx), dim=(-2, -1))

    out = []
    for name in features:
        if name == "gradient":  # both derivatives in one transform
            ops = _gradient_operators(ny, nx, length, f)
            out += list(torch.fft.irfft2(ops * f_hat.unsqueeze(-3), s=(ny, nx), dim=(-2, -1)).unbind(-3))
        elif name == "laplacian":
            out.append(back(-(kx**2 + ky**2)))
        elif name == "dealias_residual":
            out.append(dealias_residual(f, 2, length, f_hat, nonlinear_hat))
        else:
            k2 = kx**2 + ky**2
            inv_k2 = torch.where(k2 > 0, 1.0 / torch.where(k2 > 0, k2, torch.ones_like(k2)), torch.zeros_like(k2))
            out += [back(-kx * ky * inv_k2), back(-(ky**2) * inv_k2), back(kx**2 * inv_k2)]
    return out


def _spectral_3d(u: torch.Tensor, length: float, features: Sequence[str]) -> list[torch.Tensor]:
    """Derived channels of a velocity (batch, 3, nz, ny, nx): ``gradient`` -> d_j u_i, i-major;
    ``dealias_residual`` -> its 3 components."""
    nz, ny, nx = u.shape[-3:]
    ks = [_wavenumbers(nx, length, u, real=True)[None, None, :], _wavenumbers(ny, length, u, real=False)[None, :, None],
          _wavenumbers(nz, length, u, real=False)[:, None, None]]
    u_hat = torch.fft.rfftn(u, dim=(-3, -2, -1))
    out = []
    for name in features:
        if name == "dealias_residual":
            out.append(dealias_residual(u, 3, length))
            continue
        grad = torch.stack([1j * k * u_hat for k in ks], dim=2)  # (batch, 3 (i), 3 (j), ...)
        out.append(torch.fft.irfftn(grad, s=(nz, ny, nx), dim=(-3, -2, -1)).flatten(1, 2))
    return out


def feature_channels(state: torch.Tensor, ndim: int, features: Sequence[str], length: float,
                     state_hat: torch.Tensor | None = None, nonlinear_hat: torch.Tensor | None = None) -> torch.Tensor:
    """Stack [field, derived features...] as channels: (batch, C, *grid). In 2D ``state_hat``
    (the state's unnormalised rfft2) and ``nonlinear_hat`` (`dealias_residual`) spare their
    computation where the caller has them."""
    if ndim == 3:
        return torch.cat([state] + _spectral_3d(state, length, features), dim=1)
    if not features:
        return state.unsqueeze(1)
    derived = (_spectral_1d(state, length, features) if ndim == 1
               else _spectral_2d(state, length, features, state_hat, nonlinear_hat))
    return torch.stack([state] + derived, dim=1)


class FoldedNet:
    """Base of a closure's inference form: ``layers`` [(weight, bias), ...] and ``readout``
    (weight, bias), the input normalization, layer multipliers and output scaling folded in
    (`closure.nn.cnn.FoldedCNN`, `closure.nn.stencil.FoldedMLP`)."""

    layers: list
    readout: tuple

    def tensors(self) -> list[torch.Tensor]:
        return [t for layer in (*self.layers, self.readout) for t in layer]

    @staticmethod
    def next_affine(bias: torch.Tensor, tanh: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """``(alpha, beta)`` of the activation's output as ``alpha s + beta``, ``s`` the sigmoid
        computed in its place: tanh(x) = 2 sigmoid(2x) - 1 (the 2 inside goes into the layer)."""
        return (torch.full_like(bias, 2.0 if tanh else 1.0), torch.full_like(bias, -1.0 if tanh else 0.0))

    def fold_readout(self, net, closure, alpha: torch.Tensor, beta: torch.Tensor, dtype: torch.dtype) -> None:
        """``readout``: the network's output layer on ``alpha s + beta`` with its output scale and the
        closure's stored output normalization (std, mean) folded in."""
        readout = net.C.double() * net.output_scale
        out_bias = readout @ beta + (net.bC.double() if net.bC is not None else 0.0)
        std, mean = closure.output_std.double(), closure.output_mean.double()
        self.readout = ((readout * alpha * std).to(dtype), (out_bias * std + mean).to(dtype))

    def update(self, other: "FoldedNet") -> bool:
        """Copy ``other``'s values into these tensors (in place) if they match in shape, dtype
        and device; returns whether it did."""
        mine, theirs = self.tensors(), other.tensors()
        if len(mine) != len(theirs) or any((a.shape, a.dtype, a.device) != (b.shape, b.dtype, b.device)
                                           for a, b in zip(mine, theirs)):
            return False
        for a, b in zip(mine, theirs):
            a.copy_(b)
        return True


class FieldClosure(nn.Module):
    """Base of the closure models: features, stored normalization, shape checks.

    Subclasses implement ``predict(x)``: normalized channels (batch, C, *grid)
    to normalized SGS (batch, *grid).

    ``cuda_graph_safe``: the forward pass is a pure tensor function of the state (no
    host synchronisation, no model time), so `solvers.simulate` may capture it with
    the solver step in one CUDA graph.
    """

    cuda_graph_safe = True

    def __init__(self, ndim: int, features: Sequence[str] | None = None, length: float = 2.0 * math.pi):
        super().__init__()
        self.ndim = check_ndim(ndim)
        self.features = check_features(features, self.ndim)
        if not (float(length) > 0.0):
            raise ArchitectureError(f"length={length!r} must be positive")
        self.length = float(length)
        c = self.n_channels
        self.register_buffer("input_mean", torch.zeros(c))
        self.register_buffer("input_std", torch.ones(c))
        self.register_buffer("output_mean", torch.zeros(1))
        self.register_buffer("output_std", torch.ones(1))

    @property
    def n_channels(self) -> int:
        return FIELD_CHANNELS[self.ndim] + sum(FEATURE_CHANNELS[name](self.ndim) for name in self.features)

    @property
    def out_channels(self) -> int:
        """Output channels: 1 for a scalar field, 3 for the 3D velocity's SGS term."""
        return FIELD_CHANNELS[self.ndim]

    def channels(self, state: torch.Tensor, state_hat: torch.Tensor | None = None,
                 nonlinear_hat: torch.Tensor | None = None) -> torch.Tensor:
        """Raw physical input channels (batch, C, *grid) (`feature_channels`)."""
        return feature_channels(state, self.ndim, self.features, self.length, state_hat, nonlinear_hat)

    def _check_state(self, state: torch.Tensor, what: str = "state") -> None:
        if self.ndim == 3 and (state.dim() != 5 or state.shape[1] != 3):
            raise ValueError(f"{what} has shape {tuple(state.shape)}; a 3D closure expects (batch, 3, nz, ny, nx)")
        if self.ndim < 3 and state.dim() != self.ndim + 1:
            layout = "(batch, n)" if self.ndim == 1 else "(batch, ny, nx)"
            raise ValueError(f"{what} has shape {tuple(state.shape)}; a {self.ndim}D closure expects {layout}")

    @torch.no_grad()
    def fit_normalization(self, field: torch.Tensor, sgs: torch.Tensor) -> None:
        """Set input mean/std per channel and output mean/std from (field, sgs) samples."""
        self._check_state(field, "field")
        self._check_state(sgs, "sgs")
        x = self.channels(field.to(self.input_mean))
        dims = [0] + list(range(2, x.dim()))
        self.input_mean.copy_(x.mean(dim=dims))
        self.input_std.copy_(x.std(dim=dims).clamp_min(STD_FLOOR))
        y = sgs.to(self.output_mean)
        self.output_mean.fill_(y.mean())
        self.output_std.fill_(y.std().clamp_min(STD_FLOOR))

    def normalize_input(self, state: torch.Tensor) -> torch.Tensor:
        return self.normalize_channels(self.channels(state))

    def normalize_channels(self, x: torch.Tensor) -> torch.Tensor:
        shape = (1, -1) + (1,) * self.ndim
        return (x - self.input_mean.view(shape)) / self.input_std.view(shape)

    def forward(self, state: torch.Tensor, state_hat: torch.Tensor | None = None,
                nonlinear_hat: torch.Tensor | None = None) -> torch.Tensor:
        """SGS tendency (physical units) for a raw state (batch, n) or (batch, ny, nx); in 2D
        ``state_hat`` (its unnormalised rfft2) and ``nonlinear_hat`` where the caller has them
        (`channels`, `closure_hat`)."""
        self._check_state(state)
        return self.tendency(self.channels(state, state_hat, nonlinear_hat))

    def tendency(self, x: torch.Tensor) -> torch.Tensor:
        """SGS tendency (physical units) from the raw input channels (batch, C, *grid)."""
        y = self.predict(self.normalize_channels(x))
        return y * self.output_std + self.output_mean

    def closure_hat(self, equation, state_hat: torch.Tensor, nonlinear_hat: torch.Tensor | None) -> torch.Tensor:
        """The tendency in the solver's spectral space from its spectral state (the protocol
        `solvers.equation.SpectralClosure`): ``to_spectral(self(to_physical(state_hat)))``. In 2D
        the features take the state's spectrum from ``state_hat`` (the solver's unnormalised
        rfft, the features' convention) instead of transforming the field again, and
        `dealias_residual` takes ``N_les`` from ``nonlinear_hat`` when it is the
        `solvers.NavierStokes2D` term on this closure's grid and length."""
        grid = equation.grid
        state = grid.to_physical(state_hat)
        if self.ndim != 2 or grid.ndim != 2:
            return grid.to_spectral(self(state))
        if not (isinstance(equation, solvers.NavierStokes2D)
                and type(equation).nonlinear_hat is solvers.NavierStokes2D.nonlinear_hat
                and float(grid.length) == self.length and state_hat.dtype == grid.complex_dtype):
            nonlinear_hat = None
        return grid.to_spectral(self(state, state_hat, nonlinear_hat))

    def _architecture(self, hidden: list, net_kwargs: dict) -> dict:
        """The saved description shared by the stencil and convolutional closures."""
        options = {k: net_kwargs[k] for k in ("bias", "output_bias", "output_init", "input_scaling")}
        kwargs = {
            "ndim": self.ndim,
            "stencil": self.stencil,
            "hidden": hidden,
            "gammas": net_kwargs["gammas"],
            "activation": net_kwargs["activation"],
            "features": list(self.features),
            "length": self.length,
            **options,
        }
        return {"class": type(self).__name__, "kwargs": kwargs}

    def predict(self, x: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def fold(self) -> "FoldedNet":  # pragma: no cover - abstract
        """The inference form of this closure (a `FoldedNet` built from the current tensors)."""
        raise NotImplementedError

    def folded(self) -> "FoldedNet":
        """The current inference form (`fold`; cached, rebuilt after any in-place update, load or
        move, as the tensors' version counters and storages tell: a write through ``.data``
        bypasses the version counter and is not seen)."""
        if "_folded_modules" not in self.__dict__:  # the structure is fixed; the tensors may be replaced
            self._folded_modules = list(self.modules())
        key = tuple((t.data_ptr(), t._version, t.dtype) for m in self._folded_modules
                    for t in (*m.parameters(recurse=False), *m.buffers(recurse=False)))
        if self.__dict__.get("_folded_key") != key:
            folded, old = self.fold(), self.__dict__.get("_folded")
            if old is not None and old.update(folded):
                folded = old  # same tensors, new values: a CUDA graph that captured them stays valid
            self._folded, self._folded_key = folded, key
        return self._folded

    def normalized_target(self, sgs: torch.Tensor) -> torch.Tensor:
        """The SGS term in the network's output units: (sgs - output_mean) / output_std."""
        return (sgs - self.output_mean) / self.output_std
