"""The cost-accuracy front: which runs nothing else beats for less (pure functions on metric rows).

A *row* is a mapping with a cost (``les_seconds_per_model_time``: wall seconds per
unit model time) and the scalar metrics of `closure.evaluation.compare`. Run ``a``
*dominates* run ``b`` when ``a`` costs no more and is at least as good on every
metric of `METRICS` (``blowups`` included: a run that blew up is worse than one that
did not), and is strictly better in at least one of them (cost included). The
*front* (Pareto front) is the set of runs that no other run dominates.

Costs are wall times, which vary between runs of the same code (by ~20% on a shared
machine, docs/results.md). With a relative ``tolerance`` t the verdict also names the
*cost ties*: runs at least as good on every metric (strictly better on one, or
cheaper) whose cost is within a factor 1 + t of the model's, above or below it. Their
order on cost is within the timing noise, so the model's *standing* is then
``"cost tie"``, neither on the front nor dominated; ``"dominated"`` needs a run at
least as good everywhere that is cheaper by more than the factor (or equal in cost
and better on a metric), and ``"on the front"`` neither. With t = 0 the standing is
the plain Pareto verdict.

A non-finite metric counts as the worst value (a run that cannot be scored on a
metric is not "as good" on it); a non-finite cost as the highest. A run that blew
up (``blowups > 0``) is never on the front, whatever its scores on the window
before its blow-up.

    dominates(a, b) -> bool
    dominated_by(name, rows) -> [names that dominate rows[name]]
    front(rows) -> [names on the front]
    cheapest_as_good(row, ladder, metric) -> name of the cheapest ladder run at least as good on metric, or None
    verdict(name, models, ladder, tolerance) -> {"on_front", "standing", "cost_ties", "dominated_by", "as_good"}
"""

from __future__ import annotations

import math
from typing import Mapping, Optional

from closure.config import COST_TOLERANCE  # the default tolerance (costs of reruns varied by ~20%)

__all__ = ["METRICS", "COST", "COST_TOLERANCE", "STANDINGS", "dominates", "cost_ties", "dominated_by", "front",
           "cheapest_as_good", "verdict", "value", "at_least_as_good", "blew_up"]

# metric -> "min" (smaller is better) or "max" (larger is better)
METRICS: dict[str, str] = {
    "spectrum_error": "min",
    "pdf_distance": "min",
    "decorrelation_time": "max",
    "blowups": "min",
}
COST = "les_seconds_per_model_time"
STANDINGS = ("on the front", "cost tie", "dominated", "blew up")


def value(row: Mapping, key: str, sense: str = "min") -> float:
    """``row[key]`` as a float; missing or non-finite -> the worst value for ``sense``."""
    v = row.get(key)
    try:
        v = float(v)
    except (TypeError, ValueError):
        v = math.nan
    if math.isfinite(v):
        return v
    return math.inf if sense == "min" else -math.inf


def at_least_as_good(a: Mapping, b: Mapping, metric: str, sense: Optional[str] = None) -> bool:
    """True if run ``a`` is at least as good as run ``b`` on ``metric``."""
    sense = sense or METRICS[metric]
    va, vb = value(a, metric, sense), value(b, metric, sense)
    return va <= vb if sense == "min" else va >= vb


def _strictly_better(a: Mapping, b: Mapping, metric: str, sense: str) -> bool:
    va, vb = value(a, metric, sense), value(b, metric, sense)
    return va < vb if sense == "min" else va > vb


def _as_good_everywhere(a: Mapping, b: Mapping, metrics: Mapping[str, str], cost: str) -> bool:
    """``a`` at least as good as ``b`` on every metric and strictly better on one or cheaper."""
    if not all(at_least_as_good(a, b, m, s) for m, s in metrics.items()):
        return False
    return value(a, cost) < value(b, cost) or any(_strictly_better(a, b, m, s) for m, s in metrics.items())


def dominates(a: Mapping, b: Mapping, metrics: Mapping[str, str] = METRICS, cost: str = COST) -> bool:
    """``a`` costs no more than ``b``, is at least as good on every metric and strictly better somewhere."""
    return value(a, cost) <= value(b, cost) and _as_good_everywhere(a, b, metrics, cost)


def dominated_by(name: str, rows: Mapping[str, Mapping], metrics: Mapping[str, str] = METRICS,
                 cost: str = COST) -> list[str]:
    """The names of the rows that dominate ``rows[name]``, cheapest first."""
    me = rows[name]
    found = [other for other, row in rows.items() if other != name and dominates(row, me, metrics, cost)]
    return sorted(found, key=lambda other: value(rows[other], cost))


def cost_ties(name: str, rows: Mapping[str, Mapping], tolerance: float, metrics: Mapping[str, str] = METRICS,
              cost: str = COST) -> list[str]:
    """The runs that would dominate ``rows[name]`` but for a cost difference within a factor ``1 + tolerance``.

    A run ``a`` ties with ``b`` on cost when ``a`` is at least as good on every metric (strictly
    better on one, or cheaper) and ``cost(b) / (1 + tolerance) < cost(a) <= cost(b) (1 + tolerance)``,
    ``cost(a) != cost(b)``: with the timing noise either of them may come out cheaper. Cheapest first.
    """
    if tolerance < 0:
        raise ValueError(f"cost tolerance must be >= 0, got {tolerance}")
    me = rows[name]
    mine = value(me, cost)
    found = []
    for other, row in rows.items():
        theirs = value(row, cost)
        if other == name or theirs == mine or not _as_good_everywhere(row, me, metrics, cost):
            continue
        if math.isfinite(mine) and mine / (1 + tolerance) < theirs <= mine * (1 + tolerance):
            found.append(other)
    return sorted(found, key=lambda other: value(rows[other], cost))


def blew_up(row: Mapping) -> bool:
    """True if the run has a blow-up (a missing ``blowups`` counts as none)."""
    try:
        return float(row.get("blowups") or 0) > 0
    except (TypeError, ValueError):
        return True


def front(rows: Mapping[str, Mapping], metrics: Mapping[str, str] = METRICS, cost: str = COST) -> list[str]:
    """The names of the rows on the Pareto front (dominated by no other row, no blow-up), cheapest first."""
    names = [n for n in rows if not blew_up(rows[n]) and not dominated_by(n, rows, metrics, cost)]
    return sorted(names, key=lambda n: value(rows[n], cost))


def cheapest_as_good(row: Mapping, ladder: Mapping[str, Mapping], metric: str,
                     cost: str = COST) -> Optional[str]:
    """The cheapest ladder run at least as good as ``row`` on ``metric`` (None: no rung is)."""
    good = [n for n, r in ladder.items() if at_least_as_good(r, row, metric)]
    return min(good, key=lambda n: value(ladder[n], cost)) if good else None


def verdict(name: str, models: Mapping[str, Mapping], ladder: Mapping[str, Mapping],
            metrics: Mapping[str, str] = METRICS, cost: str = COST, tolerance: float = 0.0) -> dict:
    """Where model ``name`` stands against the ``ladder`` runs and the other ``models``.

    Returns ``{"on_front": bool, "blew_up": bool, "standing": one of STANDINGS,
    "dominated_by": [names], "cost_ties": [names], "cost_tolerance": tolerance,
    "as_good": {metric: ladder name or None}}``:
    ``on_front`` / ``dominated_by`` the plain Pareto verdict, ``cost_ties`` and ``standing``
    with the relative cost ``tolerance`` (module docstring).
    """
    rows = dict(ladder)
    rows.update(models)
    by = dominated_by(name, rows, metrics, cost)
    ties = cost_ties(name, rows, tolerance, metrics, cost) if tolerance > 0 else []
    broke = blew_up(models[name])
    as_good = {m: cheapest_as_good(models[name], ladder, m, cost) for m in metrics if m != "blowups"}
    if broke:
        standing = "blew up"
    elif [n for n in by if n not in ties]:
        standing = "dominated"
    elif ties:
        standing = "cost tie"
    else:
        standing = "on the front"
    return {"on_front": not by and not broke, "blew_up": broke, "standing": standing, "dominated_by": by,
            "cost_ties": ties, "cost_tolerance": float(tolerance), "as_good": as_good}
