"""Classical constants fitted a-posteriori through the differentiable LES (`closure calibrate`).

    calibrate(config, data, model, run_dir=None) -> Path        # the run directory

A classical closure's tendency is a power of its one constant times the tendency
at any reference value, so with ``theta = exp(s)`` and the default ``theta_0``:

    smagorinsky           theta = Cs,   c_theta = (theta / theta_0)^2 c_{theta_0}
    leith                 theta = C_L,  c_theta = (theta / theta_0)^3 c_{theta_0}
    dynamic_smagorinsky   theta = k,    c_theta = k c_dyn              (theta_0 = 1: Germano-Lilly)

``s`` is fitted by Adam (``calibrate.lr``, ``calibrate.iterations`` full-batch
steps, from ``theta_0``) on the unrolled loss of a-posteriori training
(`closure.training.unroll.window_loss`: the LES with the closure in every stage,
differentiated through the solver, against the filtered DNS; the log-spectrum
term weighted by ``train.spectral_loss``) over windows of ``calibrate.unroll_steps``
LES steps (whole dataset samples) on the **validation** trajectories,
``calibrate.windows_per_trajectory`` per trajectory. The lowest validation loss
seen (the default included) gives the constant.

The run directory holds ``calibration.json`` (model, constant, default, losses),
``config.yaml``, ``splits.json`` (the training split, so that `closure les` runs
the test trajectories) and ``history.csv``; `closure les --model RUN_DIR` and
``run.models`` accept it (`closure.les.baselines.make_closure`).
"""

from __future__ import annotations

import json
import logging
import math
import time as _time
from pathlib import Path
from typing import Optional, Union

import torch
from torch import nn

from closure import storage
from closure.config import Config, config_to_yaml, resolve_device, resolve_dtype
from closure.errors import ClosureError
from closure.les.baselines import CALIBRATED_CONSTANTS, CALIBRATION_FILE, classical_closure
from closure.les.coupled import cpu_threads
from closure.training.unroll import _fixed_windows, steps_per_sample, windows_loss

log = logging.getLogger("closure.calibrate")

__all__ = ["calibrate", "ScaledClosure", "POWERS", "default_constant"]

POWERS = {"smagorinsky": 2, "leith": 3, "dynamic_smagorinsky": 1}


def default_constant(config: Config, model: str) -> float:
    """The constant the uncalibrated closure uses (``run.smagorinsky_cs``, ``run.leith_cl``, 1)."""
    return {"smagorinsky": config.run.smagorinsky_cs, "leith": config.run.leith_cl,
            "dynamic_smagorinsky": 1.0}[model]


class ScaledClosure(nn.Module):
    """``(exp(s) / theta_0)^p base(w)``: a classical closure with a differentiable constant ``exp(s)``."""

    def __init__(self, base: nn.Module, theta0: float, power: int):
        super().__init__()
        self.base, self.theta0, self.power = base, float(theta0), int(power)
        self.log_constant = nn.Parameter(torch.tensor(math.log(theta0), dtype=torch.float64))

    @property
    def constant(self) -> float:
        return float(self.log_constant.detach().exp())

    def forward(self, state: torch.Tensor) -> torch.Tensor:
        factor = torch.exp(self.power * (self.log_constant - math.log(self.theta0)))
        return factor.to(state.dtype) * self.base(state)


def calibrate(config: Config, data, model: str, run_dir: Optional[Union[str, Path]] = None,
              progress_enabled: Optional[bool] = None) -> Path:
    """Fit ``model``'s constant on the validation trajectories of ``data``; write and return ``run_dir``."""
    from closure.data.dataset import dataset_config, split_trajectories
    from closure.data.streaming import field_variable
    from closure.data.system import les_equation
    from closure.progress import progress
    from closure.training.runs import as_config as _as_config, check_dataset, open_data as _open

    config = _as_config(config)
    if model not in POWERS:
        raise ClosureError(f"--model {model!r}: calibration fits one of {', '.join(POWERS)}")
    if config.system.ndim not in (1, 2):
        raise ClosureError(f"system.equation={config.system.equation}: the classical closures are 1D and 2D")
    cc = config.calibrate
    dtype, device = resolve_dtype(config.dtype), resolve_device(config.device)
    run_dir = Path(run_dir) if run_dir is not None else Path("runs") / Path(config.source or "run").stem / f"{model}_calibrated"
    ds = _open(data)
    check_dataset(config, ds)
    source = str(ds.encoding.get("source", data))
    try:
        per_sample = steps_per_sample(dataset_config(ds).dns.sample_interval, config.run.fixed_dt("calibration"))
    except ValueError as err:
        raise ClosureError(f"{source}: {err}") from None
    n_snap = ds.sizes["time"]
    if n_snap < 2:
        raise ClosureError(f"{source}: calibration needs at least 2 snapshots per trajectory")
    splits = split_trajectories(ds.sizes["trajectory"], config.data.validation_fraction,
                                config.data.test_fraction, config.seed)
    if not splits["validation"]:
        raise ClosureError(f"{source}: no validation trajectories (data.validation_fraction="
                           f"{config.data.validation_fraction}); calibration fits on validation trajectories")
    ids = [int(v) for v in ds["trajectory"].values]
    samples = max(1, min(cc.unroll_steps // per_sample, n_snap - 1))
    windows = _fixed_windows(n_snap, samples, splits["validation"], cc.windows_per_trajectory)
    cache: dict = {}

    base = classical_closure(model, les_equation(config, dtype=dtype, device=device, unforced=True), config)
    theta0 = default_constant(config, model)
    closure = ScaledClosure(base, theta0, POWERS[model]).to(device)
    optimizer = torch.optim.Adam(closure.parameters(), lr=cc.lr)

    def loss(grad: bool) -> torch.Tensor:
        return windows_loss(closure, config, ds, windows, samples, per_sample, grad=grad, dtype=dtype,
                            device=device, cache=cache)

    history, start = [], _time.time()
    best = (float("inf"), theta0, 0)
    bar_args = dict(total=cc.iterations + 1, desc=f"calibrate {model}", unit="step", enabled=progress_enabled)
    with cpu_threads(device, config.les.resolution), progress(**bar_args) as bar:
        for it in range(cc.iterations + 1):
            theta = closure.constant
            value = loss(grad=it < cc.iterations)
            current = float(value.detach())
            finite = math.isfinite(current)
            history.append({"iteration": it, "constant": theta, "validation_loss": current,
                            "seconds": round(_time.time() - start, 4)})
            bar.update(1)
            if finite and current < best[0]:
                best = (current, theta, it)
            if it == 0 and not finite:
                raise ClosureError(f"{source}: the LES with {model} at its default constant {theta0:g} blows up "
                                   "on the validation windows; nothing to calibrate from")
            if not finite or it == cc.iterations:
                break
            optimizer.zero_grad(set_to_none=True)
            value.backward()
            optimizer.step()
    default_loss = history[0]["validation_loss"]
    log.info("calibrate %s: constant %.4g -> %.4g, validation loss %.4g -> %.4g (%d windows of %d steps)",
             model, theta0, best[1], default_loss, best[0], len(windows), samples * per_sample)

    run_dir.mkdir(parents=True, exist_ok=True)
    splits_doc = dict(splits, dataset=source, **{f"{k}_ids": [ids[i] for i in v] for k, v in splits.items()})
    storage.write_text(run_dir / "splits.json", json.dumps(splits_doc, indent=2) + "\n")
    storage.write_text(run_dir / "config.yaml", config_to_yaml(config))
    storage.write_text(run_dir / "history.csv", "".join(
        ",".join(str(v) for v in row) + "\n" for row in [list(history[0])] + [list(h.values()) for h in history]))
    made_for = {"equation": config.system.equation, "les_resolution": config.les.resolution,
                "length": config.system.length, "field": field_variable(ds)}
    record = {"model": model, "constants": {CALIBRATED_CONSTANTS[model]: best[1]}, "made_for": made_for,
              "default": {CALIBRATED_CONSTANTS[model]: theta0},
              "validation_loss": {"default": default_loss, "calibrated": best[0]}, "best_iteration": best[2],
              "windows": len(windows), "unroll_steps": samples * per_sample, "dataset": source,
              "validation_trajectories": [ids[i] for i in splits["validation"]],
              "seconds": round(_time.time() - start, 3)}
    storage.write_json(run_dir / CALIBRATION_FILE, record, indent=2)
    ds.close()
    return run_dir
