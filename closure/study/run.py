"""One training run of the normalization study: constant-rate SGD (or Adam) on stencil points, then its metrics.

``train_run(data, run, config)`` builds the run's network (``build_trainable``: the gamma
``StencilClosure`` of ``build_network`` with the rates of ``closure.nn.param_groups``, or the
standard / muP MLP of ``closure.study.parametrization``), trains it (the loop described in
``closure.study.normalization``) and returns test / validation metrics, the validation curve at
``sweep.curve_points`` times, and the network output at the probe inputs (test inputs and
out-of-distribution inputs) before and after training; with ``sweep.aposteriori`` it also runs
a short coupled LES (``aposteriori``). ``task`` is the same thing as a dask task.
"""

from __future__ import annotations

import math
import time as _time

import numpy as np
import torch

from closure.config import Config, config_from_yaml
from closure.study.data import StudyData, gather_patches, study_data
from closure.study.grid import Run, depth_of
from closure.study.parametrization import StandardMLP, mup_groups, standard_groups, width_multiplier

DIVERGED_LOSS = 1.0e4  # a training loss (normalized units, target variance 1) beyond this counts as diverged

def build_network(data: StudyData, run: Run, depth: int, output_bias: bool = True, common: bool = True):
    """The run's StencilClosure (normalization from the training split) with its initial weights.

    ``common``: weights drawn from (seed, width) only, shared by every gamma (common random
    numbers); else from the run's cell too (independent samples, ``Run.init_seed``).
    """
    from closure.nn import StencilClosure

    gammas = [run.gamma_inner] * (depth - 1) + [run.gamma_outer]
    model = StencilClosure(data.ndim, data.stencil, [run.width] * depth, gammas, data.activation,
                           features=data.features, length=data.length, output_bias=output_bias).to(data.dtype)
    gen = torch.Generator().manual_seed(run.init_seed(common))
    model.net.reset_parameters(generator=gen)
    model.load_state_dict({**model.state_dict(), **{k: v for k, v in data.template.state_dict().items()
                                                     if not k.startswith("net.")}})
    return model


def build_trainable(data: StudyData, run: Run, config: Config):
    """``(model, net, param_groups)`` of the run's parametrization; ``model`` is a closure for gamma runs
    (``StencilClosure``), else None; ``net`` maps normalized patches to normalized SGS."""
    from closure.nn import param_groups
    from closure.nn.meanfield import activation_function

    sw = config.sweep
    common = sw.common_random_numbers
    if run.param == "gamma":
        model = build_network(data, run, depth_of(config), output_bias=sw.output_bias, common=common)
        return model, model.net, param_groups(model.net, run.lr, run.optimizer)
    net = StandardMLP(data.in_features, [run.width] * depth_of(config), activation_function(data.activation))
    net = net.to(data.dtype)
    base = int(sw.mup_base_width or min(sw.widths))
    scale = 1.0 if run.param == "standard" else width_multiplier(run.width, base) ** -0.5
    net.reset_parameters(torch.Generator().manual_seed(run.init_seed(common)), readout_scale=scale)
    groups = standard_groups(net, run.lr) if run.param == "standard" else mup_groups(net, run.lr, run.optimizer, base)
    return None, net, groups


def _predict(net, x: torch.Tensor, chunk: int = 8192) -> torch.Tensor:
    with torch.no_grad():
        return torch.cat([net(x[i:i + chunk]).squeeze(-1) for i in range(0, x.shape[0], chunk)])


def _validation_mse(net, data: StudyData) -> float:
    if "validation" not in data.points:
        return float("nan")
    xv, yv = data.points["validation"]
    return float((_predict(net, xv) - yv).double().pow(2).mean())


def training_batch(data: StudyData, batch: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """One step's (patches, targets): ``batch`` points drawn uniformly (with replacement) from every training
    point, or from the fixed subset ``sweep.train_points``, which is used whole when ``batch`` covers it
    (full-batch gradient descent)."""
    if data.train_subset is not None:
        x, y = data.train_subset
        if batch >= y.numel():
            return x, y
        flat = torch.randint(y.numel(), (batch,), generator=gen)
        return x[flat], y[flat]
    flat = torch.randint(data.n_train_points, (batch,), generator=gen)
    return gather_patches(data.channels["train"], flat, data.stencil), data.targets["train"][flat]


def checkpoints(steps: int, count: int) -> list[int]:
    """``count`` steps spread evenly over (0, steps] (the validation curve is recorded after them)."""
    if count <= 0:
        return []
    return sorted({max(1, int(round(steps * j / count))) for j in range(1, count + 1)})


def train_run(data: StudyData, run: Run, config: Config) -> dict:
    """Train one run (module docstring) and return its metrics, probe outputs and validation curve."""
    from closure.training.apriori import correlation, r2, relative_l2

    start = _time.perf_counter()
    sw = config.sweep
    model, net, groups = build_trainable(data, run, config)
    probe_init = _predict(net, data.probe)
    ood_init = _predict(net, data.probe_ood)
    opt = (torch.optim.SGD if run.optimizer == "sgd" else torch.optim.Adam)(groups, lr=run.lr)
    gen = torch.Generator().manual_seed(run.batch_seed(sw.common_random_numbers))
    batch = sw.batch_size
    marks = set(checkpoints(run.steps, sw.curve_points))
    curve_steps, curve = [0] if marks else [], [_validation_mse(net, data)] if marks else []
    diverged, running, seen = False, 0.0, 0
    tail = max(1, run.steps // 10)  # the training loss reported: mean over the last 10% of the steps
    for k in range(run.steps):
        x, y = training_batch(data, batch, gen)
        loss = 0.5 * (net(x).squeeze(-1) - y).pow(2).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if k >= run.steps - tail:
            running += loss.item()
            seen += 1
        if (k % 64 == 0 or k == run.steps - 1) and not (loss.item() < DIVERGED_LOSS):  # NaN-safe
            diverged = True
            break
        if k + 1 in marks:
            curve_steps.append(k + 1)
            curve.append(_validation_mse(net, data))
    result = {"train_loss": running / seen if seen and not diverged else float("nan"), "diverged": diverged,
              "curve_steps": curve_steps, "curve_validation_mse": curve}
    nan = float("nan")
    if diverged:
        result.update({key: nan for key in ("relative_l2", "mse", "correlation", "r2", "validation_mse")})
        result["probe_output"] = [nan] * data.probe.shape[0]
        result["probe_output_ood"] = [nan] * data.probe_ood.shape[0]
    else:
        x_test, y_test = data.points["test"]
        pred = _predict(net, x_test)
        finite = bool(torch.isfinite(pred).all())
        phys_p, phys_t = pred * data.out_std + data.out_mean, y_test * data.out_std + data.out_mean
        result["mse"] = float((pred - y_test).double().pow(2).mean()) if finite else nan
        result["relative_l2"] = relative_l2(phys_p, phys_t) if finite else nan
        result["correlation"] = correlation(pred, y_test) if finite else nan
        result["r2"] = r2(pred, y_test) if finite else nan
        result["validation_mse"] = _validation_mse(net, data)
        result["probe_output"] = _predict(net, data.probe).double().tolist()
        result["probe_output_ood"] = _predict(net, data.probe_ood).double().tolist()
        bad_validation = "validation" in data.points and not (result["validation_mse"] < DIVERGED_LOSS)
        if not finite or not (result["mse"] < DIVERGED_LOSS) or bad_validation:
            result["diverged"] = True
    result["probe_output_init"] = probe_init.double().tolist()
    result["probe_output_ood_init"] = ood_init.double().tolist()
    result["seconds"] = _time.perf_counter() - start
    if sw.aposteriori and run.kind == "study" and model is not None:
        result.update(aposteriori(data, model, config, diverged=result["diverged"]))
    return result


def _les_errors(data: StudyData, closure, config: Config) -> dict:
    """Short coupled LES from the test trajectories' first snapshots against the filtered DNS."""
    from closure.les.coupled import integrate
    from closure.data.system import les_equation, trajectory_seeds

    cfg = data.data_config.model_copy(update={"run": config.run})
    interval = float(data.times[1] - data.times[0]) if data.times.size > 1 else cfg.dns.sample_interval
    dt = config.run.fixed_dt("the study's LES")
    save_every = max(1, int(round(interval / dt)))
    ref = reference_fields(data, config)
    saves = ref.shape[1] - 1
    ids = [data.trajectory_ids[i] for i in data.splits["test"]]
    equation = les_equation(cfg, dtype=data.dtype, device="cpu", seeds=trajectory_seeds(cfg, ids))
    state = torch.as_tensor(ref[:, 0]).to(data.dtype)
    res = integrate(equation, closure, state, dt, save_every, saves, t0=float(data.times[0]),
                    method=config.run.integrator, desc="sweep les", show_progress=False)
    return {**field_errors(res.field, ref), "blowups": int(np.isfinite(res.blowup_time).sum())}


def reference_fields(data: StudyData, config: Config) -> np.ndarray:
    """The filtered DNS of the test trajectories at the saved times of a coupled run of ``run.time``
    (``(trajectory, time, *grid)``, the first snapshot included)."""
    from closure.data.dataset import open_dataset

    interval = float(data.times[1] - data.times[0]) if data.times.size > 1 else data.data_config.dns.sample_interval
    saves = max(1, min(int(math.floor(config.run.time / interval + 1e-9)), data.times.size - 1))
    ds = open_dataset(data.path, chunks=False)
    try:
        return np.asarray(ds[data.var].isel(trajectory=data.splits["test"], time=slice(0, saves + 1)).values,
                          dtype=np.float64)
    finally:
        ds.close()


def field_errors(field: np.ndarray, ref: np.ndarray) -> dict:
    """``error``: ||field - ref|| / ||ref|| per trajectory and saved time (the first snapshot excluded), averaged;
    ``correlation``: Pearson correlation of the final fields, averaged over trajectories. Arrays
    ``(trajectory, time, *grid)``; a blown-up (NaN) trajectory gives NaN."""
    field = np.asarray(field, dtype=np.float64)
    if field.shape != ref.shape:
        raise ValueError(f"field {field.shape} and reference {ref.shape} differ in shape")
    axes = tuple(range(2, field.ndim))
    n = field.shape[0]
    with np.errstate(invalid="ignore", over="ignore"):
        err = np.sqrt(((field - ref) ** 2).sum(axis=axes) / (ref ** 2).sum(axis=axes))[:, 1:]
        a, b = field[:, -1] - field[:, -1].mean(), ref[:, -1] - ref[:, -1].mean()
        corr = (a * b).reshape(n, -1).sum(1) / np.sqrt((a * a).reshape(n, -1).sum(1) * (b * b).reshape(n, -1).sum(1))
    return {"error": float(np.mean(err)), "correlation": float(np.mean(corr))}


def aposteriori(data: StudyData, model, config: Config, diverged: bool = False) -> dict:
    """``aposteriori_error``: mean over the saved times of ||LES - filtered DNS|| / ||filtered DNS||
    (test trajectories, ``run.time``), its ``_none`` value without closure, the final correlation, blow-ups."""
    if data._aposteriori_none is None:
        data._aposteriori_none = _les_errors(data, None, config)
    out = {"aposteriori_error_none": data._aposteriori_none["error"]}
    if diverged:
        out.update(aposteriori_error=float("nan"), aposteriori_correlation=float("nan"), aposteriori_blowups=-1)
        return out
    model.eval()
    r = _les_errors(data, model, config)
    out.update(aposteriori_error=r["error"], aposteriori_correlation=r["correlation"], aposteriori_blowups=r["blowups"])
    return out


def task(config_yaml: str, data: str, key: str, run: dict) -> dict:
    """A dask task: one run on a worker (single-threaded torch; data cached per worker)."""
    torch.set_num_threads(1)
    config = config_from_yaml(config_yaml, "sweep config")
    study = study_data(data, config, key)
    return train_run(study, Run(**run), config)

