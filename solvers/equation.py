"""Semi-linear spectral equations ``d(w)/dt = L w + N(w) + f (+ closure(w))``.

An equation exposes the two parts a time stepper needs (as in jax-cfd's
``ImplicitExplicitODE``), in spectral space: the protocol
`ImplicitExplicitEquation`,

- ``grid``: its `SpectralGrid`;
- ``linear``: the diagonal of ``L`` (viscosity, drag), a real tensor on the
  spectral grid;
- ``explicit_hat(w_hat, t, closure)``: ``N(w) + f(t) + closure(w)``, spectral.

A closure is a callable on the physical state, ``closure(w) -> c(w)``. One that also
has ``closure_hat(equation, w_hat, nonlinear_hat)`` (the protocol `SpectralClosure`)
gets the stage's spectral state and the equation's nonlinear term ``N(w)`` instead,
so that its features need not repeat transforms and terms the solver has already
computed; it returns ``to_spectral(c(w))`` (to roundoff).

Any object with these three members can be integrated by the steppers of
`solvers.integrators` (``STEPPERS[method](equation, dt)``).

`tendency` returns the full right-hand side in physical space and `simulate`
integrates it (`solvers.integrators`). Spectral operators are precomputed once
per equation (device, dtype). Subclasses implement ``nonlinear_hat``.
"""

from __future__ import annotations

import math
from typing import Callable, Optional, Protocol, Sequence, runtime_checkable

import torch

from solvers.forcing import Forcing
from solvers.integrators import closure_tendency_hat, make_stepper, simulate
from solvers.spectral import SpectralGrid

Closure = Callable[[torch.Tensor], torch.Tensor]

__all__ = ["SpectralEquation", "ImplicitExplicitEquation", "Closure", "SpectralClosure"]


@runtime_checkable
class SpectralClosure(Protocol):
    """A closure that takes the spectral state: ``closure_hat(equation, w_hat, nonlinear_hat)``
    returns ``equation.grid.to_spectral(closure(equation.grid.to_physical(w_hat)))`` (to
    roundoff), given ``nonlinear_hat = equation.nonlinear_hat(w_hat)`` (or None where the
    caller has not computed it). It must not modify its inputs nor return a view of them."""

    def __call__(self, state: torch.Tensor) -> torch.Tensor:
        ...

    def closure_hat(self, equation, state_hat: torch.Tensor,
                    nonlinear_hat: Optional[torch.Tensor]) -> torch.Tensor:
        ...


@runtime_checkable
class ImplicitExplicitEquation(Protocol):
    """``d(w_hat)/dt = linear * w_hat + explicit_hat(w_hat, t, closure)`` on a spectral grid."""

    grid: SpectralGrid
    linear: torch.Tensor  # the diagonal of the implicitly treated operator L

    def explicit_hat(self, state_hat: torch.Tensor, t: float = 0.0,
                     closure: Optional[Closure] = None) -> torch.Tensor:
        """The explicitly treated part ``N(w) + f(t) + closure(w)``, spectral."""
        ...


def _accumulate(out: torch.Tensor, term: torch.Tensor, owned: bool) -> torch.Tensor:
    """``out + term``; in place in ``out`` when ``out`` is a fresh tensor we own
    and autograd is not recording (same result, one temporary fewer)."""
    if (not owned or (torch.is_grad_enabled() and (out.requires_grad or term.requires_grad))
            or out.dtype != torch.result_type(out, term) or out.shape != torch.broadcast_shapes(out.shape, term.shape)):
        return out + term
    return out.add_(term)


class SpectralEquation:
    """Base class of the pseudo-spectral equations (batched, any device and float dtype)."""

    ndim: int = 0
    field_name: str = "w"
    # True when `nonlinear_hat` always returns a fresh tensor (never a view of
    # its input or a cached tensor), so that `explicit_hat` may add to it in place.
    _owns_nonlinear: bool = False

    def __init__(self, n: int, viscosity: float, drag: float = 0.0, forcing: Optional[Forcing] = None,
                 length: float = 2 * math.pi, dtype: torch.dtype = torch.float32, device=None):
        if viscosity < 0:
            raise ValueError(f"viscosity must be >= 0, got {viscosity}")
        if drag < 0:
            raise ValueError(f"drag must be >= 0, got {drag}")
        if dtype not in (torch.float32, torch.float64):
            raise ValueError(f"dtype must be torch.float32 or torch.float64, got {dtype}")
        self.grid = SpectralGrid(n, length, self.ndim, dtype, torch.device(device) if device is not None else torch.device("cpu"))
        self.viscosity = float(viscosity)
        self.drag = float(drag)
        self.forcing = forcing
        if forcing is not None and hasattr(forcing, "check_grid"):
            forcing.check_grid(self.grid)
        self.linear = -self.viscosity * self.grid.k2 - self.drag
        if forcing is not None and getattr(forcing, "linear_coefficient", None) is not None:
            # a forcing linear in the state (e.g. `LinearForcing`): part of the diagonal L
            coefficient = forcing.linear_coefficient(self.grid)
            if coefficient is not None:
                self.linear = self.linear + coefficient
        self._steady_forcing_hat = None
        if forcing is not None and getattr(forcing, "steady", True):
            steady = forcing.spectral(self.grid, 0.0)
            self._steady_forcing_hat = None if steady is None else steady.to(self.grid.complex_dtype)
        self._steppers: dict = {}

    # ------------------------------------------------------------------ properties
    @property
    def n(self) -> int:
        return self.grid.n

    @property
    def length(self) -> float:
        return self.grid.length

    @property
    def dtype(self) -> torch.dtype:
        return self.grid.dtype

    @property
    def device(self) -> torch.device:
        return self.grid.device

    # ------------------------------------------------------------------ terms
    def nonlinear_hat(self, state_hat: torch.Tensor) -> torch.Tensor:
        """The dealiased nonlinear (advection) term ``N(w)``, spectral."""
        raise NotImplementedError

    def forcing_hat(self, t: float = 0.0) -> Optional[torch.Tensor]:
        """``f(t)`` in spectral space, or None without forcing."""
        if self.forcing is None:
            return None
        if self._steady_forcing_hat is not None or getattr(self.forcing, "steady", True):
            return self._steady_forcing_hat
        return self.forcing.spectral(self.grid, t)

    def explicit_hat(self, state_hat: torch.Tensor, t: float = 0.0,
                     closure: Optional[Closure] = None) -> torch.Tensor:
        """``N(w) + f(t) + closure(w)`` in spectral space (the explicitly treated part)."""
        out = self.nonlinear_hat(state_hat)
        owned = self._owns_nonlinear
        # the closure's term before `out` is added to in place (a spectral closure reads N(w))
        term = None if closure is None else closure_tendency_hat(self, closure, state_hat, out)
        f = self.forcing_hat(t)
        if f is not None:
            out, owned = _accumulate(out, f, owned), True
        if term is not None:
            out = _accumulate(out, term, owned)
        return out

    def linear_hat(self, state_hat: torch.Tensor) -> torch.Tensor:
        """``L w`` in spectral space."""
        return self.linear * state_hat

    def tendency_hat(self, state_hat: torch.Tensor, t: float = 0.0,
                     closure: Optional[Closure] = None) -> torch.Tensor:
        return self.linear_hat(state_hat) + self.explicit_hat(state_hat, t, closure)

    def tendency(self, state: torch.Tensor, closure: Optional[Closure] = None, t: float = 0.0) -> torch.Tensor:
        """The full right-hand side ``L w + N(w) + f + closure(w)`` in physical space."""
        self.check_state(state)
        out = self.grid.to_physical(self.tendency_hat(self.grid.to_spectral(state), t))
        if closure is not None:
            out = out + closure(state)
        return out

    def nonlinear(self, state: torch.Tensor) -> torch.Tensor:
        """``N(w)`` in physical space."""
        return self.grid.to_physical(self.nonlinear_hat(self.grid.to_spectral(state)))

    # ------------------------------------------------------------------ integration
    def simulate(self, state: torch.Tensor, dt, steps: Optional[int] = None, closure: Optional[Closure] = None,
                 save_every: Optional[int] = None, *, time: float = 0.0, method: str = "etdrk4",
                 save_at: Optional[Sequence[int]] = None, save_times: Optional[Sequence[float]] = None,
                 on_save=None, on_step=None, check_every: Optional[int] = None,
                 closure_per_stage: bool = True) -> torch.Tensor:
        """Integrate ``steps`` steps of size ``dt`` from ``state`` at model time ``time``
        (or, with ``dt=solvers.CFL(...)``, adaptive steps up to the last of ``save_times``).

        Returns the final state, or with ``save_every=k`` the trajectory
        ``(batch, steps // k + 1, *shape)`` whose first entry is the initial state.
        Raises `solvers.BlowUpError` naming the step, time and batch members if the
        state becomes non-finite. The other arguments: `solvers.integrators.simulate`.
        """
        return simulate(self, state, dt, steps, closure=closure, save_every=save_every, time=time,
                        method=method, save_at=save_at, save_times=save_times, on_save=on_save,
                        on_step=on_step, check_every=check_every, closure_per_stage=closure_per_stage)

    def stepper(self, method: str, dt: float):
        """The (cached) time stepper of ``method`` for step ``dt``."""
        key = (method, float(dt))
        if key not in self._steppers:
            self._steppers[key] = make_stepper(method, self, dt)
        return self._steppers[key]

    def stable_dt(self, state: torch.Tensor, cfl: float = 0.5) -> float:
        """Largest ``dt`` with ``dt * sum_d max|u_d| / dx <= cfl`` over the batch (advective CFL)."""
        speeds = self.max_speed(state)
        speed = float(speeds.max())
        if not math.isfinite(speed):
            raise ValueError("stable_dt: the state is not finite")
        return cfl * self.grid.spacing / speed if speed > 0 else math.inf

    def max_speed(self, state: torch.Tensor) -> torch.Tensor:
        """``sum_d max|u_d|`` per batch member of a physical state."""
        raise NotImplementedError

    def max_speed_hat(self, state_hat: torch.Tensor) -> torch.Tensor:
        """`max_speed` of a spectral state (what adaptive steps read)."""
        return self.max_speed(self.grid.to_physical(state_hat))

    # ------------------------------------------------------------------ checks
    def check_state(self, state: torch.Tensor):
        shape = tuple(state.shape[-self.ndim:])
        if state.dim() < self.ndim + 1 or shape != self.grid.shape:
            raise ValueError(f"{type(self).__name__}: state must have shape (batch, {', '.join(map(str, self.grid.shape))}), "
                             f"got {tuple(state.shape)}")

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(n={self.n}, viscosity={self.viscosity:g}, drag={self.drag:g}, "
                f"forcing={self.forcing!r}, length={self.length:g}, dtype={self.dtype}, device={self.device})")
