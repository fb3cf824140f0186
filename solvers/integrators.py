"""Time steppers and the time loop for semi-linear equations ``w_t = L w + F(w, t)``, L diagonal.

A stepper is built from an equation and a step, ``STEPPERS[method](equation, dt)``,
and advances spectral states with ``step(w_hat, t, closure)``. It only uses the
equation's implicit-explicit interface (`solvers.equation.ImplicitExplicitEquation`):
the ``linear`` diagonal and ``explicit_hat(w_hat, t, closure)``; the closure is
called at every stage.

- `ETDRK4`: the exponential time-differencing fourth-order Runge-Kutta scheme of
  Cox & Matthews (2002, J. Comput. Phys. 176), with the coefficients evaluated by
  the contour integrals of Kassam & Trefethen (2005, SIAM J. Sci. Comput. 26):
  M = 32 points on a unit circle around each ``h L``, in float64, then cast.
  Fourth order in both parts; exact for the linear part.
- `CrankNicolsonRK4`: the low-storage IMEX scheme of jax-cfd
  (``crank_nicolson_rk4``): Carpenter-Kennedy (1994) 5-stage RK4 for the
  explicit part, Crank-Nicolson for the implicit part (second order in ``L``).

`simulate` is the one time loop of the project: saves (every ``save_every`` steps
or at listed steps), save and step hooks, blow-up detection without host
synchronisation (`BlowUpError`: step, time, batch members) and, for small grids on
a GPU, CUDA-graph replay. `simulate_checkpointed` is its differentiable variant
for training through the solver (gradient checkpointing, no synchronisation).
"""

from __future__ import annotations

import math
import os
import warnings
from typing import Callable, Optional, Sequence

import torch
from torch.utils.checkpoint import checkpoint

from solvers.timestep import CFL

__all__ = ["ETDRK4", "CrankNicolsonRK4", "BlowUpError", "STEPPERS", "make_stepper", "simulate",
           "simulate_checkpointed", "etdrk4_coefficients", "HeldTendency", "closure_tendency_hat"]


class BlowUpError(RuntimeError):
    """A simulation produced non-finite values.

    Attributes: ``step`` (first step at which a member went non-finite, counted
    from 1), ``time`` (model time after that step), ``members`` (batch indices
    that are non-finite) and ``state`` (the last saved finite trajectory part,
    or None).
    """

    def __init__(self, step: int, time: float, members: list[int], saved=None):
        self.step, self.time, self.members, self.saved = step, time, members, saved
        super().__init__(f"simulation blew up at step {step} (t = {time:.6g}): "
                         f"non-finite values in batch member(s) {members}")


# ---------------------------------------------------------------------------- ETDRK4
def etdrk4_coefficients(linear: torch.Tensor, dt: float, contour_points: int = 32) -> dict[str, torch.Tensor]:
    """Kassam-Trefethen contour evaluation of the ETDRK4 coefficients of a diagonal ``L``.

    With ``z = dt L`` and ``r_j = exp(i pi (j - 1/2) / M)``:

        E  = e^z,  E2 = e^{z/2}
        Q  = dt  < (e^{(z+r)/2} - 1) / (z + r) >
        f1 = dt  < (-4 - w + e^w (4 - 3 w + w^2)) / w^3 >,   w = z + r
        f2 = dt  < (2 + w + e^w (w - 2)) / w^3 >
        f3 = dt  < (-4 - 3 w - w^2 + e^w (4 - w)) / w^3 >

    (means over the contour, real parts). Computed in float64 on the distinct
    values of ``L`` only (L is a function of |k|^2), then gathered and cast.
    """
    lin64 = linear.detach().to(torch.float64)
    values, inverse = torch.unique(lin64.reshape(-1), return_inverse=True)
    z = (dt * values).to(torch.complex128).unsqueeze(-1)
    j = torch.arange(1, contour_points + 1, device=linear.device, dtype=torch.float64)
    r = torch.exp(1j * math.pi * (j - 0.5) / contour_points)
    w = z + r
    ew = torch.exp(w)
    mean = lambda a: a.mean(dim=-1).real  # noqa: E731
    coeffs = {
        "E": torch.exp(dt * values),
        "E2": torch.exp(dt * values / 2),
        "Q": dt * mean((torch.exp(w / 2) - 1) / w),
        "f1": dt * mean((-4 - w + ew * (4 - 3 * w + w ** 2)) / w ** 3),
        "f2": dt * mean((2 + w + ew * (w - 2)) / w ** 3),
        "f3": dt * mean((-4 - 3 * w - w ** 2 + ew * (4 - w)) / w ** 3),
    }
    return {name: c[inverse].reshape(linear.shape).to(linear.dtype) for name, c in coeffs.items()}


def stage_time(equation, t: float, offset: float) -> float:
    """The model time at which a stage at ``t + offset`` of the step from ``t`` evaluates the forcing.

    ``t + offset`` for a smooth (or steady) forcing. A forcing that declares
    ``piecewise_constant = True`` (constant on intervals ``[j tau, (j + 1) tau)``)
    is evaluated at the step's start ``t`` at every stage, so that all stages of
    a step see the same interval: with ``tau`` a whole multiple of ``dt`` and steps
    starting on multiples of ``dt``, the forcing is then constant over each step
    and the scheme keeps its order. (A last stage at ``t + dt`` on an interval
    boundary would otherwise read the next interval's value: a first-order error.)
    """
    forcing = getattr(equation, "forcing", None)  # steppers accept any object with linear, explicit_hat
    return t if getattr(forcing, "piecewise_constant", False) else t + offset


def _recording(*tensors: torch.Tensor) -> bool:
    """Whether autograd records operations on any of ``tensors``."""
    return torch.is_grad_enabled() and any(x.requires_grad for x in tensors)


def _can_fuse(equation, w: torch.Tensor, Fw: torch.Tensor, coefficient: torch.Tensor) -> bool:
    """Whether a step may take the fused in-place path: autograd not recording,
    an equation whose explicit term is always a fresh tensor, matching dtypes/shapes."""
    return (getattr(equation, "_owns_nonlinear", False) and not _recording(w, Fw)
            and w.is_complex() and Fw.dtype == w.dtype and Fw.shape == w.shape
            and torch.view_as_real(w.new_empty(0)).dtype == coefficient.dtype)


def _kept_block(equation, w: torch.Tensor, closure):
    """The equation's kept-columns layout for a fused step (`NavierStokes2D.kept_block`),
    or None: autograd recording, a closure called at the stages, or an equation without one."""
    held = (closure.value_hat,) if isinstance(closure, HeldTendency) else ()
    if not hasattr(equation, "kept_block") or _recording(w, *held) or not w.is_complex():
        return None
    return equation.kept_block(closure)


def _real(x: torch.Tensor) -> torch.Tensor:
    """The real view ``(..., 2)`` of a complex tensor (a copy only for a lazy conjugate)."""
    return torch.view_as_real(x.resolve_conj())


def _real_coefficient(c: torch.Tensor) -> torch.Tensor:
    """A real diagonal coefficient, duplicated on a trailing axis of 2 to multiply `_real` views.

    (Duplicated rather than broadcast: a stride-0 innermost axis of length 2 makes
    torch's elementwise kernels 5-7x slower.)"""
    return c.unsqueeze(-1).expand(*c.shape, 2).contiguous()


class ETDRK4:
    """One ETDRK4 step (Cox & Matthews 2002) of ``w_t = L w + F(w, t)`` in spectral space.

    When autograd does not record the step (no grad mode, or neither the state
    nor the explicit term requires grad) the linear combinations run as fused
    in-place real multiply-adds on the real views of the spectral fields (no
    real-to-complex promotion of the coefficients, few temporaries); otherwise
    the plain differentiable expressions are used. Both compute the same sums.
    """

    order = 4

    def __init__(self, equation, dt: float):
        self.equation, self.dt = equation, float(dt)
        c = etdrk4_coefficients(equation.linear, self.dt)
        self.E, self.E2, self.Q = c["E"], c["E2"], c["Q"]
        self.f1, self.f2, self.f3 = c["f1"], c["f2"], c["f3"]
        self._fused = {name: _real_coefficient(x) for name, x in
                       (("E", self.E), ("E2", self.E2), ("Q", self.Q), ("f1", self.f1),
                        ("f2x2", 2 * self.f2), ("f3", self.f3))}

    def step(self, w: torch.Tensor, t: float, closure: Optional[Callable] = None) -> torch.Tensor:
        F = self.equation.explicit_hat
        block = _kept_block(self.equation, w, closure)
        if block is not None:
            return self._kept_columns_step(block, w, closure)
        t_half, t_end = stage_time(self.equation, t, self.dt / 2), stage_time(self.equation, t, self.dt)
        Nw = F(w, t, closure)
        if _can_fuse(self.equation, w, Nw, self.E):
            return self._fused_step(w, Nw, t, t_half, t_end, closure)
        E2w = self.E2 * w
        a = E2w + self.Q * Nw
        Na = F(a, t_half, closure)
        b = E2w + self.Q * Na
        Nb = F(b, t_half, closure)
        c = self.E2 * a + self.Q * (2 * Nb - Nw)
        Nc = F(c, t_end, closure)
        return self.E * w + self.f1 * Nw + 2 * self.f2 * (Na + Nb) + self.f3 * Nc

    def _kept_columns_step(self, block, w: torch.Tensor, held: Optional["HeldTendency"] = None) -> torch.Tensor:
        """The fused step on the equation's kept-columns layout (`kept_block`): the same
        multiply-adds on the columns where ``N + f`` is non-zero, ``e^{hL} w`` elsewhere, plus
        ``(f1 + 4 f2 + f3) c`` there for a held closure ``c`` (the stages' sum with ``N = c``)."""
        if self.__dict__.get("_block") is not block:
            self._block = block
            self._block_coefficients = {name: block.coefficient(c) for name, c in
                                        (("E", self.E), ("E2", self.E2), ("Q", self.Q), ("f1", self.f1),
                                         ("f2x2", 2 * self.f2), ("f3", self.f3))}
            self._held_factor = self.f1 + 4 * self.f2 + self.f3
        k, source = self._block_coefficients, block.source(held)

        def F(state):
            return block.explicit(state, source)

        wr = block.pack(w)
        Nw = F(wr)
        e2w = wr * k["E2"]
        a = torch.addcmul(e2w, Nw, k["Q"])                      # a = E2 w + Q N(w)
        Na = F(a)
        b = e2w.addcmul_(Na, k["Q"])                            # b = E2 w + Q N(a)
        Nb = F(b)
        c = a.mul_(k["E2"]).addcmul_(Nb, k["Q"], value=2).addcmul_(Nw, k["Q"], value=-1)
        Nc = F(c)                                               # c = E2 a + Q (2 N(b) - N(w))
        out = torch.mul(wr, k["E"], out=block.new_state(w.shape[0]))
        out.addcmul_(Nw, k["f1"]).addcmul_(Na.add_(Nb), k["f2x2"]).addcmul_(Nc, k["f3"])
        return block.add_held(block.unpack(out, w, self.E), held, self._held_factor)

    def _fused_step(self, w: torch.Tensor, Nw: torch.Tensor, t: float, t_half: float, t_end: float,
                    closure) -> torch.Tensor:
        """The same step with in-place real multiply-adds (autograd not recording)."""
        F, k = self.equation.explicit_hat, self._fused
        wr, Nwr = _real(w), _real(Nw)
        e2w = wr * k["E2"]
        a = torch.addcmul(e2w, Nwr, k["Q"])                     # a = E2 w + Q N(w)
        Na = _real(F(torch.view_as_complex(a), t_half, closure))
        b = e2w.addcmul_(Na, k["Q"])                            # b = E2 w + Q N(a)
        Nb = _real(F(torch.view_as_complex(b), t_half, closure))
        c = a.mul_(k["E2"]).addcmul_(Nb, k["Q"], value=2).addcmul_(Nwr, k["Q"], value=-1)
        Nc = _real(F(torch.view_as_complex(c), t_end, closure))    # c = E2 a + Q (2 N(b) - N(w))
        out = wr * k["E"]
        out.addcmul_(Nwr, k["f1"]).addcmul_(Na.add_(Nb), k["f2x2"]).addcmul_(Nc, k["f3"])
        return torch.view_as_complex(out)


# ---------------------------------------------------------------------------- CN-RK4
# Carpenter & Kennedy (1994) low-storage RK4(3)5 coefficients, as in jax-cfd
_CK_ALPHAS = (0.0, 0.1496590219993, 0.3704009573644, 0.6222557631345, 0.9582821306748, 1.0)
_CK_BETAS = (0.0, -0.4178904745, -1.192151694643, -1.697784692471, -1.514183444257)
_CK_GAMMAS = (0.1496590219993, 0.3792103129999, 0.8229550293869, 0.6994504559488, 0.1530572479681)


class CrankNicolsonRK4:
    """Low-storage IMEX Crank-Nicolson / Carpenter-Kennedy RK4 (jax-cfd's ``crank_nicolson_rk4``).

    For k = 0..4, with ``mu_k = dt (alpha_{k+1} - alpha_k) / 2``:

        h <- F(w, t + alpha_k dt) + beta_k h
        w <- (I - mu_k L)^{-1} (w + gamma_k dt h + mu_k L w)
    """

    order = 2  # second order in the implicit part (fourth in the explicit part)

    def __init__(self, equation, dt: float):
        self.equation, self.dt = equation, float(dt)
        lin = equation.linear.to(torch.float64)
        self.stages = []
        for k in range(len(_CK_BETAS)):
            mu = 0.5 * self.dt * (_CK_ALPHAS[k + 1] - _CK_ALPHAS[k])
            denom = 1 - mu * lin
            self.stages.append((
                _CK_ALPHAS[k], _CK_BETAS[k],
                ((1 + mu * lin) / denom).to(equation.linear.dtype),
                (_CK_GAMMAS[k] * self.dt / denom).to(equation.linear.dtype),
            ))
        self._fused = [(_real_coefficient(A), _real_coefficient(B)) for _, _, A, B in self.stages]

    def step(self, w: torch.Tensor, t: float, closure: Optional[Callable] = None) -> torch.Tensor:
        block = _kept_block(self.equation, w, closure)
        if block is not None:
            return self._kept_columns_step(block, w, closure)
        F = self.equation.explicit_hat
        h = None
        owned = False  # whether w is a temporary of this step (may be updated in place)
        for (alpha, beta, A, B), (Ar, Br) in zip(self.stages, self._fused):
            Fw = F(w, stage_time(self.equation, t, alpha * self.dt), closure)
            if _can_fuse(self.equation, w, Fw, A):
                # fused, in place on real views: h <- F + beta h; w <- A w + B h
                h = Fw if h is None else Fw.add_(h, alpha=beta)
                wr = _real(w)
                w = torch.view_as_complex((wr.mul_(Ar) if owned else wr * Ar).addcmul_(_real(h), Br))
                owned = True
                continue
            h = Fw if h is None else Fw + beta * h
            w = A * w + B * h
            owned = False
        return w

    def _kept_columns_step(self, block, w: torch.Tensor, held: Optional["HeldTendency"] = None) -> torch.Tensor:
        """The fused stages on the equation's kept-columns layout (`kept_block`); elsewhere
        ``F = 0``, so ``h = 0`` and each stage multiplies by ``A_k``; with a held closure
        ``F = c`` there, which adds ``S c`` (``S``: the stages run on ``w = 0, c = 1``)."""
        if self.__dict__.get("_block") is not block:
            self._block = block
            self._block_stages = [(beta, block.coefficient(A), block.coefficient(B))
                                  for _, beta, A, B in self.stages]
            rest = torch.ones_like(self.equation.linear, dtype=torch.float64)
            held_factor, h = torch.zeros_like(rest), torch.zeros_like(rest)
            for _, beta, A, B in self.stages:
                rest = rest * A.to(torch.float64)
                h = 1 + beta * h
                held_factor = A.to(torch.float64) * held_factor + B.to(torch.float64) * h
            self._block_rest = rest.to(self.equation.linear.dtype)
            self._held_factor = held_factor.to(self.equation.linear.dtype)
        state, h, source = block.pack(w), None, block.source(held)
        for k, (beta, A, B) in enumerate(self._block_stages):
            Fw = block.explicit(state, source)
            h = Fw if h is None else Fw.add_(h, alpha=beta)     # h <- F + beta h
            if k == len(self._block_stages) - 1:                # w <- A w + B h
                state = torch.mul(state, A, out=block.new_state(w.shape[0]))
            else:
                state = state * A if k == 0 else state.mul_(A)
            state.addcmul_(h, B)
        return block.add_held(block.unpack(state, w, self._block_rest), held, self._held_factor)


# method name -> stepper: a function of (equation, dt) returning an object with ``step(w_hat, t, closure)``
STEPPERS = {"etdrk4": ETDRK4, "cnrk4": CrankNicolsonRK4}


def make_stepper(method: str, equation, dt: float):
    """The stepper ``STEPPERS[method](equation, dt)``."""
    try:
        factory = STEPPERS[method]
    except KeyError:
        raise ValueError(f"unknown integrator {method!r}; choose from {sorted(STEPPERS)}") from None
    return factory(equation, dt)


# ---------------------------------------------------------------------------- loop
def _nonfinite_members(w_hat: torch.Tensor, ndim: int) -> torch.Tensor:
    """Boolean ``(batch,)``: members whose spectral state has a non-finite entry."""
    # one flat reduction per member (summing the real view's trailing axis of 2
    # first costs ~30x more); the sum is non-finite iff an entry is (or it overflows)
    total = torch.view_as_real(w_hat).reshape(w_hat.shape[0], -1).sum(dim=-1)
    return ~torch.isfinite(total)


# ---------------------------------------------------------------------------- CUDA graphs
# Small grids on a GPU are launch-bound (a step is ~60 kernels of a few microseconds):
# `simulate` then replays one captured CUDA graph per step, which removes the launch
# overhead. Used only on CUDA, when autograd does not record (with a closure: only under
# no_grad, so that a closure's parameters never lose their gradients), for our own equations
# (``_owns_nonlinear``) with a steady forcing or none, at least _GRAPH_MIN_STEPS steps
# and at most _GRAPH_MAX_NUMEL state entries, and with no closure or a closure that
# declares ``cuda_graph_safe = True`` (a pure tensor function of the state, no host
# synchronisation, no dependence on the model time: the learned closures); the closure
# is captured with the step (per stage or held, as ``closure_per_stage`` says). A
# failed capture falls back to the eager loop. SOLVERS_CUDA_GRAPHS=0 turns it off.
# The CPU path never reaches it.
_GRAPH_MAX_NUMEL = 2 ** 21   # batch * n^d at or below which graphs are used
_GRAPH_MIN_STEPS = 8


class _CudaGraphStep:
    """One captured step (plus the non-finite bookkeeping) on static buffers."""

    def __init__(self, stepper, w_hat: torch.Tensor, equation, closure=None, per_stage: bool = True):
        ndim = equation.grid.ndim
        self.closure = closure  # held: the cache key holds its id
        self.static = w_hat.clone()
        self.first_bad = torch.full((w_hat.shape[0],), -1, dtype=torch.long, device=w_hat.device)
        self.count = torch.zeros((), dtype=torch.long, device=w_hat.device)
        side = torch.cuda.Stream(device=w_hat.device)
        side.wait_stream(torch.cuda.current_stream(w_hat.device))
        with torch.cuda.stream(side), torch.no_grad():
            for _ in range(2):  # warm-up: FFT plans, allocator
                warm = self.static.clone()
                stepper.step(warm, 0.0, step_closure(equation, closure, warm, per_stage))
        torch.cuda.current_stream(w_hat.device).wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph), torch.no_grad():
            self.static.copy_(stepper.step(self.static, 0.0, step_closure(equation, closure, self.static,
                                                                          per_stage)))
            self.count.add_(1)
            bad = _nonfinite_members(self.static, ndim)
            self.first_bad.copy_(torch.where(bad & (self.first_bad < 0), self.count, self.first_bad))

    def reset(self, w_hat: torch.Tensor):
        self.static.copy_(w_hat)
        self.first_bad.fill_(-1)
        self.count.zero_()


def _cuda_graph_runner(equation, stepper, w_hat: torch.Tensor, closure, steps: int, per_stage: bool = True):
    """A (cached) `_CudaGraphStep` for this stepper, state and closure, or None where graphs do not apply."""
    if (w_hat.device.type != "cuda" or steps < _GRAPH_MIN_STEPS
            or (closure is not None and not getattr(closure, "cuda_graph_safe", False))
            or w_hat.numel() > _GRAPH_MAX_NUMEL or os.environ.get("SOLVERS_CUDA_GRAPHS", "1") == "0"
            or (torch.is_grad_enabled() and (w_hat.requires_grad or closure is not None))
            or not getattr(equation, "_owns_nonlinear", False)
            or (equation.forcing is not None and not getattr(equation.forcing, "steady", True))):
        return None
    cache = stepper.__dict__.setdefault("_cuda_graphs", {})
    key = (tuple(w_hat.shape), w_hat.dtype, w_hat.device, id(closure), bool(per_stage) or closure is None)
    if key not in cache:
        try:
            cache[key] = _CudaGraphStep(stepper, w_hat, equation, closure, per_stage)
        except Exception as exc:  # noqa: BLE001 (capture unsupported here: run eagerly)
            warnings.warn(f"CUDA graph capture failed ({type(exc).__name__}: {exc}); running eagerly")
            cache[key] = None
    runner = cache[key]
    if runner is not None:
        runner.reset(w_hat)
    return runner


def _check_arguments(equation, state: torch.Tensor, dt: float, steps: int, save_every: Optional[int]):
    equation.check_state(state)
    if steps < 0 or int(steps) != steps:
        raise ValueError(f"steps must be a non-negative integer, got {steps}")
    if save_every is not None and save_every <= 0:
        raise ValueError(f"save_every must be positive, got {save_every}")
    if not (dt > 0 and math.isfinite(dt)):
        raise ValueError(f"dt must be positive and finite, got {dt}")


def _fixed_schedule(time: float, dt: float, steps: int, save_every: Optional[int], targets: set):
    """``(step start time, step, save time or None)`` of each of ``steps`` steps of ``dt``."""
    for i in range(steps):
        saving = (save_every is not None and (i + 1) % save_every == 0) or (i + 1) in targets
        yield time + i * dt, dt, (time + (i + 1) * dt if saving else None)


def _cfl_schedule(controller: CFL, equation, time: float, save_times: Sequence[float], current: Callable):
    """The same for `CFL` steps: each interval between save times in equal ladder steps,
    halved where a check finds the CFL number above ``controller.cfl`` (``current()``:
    the spectral state now)."""
    t_start = time
    for target in save_times:
        length = target - t_start
        largest = controller.largest_step(equation, current())
        m = controller.steps_for(length, largest) if math.isfinite(largest) or math.isinf(largest) else 1
        k = 0
        while k < m:
            if k and k % controller.check_every == 0:
                largest = controller.largest_step(equation, current())
                while math.isfinite(largest) and length / m > largest:
                    m, k = 2 * m, 2 * k
                    controller.steps_for(length / m, largest)  # raises when the step collapses
            h = length / m
            k += 1
            yield t_start + (k - 1) * h, h, (target if k == m else None)
        t_start = target


class HeldTendency:
    """A closure tendency held fixed over one time step: its spectral value ``value_hat``.

    With ``closure_per_stage=False`` (`simulate`, `simulate_checkpointed`) the closure
    is evaluated once per step, at the step's initial state, and this object is passed
    to the stepper in its place: every stage adds the same term (no transform, no
    closure call; `solvers.SpectralEquation.explicit_hat`). The closure term is then
    first-order accurate in time; the rest of the scheme keeps its order.
    """

    __slots__ = ("value_hat",)

    def __init__(self, value_hat: torch.Tensor):
        self.value_hat = value_hat


def closure_tendency_hat(equation, closure, w_hat: torch.Tensor,
                         nonlinear_hat: Optional[torch.Tensor] = None) -> torch.Tensor:
    """The closure's tendency ``c(w)`` in spectral space: a `HeldTendency`'s value, a
    `solvers.equation.SpectralClosure`'s ``closure_hat`` (given ``N(w)`` where the caller has
    it), or ``to_spectral(closure(to_physical(w_hat)))``."""
    if isinstance(closure, HeldTendency):
        return closure.value_hat
    if hasattr(closure, "closure_hat"):
        return closure.closure_hat(equation, w_hat, nonlinear_hat)
    grid = equation.grid
    return grid.to_spectral(closure(grid.to_physical(w_hat)))


def step_closure(equation, closure, w_hat: torch.Tensor, per_stage: bool):
    """What a step passes to its stages: the closure itself, or its `HeldTendency` at ``w_hat``."""
    if per_stage or closure is None:
        return closure
    return HeldTendency(closure_tendency_hat(equation, closure, w_hat))


def simulate(equation, state: torch.Tensor, dt, steps: Optional[int] = None, closure=None,
             save_every: Optional[int] = None, time: float = 0.0, method: str = "etdrk4", *,
             save_at: Optional[Sequence[int]] = None, save_times: Optional[Sequence[float]] = None,
             on_save: Optional[Callable] = None, on_step: Optional[Callable] = None,
             check_every: Optional[int] = None, closure_per_stage: bool = True) -> torch.Tensor:
    """Integrate ``equation`` from ``state`` (physical) at model time ``time``.

    ``dt`` a float: ``steps`` steps of ``dt``; step ``i`` (counted from 0) advances
    from model time ``time + i dt``. The saves are the initial state and the states
    after every ``save_every``-th step, or after the steps listed in ``save_at``
    (step numbers counted from 1; 0 = the initial state), or at the model times
    ``save_times`` (whole multiples of ``dt`` after ``time``; ``steps`` then defaults
    to the last of them).

    ``dt`` a `solvers.CFL`: adaptive steps (`solvers.timestep`) that land exactly on
    each of the increasing ``save_times`` (> ``time``); the run ends at the last one
    and ``steps`` must be None. The step numbers passed to the hooks count the steps
    taken, so that consecutive saves tell how many steps each interval took.

    Returns the final physical state, or with saves the trajectory
    ``(batch, saves, *shape)`` (the initial state first, except with ``save_at`` /
    ``save_times`` not listing it). Hooks (optional):

    - ``on_save(step, time, state_hat)`` at each save (after the finiteness check);
      with it the saves are handed over instead of being kept, and the final
      state is returned;
    - ``on_step(step, time, state_hat)`` after each step.

    ``state_hat`` is the spectral state, valid until the next step (read it, do
    not keep it). Non-finite states are tracked on the device without
    synchronising; the flag is read every ``check_every`` steps (1 on the CPU, 50
    on accelerators), at every save and at the end, and `BlowUpError` names the
    first non-finite step, its time and the batch members.

    ``closure_per_stage=False`` calls the closure once per step, on the step's
    initial state, and holds its tendency over the stages (`HeldTendency`): 1 call
    and 2 transforms per step instead of per stage (4 stages for ETDRK4, 5 for CN-RK4).
    """
    adaptive = isinstance(dt, CFL)
    targets = set(int(s) for s in save_at) if save_at is not None else set()
    if adaptive:
        if steps is not None or save_every is not None or save_at is not None:
            raise ValueError("adaptive steps (dt=CFL(...)) end on save_times: give neither steps, "
                             "save_every nor save_at")
        times = [float(x) for x in (save_times or [])]
        if not times or any(b <= a for a, b in zip([time] + times, times)):
            raise ValueError(f"save_times must increase from time={time}, got {save_times}")
        equation.check_state(state)
    else:
        if save_times is not None:
            if save_at is not None:
                raise ValueError("give save_at or save_times, not both")
            offsets = [(float(x) - time) / dt for x in save_times]
            if any(abs(o - round(o)) > 1e-6 * max(1.0, abs(o)) or round(o) < 0 for o in offsets):
                raise ValueError(f"save_times {list(save_times)} are not whole multiples of dt={dt} after "
                                 f"time={time}")
            targets = set(int(round(o)) for o in offsets)
            steps = max(targets) if steps is None else steps
        _check_arguments(equation, state, dt, steps, save_every)
        steps = int(steps)
    grid = equation.grid
    if check_every is None:
        check_every = 1 if state.device.type == "cpu" else 50
    saving_any = save_every is not None or save_at is not None or save_times is not None
    keep = saving_any and on_save is None
    w_hat = grid.to_spectral(state)
    saved = [state] if keep else None
    first_bad = torch.full((state.shape[0],), -1, dtype=torch.long, device=state.device)
    if on_save is not None and (save_every is not None or 0 in targets):
        on_save(0, time, w_hat)
    step_times = {}

    def check():
        if bool((first_bad >= 0).any()):
            members = torch.nonzero(first_bad >= 0).flatten().tolist()
            step = int(first_bad[first_bad >= 0].min())
            partial = torch.stack(saved, dim=1) if saved else None
            raise BlowUpError(step, step_times.get(step, math.nan), members, partial)

    if adaptive:
        graph = None
        schedule = _cfl_schedule(dt, equation, time, times, lambda: w_hat)
    else:
        graph = _cuda_graph_runner(equation, equation.stepper(method, dt), w_hat, closure, steps,
                                   closure_per_stage)
        schedule = _fixed_schedule(time, dt, steps, save_every, targets)
    if graph is not None:
        first_bad = graph.first_bad
    i = 0
    for t, h, save_time in schedule:
        if graph is not None:  # the same step, replayed (steady equation, t unused)
            graph.graph.replay()
            w_hat = graph.static
        else:
            w_hat = equation.stepper(method, h).step(w_hat, t, step_closure(equation, closure, w_hat,
                                                                           closure_per_stage))
            with torch.no_grad():
                bad = _nonfinite_members(w_hat, grid.ndim)
                first_bad = torch.where(bad & (first_bad < 0), torch.full_like(first_bad, i + 1), first_bad)
        i += 1
        t_end = save_time if save_time is not None else t + h
        step_times[i] = t_end
        if len(step_times) > 2 * check_every + 2:
            step_times.pop(next(iter(step_times)))
        if i % check_every == 0 or save_time is not None or (not adaptive and i == steps):
            check()
        if save_time is not None:
            if keep:
                saved.append(grid.to_physical(w_hat))
            else:
                on_save(i, save_time, w_hat)
        if on_step is not None:
            on_step(i, t_end, w_hat)
    check()
    if keep:
        return torch.stack(saved, dim=1)
    return grid.to_physical(w_hat)


def _advance(equation, stepper, closure, time: float, dt: float, per_stage: bool = True):
    """``run(w_hat, first, n)``: ``n`` steps from step number ``first`` (model time ``time + first dt``)."""
    def run(w_hat: torch.Tensor, first: int, n: int) -> torch.Tensor:
        for j in range(first, first + n):
            w_hat = stepper.step(w_hat, time + j * dt, step_closure(equation, closure, w_hat, per_stage))
        return w_hat
    return run


def simulate_checkpointed(equation, state: torch.Tensor, dt: float, steps: int, closure=None,
                          save_every: Optional[int] = None, time: float = 0.0, method: str = "etdrk4", *,
                          checkpoint_every: Optional[int] = 1, closure_per_stage: bool = True) -> torch.Tensor:
    """`simulate` for training through the solver: differentiable, memory-bounded, never synchronising.

    With ``checkpoint_every=g`` (and autograd recording) each group of ``g`` steps
    is recomputed in the backward pass (``torch.utils.checkpoint``): the gradients
    are those of the plain loop, the memory that of ``steps / g`` spectral states
    plus one group's intermediates. ``checkpoint_every=None`` records every stage.
    Returns the final state or, with ``save_every``, the trajectory
    ``(batch, steps // save_every + 1, *shape)`` (``steps`` a multiple of it).
    There is no blow-up check (it would synchronise): non-finite members stay
    non-finite, for the caller's loss to detect. ``closure_per_stage``: as in `simulate`.
    """
    _check_arguments(equation, state, dt, steps, save_every)
    if save_every is not None and steps % save_every:
        raise ValueError(f"steps={steps} must be a multiple of save_every={save_every}")
    grid = equation.grid
    run = _advance(equation, equation.stepper(method, dt), closure, time, dt, closure_per_stage)
    use_checkpoint = checkpoint_every is not None and torch.is_grad_enabled()
    interval = save_every or int(steps) or 1
    group = checkpoint_every or interval
    w_hat = grid.to_spectral(state)
    saved = [state]
    step = 0
    while step < steps:
        n = min(group, interval - step % interval)
        if use_checkpoint:
            w_hat = checkpoint(run, w_hat, step, n, use_reentrant=False)
        else:
            w_hat = run(w_hat, step, n)
        step += n
        if save_every is not None and step % save_every == 0:
            saved.append(grid.to_physical(w_hat))
    if save_every is not None:
        return torch.stack(saved, dim=1)
    return grid.to_physical(w_hat)
