"""The rate-transfer study: the best base rate per (parametrization, optimizer, width), bracketed.

For every cell (parametrization, optimizer, width N) the base rate is searched on a geometric
grid ``centre * lr_ratio^j`` with ``sweep.seeds`` seeds per rate. The first grid has
``sweep.lr_points`` rates around the centre (``sweep.lr_centers["PARAM/OPT"]``, else
``["OPT"]``, else ``sweep.lr`` / ``train.lr``). When every run of the cell has finished, the rate
with the lowest mean validation MSE over the seeds is the optimum (a rate where any seed
diverged scores +inf); if it lies at an edge of the grid, the grid is extended by one rate on
that side (at most ``sweep.bracket_steps`` times per side) and the cell waits for those runs.
A cell is *bracketed* when its optimum has a neighbour on both sides (each worse or diverged):
the optimum is then known to within a factor ``lr_ratio``.

The seeds of one cell are shared by all its rates (a rate curve is smooth in the rate) and
independent between cells.
"""

from __future__ import annotations

import math
from typing import Optional

from closure.config import Config
from closure.study.grid import Run, base_lr, steps_for
from closure.study.parametrization import parse


def rate(x: float) -> float:
    """A rate rounded to 6 significant digits (names and equality stay stable across resumes)."""
    return float(f"{x:.6g}")


def score(results: list[dict]) -> float:
    """Mean validation MSE over the seeds of one rate; +inf if any seed diverged or is non-finite."""
    values = []
    for res in results:
        v = res.get("validation_mse")
        if res.get("diverged") or v is None or not math.isfinite(v):
            return math.inf
        values.append(float(v))
    return sum(values) / len(values) if values else math.inf


class RateSearch:
    """The bracketed rate search of every cell; ``start()`` gives the first runs, ``record`` the next ones."""

    def __init__(self, config: Config, n_train_points: int):
        sw = config.sweep
        self.config = config
        self.ratio, self.seeds, self.limit = float(sw.lr_ratio), int(sw.seeds), int(sw.bracket_steps)
        self.cells: dict[tuple, dict] = {}
        for name in sw.parametrizations:
            family, go, gi = parse(name)
            for opt in sw.optimizers:
                centre = sw.lr_centers.get(f"{name}/{opt}", sw.lr_centers.get(opt, base_lr(config)))
                for width in sorted(int(w) for w in sw.widths):
                    proto = Run("transfer", go, gi, width, 0, 1.0, steps_for(config, width, n_train_points),
                                param=family, optimizer=opt)
                    first = [rate(centre * self.ratio ** (j - (sw.lr_points - 1) / 2)) for j in range(sw.lr_points)]
                    self.cells[proto.cell] = {"name": name, "proto": proto, "rates": sorted(first),
                                              "low": 0, "high": 0, "results": {}}

    def runs(self, cell: tuple, lr: float) -> list[Run]:
        proto = self.cells[cell]["proto"]
        return [Run(proto.kind, proto.gamma_outer, proto.gamma_inner, proto.width, s, lr, proto.steps,
                    param=proto.param, optimizer=proto.optimizer) for s in range(self.seeds)]

    def start(self) -> list[Run]:
        return [r for cell, c in self.cells.items() for lr in c["rates"] for r in self.runs(cell, lr)]

    def scores(self, cell: tuple) -> list[float]:
        c = self.cells[cell]
        return [score([c["results"][(lr, s)] for s in range(self.seeds) if (lr, s) in c["results"]])
                for lr in c["rates"]]

    def complete(self, cell: tuple) -> bool:
        c = self.cells[cell]
        return all((lr, s) in c["results"] for lr in c["rates"] for s in range(self.seeds))

    def record(self, run: Run, result: dict) -> list[Run]:
        """Store a finished run; when its cell is complete and its optimum at an edge, the next rate's runs."""
        c = self.cells[run.cell]
        c["results"][(run.lr, run.seed)] = result
        if not self.complete(run.cell):
            return []
        new = self.extension(run.cell)
        if new is None:
            return []
        c["rates"] = sorted(c["rates"] + [new])
        return self.runs(run.cell, new)

    def extension(self, cell: tuple) -> Optional[float]:
        """The rate to add to a complete cell, or None when it is bracketed or out of extensions."""
        c = self.cells[cell]
        s = self.scores(cell)
        best = self.best_index(cell)
        if (best == 0 or not math.isfinite(s[best])) and c["low"] < self.limit:
            c["low"] += 1
            return rate(c["rates"][0] / self.ratio)
        if best == len(s) - 1 and math.isfinite(s[best]) and c["high"] < self.limit:
            c["high"] += 1
            return rate(c["rates"][-1] * self.ratio)
        return None

    def best_index(self, cell: tuple) -> int:
        s = self.scores(cell)
        return min(range(len(s)), key=lambda i: (s[i], i))

    def optimum(self, cell: tuple) -> tuple[float, bool]:
        """(best rate, bracketed) of a complete cell."""
        c, s = self.cells[cell], self.scores(cell)
        i = self.best_index(cell)
        return c["rates"][i], (0 < i < len(s) - 1) and math.isfinite(s[i])
