"""Training through the solver (a-posteriori, "solver in the loop").

A-priori training fits ``c(field) ~ sgs`` pointwise; the coupled LES then feeds
the closure its own errors and often drifts or blows up (Frezat et al. 2022;
Jakhar et al. 2024). The remedy of the field (Sirignano & MacArt 2020's DPM;
Kochkov et al. 2021; Frezat et al. 2022; List et al. 2022) is to differentiate
the trajectory mismatch through the solver:

    v_0 = field(t_i),   v_{j+1} = Phi_dt(v_j; c_theta)        (the LES stepper with the closure)
    loss(theta) = (1/S) sum_{s=1..S} ||v_{s m} - field(t_i + s T)||^2 / ||field(t_i + s T)||^2
                  [+ lambda_E (1/S) sum_s mean_k |log E_v(k) - log E_ref(k)|]

where ``T`` is the dataset's sample interval, ``m = T / dt`` LES steps per
sample and ``S`` the number of snapshots in the window. Gradients flow through
every ETDRK4 stage by autograd; `rollout` recomputes each group of steps in the
backward pass (gradient checkpointing, ``torch.utils.checkpoint``), so memory
grows with the number of saved step inputs (one spectral state per group)
instead of every stage's intermediates.
"""

from __future__ import annotations

import math
from typing import Callable, Optional

import torch
from torch.utils.checkpoint import checkpoint

__all__ = ["rollout", "trajectory_loss", "window_loss"]


def _advance(stepper, closure, dt: float):
    def run(w_hat: torch.Tensor, t0: float, steps: int) -> torch.Tensor:
        for j in range(steps):
            w_hat = stepper.step(w_hat, t0 + j * dt, closure)
        return w_hat
    return run


def rollout(equation, closure: Optional[Callable], field: torch.Tensor, dt: float, steps: int,
            save_every: int, *, time: float = 0.0, method: str = "etdrk4",
            checkpoint_every: Optional[int] = 1) -> torch.Tensor:
    """Differentiable LES trajectory ``(batch, steps // save_every + 1, *shape)`` from ``field``.

    With ``checkpoint_every=g`` (and autograd recording) each group of ``g`` steps
    is recomputed in the backward pass: the gradients are those of the plain
    rollout, the memory that of ``steps / g`` spectral states plus one group.
    ``checkpoint_every=None`` disables checkpointing.
    """
    if steps % save_every:
        raise ValueError(f"steps={steps} must be a multiple of save_every={save_every}")
    grid = equation.grid
    run = _advance(equation.stepper(method, dt), closure, dt)
    use_checkpoint = checkpoint_every is not None and torch.is_grad_enabled()
    group = checkpoint_every or save_every
    w_hat = grid.to_spectral(field)
    saved = [field]
    step = 0
    while step < steps:
        n = min(group, save_every - step % save_every)
        t0 = time + step * dt
        if use_checkpoint:
            w_hat = checkpoint(run, w_hat, t0, n, use_reentrant=False)
        else:
            w_hat = run(w_hat, t0, n)
        step += n
        if step % save_every == 0:
            saved.append(grid.to_physical(w_hat))
    return torch.stack(saved, dim=1)


def _isotropic_spectrum(field: torch.Tensor, ndim: int) -> torch.Tensor:
    """Power per integer shell |m| (differentiable), shape (batch, time, n // 2)."""
    n = field.shape[-1]
    f_hat = torch.fft.rfftn(field, dim=tuple(range(-ndim, 0))) / n ** ndim
    power = f_hat.real ** 2 + f_hat.imag ** 2
    mx = torch.fft.rfftfreq(n, 1.0 / n, device=field.device)
    if ndim == 1:
        shell = mx.round().long()
        weight = torch.where((mx == 0) | (mx == n // 2), 1.0, 2.0).to(field.dtype)
    else:
        my = torch.fft.fftfreq(n, 1.0 / n, device=field.device)
        shell = torch.sqrt(my[:, None] ** 2 + mx[None, :] ** 2).round().long()
        weight = torch.where((mx == 0) | (mx == n // 2), 1.0, 2.0).to(field.dtype).expand(n, -1)
    keep = shell < n // 2
    flat = (power * weight)[..., keep] if ndim == 1 else (power * weight)[..., keep]
    index = shell[keep]
    out = torch.zeros(field.shape[:-ndim] + (n // 2,), dtype=field.dtype, device=field.device)
    return out.index_add(-1, index, flat)


def trajectory_loss(prediction: torch.Tensor, reference: torch.Tensor, ndim: int,
                    spectral_weight: float = 0.0) -> torch.Tensor:
    """Relative MSE over the snapshots after the first (+ optional log-spectrum term), per member.

    ``prediction`` and ``reference``: ``(batch, S + 1, *shape)``. Returns ``(batch,)``.
    """
    dims = tuple(range(-ndim, 0))
    err = (prediction[:, 1:] - reference[:, 1:]).pow(2).sum(dim=dims)
    norm = reference[:, 1:].pow(2).sum(dim=dims).clamp_min(1e-30)
    loss = (err / norm).mean(dim=1)
    if spectral_weight > 0:
        e_pred = _isotropic_spectrum(prediction[:, 1:], ndim)[..., 1:]
        e_ref = _isotropic_spectrum(reference[:, 1:], ndim)[..., 1:]
        tiny = torch.finfo(prediction.dtype).tiny
        log_err = (torch.log10(e_pred + tiny) - torch.log10(e_ref + tiny)).abs().mean(dim=(-1, -2))
        loss = loss + spectral_weight * log_err
    return loss


def window_loss(equation, closure, reference: torch.Tensor, dt: float, steps_per_sample: int, *,
                time: float = 0.0, method: str = "etdrk4", checkpoint_every: Optional[int] = 1,
                spectral_weight: float = 0.0) -> torch.Tensor:
    """Loss per member of the LES started from ``reference[:, 0]`` against ``reference[:, 1:]``."""
    samples = reference.shape[1] - 1
    prediction = rollout(equation, closure, reference[:, 0], dt, samples * steps_per_sample, steps_per_sample,
                         time=time, method=method, checkpoint_every=checkpoint_every)
    return trajectory_loss(prediction, reference, equation.grid.ndim, spectral_weight)


def steps_per_sample(sample_interval: float, dt: float) -> int:
    """LES steps between dataset snapshots; the interval must be a whole multiple of dt."""
    m = sample_interval / dt
    if abs(m - round(m)) > 1e-6 * max(1.0, m) or round(m) < 1:
        raise ValueError(f"the dataset's sample interval {sample_interval} is not a whole multiple of run.dt={dt}")
    return int(round(m))


def finite(x: torch.Tensor) -> bool:
    return bool(torch.isfinite(x).all())


def is_blowup(loss: torch.Tensor) -> torch.Tensor:
    """Members whose rollout went non-finite (or absurdly large)."""
    return ~torch.isfinite(loss) | (loss > 1e6)


_ = math  # (kept for docstring math references)
