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
dynamics the theory describes), and a budget in the theory's time t = k / N_L
(``sweep.optimizers: [adam]`` trains with Adam and the rates of
docs/normalization.md section 3 instead, outside the papers' theory).
So each run here is a lean loop: the worker loads the (small) normalized
training, validation and test fields once, draws ``sweep.batch_size`` points
uniformly from all training points (or from the fixed subset of
``sweep.train_points``, whole when the batch covers it) at every step (a
generator seeded per cell, below), gathers their stencil patches and takes one SGD step on
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
- seeds: every (gamma pair, width, seed) cell draws its own initial weights and
  sample stream (``Run.init_seed``, ``Run.batch_seed``), so each law is measured
  on independent samples; ``sweep.common_random_numbers`` seeds both by (seed,
  width) and seed only, shared by every gamma (only the normalization differs).
- probes: the across-seed variance is taken at ``sweep.probe_points`` test inputs
  and at as many i.i.d. Gaussian inputs of standard deviation ``sweep.ood_scale``
  (normalized units), outside the training distribution; ``sweep.curve_points``
  records the validation MSE during training.

``sweep.study: transfer`` runs the rate-transfer study instead
(``closure.study.transfer``): for every parametrization of
``sweep.parametrizations`` (gamma networks with their derived per-layer rates,
``standard``, ``mup``; ``closure.study.parametrization``), optimizer of
``sweep.optimizers`` and width, a bracketed search of the base rate with
``sweep.seeds`` seeds per rate; ``sweep.nc`` then holds the best rate per
width, its test error and validation curves, and the fitted slope of
log(best rate) vs log N.

Each run is one task on dask.distributed (a LocalCluster of ``workers``
single-threaded processes by default, or ``scheduler=ADDRESS``). The client
writes each finished run's result atomically to ``SWEEP_DIR/runs/NAME.json``;
a re-run skips every run whose file exists and matches the current settings
(a file from other settings is recomputed). Then

    SWEEP_DIR/sweep.nc      xarray Dataset, dims gamma_outer, gamma_inner, width, seed (+ probe)
    SWEEP_DIR/summary.md    tables (errors, variance slopes vs 1 - 2 gamma_outer, tuned rates)
    SWEEP_DIR/*.png         error vs gamma, log-log variance vs width, outer-vs-inner sensitivity
    SWEEP_DIR/sweep.json    what this invocation ran and skipped
    SWEEP_DIR/ladder/       with ``sweep.aposteriori`` and ``run.ladder``: the plain solver's LES files
                            (``closure.study.ladder``), scored like the networks' coupled LES
                            (``sweep.aposteriori`` needs a dataset of ``les.formulation: filtered``)

Metrics (test split, ``sweep.test_points`` fixed points): ``relative_l2``
(``||c - s|| / ||s||`` in physical units), ``mse`` (normalized units, i.e.
MSE / var(sgs_train)), ``correlation``, ``r2``. ``output_variance``: the
across-seed variance of the trained network output g (normalized units) at
each of ``sweep.probe_points`` fixed test inputs, averaged over the inputs;
``init_output_variance`` the same at initialization. ``variance_slope`` is its
least-squares log-log slope in N, to be compared with 1 - 2 gamma_outer.

Modules: ``grid`` (the runs), ``data`` (the splits, loaded once per worker), ``run`` (one
training run), ``executor`` (result cache, serial / dask), ``results`` (``sweep.nc``, power-law
fits), ``report`` (figures, ``summary.md``); this module ties them together.
"""

from __future__ import annotations

import json
import logging
import os
import time as _time
from pathlib import Path
from typing import Callable, Optional, Union

import numpy as np

from closure import storage
from closure.config import Config, config_to_yaml
from closure.errors import ClosureError
from closure.study.executor import DaskExecutor, SerialExecutor, load_result, save_result, settings_fingerprint
from closure.study.grid import Run, base_lr, best_rates, depth_of, gamma_pairs, study_runs, tuning_runs
from closure.study.report import plot_sweep, plot_transfer, summary_markdown, transfer_markdown
from closure.study.results import collect, collect_transfer, write_netcdf
from closure.study.transfer import RateSearch

log = logging.getLogger("closure.study.normalization")

__all__ = ["sweep"]


def sweep(config: Config, data: Union[str, Path], out_dir: Union[str, Path], *, scheduler: Optional[str] = None,
          workers: Optional[int] = None, progress: Optional[bool] = None) -> Path:
    """Run (or resume) the study of ``sweep.study``; write runs/, sweep.nc, figures and summary.md; return out_dir.

    ``workers``: LocalCluster worker processes (default: the CPU count); ``workers=0`` runs
    everything in this process (no dask). ``scheduler``: address of a running dask scheduler.
    """
    sw = config.sweep
    depth = depth_of(config)
    if sw.study == "gamma" and "inner" in sw.vary and depth < 2:
        raise ClosureError(f"sweep.vary includes 'inner' but the network has {depth} hidden layer "
                           "(set sweep.depth or model.hidden to 2 or more layers)")
    if sw.study == "gamma" and len(sw.optimizers) != 1:
        raise ClosureError(f"sweep.optimizers={list(sw.optimizers)}: the gamma study trains with one optimizer "
                           "(list several only with sweep.study: transfer)")
    if sw.tune_lr and not sw.tune_factors:
        raise ClosureError("sweep.tune_lr is on but sweep.tune_factors is empty")
    if sw.seeds < 2:
        log.warning("sweep.seeds=%d: the across-seed output variance needs at least 2 seeds (NaN)", sw.seeds)
    study = _Study(config, data, out_dir, scheduler, workers, progress)
    if sw.study == "transfer" and not study.splits["validation"]:
        raise ClosureError("sweep.study=transfer needs a validation split (data.validation_fraction > 0)")
    if sw.tune_lr and not study.splits["validation"]:
        raise ClosureError("sweep.tune_lr needs a validation split (data.validation_fraction > 0 and >= 3 trajectories)")
    started = _time.time()
    if sw.study == "transfer":
        search = RateSearch(config, study.n_train_points)
        study.execute(search.start(), search.record)
        result = collect_transfer(config, search, data=study.data)
        figures = plot_transfer(result, study.out_dir)
        summary = transfer_markdown(result, figures)
        runs = sum(len(c["results"]) for c in search.cells.values())
    else:
        study_results, tune_results = _gamma_study(config, study)
        ladder = _ladder(config, study) if sw.aposteriori and config.run.ladder else None
        result = collect(config, study_results, tune_results, data=study.data, ladder=ladder)
        figures = plot_sweep(result, study.out_dir)
        summary = summary_markdown(result, figures)
        runs = len(study_results) + len(tune_results)
    write_netcdf(result, study.out_dir / "sweep.nc")
    storage.write_text(study.out_dir / "summary.md", summary)
    storage.write_text(study.out_dir / "sweep.json", json.dumps({
        "runs": runs, "executed": study.counts["executed"], "skipped": study.counts["skipped"],
        "seconds": _time.time() - started, "fingerprint": study.fingerprint,
    }, indent=2))
    log.info("sweep: %d runs executed, %d skipped; results in %s", study.counts["executed"],
             study.counts["skipped"], study.out_dir)
    return study.out_dir


class _Study:
    """One invocation's bookkeeping: the dataset's sizes, the result cache and the executor."""

    def __init__(self, config: Config, data, out_dir, scheduler, workers, progress):
        from closure.data.dataset import dataset_config, open_dataset, split_trajectories

        self.config, self.scheduler, self.workers, self.progress = config, scheduler, workers, progress
        self.data = Path(data).resolve()
        self.out_dir = Path(out_dir)
        ds = open_dataset(self.data)
        try:
            created = str(ds.attrs.get("created", ""))
            formulation = dataset_config(ds).les.formulation
            space = int(np.prod([ds.sizes[d] for d in ds["sgs"].dims[2:]]))
            n_traj = int(ds.sizes["trajectory"])
            n_time = int(ds.sizes["time"])
        finally:
            ds.close()
        if config.sweep.aposteriori and formulation != "filtered":
            # the study's coupled LES starts from and is scored against the stored filtered field
            raise ClosureError(f"{data}: sweep.aposteriori needs a dataset of les.formulation 'filtered' "
                               f"(this one is {formulation!r}); generate it with --set les.formulation=filtered")
        self.splits = split_trajectories(n_traj, config.data.validation_fraction, config.data.test_fraction,
                                         config.seed)
        self.n_train_points = len(self.splits["train"]) * n_time * space
        if config.sweep.train_points is not None:  # epochs count passes over the fixed training subset
            self.n_train_points = min(self.n_train_points, int(config.sweep.train_points))
        self.fingerprint = settings_fingerprint(config, self.data, created)
        self.runs_dir = self.out_dir / "runs"
        self.runs_dir.mkdir(parents=True, exist_ok=True)
        self.config_yaml = config_to_yaml(config)
        storage.write_text(self.out_dir / "config.yaml", self.config_yaml)
        self.counts = {"executed": 0, "skipped": 0}

    def lookup(self, run: Run) -> Optional[dict]:
        found = load_result(self.runs_dir / f"{run.name}.json", run, self.fingerprint)
        if found is not None:
            self.counts["skipped"] += 1
        return found

    def resolve(self, runs: list[Run], record: Callable[[Run, dict], list[Run]]) -> list[Run]:
        """The runs (and the runs they unlock) not in the cache; cached ones are passed to ``record``."""
        queue, todo = list(runs), []
        while queue:
            run = queue.pop(0)
            found = self.lookup(run)
            if found is None:
                todo.append(run)
            else:
                queue.extend(record(run, found))
        return todo

    def execute(self, runs: list[Run], record: Callable[[Run, dict], list[Run]], total: Optional[int] = None) -> None:
        """Run ``runs`` (cached ones skipped), storing each result; ``record(run, result)`` may unlock more."""
        from closure.progress import progress as progress_bar

        todo = self.resolve(runs, record)

        def on_done(run: Run, result: dict) -> list[Run]:
            stored = save_result(self.runs_dir, run, self.fingerprint, result)
            self.counts["executed"] += 1
            return self.resolve(record(run, stored), record)

        total = max(total or 0, len(todo))
        log.info("sweep: %d runs to do (%d already finished) in %s", total, self.counts["skipped"], self.out_dir)
        if not todo:
            return
        n_workers = self.workers if self.workers is not None else (os.cpu_count() or 1)
        if self.scheduler is None and n_workers == 0:
            executor = SerialExecutor(self.config_yaml, str(self.data), self.fingerprint)
        else:
            executor = DaskExecutor(self.config_yaml, str(self.data), self.fingerprint, self.scheduler,
                                    max(1, min(n_workers, total)))
        try:
            with progress_bar(total=total, desc="sweep", unit="run", enabled=self.progress) as bar:
                executor.run(todo, on_done, bar)
        finally:
            if isinstance(executor, DaskExecutor):
                executor.close()


def _ladder(config: Config, study: _Study) -> dict:
    """The plain-solver ladder scored like the study's coupled LES (``closure.study.ladder``), in this process."""
    from closure.study.data import StudyData
    from closure.study.ladder import plain_ladder

    log.info("sweep: plain-solver ladder %s over run.time = %g", list(config.run.ladder), config.run.time)
    return plain_ladder(config, StudyData(study.data, config), study.out_dir / "ladder")


def _gamma_study(config: Config, study: _Study) -> tuple[dict, dict]:
    """The gamma x width x seed runs (after the per-pair rate tuning when ``sweep.tune_lr``)."""
    sw = config.sweep
    pairs = gamma_pairs(config)
    tune_results: dict[Run, dict] = {}
    study_results: dict[Run, dict] = {}
    tunes = tuning_runs(config, study.n_train_points) if sw.tune_lr else []
    pending = {pair: sum(1 for r in tunes if r.pair == pair) for pair in pairs}

    def record(run: Run, result: dict) -> list[Run]:
        if run.kind == "study":
            study_results[run] = result
            return []
        tune_results[run] = result
        pending[run.pair] -= 1
        if pending[run.pair] > 0:
            return []
        rate = best_rates(config, {r: v for r, v in tune_results.items() if r.pair == run.pair})
        log.info("sweep: gamma_outer=%g gamma_inner=%g: tuned base rate %g", run.pair[0], run.pair[1], rate[run.pair])
        return study_runs(config, study.n_train_points, rate)

    first = tunes if sw.tune_lr else study_runs(config, study.n_train_points, {p: base_lr(config) for p in pairs})
    total = len(first) + (len(pairs) * len(sw.widths) * sw.seeds if sw.tune_lr else 0)
    study.execute(first, record, total=total)
    return study_results, tune_results
