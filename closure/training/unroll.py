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
every ETDRK4 stage by autograd; `rollout` (the solver's `solvers.simulate_checkpointed`) recomputes each group of steps in the
backward pass (gradient checkpointing, ``torch.utils.checkpoint``), so memory
grows with the number of saved step inputs (one spectral state per group)
instead of every stage's intermediates.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch

from solvers import simulate_checkpointed

from closure.config import resolve_device, resolve_dtype
from closure.data.dataset import dataset_config
from closure.data.streaming import field_variable, plan_blocks
from closure.data.system import les_equation, trajectory_seeds
from closure.errors import ClosureError
from closure.les.coupled import cpu_threads
from closure.nn import build_model
from closure.progress import log, progress
from closure.training.loop import fit, new_state
from closure.training.runs import (as_config, check_dataset, default_run_dir, finish, fit_normalization,
                                   learning_rate_factor, load_init, made_for_run, make_optimizer, open_data,
                                   seed_everything, trajectory_splits, write_run_start)

__all__ = ["rollout", "trajectory_loss", "window_loss", "windows_loss"]


def rollout(equation, closure: Optional[Callable], field: torch.Tensor, dt: float, steps: int,
            save_every: int, *, time: float = 0.0, method: str = "etdrk4",
            checkpoint_every: Optional[int] = 1, closure_per_stage: bool = True) -> torch.Tensor:
    """Differentiable LES trajectory ``(batch, steps // save_every + 1, *shape)`` from ``field``.

    ``closure_per_stage=False``: the closure once per step, held over the stages, as in
    the coupled LES with ``run.closure_per_stage: false``.

    The solver's `solvers.simulate_checkpointed`: with ``checkpoint_every=g`` (and
    autograd recording) each group of ``g`` steps is recomputed in the backward
    pass: the gradients are those of the plain rollout, the memory that of
    ``steps / g`` spectral states plus one group. ``checkpoint_every=None``
    disables checkpointing.
    """
    return simulate_checkpointed(equation, field, dt, steps, closure, save_every, time, method,
                                 checkpoint_every=checkpoint_every, closure_per_stage=closure_per_stage)


def _isotropic_spectrum(field: torch.Tensor, ndim: int) -> torch.Tensor:
    """Power per integer shell |m| (differentiable), shape (batch, time, n // 2)."""
    n = field.shape[-1]
    f_hat = torch.fft.rfftn(field, dim=tuple(range(-ndim, 0))) / n ** ndim
    power = f_hat.real ** 2 + f_hat.imag ** 2
    mx = torch.fft.rfftfreq(n, 1.0 / n, device=field.device)
    if ndim == 3:  # the velocity's components summed: (batch, time, 3, n, n, n//2+1) -> (batch, time, ...)
        power = power.sum(dim=-4)
        m = torch.fft.fftfreq(n, 1.0 / n, device=field.device)
        shell = torch.sqrt(m[:, None, None] ** 2 + m[None, :, None] ** 2 + mx[None, None, :] ** 2).round().long()
        weight = torch.where((mx == 0) | (mx == n // 2), 1.0, 2.0).to(field.dtype).expand(n, n, -1)
        keep = shell < n // 2
        out = torch.zeros(power.shape[:-3] + (n // 2,), dtype=field.dtype, device=field.device)
        return out.index_add(-1, shell[keep], (power * weight)[..., keep])
    if ndim == 1:
        shell = mx.round().long()
        weight = torch.where((mx == 0) | (mx == n // 2), 1.0, 2.0).to(field.dtype)
    else:
        my = torch.fft.fftfreq(n, 1.0 / n, device=field.device)
        shell = torch.sqrt(my[:, None] ** 2 + mx[None, :] ** 2).round().long()
        weight = torch.where((mx == 0) | (mx == n // 2), 1.0, 2.0).to(field.dtype).expand(n, -1)
    keep = shell < n // 2
    out = torch.zeros(field.shape[:-ndim] + (n // 2,), dtype=field.dtype, device=field.device)
    return out.index_add(-1, shell[keep], (power * weight)[..., keep])


def trajectory_loss(prediction: torch.Tensor, reference: torch.Tensor, ndim: int,
                    spectral_weight: float = 0.0) -> torch.Tensor:
    """Relative MSE over the snapshots after the first (+ optional log-spectrum term), per member.

    ``prediction`` and ``reference``: ``(batch, S + 1, *shape)``. Returns ``(batch,)``.
    """
    dims = tuple(range(-(ndim + 1 if ndim == 3 else ndim), 0))  # 3D: the component axis too
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
                spectral_weight: float = 0.0, closure_per_stage: bool = True) -> torch.Tensor:
    """Loss per member of the LES started from ``reference[:, 0]`` against ``reference[:, 1:]``."""
    samples = reference.shape[1] - 1
    prediction = rollout(equation, closure, reference[:, 0], dt, samples * steps_per_sample, steps_per_sample,
                         time=time, method=method, checkpoint_every=checkpoint_every,
                         closure_per_stage=closure_per_stage)
    return trajectory_loss(prediction, reference, equation.grid.ndim, spectral_weight)


def steps_per_sample(sample_interval: float, dt: float) -> int:
    """LES steps between dataset snapshots; the interval must be a whole multiple of dt."""
    m = sample_interval / dt
    if abs(m - round(m)) > 1e-6 * max(1.0, m) or round(m) < 1:
        raise ValueError(f"the dataset's sample interval {sample_interval} is not a whole multiple of run.dt={dt}")
    return int(round(m))


def is_blowup(loss: torch.Tensor) -> torch.Tensor:
    """Members whose rollout went non-finite (or absurdly large)."""
    return ~torch.isfinite(loss) | (loss > 1e6)



# =============================================================================== training driver
def _windows(n_snapshots: int, samples: int, trajectories, generator: torch.Generator, count: int,
             same_start: bool = False):
    """``count`` random (trajectory index, start snapshot) pairs whose windows fit the data
    (``same_start``: one start for all, for time-dependent forcing shared by the batch)."""
    starts = n_snapshots - samples
    if starts < 1:
        raise ValueError(f"a window of {samples} samples needs more than {n_snapshots} snapshots")
    traj = torch.tensor(list(trajectories))
    pick = torch.randint(len(traj), (count,), generator=generator)
    start = torch.randint(starts, (1 if same_start else count,), generator=generator).expand(count)
    return [(int(traj[i]), int(s)) for i, s in zip(pick, start)]


def _fixed_windows(n_snapshots: int, samples: int, trajectories, per_trajectory: int = 2):
    starts = max(n_snapshots - samples, 1)
    offsets = sorted({int(round(j * (starts - 1) / max(per_trajectory - 1, 1))) for j in range(per_trajectory)})
    return [(int(i), s) for i in trajectories for s in offsets]


def _load_windows(ds, name: str, windows, samples: int, dtype, device) -> torch.Tensor:
    arrays = [np.asarray(ds[name].isel(trajectory=i, time=slice(s, s + samples + 1)).values) for i, s in windows]
    return torch.from_numpy(np.stack(arrays)).to(device=device, dtype=dtype)


def _window_equation(config, windows, ids, dtype, device, cache: dict):
    """The LES equation for a batch of windows (per-trajectory seeds for random forcing)."""
    if not config.system.forcing.per_trajectory:
        if "steady" not in cache:
            cache["steady"] = les_equation(config, dtype=dtype, device=device)
        return cache["steady"]
    return les_equation(config, dtype=dtype, device=device,
                        seeds=trajectory_seeds(config, [ids[i] for i, _ in windows]))


def windows_loss(closure, config, ds, windows, samples: int, per_sample: int, *, grad: bool = False,
                 dtype=torch.float64, device="cpu", cache: Optional[dict] = None) -> torch.Tensor:
    """Mean unrolled loss (`window_loss`, ``config.run``/``config.train`` settings) of ``closure`` over
    ``windows`` (trajectory index, start snapshot) of ``samples`` samples; windows that start
    together run as one batch (and share the forcing's time). ``inf`` if any member blows up."""
    name = field_variable(ds)
    ids = [int(v) for v in ds["trajectory"].values]
    times = [float(v) for v in ds["time"].values]
    groups: dict = {}
    for w in windows:
        groups.setdefault(w[1], []).append(w)
    cache = {} if cache is None else cache
    total = torch.zeros((), dtype=torch.float64, device=device)
    for start, group in groups.items():
        key = ("windows", tuple(group), samples)
        if key not in cache:
            cache[key] = (_load_windows(ds, name, group, samples, dtype, device),
                          _window_equation(config, group, ids, dtype, device, cache))
        ref, eq = cache[key]
        with torch.set_grad_enabled(grad):
            per = window_loss(eq, closure, ref, config.run.fixed_dt("the unrolled loss"), per_sample,
                              time=times[start], method=config.run.integrator,
                              checkpoint_every=config.train.gradient_checkpoint,
                              spectral_weight=config.train.spectral_loss,
                              closure_per_stage=config.run.closure_per_stage)
        if is_blowup(per.detach()).any():
            return torch.full((), float("inf"), dtype=torch.float64, device=device)
        total = total + per.to(torch.float64).sum()
    return total / len(windows)


def curriculum(epoch: int, first: int, last: int, per_sample: int) -> int:
    """Snapshots per window at ``epoch``: the unroll length doubles each epoch from ``first`` to ``last``
    solver steps, rounded to whole samples (at least one)."""
    steps = min(last, first * 2 ** epoch)
    return max(1, steps // per_sample)


def train_aposteriori(config, data, run_dir=None, *, init=None, progress_enabled=None, record=None) -> Path:
    """Fine-tune (``init``) or train a closure through the LES solver; writes a run directory
    in the a-priori layout (model.pt, config.yaml, splits.json, history.csv, metrics.json).

    With ``init`` the starting model's unrolled validation loss is the one to beat: if no
    epoch lowers it, the starting weights are the result (``best_epoch`` 0). ``record``: the
    config written to ``config.yaml`` (default ``config``; a fine-tuned run records the
    config that asked for it)."""
    config = as_config(config)
    tc, dtype, device = config.train, resolve_dtype(config.dtype), resolve_device(config.device)
    run_dir = Path(run_dir) if run_dir is not None else default_run_dir(config)
    ds = open_data(data)
    check_dataset(config, ds)
    source = str(ds.encoding.get("source", data))
    name = field_variable(ds)
    try:
        per_sample = steps_per_sample(dataset_config(ds).dns.sample_interval,
                                      config.run.fixed_dt("a-posteriori training"))
    except ValueError as err:
        raise ClosureError(f"{source}: {err}") from None
    n_snap = ds.sizes["time"]
    splits, splits_doc = trajectory_splits(config, ds, source)
    ids = [int(v) for v in ds["trajectory"].values]
    times = [float(v) for v in ds["time"].values]
    write_run_start(run_dir, record if record is not None else config, splits_doc)

    seed_everything(config.training_seed)
    normalization = None
    if init is not None:
        model = load_init(init, device, dtype, made_for_run(config, ds))
    else:
        model = build_model(config.model, config.system.ndim, length=config.system.length, dtype=dtype, device=device)
        normalization = fit_normalization(model, ds, splits["train"], plan_blocks(ds, splits["train"]),
                                          config.model.symmetry)
    optimizer = make_optimizer(model, tc)
    steps_per_epoch = max(1, tc.windows_per_epoch // tc.unroll_batch)
    total = steps_per_epoch * tc.epochs
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: learning_rate_factor(tc.schedule, s, total))
    objective = UnrolledObjective(config, model, ds, name, ids, times, splits, per_sample, steps_per_epoch,
                                  dtype, device)
    state = new_state(dict(normalization or {}, mode="aposteriori", init=str(init) if init else None))
    best_state = None
    # the unrolls are LES steps: one torch thread on small CPU grids, as in the coupled LES (several
    # threads on a busy machine slow the small FFTs down many times)
    with cpu_threads(device, config.les.resolution):
        if init is not None:  # the starting model is the one to beat
            model.eval()
            start_loss = objective.validation_loss()
            state["normalization"]["init_validation_loss"] = start_loss
            if math.isfinite(start_loss):
                state["best_loss"] = start_loss
                best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        with progress(total=total, desc="train (a-posteriori)", unit="batch", enabled=progress_enabled) as bar:
            best_state = fit(objective, model, optimizer, scheduler, tc, state, bar, total, best_state)
    if best_state is not None:
        model.load_state_dict(best_state)
    model.eval()
    state["normalization"]["skipped_windows"] = objective.skipped_total
    finish(config, ds, run_dir, model, state, splits, splits_doc, source, 1, device, True, progress_enabled,
           title="a-posteriori training")
    ds.close()
    return run_dir


class UnrolledObjective:
    """The a-posteriori objective of `closure.training.loop.fit`: the trajectory loss of the LES unrolled
    through the solver from random windows of the training trajectories (`window_loss`), the unroll
    length growing by the `curriculum`; windows whose rollout blows up are skipped and counted."""

    def __init__(self, config, model, ds, name: str, ids, times, splits, per_sample: int, steps_per_epoch: int,
                 dtype, device):
        tc = config.train
        self.config, self.tc, self.model, self.ds, self.name = config, tc, model, ds, name
        self.ids, self.times, self.splits, self.per_sample = ids, times, splits, per_sample
        self.steps_per_epoch, self.dtype, self.device = steps_per_epoch, dtype, device
        self.n_snap = ds.sizes["time"]
        self.generator = torch.Generator().manual_seed(config.training_seed)
        self.cache: dict = {}
        self.max_samples = min(curriculum(10 ** 6, tc.unroll_steps, tc.unroll_max_steps, per_sample), self.n_snap - 1)
        self.val_windows = _fixed_windows(self.n_snap, self.max_samples, splits["validation"] or splits["train"])
        self.samples, self.skipped, self.skipped_total = 1, 0, 0

    def _losses(self, windows, samples: int, grad: bool) -> torch.Tensor:
        ref = _load_windows(self.ds, self.name, windows, samples, self.dtype, self.device)
        eq = _window_equation(self.config, windows, self.ids, self.dtype, self.device, self.cache)
        with torch.set_grad_enabled(grad):
            return window_loss(eq, self.model, ref, self.config.run.fixed_dt("the unrolled loss"),
                               self.per_sample, time=self.times[windows[0][1]], method=self.config.run.integrator,
                               checkpoint_every=self.tc.gradient_checkpoint, spectral_weight=self.tc.spectral_loss,
                               closure_per_stage=self.config.run.closure_per_stage)

    def batches(self, epoch: int):
        tc = self.tc
        self.samples = min(curriculum(epoch, tc.unroll_steps, tc.unroll_max_steps, self.per_sample), self.n_snap - 1)
        self.skipped = 0
        for _ in range(self.steps_per_epoch):
            yield _windows(self.n_snap, self.samples, self.splits["train"], self.generator, tc.unroll_batch,
                           same_start=self.config.system.forcing.per_trajectory)

    def loss(self, windows):
        per = self._losses(windows, self.samples, True)
        bad = is_blowup(per)
        self.skipped += int(bad.sum())
        if bad.all():
            return None
        loss = per[~bad].mean()
        n_ok = int((~bad).sum())
        return loss, float(loss.detach()) * n_ok, n_ok

    def reduce(self, summed: float, count: int):
        return summed, count

    def postfix(self, summed: float, count: int, seconds: float) -> dict:
        return {"loss": summed / count, "K": self.samples * self.per_sample}

    def _validation(self):
        per = torch.cat([self._losses([w], self.max_samples, False) for w in self.val_windows])
        ok = ~is_blowup(per)
        return (float(per[ok].mean()) if ok.any() else float("inf")), ok

    def validation_loss(self) -> float:
        """The mean unrolled loss of the validation windows (inf if every window blows up)."""
        return self._validation()[0]

    def validate(self, epoch: int, train_loss: float):
        val, ok = self._validation()
        self.skipped_total += self.skipped
        return val, {"unroll_steps": self.samples * self.per_sample, "skipped_windows": self.skipped,
                     "validation_blowups": int((~ok).sum())}

    def epoch_done(self, row: dict, state: dict, best_state) -> None:
        log.info("epoch %d/%d: unroll %d steps, train %.4g, validation %.4g, skipped %d", row["epoch"],
                 self.tc.epochs, row["unroll_steps"], row["train_loss"], row["validation_loss"],
                 row["skipped_windows"])
