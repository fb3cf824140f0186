"""The study grid: which runs the normalization study trains (``closure sweep``).

A run is one network trained once: ``Run(kind, gamma_outer, gamma_inner, width, seed, lr, steps)``.
``gamma_pairs`` is the cross in the (gamma_outer, gamma_inner) plane that ``sweep.vary`` asks for,
``steps_for`` the budget (theory time t = k / N_L with ``sweep.time``, else epochs),
``study_runs`` / ``tuning_runs`` the runs of the study and of the learning-rate tuning, and
``best_rates`` the tuning's choice per gamma pair.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from closure.config import Config

RESULT_FORMAT = "closure.study.normalization/2"
TUNE_SEED = 1_000_003  # the tuning runs' seed: outside the study's seeds 0..S-1

def fmt_gamma(g: float) -> str:
    return f"{g:.4g}"


def derived_seed(*keys: int) -> int:
    seq = np.random.SeedSequence([int(k) % (2 ** 63) for k in keys])
    return int(seq.generate_state(1, dtype=np.uint64)[0] % (2 ** 63))


# --------------------------------------------------------------------------- runs
@dataclass(frozen=True)
class Run:
    """One training run: of the gamma study (``kind="study"``), of its learning-rate tuning (``"tune"``)
    or of the rate-transfer study (``"transfer"``).

    ``param`` is the parametrization (``closure.study.parametrization``): ``"gamma"`` for the
    mean-field network with exponents (gamma_outer, gamma_inner), else ``"standard"`` or ``"mup"``
    (gammas NaN); ``optimizer`` is ``"sgd"`` or ``"adam"``.
    """

    kind: str
    gamma_outer: float
    gamma_inner: float
    width: int
    seed: int
    lr: float
    steps: int
    param: str = "gamma"
    optimizer: str = "sgd"

    @property
    def label(self) -> str:
        """The parametrization: ``goX_giY`` for a gamma network, else its family name."""
        if self.param == "gamma":
            return f"go{fmt_gamma(self.gamma_outer)}_gi{fmt_gamma(self.gamma_inner)}"
        return self.param

    @property
    def name(self) -> str:
        if self.kind == "transfer":
            return f"transfer_{self.label}_{self.optimizer}_w{self.width}_s{self.seed}_lr{self.lr:.6g}"
        base = f"{self.kind}_{self.label}_w{self.width}_s{self.seed}"
        base += "" if self.optimizer == "sgd" else f"_{self.optimizer}"
        return base + (f"_lr{self.lr:.4g}" if self.kind == "tune" else "")

    @property
    def pair(self) -> tuple[float, float]:
        return (self.gamma_outer, self.gamma_inner)

    @property
    def cell(self) -> tuple[str, str, int]:
        """The transfer study's cell (parametrization label, optimizer, width): one bracketed rate search."""
        return (self.label, self.optimizer, self.width)

    def init_seed(self, common: bool) -> int:
        """Seed of the initial weights: (seed, width) when gammas share random numbers, else also the
        parametrization and optimizer, so every cell is an independent sample (the rates of one
        transfer cell share it: a rate curve is smooth in the rate)."""
        keys = (self.seed, self.width, 0x1417)
        return derived_seed(*keys) if common else derived_seed(*keys, *self._cell_keys())

    def batch_seed(self, common: bool) -> int:
        """Seed of the sample stream: the seed alone when shared, else also the cell."""
        return derived_seed(self.seed, 0xBA7C4) if common else derived_seed(self.seed, 0xBA7C4, self.width,
                                                                          *self._cell_keys())

    def _cell_keys(self) -> tuple[int, ...]:
        text = f"{self.label}/{self.optimizer}".encode()
        return tuple(int.from_bytes(text[i:i + 7].ljust(7, b"\0"), "little") for i in range(0, len(text), 7))


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
    """Steps of one run: ``sweep.steps``; else round(t * N_L) with ``sweep.time``; else ``train.epochs`` epochs."""
    if config.sweep.steps is not None:
        return int(config.sweep.steps)
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


def study_optimizer(config: Config) -> str:
    """The gamma study's optimizer: the one entry of ``sweep.optimizers`` (SGD by default)."""
    return str(config.sweep.optimizers[0])


def study_runs(config: Config, n_train_points: int, lrs: dict) -> list[Run]:
    """The study's runs for the gamma pairs whose base rate is known (``lrs[pair]``)."""
    runs = []
    for pair in gamma_pairs(config):
        if pair not in lrs:
            continue
        for width in config.sweep.widths:
            for seed in range(config.sweep.seeds):
                runs.append(Run("study", pair[0], pair[1], int(width), seed, float(lrs[pair]),
                                steps_for(config, int(width), n_train_points), optimizer=study_optimizer(config)))
    return runs


def tuning_runs(config: Config, n_train_points: int) -> list[Run]:
    width = tune_width(config)
    return [Run("tune", go, gi, width, TUNE_SEED, base_lr(config) * float(f), steps_for(config, width, n_train_points),
                optimizer=study_optimizer(config)) for (go, gi) in gamma_pairs(config) for f in config.sweep.tune_factors]


def best_rates(config: Config, tune_results: dict[Run, dict]) -> dict:
    """Per gamma pair, the tuning rate with the lowest validation MSE (diverged runs: +inf)."""
    best: dict = {}
    for run, res in tune_results.items():
        score = res.get("validation_mse", float("nan"))
        score = score if (score is not None and math.isfinite(score) and not res.get("diverged")) else math.inf
        if run.pair not in best or score < best[run.pair][0]:
            best[run.pair] = (score, run.lr)
    return {pair: lr for pair, (score, lr) in best.items()}

