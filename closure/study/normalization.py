"""The normalization study: gamma x width x seed on a closure dataset (``closure sweep``).

    sweep(config, data, out_dir, scheduler=None, workers=None) -> out_dir

tests the predictions of docs/normalization.md (Yu & Spiliopoulos 2021, 2023)
on SGS closures: a stencil MLP with ``depth`` hidden layers, all of width N,
is trained a priori on the dataset's training split for every

    (gamma_outer, gamma_inner, width N, seed)

of the ``sweep:`` config section. ``vary: [outer]`` sweeps the outer exponent
gamma_L over ``sweep.gammas`` with every inner exponent held at
``sweep.fixed_gamma`` (1.0 by default, the mean-field scaling); ``vary:
[inner]`` sweeps the inner exponents (all equal) with gamma_L held at
``fixed_gamma`` (over ``sweep.gammas_inner`` when given). The grid is
therefore a cross in the (gamma_outer, gamma_inner) plane; ``sweep.nc``
stores it on the full product with NaN off the cross.

Training (why not ``closure.training.trainer.train``): the study is hundreds of small
runs whose only admissible differences are gamma, N and the seed, and it must
follow the theory's dynamics: plain constant-rate SGD with the per-layer rates
of ``closure.nn.param_groups``, no schedule, no gradient clipping, no early
stopping, no Adam (all of which ``train`` offers and which change the
dynamics the theory describes), and a budget in the theory's time t = k / N_L.
So each run here is a lean loop: the worker loads the (small) normalized
training, validation and test fields once, draws ``sweep.batch_size`` points
uniformly from all training points at every step (a generator seeded by the
run's seed only, so all gammas and widths of a seed see the same sample
stream), gathers their stencil patches and takes one SGD step on
``0.5 * mean (g(x) - y)^2`` in normalized units. The network is the
``StencilClosure`` of ``closure.nn`` (same patch order, same normalization
buffers), so a trained run is a working closure (used by the optional
a-posteriori LES).

- budget: ``sweep.time`` = t gives k = round(t * N_L) steps (the theory's
  units: every width gets the same amount of training dynamics); without it,
  ``train.epochs`` epochs over the training points (k independent of N, the
  papers' fixed-epoch budget).
- base rate: ``sweep.lr`` (else ``train.lr``). With ``sweep.tune_lr`` a small
  grid ``lr * sweep.tune_factors`` is tried per (gamma_outer, gamma_inner) at
  width ``sweep.tune_width`` (default: the median width) with a seed outside
  the study's, and the rate with the lowest validation MSE is used for all
  that pair's runs: the fair control the papers lack (their gamma = 1/2 rates
  are orders of magnitude smaller than their gamma = 1 rates).
- initialization: weights drawn from a generator seeded by (seed, width), the
  same for every gamma (only the normalization differs), so gamma comparisons
  use common random numbers.

Each run is one task on dask.distributed (a LocalCluster of ``workers``
single-threaded processes by default, or ``scheduler=ADDRESS``). The client
writes each finished run's result atomically to ``SWEEP_DIR/runs/NAME.json``;
a re-run skips every run whose file exists and matches the current settings
(a file from other settings is recomputed). Then

    SWEEP_DIR/sweep.nc      xarray Dataset, dims gamma_outer, gamma_inner, width, seed (+ probe)
    SWEEP_DIR/summary.md    tables (errors, variance slopes vs 1 - 2 gamma_outer, tuned rates)
    SWEEP_DIR/*.png         error vs gamma, log-log variance vs width, outer-vs-inner sensitivity
    SWEEP_DIR/sweep.json    what this invocation ran and skipped

Metrics (test split, ``sweep.test_points`` fixed points): ``relative_l2``
(``||c - s|| / ||s||`` in physical units), ``mse`` (normalized units, i.e.
MSE / var(sgs_train)), ``correlation``, ``r2``. ``output_variance``: the
across-seed variance of the trained network output g (normalized units) at
each of ``sweep.probe_points`` fixed test inputs, averaged over the inputs;
``init_output_variance`` the same at initialization. ``variance_slope`` is its
least-squares log-log slope in N, to be compared with 1 - 2 gamma_outer.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import tempfile
import time as _time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Iterable, Optional, Sequence, Union

import numpy as np
import torch

from closure.config import Config, config_from_yaml, config_to_yaml, resolve_dtype
from closure.errors import ClosureError

log = logging.getLogger("closure.study.normalization")

__all__ = [
    "sweep", "Run", "StudyData", "train_run", "fit_power_law", "gather_patches", "study_runs",
    "collect", "variance_slopes", "plot_sweep", "summary_markdown",
]

RESULT_FORMAT = "closure.study.normalization/1"
TUNE_SEED = 1_000_003
DIVERGED_LOSS = 1.0e4  # a training loss (normalized units, target variance 1) beyond this counts as diverged  # the tuning runs' seed: outside the study's seeds 0..S-1
METRICS = ("relative_l2", "mse", "correlation", "r2", "validation_mse", "train_loss", "seconds", "diverged")
APOSTERIORI = ("aposteriori_error", "aposteriori_correlation", "aposteriori_blowups", "aposteriori_error_none")


# --------------------------------------------------------------------------- small helpers
def fit_power_law(widths: Sequence[float], values: Sequence[float]) -> tuple[float, float, float]:
    """Least-squares fit ``log values = slope * log widths + intercept``: (slope, intercept, slope stderr).

    Non-finite or non-positive values are left out; fewer than 2 points give NaNs
    (the stderr needs 3).
    """
    w = np.asarray(widths, dtype=np.float64)
    v = np.asarray(values, dtype=np.float64)
    ok = np.isfinite(v) & (v > 0) & np.isfinite(w) & (w > 0)
    x, y = np.log(w[ok]), np.log(v[ok])
    if x.size < 2 or np.ptp(x) == 0:
        return float("nan"), float("nan"), float("nan")
    xm = x - x.mean()
    slope = float((xm * (y - y.mean())).sum() / (xm * xm).sum())
    intercept = float(y.mean() - slope * x.mean())
    if x.size < 3:
        return slope, intercept, float("nan")
    resid = y - (slope * x + intercept)
    stderr = float(np.sqrt((resid * resid).sum() / (x.size - 2) / (xm * xm).sum()))
    return slope, intercept, stderr


def _atomic_write_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _fmt(g: float) -> str:
    return f"{g:.4g}"


def _seed(*keys: int) -> int:
    seq = np.random.SeedSequence([int(k) % (2 ** 63) for k in keys])
    return int(seq.generate_state(1, dtype=np.uint64)[0] % (2 ** 63))


def gather_patches(channels: torch.Tensor, flat: torch.Tensor, stencil: int) -> torch.Tensor:
    """Stencil patches at flat point indices of ``channels`` (S, C, n) or (S, C, ny, nx).

    ``flat`` indexes the S * n (or S * ny * nx) points in C order. Returns (B, C * s^d)
    in the order of ``closure.nn.stencil_patches``, periodic in space.
    """
    s_count, c = channels.shape[:2]
    grid = channels.shape[2:]
    off = torch.arange(stencil, device=channels.device) - stencil // 2
    b = flat.shape[0]
    if len(grid) == 1:
        n = grid[0]
        snap, j = flat // n, flat % n
        rows = (j[:, None] + off) % n
        p = channels.permute(0, 2, 1)[snap[:, None], rows]  # (B, s, C)
        return p.permute(0, 2, 1).reshape(b, c * stencil)
    ny, nx = grid
    snap, rem = flat // (ny * nx), flat % (ny * nx)
    rows = (rem // nx)[:, None] + off
    cols = (rem % nx)[:, None] + off
    p = channels.permute(0, 2, 3, 1)[snap[:, None, None], (rows % ny)[:, :, None], (cols % nx)[:, None, :]]
    return p.permute(0, 3, 1, 2).reshape(b, c * stencil * stencil)


# --------------------------------------------------------------------------- runs
@dataclass(frozen=True)
class Run:
    """One training run of the study (``kind="study"``) or of the learning-rate tuning (``"tune"``)."""

    kind: str
    gamma_outer: float
    gamma_inner: float
    width: int
    seed: int
    lr: float
    steps: int

    @property
    def name(self) -> str:
        base = f"{self.kind}_go{_fmt(self.gamma_outer)}_gi{_fmt(self.gamma_inner)}_w{self.width}_s{self.seed}"
        return base + (f"_lr{self.lr:.4g}" if self.kind == "tune" else "")

    @property
    def pair(self) -> tuple[float, float]:
        return (self.gamma_outer, self.gamma_inner)


def depth_of(config: Config) -> int:
    return int(config.sweep.depth or len(config.model.hidden))


def gamma_pairs(config: Config) -> list[tuple[float, float]]:
    """The (gamma_outer, gamma_inner) cross: outer varied at inner = fixed, inner varied at outer = fixed."""
    sw = config.sweep
    pairs: list[tuple[float, float]] = []
    for mode in sw.vary:
        values = sw.gammas if mode == "outer" or sw.gammas_inner is None else sw.gammas_inner
        for g in values:
            pair = (float(g), sw.fixed_gamma) if mode == "outer" else (sw.fixed_gamma, float(g))
            if pair not in pairs:
                pairs.append(pair)
    return pairs


def steps_for(config: Config, width: int, n_train_points: int) -> int:
    """SGD steps of one run: round(t * N_L) with ``sweep.time``, else ``train.epochs`` epochs of points."""
    if config.sweep.time is not None:
        return max(1, int(round(config.sweep.time * width)))
    return max(1, math.ceil(config.train.epochs * n_train_points / config.sweep.batch_size))


def base_lr(config: Config) -> float:
    return float(config.sweep.lr if config.sweep.lr is not None else config.train.lr)


def tune_width(config: Config) -> int:
    if config.sweep.tune_width is not None:
        return int(config.sweep.tune_width)
    widths = sorted(config.sweep.widths)
    return int(widths[len(widths) // 2])


def study_runs(config: Config, n_train_points: int, lrs: dict) -> list[Run]:
    """The study's runs for the gamma pairs whose base rate is known (``lrs[pair]``)."""
    runs = []
    for pair in gamma_pairs(config):
        if pair not in lrs:
            continue
        for width in config.sweep.widths:
            for seed in range(config.sweep.seeds):
                runs.append(Run("study", pair[0], pair[1], int(width), seed, float(lrs[pair]),
                                steps_for(config, int(width), n_train_points)))
    return runs


def tuning_runs(config: Config, n_train_points: int) -> list[Run]:
    width = tune_width(config)
    return [Run("tune", go, gi, width, TUNE_SEED, base_lr(config) * float(f), steps_for(config, width, n_train_points))
            for (go, gi) in gamma_pairs(config) for f in config.sweep.tune_factors]


# --------------------------------------------------------------------------- the data (once per worker)
class StudyData:
    """Normalized stencil inputs and targets of the train / validation / test splits, loaded once.

    The normalization (input mean/std per channel, output mean/std) is fitted on the
    training split, exactly as the training of closure.training.trainer does, and stored in a
    template ``StencilClosure`` whose buffers every run copies.
    """

    def __init__(self, data: Union[str, Path], config: Config):
        from closure.data.dataset import dataset_config, field_name, open_dataset, split_trajectories
        from closure.nn import StencilClosure

        self.path = str(data)
        ds = open_dataset(data, chunks=False)
        try:
            self.data_config = dataset_config(ds)
            equation = ds.attrs["equation"]
            self.var = field_name(equation)
            self.ndim = 1 if equation == "burgers_1d" else 2
            self.length = float(ds.attrs["length"])
            n = int(ds.sizes["trajectory"])
            d = config.data
            self.splits = split_trajectories(n, d.validation_fraction, d.test_fraction, config.seed)
            field = np.asarray(ds[self.var].values)
            sgs = np.asarray(ds["sgs"].values)
            self.trajectory_ids = [int(v) for v in np.asarray(ds["trajectory"].values)]
            self.times = np.asarray(ds["time"].values, dtype=np.float64)
        finally:
            ds.close()
        if not (np.all(np.isfinite(field)) and np.all(np.isfinite(sgs))):
            raise ClosureError(f"{data}: non-finite values in the dataset")
        self.dtype = resolve_dtype(config.dtype)
        m = config.model
        self.stencil, self.features, self.activation = int(m.stencil), list(m.features), m.activation
        self.template = StencilClosure(self.ndim, self.stencil, hidden=[1], gammas=[1.0], activation=m.activation,
                                       features=self.features, length=self.length).to(self.dtype)
        grid = field.shape[2:]

        def snaps(split, array):
            return torch.as_tensor(array[self.splits[split]].reshape((-1,) + grid)).to(self.dtype)

        self.template.fit_normalization(snaps("train", field), snaps("train", sgs))
        self.out_mean = float(self.template.output_mean)
        self.out_std = float(self.template.output_std)
        self.channels, self.targets = {}, {}
        with torch.no_grad():
            for split in ("train", "validation", "test"):
                if not self.splits[split]:
                    continue
                self.channels[split] = self.template.normalize_input(snaps(split, field))
                self.targets[split] = ((snaps(split, sgs) - self.out_mean) / self.out_std).reshape(-1)
        sw = config.sweep
        self.points = {}
        for split, count, key in (("test", sw.test_points, 1), ("validation", sw.validation_points, 2)):
            if split not in self.channels:
                continue
            total = self.targets[split].numel()
            gen = torch.Generator().manual_seed(_seed(config.seed, 0x7E57, key))
            flat = torch.randperm(total, generator=gen)[: min(count, total)]
            self.points[split] = (gather_patches(self.channels[split], flat, self.stencil), self.targets[split][flat])
        self.probe = self.points["test"][0][: sw.probe_points]
        self.n_train_points = int(self.targets["train"].numel())
        self._aposteriori_none: Optional[dict] = None

    @property
    def in_features(self) -> int:
        return int(self.channels["train"].shape[1]) * self.stencil ** self.ndim


_CACHE: dict = {}


def _study_data(data: str, config: Config, key: str) -> StudyData:
    """The worker's StudyData for (data, settings), loaded on first use (one entry kept)."""
    if key not in _CACHE:
        _CACHE.clear()
        _CACHE[key] = StudyData(data, config)
    return _CACHE[key]


# --------------------------------------------------------------------------- one run
def build_network(data: StudyData, run: Run, depth: int, output_bias: bool = True):
    """The run's StencilClosure (normalization from the training split), initialized from (seed, width)."""
    from closure.nn import StencilClosure

    gammas = [run.gamma_inner] * (depth - 1) + [run.gamma_outer]
    model = StencilClosure(data.ndim, data.stencil, [run.width] * depth, gammas, data.activation,
                           features=data.features, length=data.length, output_bias=output_bias).to(data.dtype)
    gen = torch.Generator().manual_seed(_seed(run.seed, run.width, 0x1417))
    model.net.reset_parameters(generator=gen)
    model.load_state_dict({**model.state_dict(), **{k: v for k, v in data.template.state_dict().items()
                                                     if not k.startswith("net.")}})
    return model


def _predict(net, x: torch.Tensor, chunk: int = 8192) -> torch.Tensor:
    with torch.no_grad():
        return torch.cat([net(x[i:i + chunk]).squeeze(-1) for i in range(0, x.shape[0], chunk)])


def train_run(data: StudyData, run: Run, config: Config) -> dict:
    """Train one run by plain SGD (module docstring) and return its metrics and probe outputs."""
    from closure.training.apriori import correlation, r2, relative_l2
    from closure.nn import param_groups

    start = _time.perf_counter()
    model = build_network(data, run, depth_of(config), output_bias=config.sweep.output_bias)
    net = model.net
    probe_init = _predict(net, data.probe)
    opt = torch.optim.SGD(param_groups(net, run.lr, "sgd"), lr=run.lr)
    gen = torch.Generator().manual_seed(_seed(run.seed, 0xBA7C4))
    channels, targets = data.channels["train"], data.targets["train"]
    batch = config.sweep.batch_size
    diverged, running, seen = False, 0.0, 0
    tail = max(1, run.steps // 10)  # the training loss reported: mean over the last 10% of the steps
    for k in range(run.steps):
        flat = torch.randint(data.n_train_points, (batch,), generator=gen)
        x = gather_patches(channels, flat, data.stencil)
        loss = 0.5 * (net(x).squeeze(-1) - targets[flat]).pow(2).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if k >= run.steps - tail:
            running += loss.item()
            seen += 1
        if (k % 64 == 0 or k == run.steps - 1) and not (loss.item() < DIVERGED_LOSS):  # NaN-safe
            diverged = True
            break
    result = {"train_loss": running / seen if seen and not diverged else float("nan"), "diverged": diverged}
    nan = float("nan")
    if diverged:
        result.update({key: nan for key in ("relative_l2", "mse", "correlation", "r2", "validation_mse")})
        result["probe_output"] = [nan] * data.probe.shape[0]
    else:
        x_test, y_test = data.points["test"]
        pred = _predict(net, x_test)
        finite = bool(torch.isfinite(pred).all())
        phys_p, phys_t = pred * data.out_std + data.out_mean, y_test * data.out_std + data.out_mean
        result["mse"] = float((pred - y_test).double().pow(2).mean()) if finite else nan
        result["relative_l2"] = relative_l2(phys_p, phys_t) if finite else nan
        result["correlation"] = correlation(pred, y_test) if finite else nan
        result["r2"] = r2(pred, y_test) if finite else nan
        if "validation" in data.points:
            xv, yv = data.points["validation"]
            pv = _predict(net, xv)
            result["validation_mse"] = float((pv - yv).double().pow(2).mean())
        else:
            result["validation_mse"] = nan
        result["probe_output"] = _predict(net, data.probe).double().tolist()
        bad_validation = "validation" in data.points and not (result["validation_mse"] < DIVERGED_LOSS)
        if not finite or not (result["mse"] < DIVERGED_LOSS) or bad_validation:
            result["diverged"] = True
    result["probe_output_init"] = probe_init.double().tolist()
    result["seconds"] = _time.perf_counter() - start
    if config.sweep.aposteriori and run.kind == "study":
        result.update(aposteriori(data, model, config, diverged=result["diverged"]))
    return result


def _les_errors(data: StudyData, closure, config: Config) -> dict:
    """Short coupled LES from the test trajectories' first snapshots against the filtered DNS."""
    from closure.data.dataset import open_dataset
    from closure.les.coupled import integrate
    from closure.data.system import les_equation, trajectory_seeds

    cfg = data.data_config.model_copy(update={"run": config.run})
    interval = float(data.times[1] - data.times[0]) if data.times.size > 1 else cfg.dns.sample_interval
    save_every = max(1, int(round(interval / config.run.dt)))
    saves = max(1, min(int(math.floor(config.run.time / interval + 1e-9)), data.times.size - 1))
    test = data.splits["test"]
    ids = [data.trajectory_ids[i] for i in test]
    ds = open_dataset(data.path, chunks=False)
    try:
        ref = np.asarray(ds[data.var].isel(trajectory=test, time=slice(0, saves + 1)).values, dtype=np.float64)
    finally:
        ds.close()
    equation = les_equation(cfg, dtype=data.dtype, device="cpu", seeds=trajectory_seeds(cfg, ids))
    state = torch.as_tensor(ref[:, 0]).to(data.dtype)
    res = integrate(equation, closure, state, config.run.dt, save_every, saves, t0=float(data.times[0]),
                    method=config.run.integrator, desc="sweep les", show_progress=False)
    field = np.asarray(res.field, dtype=np.float64)
    axes = tuple(range(2, field.ndim))
    with np.errstate(invalid="ignore", over="ignore"):
        err = np.sqrt(((field - ref) ** 2).sum(axis=axes) / (ref ** 2).sum(axis=axes))[:, 1:]
        a, b = field[:, -1] - field[:, -1].mean(), ref[:, -1] - ref[:, -1].mean()
        corr = (a * b).reshape(len(ids), -1).sum(1) / np.sqrt((a * a).reshape(len(ids), -1).sum(1)
                                                              * (b * b).reshape(len(ids), -1).sum(1))
    return {"error": float(np.mean(err)), "correlation": float(np.mean(corr)),
            "blowups": int(np.isfinite(res.blowup_time).sum())}


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


def _task(config_yaml: str, data: str, key: str, run: dict) -> dict:
    """A dask task: one run on a worker (single-threaded torch; data cached per worker)."""
    torch.set_num_threads(1)
    config = config_from_yaml(config_yaml, "sweep config")
    study = _study_data(data, config, key)
    return train_run(study, Run(**run), config)


# --------------------------------------------------------------------------- bookkeeping
def settings_fingerprint(config: Config, data: Path, created: str) -> str:
    """A hash of everything a run's result depends on besides the Run itself."""
    sw = config.sweep
    keys = {
        "data": str(data), "created": created, "seed": config.seed, "dtype": config.dtype,
        "split": [config.data.validation_fraction, config.data.test_fraction],
        "model": [config.model.stencil, list(config.model.features), config.model.activation],
        "depth": depth_of(config), "batch_size": sw.batch_size,
        **({} if sw.output_bias else {"output_bias": False}),  # absent when default: older results stay valid
        "points": [sw.test_points, sw.validation_points, sw.probe_points],
        "aposteriori": config.run.model_dump(mode="json") if sw.aposteriori else None,
        "format": RESULT_FORMAT,
    }
    return hashlib.sha256(json.dumps(keys, sort_keys=True).encode()).hexdigest()[:16]


def _load_result(path: Path, run: Run, fingerprint: str) -> Optional[dict]:
    if not path.is_file():
        return None
    try:
        stored = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if stored.get("fingerprint") != fingerprint or stored.get("run") != asdict(run):
        return None
    return stored


def _save_result(runs_dir: Path, run: Run, fingerprint: str, result: dict) -> dict:
    stored = {"format": RESULT_FORMAT, "fingerprint": fingerprint, "run": asdict(run), "name": run.name,
              "finished": _time.time(), **result}
    text = json.dumps(stored, allow_nan=True)
    _atomic_write_text(runs_dir / f"{run.name}.json", text)
    return stored


def best_rates(config: Config, tune_results: dict[Run, dict]) -> dict:
    """Per gamma pair, the tuning rate with the lowest validation MSE (diverged runs: +inf)."""
    best: dict = {}
    for run, res in tune_results.items():
        score = res.get("validation_mse", float("nan"))
        score = score if (score is not None and math.isfinite(score) and not res.get("diverged")) else math.inf
        if run.pair not in best or score < best[run.pair][0]:
            best[run.pair] = (score, run.lr)
    return {pair: lr for pair, (score, lr) in best.items()}


# --------------------------------------------------------------------------- execution
class _Serial:
    """Runs tasks in this process (``workers=0``): the same interface as the dask loop."""

    def __init__(self, config_yaml, data, key):
        self.args = (config_yaml, data, key)

    def run(self, runs: list[Run], on_done: Callable[[Run, dict], list[Run]], bar) -> None:
        queue = list(runs)
        while queue:
            run = queue.pop(0)
            queue.extend(on_done(run, _task(*self.args, asdict(run))))
            bar.update(1)


class _Dask:
    def __init__(self, config_yaml, data, key, scheduler, workers):
        from distributed import Client, LocalCluster

        self.args = (config_yaml, data, key)
        self.cluster = None
        if scheduler is not None:
            try:
                self.client = Client(scheduler, timeout="20s")
            except (OSError, TimeoutError) as exc:
                raise ClosureError(f"--scheduler {scheduler}: cannot connect ({exc.__class__.__name__})") from None
        else:
            self.cluster = LocalCluster(n_workers=int(workers), threads_per_worker=1, processes=True,
                                        dashboard_address=None, host="127.0.0.1")
            self.client = Client(self.cluster)

    def run(self, runs: list[Run], on_done, bar) -> None:
        from distributed import as_completed

        by_key = {}

        def submit(run):
            fut = self.client.submit(_task, *self.args, asdict(run), pure=False)
            by_key[fut.key] = run
            return fut

        futures = [submit(r) for r in runs]
        pending = as_completed(futures)
        try:
            for fut in pending:
                run = by_key.pop(fut.key)
                for new in on_done(run, fut.result()):
                    pending.add(submit(new))
                bar.update(1)
        except BaseException:
            for f in futures:
                f.cancel()
            raise

    def close(self):
        self.client.close()
        if self.cluster is not None:
            self.cluster.close()


def sweep(config: Config, data: Union[str, Path], out_dir: Union[str, Path], *, scheduler: Optional[str] = None,
          workers: Optional[int] = None, progress: Optional[bool] = None) -> Path:
    """Run (or resume) the normalization study; write runs/, sweep.nc, figures and summary.md; return out_dir.

    ``workers``: LocalCluster worker processes (default: the CPU count); ``workers=0`` runs
    everything in this process (no dask). ``scheduler``: address of a running dask scheduler.
    """
    from closure.data.dataset import open_dataset
    from closure.progress import progress as progress_bar

    data = Path(data).resolve()
    out_dir = Path(out_dir)
    sw = config.sweep
    depth = depth_of(config)
    if "inner" in sw.vary and depth < 2:
        raise ClosureError(f"sweep.vary includes 'inner' but the network has {depth} hidden layer "
                           "(set sweep.depth or model.hidden to 2 or more layers)")
    if sw.tune_lr and not sw.tune_factors:
        raise ClosureError("sweep.tune_lr is on but sweep.tune_factors is empty")
    if sw.seeds < 2:
        log.warning("sweep.seeds=%d: the across-seed output variance needs at least 2 seeds (NaN)", sw.seeds)
    ds = open_dataset(data)
    try:
        created = str(ds.attrs.get("created", ""))
        space = int(np.prod([ds.sizes[d] for d in ds["sgs"].dims[2:]]))
        n_traj = int(ds.sizes["trajectory"])
        n_time = int(ds.sizes["time"])
    finally:
        ds.close()
    from closure.data.dataset import split_trajectories

    splits = split_trajectories(n_traj, config.data.validation_fraction, config.data.test_fraction, config.seed)
    if sw.tune_lr and not splits["validation"]:
        raise ClosureError("sweep.tune_lr needs a validation split (data.validation_fraction > 0 and >= 3 trajectories)")
    n_train_points = len(splits["train"]) * n_time * space
    fingerprint = settings_fingerprint(config, data, created)
    runs_dir = out_dir / "runs"
    runs_dir.mkdir(parents=True, exist_ok=True)
    config_yaml = config_to_yaml(config)
    _atomic_write_text(out_dir / "config.yaml", config_yaml)

    tune_results: dict[Run, dict] = {}
    study_results: dict[Run, dict] = {}
    counts = {"executed": 0, "skipped": 0}
    todo: list[Run] = []

    def lookup(run: Run) -> Optional[dict]:
        found = _load_result(runs_dir / f"{run.name}.json", run, fingerprint)
        if found is not None:
            counts["skipped"] += 1
        return found

    pairs = gamma_pairs(config)
    if sw.tune_lr:
        tunes = tuning_runs(config, n_train_points)
        for run in tunes:
            found = lookup(run)
            if found is not None:
                tune_results[run] = found
            else:
                todo.append(run)
        pending_tune = {pair: sum(1 for r in tunes if r.pair == pair and r not in tune_results) for pair in pairs}
        lrs = best_rates(config, {r: v for r, v in tune_results.items() if pending_tune[r.pair] == 0})
    else:
        pending_tune = {pair: 0 for pair in pairs}
        lrs = {pair: base_lr(config) for pair in pairs}

    def unlocked(rates: dict) -> list[Run]:
        new = []
        for run in study_runs(config, n_train_points, rates):
            found = lookup(run)
            if found is not None:
                study_results[run] = found
            else:
                new.append(run)
        return new

    todo += unlocked(lrs)
    total_expected = len(todo) + sum(
        len(sw.widths) * sw.seeds for pair in pairs if pending_tune[pair] > 0)

    def on_done(run: Run, result: dict) -> list[Run]:
        stored = _save_result(runs_dir, run, fingerprint, result)
        counts["executed"] += 1
        if run.kind == "study":
            study_results[run] = stored
            return []
        tune_results[run] = stored
        pending_tune[run.pair] -= 1
        if pending_tune[run.pair] > 0:
            return []
        rate = best_rates(config, {r: v for r, v in tune_results.items() if r.pair == run.pair})
        log.info("sweep: gamma_outer=%g gamma_inner=%g: tuned base rate %g", run.pair[0], run.pair[1], rate[run.pair])
        return unlocked(rate)

    log.info("sweep: %d runs to do (%d already finished) in %s", total_expected, counts["skipped"], out_dir)
    started = _time.time()
    if todo:
        n_workers = workers if workers is not None else (os.cpu_count() or 1)
        if scheduler is None and n_workers == 0:
            executor = _Serial(config_yaml, str(data), fingerprint)
        else:
            executor = _Dask(config_yaml, str(data), fingerprint, scheduler, max(1, min(n_workers, total_expected)))
        try:
            with progress_bar(total=total_expected, desc="sweep", unit="run", enabled=progress) as bar:
                executor.run(todo, on_done, bar)
        finally:
            if isinstance(executor, _Dask):
                executor.close()

    result = collect(config, study_results, tune_results, data=data)
    _write_netcdf(result, out_dir / "sweep.nc")
    figures = plot_sweep(result, out_dir)
    _atomic_write_text(out_dir / "summary.md", summary_markdown(result, figures))
    _atomic_write_text(out_dir / "sweep.json", json.dumps({
        "runs": len(study_results) + len(tune_results), "executed": counts["executed"],
        "skipped": counts["skipped"], "seconds": _time.time() - started, "fingerprint": fingerprint,
    }, indent=2))
    log.info("sweep: %d runs executed, %d skipped; results in %s", counts["executed"], counts["skipped"], out_dir)
    return out_dir


# --------------------------------------------------------------------------- results
def _write_netcdf(ds, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        ds.to_netcdf(tmp, engine="netcdf4")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def variance_slopes(variance, widths) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Fit log variance vs log width along the last axis of ``variance`` (..., width)."""
    v = np.asarray(variance, dtype=np.float64)
    shape = v.shape[:-1]
    slope, icpt, err = (np.full(shape, np.nan) for _ in range(3))
    for idx in np.ndindex(*shape):
        slope[idx], icpt[idx], err[idx] = fit_power_law(widths, v[idx])
    return slope, icpt, err


def collect(config: Config, study: dict, tune: Optional[dict] = None, data: Optional[Path] = None):
    """The study's results as an xarray Dataset (dims gamma_outer, gamma_inner, width, seed, probe)."""
    import xarray as xr

    sw = config.sweep
    pairs = gamma_pairs(config)
    g_out = sorted({p[0] for p in pairs})
    g_in = sorted({p[1] for p in pairs})
    widths = sorted(int(w) for w in sw.widths)
    seeds = list(range(sw.seeds))
    n_probe = None
    for res in study.values():
        n_probe = len(res["probe_output"])
        break
    n_probe = n_probe or sw.probe_points
    shape = (len(g_out), len(g_in), len(widths), len(seeds))
    names = list(METRICS) + (list(APOSTERIORI) if sw.aposteriori else [])
    arrays = {name: np.full(shape, np.nan) for name in names}
    probe = np.full(shape + (n_probe,), np.nan)
    probe0 = np.full(shape + (n_probe,), np.nan)
    lr = np.full((len(g_out), len(g_in)), np.nan)
    steps = np.zeros(len(widths), dtype=np.int64)
    for run, res in study.items():
        i, j = g_out.index(run.gamma_outer), g_in.index(run.gamma_inner)
        k, s = widths.index(run.width), run.seed
        if s >= len(seeds):
            continue
        for name in names:
            value = res.get(name)
            arrays[name][i, j, k, s] = float(value) if value is not None else np.nan
        probe[i, j, k, s] = np.asarray(res["probe_output"], dtype=np.float64)
        probe0[i, j, k, s] = np.asarray(res["probe_output_init"], dtype=np.float64)
        lr[i, j] = run.lr
        steps[k] = run.steps
    dims = ("gamma_outer", "gamma_inner", "width", "seed")
    with np.errstate(invalid="ignore"), _quiet_nan():
        var = np.nanmean(np.nanvar(probe, axis=3, ddof=1), axis=-1) if len(seeds) > 1 else np.full(shape[:3], np.nan)
        var0 = np.nanmean(np.nanvar(probe0, axis=3, ddof=1), axis=-1) if len(seeds) > 1 else np.full(shape[:3], np.nan)
    # a cell where any seed diverged has no meaningful variance
    bad = np.isnan(probe).all(axis=-1).any(axis=3)
    var = np.where(bad, np.nan, var)
    slope, icpt, err = variance_slopes(var, widths)
    slope0, icpt0, err0 = variance_slopes(var0, widths)
    long_names = {
        "relative_l2": "test relative L2 error ||c - s|| / ||s|| (physical units)",
        "mse": "test MSE in normalized units (MSE / var(sgs_train))",
        "correlation": "test Pearson correlation of c and s",
        "r2": "test coefficient of determination",
        "validation_mse": "validation MSE in normalized units",
        "train_loss": "0.5 * MSE on the training batches, mean over the last 10% of the steps",
        "seconds": "wall time of the run",
        "diverged": "1 if the run produced non-finite values",
        "aposteriori_error": "coupled LES: mean over saved times of ||LES - DNS|| / ||DNS|| (test trajectories)",
        "aposteriori_correlation": "coupled LES: correlation with the filtered DNS at the final time",
        "aposteriori_blowups": "coupled LES: trajectories that blew up (-1: not run, training diverged)",
        "aposteriori_error_none": "the same error of the LES without closure",
    }
    data_vars = {name: (dims, arrays[name], {"long_name": long_names[name]}) for name in names}
    data_vars.update({
        "probe_output": (dims + ("probe",), probe, {"long_name": "trained network output g at fixed test inputs "
                                                                  "(normalized units)"}),
        "probe_output_init": (dims + ("probe",), probe0, {"long_name": "network output g at initialization"}),
        "output_variance": (dims[:3], var, {"long_name": "across-seed variance of the trained output g, "
                                                         "mean over the probe inputs"}),
        "init_output_variance": (dims[:3], var0, {"long_name": "across-seed variance of g at initialization"}),
        "variance_slope": (dims[:2], slope, {"long_name": "log-log slope of output_variance vs width"}),
        "variance_slope_stderr": (dims[:2], err, {"long_name": "standard error of variance_slope"}),
        "variance_intercept": (dims[:2], icpt, {"long_name": "log-log intercept (natural log)"}),
        "init_variance_slope": (dims[:2], slope0, {"long_name": "log-log slope of init_output_variance vs width"}),
        "init_variance_slope_stderr": (dims[:2], err0, {"long_name": "standard error of init_variance_slope"}),
        "predicted_slope": (("gamma_outer",), 1.0 - 2.0 * np.asarray(g_out),
                            {"long_name": "theory: 1 - 2 gamma_outer"}),
        "lr": (dims[:2], lr, {"long_name": "base SGD rate alpha used (tuned if tune_lr)"}),
        "steps": (("width",), steps, {"long_name": "SGD steps per run"}),
    })
    coords = {"gamma_outer": g_out, "gamma_inner": g_in, "width": widths, "seed": seeds,
              "probe": np.arange(n_probe)}
    ds = xr.Dataset(data_vars, coords=coords)
    if tune:
        factors = sorted({round(r.lr / base_lr(config), 12) for r in tune})
        tv = np.full((len(g_out), len(g_in), len(factors)), np.nan)
        for run, res in tune.items():
            f = factors.index(round(run.lr / base_lr(config), 12))
            v = res.get("validation_mse")
            tv[g_out.index(run.gamma_outer), g_in.index(run.gamma_inner), f] = np.nan if v is None else v
        ds = ds.assign_coords(lr_factor=factors)
        ds["tune_validation_mse"] = (("gamma_outer", "gamma_inner", "lr_factor"), tv,
                                     {"long_name": f"validation MSE of the tuning runs (width {tune_width(config)})"})
    budget = (f"t = k / N_L = {sw.time} (k = round(t N_L) steps)" if sw.time is not None
              else f"{config.train.epochs} epochs of the training points (k independent of N)")
    ds.attrs.update({
        "title": "normalization study: gamma x width x seed (closure sweep)",
        "design": (f"vary={list(sw.vary)}; when the outer gamma is varied every inner gamma is {sw.fixed_gamma}, "
                   f"when the inner gammas are varied the outer gamma is {sw.fixed_gamma}"),
        "fixed_gamma": sw.fixed_gamma,
        "vary": json.dumps(list(sw.vary)),
        "depth": depth_of(config),
        "budget": budget,
        "batch_size": sw.batch_size,
        "output_bias": int(sw.output_bias),
        "base_lr": base_lr(config),
        "tune_lr": int(sw.tune_lr),
        "tune_width": tune_width(config) if sw.tune_lr else -1,
        "optimizer": "plain SGD, constant rate, per-layer rates of closure.nn.param_groups",
        "dataset": str(data) if data is not None else "",
        "config": config_to_yaml(config),
    })
    return ds


class _quiet_nan:
    def __enter__(self):
        import warnings

        self._w = warnings.catch_warnings()
        self._w.__enter__()
        warnings.simplefilter("ignore", category=RuntimeWarning)

    def __exit__(self, *exc):
        self._w.__exit__(*exc)


# --------------------------------------------------------------------------- figures and summary
def _outer_line(ds, name):
    """``name`` along gamma_outer at gamma_inner = fixed (the outer sweep)."""
    return ds[name].sel(gamma_inner=ds.attrs["fixed_gamma"])


def _inner_line(ds, name):
    return ds[name].sel(gamma_outer=ds.attrs["fixed_gamma"])


def _width_ticks(ax, widths) -> None:
    from matplotlib.ticker import NullFormatter

    ax.set_xticks([int(w) for w in widths])
    ax.set_xticklabels([str(int(w)) for w in widths])
    ax.xaxis.set_minor_formatter(NullFormatter())


def plot_sweep(ds, out_dir: Union[str, Path], prefix: str = "") -> list[Path]:
    """Write error.png, variance.png, sensitivity.png (with ``prefix``) into ``out_dir``; return their paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir = Path(out_dir)
    vary = json.loads(ds.attrs["vary"])
    fixed = ds.attrs["fixed_gamma"]
    widths = ds["width"].values
    cmap = plt.get_cmap("viridis")
    paths = []

    with _quiet_nan():
        # 1. test error vs gamma, one line per width
        fig, axes = plt.subplots(1, len(vary), figsize=(4.6 * len(vary), 3.6), squeeze=False)
        for ax, mode in zip(axes[0], vary):
            line = _outer_line if mode == "outer" else _inner_line
            err = line(ds, "relative_l2")
            gdim = "gamma_outer" if mode == "outer" else "gamma_inner"
            for n, w in enumerate(widths):
                e = err.sel(width=w)
                ax.errorbar(e[gdim].values, e.mean("seed").values, yerr=e.std("seed").values, marker="o", ms=3,
                            capsize=2, color=cmap(n / max(1, len(widths) - 1)), label=f"N = {w}")
            other = "inner" if mode == "outer" else "outer"
            ax.set_xlabel(f"gamma_{mode}  ({other} gammas = {fixed:g})")
            ax.set_ylabel("test relative L2 error")
            ax.set_title(f"{mode} gamma varied")
            ax.grid(alpha=0.3)
        axes[0][0].legend(fontsize=7)
        fig.tight_layout()
        paths.append(out_dir / f"{prefix}error.png")
        fig.savefig(paths[-1], dpi=110)
        plt.close(fig)

        # 2. log-log variance vs width per gamma, with fitted lines
        fig, axes = plt.subplots(1, len(vary), figsize=(4.6 * len(vary), 3.8), squeeze=False)
        for ax, mode in zip(axes[0], vary):
            line = _outer_line if mode == "outer" else _inner_line
            var, slope, icpt = (line(ds, n) for n in ("output_variance", "variance_slope", "variance_intercept"))
            gdim = "gamma_outer" if mode == "outer" else "gamma_inner"
            gs = var[gdim].values
            v0 = line(ds, "init_output_variance")
            for n, g in enumerate(gs):
                color = cmap(n / max(1, len(gs) - 1))
                v = var.sel({gdim: g}).values
                ax.loglog(widths, v, "o", color=color, ms=4)
                ax.loglog(widths, v0.sel({gdim: g}).values, "x:", color=color, ms=4, lw=0.8)
                s, c = float(slope.sel({gdim: g})), float(icpt.sel({gdim: g}))
                go = g if mode == "outer" else fixed
                if math.isfinite(s):
                    ax.loglog(widths, np.exp(c) * widths.astype(float) ** s, "-", color=color,
                              label=f"{gdim}={g:g}: slope {s:+.2f} (theory {1 - 2 * go:+.2f})")
            ax.set_xlabel("width N")
            ax.set_ylabel("across-seed variance of g")
            ax.plot([], [], "ko", ms=4, label="trained (o, fitted line)")
            ax.plot([], [], "kx:", ms=4, lw=0.8, label="at initialization (x)")
            _width_ticks(ax, widths)
            ax.set_title(f"{mode} gamma varied")
            ax.grid(alpha=0.3, which="both")
            if ax.get_legend_handles_labels()[0]:
                ax.legend(fontsize=6.5)
        fig.tight_layout()
        paths.append(out_dir / f"{prefix}variance.png")
        fig.savefig(paths[-1], dpi=110)
        plt.close(fig)

        # 3. outer vs inner sensitivity: error at the largest width, variance slope
        fig, axes = plt.subplots(1, 2, figsize=(9.2, 3.6))
        wmax = widths.max()
        for mode, marker in (("outer", "o-"), ("inner", "s--")):
            if mode not in vary:
                continue
            line = _outer_line if mode == "outer" else _inner_line
            gdim = "gamma_outer" if mode == "outer" else "gamma_inner"
            e = line(ds, "relative_l2").sel(width=wmax)
            axes[0].errorbar(e[gdim].values, e.mean("seed").values, yerr=e.std("seed").values, fmt=marker, ms=4,
                             capsize=2, label=f"{mode} varied")
            s = line(ds, "variance_slope")
            se = line(ds, "variance_slope_stderr")
            axes[1].errorbar(s[gdim].values, s.values, yerr=se.values, fmt=marker, ms=4, capsize=2,
                             label=f"{mode} varied, trained")
            s0 = line(ds, "init_variance_slope")
            axes[1].plot(s0[gdim].values, s0.values, marker[0], mfc="none", ms=6, color="grey",
                         label=f"{mode} varied, at init")
        gg = np.linspace(0.5, 1.0, 11)
        axes[1].plot(gg, 1 - 2 * gg, "k:", label="theory 1 - 2 gamma_outer")
        if "inner" in vary:
            axes[1].axhline(1 - 2 * fixed, color="grey", ls="-.", lw=0.8, label=f"theory, inner varied ({1 - 2 * fixed:+g})")
        axes[0].set_xlabel("gamma (the varied one)")
        axes[0].set_ylabel(f"test relative L2 error, N = {wmax}")
        axes[1].set_xlabel("gamma (the varied one)")
        axes[1].set_ylabel("variance slope d log Var / d log N")
        for ax in axes:
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7)
        fig.tight_layout()
        paths.append(out_dir / f"{prefix}sensitivity.png")
        fig.savefig(paths[-1], dpi=110)
        plt.close(fig)
    return paths


def _num(x, spec=".3f") -> str:
    x = float(x)
    return "nan" if not math.isfinite(x) else format(x, spec)


def summary_markdown(ds, figures: Iterable[Path] = ()) -> str:
    """The tables of the study as Markdown."""
    vary = json.loads(ds.attrs["vary"])
    fixed = ds.attrs["fixed_gamma"]
    widths = [int(w) for w in ds["width"].values]
    lines = [
        "# Normalization study (closure sweep)",
        "",
        f"- dataset: `{ds.attrs['dataset']}`",
        f"- network: stencil MLP, {ds.attrs['depth']} hidden layers of width N"
        f"{'' if ds.attrs.get('output_bias', 1) else ', no output bias'}; {ds.attrs['design']}",
        f"- training: {ds.attrs['optimizer']}; batch {ds.attrs['batch_size']}; budget {ds.attrs['budget']}; "
        f"base rate {ds.attrs['base_lr']:g}" + (f", tuned per gamma at N = {ds.attrs['tune_width']}"
                                                  if ds.attrs["tune_lr"] else " (not tuned)"),
        f"- seeds: {ds.sizes['seed']}; probe inputs for the variance: {ds.sizes['probe']}; "
        f"steps per width: " + ", ".join(f"{w}: {int(s)}" for w, s in zip(widths, ds['steps'].values)),
        "",
    ]
    with _quiet_nan():
        for mode in vary:
            line = _outer_line if mode == "outer" else _inner_line
            gdim = "gamma_outer" if mode == "outer" else "gamma_inner"
            other = "inner" if mode == "outer" else "outer"
            lines += [f"## {mode.capitalize()} gamma varied ({other} gammas = {fixed:g})", ""]
            lines += ["Output variance across seeds: fitted log-log slope vs width (± standard error)", ""]
            lines += [f"| {gdim} | base rate | slope (trained) | slope (init) | theory 1 - 2 gamma_outer |",
                      "| --- | --- | --- | --- | --- |"]
            s, se = line(ds, "variance_slope"), line(ds, "variance_slope_stderr")
            s0, se0 = line(ds, "init_variance_slope"), line(ds, "init_variance_slope_stderr")
            lr = line(ds, "lr")
            for g in s[gdim].values:
                go = g if mode == "outer" else fixed
                lines.append(f"| {g:g} | {float(lr.sel({gdim: g})):.3g} | {_num(s.sel({gdim: g}), '+.2f')} ± "
                             f"{_num(se.sel({gdim: g}), '.2f')} | {_num(s0.sel({gdim: g}), '+.2f')} ± "
                             f"{_num(se0.sel({gdim: g}), '.2f')} | {1 - 2 * go:+.2f} |")
            lines += ["", "Across-seed output variance (trained), by width", ""]
            lines += [f"| {gdim} | " + " | ".join(f"N={w}" for w in widths) + " |",
                      "| --- |" + " --- |" * len(widths)]
            var = line(ds, "output_variance")
            for g in var[gdim].values:
                lines.append(f"| {g:g} | " + " | ".join(_num(var.sel({gdim: g, "width": w}), ".3g")
                                                         for w in widths) + " |")
            for name, title in (("relative_l2", "Test relative L2 error (mean ± std over seeds)"),
                                ("correlation", "Test correlation (mean over seeds)")):
                lines += ["", title, ""]
                lines += [f"| {gdim} | " + " | ".join(f"N={w}" for w in widths) + " |",
                          "| --- |" + " --- |" * len(widths)]
                arr = line(ds, name)
                for g in arr[gdim].values:
                    cells = []
                    for w in widths:
                        a = arr.sel({gdim: g, "width": w})
                        m = _num(a.mean("seed"))
                        cells.append(f"{m} ± {_num(a.std('seed'))}" if name == "relative_l2" else m)
                    n_div = int(np.nansum(line(ds, "diverged").sel({gdim: g}).values))
                    lines.append(f"| {g:g}{' (' + str(n_div) + ' diverged)' if n_div else ''} | "
                                 + " | ".join(cells) + " |")
            if "aposteriori_error" in ds:
                lines += ["", "A posteriori: LES field error ||LES - DNS|| / ||DNS|| (mean over seeds; "
                          f"no closure: {_num(np.nanmean(ds['aposteriori_error_none'].values))})", ""]
                lines += [f"| {gdim} | " + " | ".join(f"N={w}" for w in widths) + " |",
                          "| --- |" + " --- |" * len(widths)]
                arr = line(ds, "aposteriori_error")
                for g in arr[gdim].values:
                    lines.append(f"| {g:g} | " + " | ".join(_num(arr.sel({gdim: g, "width": w}).mean("seed"))
                                                             for w in widths) + " |")
            lines.append("")
        if "tune_validation_mse" in ds:
            lines += ["## Learning-rate tuning (validation MSE, normalized units)", ""]
            factors = [float(f) for f in ds["lr_factor"].values]
            lines += ["| gamma_outer | gamma_inner | " + " | ".join(f"x{f:g}" for f in factors) + " | chosen |",
                      "| --- | --- |" + " --- |" * (len(factors) + 1)]
            tv = ds["tune_validation_mse"]
            for go in ds["gamma_outer"].values:
                for gi in ds["gamma_inner"].values:
                    row = tv.sel(gamma_outer=go, gamma_inner=gi).values
                    lr = float(ds["lr"].sel(gamma_outer=go, gamma_inner=gi))
                    if np.all(np.isnan(row)):
                        continue
                    lines.append(f"| {go:g} | {gi:g} | " + " | ".join(_num(v, ".4f") for v in row)
                                 + f" | {lr:.3g} |")
            lines.append("")
    figs = [Path(f).name for f in figures]
    if figs:
        lines += ["## Figures", ""] + [f"![{f}]({f})" for f in figs] + [""]
    return "\n".join(lines)
