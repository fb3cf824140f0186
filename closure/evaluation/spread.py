"""Several training seeds of one model: the mean and the spread of every metric.

The pipeline trains ``train.seeds`` models that differ only in their training seed
(initialization and sample order) and marks their LES files with the attributes
``seed_group`` (the model's name, e.g. ``learned``) and ``train_seed``. A seed's result
is one draw from the training procedure, so a claim about the procedure rests on the
group: `aggregate` adds, for each group of at least two runs, an entry named after the
group holding

- each scalar metric of `SCALARS`: the mean over the seeds (``blowups``: the total);
- ``spread``: per metric ``{"std", "min", "max"}`` (std with ``ddof = 1``);
- ``members``: the seeds' entry names, ``seeds``: their training seeds;
- ``similarity``: the mean of the members' similarities.

The members stay in the results (marked ``seed_of``); the aggregate is the model that
`closure.evaluation.compare.standing` places on the cost-accuracy front.
"""

from __future__ import annotations

import math
from typing import Optional

import numpy as np

__all__ = ["SCALARS", "aggregate", "mean_and_spread"]

SCALARS = ("spectrum_error", "spectrum_error_low_k", "spectrum_error_high_k", "pdf_distance",
           "decorrelation_time", "les_seconds_per_model_time", "cost_ratio", "les_ms_per_step")


def _floats(values) -> np.ndarray:
    return np.asarray([math.nan if v is None else float(v) for v in values], dtype=float)


def mean_and_spread(values) -> tuple[float, dict]:
    """``(mean, {"std", "min", "max"})`` of the values (NaN propagates: a seed that cannot be scored shows)."""
    x = _floats(values)
    if x.size == 0:
        return math.nan, {"std": math.nan, "min": math.nan, "max": math.nan}
    std = float(np.std(x, ddof=1)) if x.size > 1 else 0.0
    return float(np.mean(x)), {"std": std, "min": float(np.min(x)), "max": float(np.max(x))}


def _mean_similarity(members: list) -> Optional[dict]:
    sims = [m.get("similarity") for m in members]
    if any(s is None for s in sims):
        return None
    keys = sims[0].keys()
    out = {}
    for k in keys:
        vals = [s.get(k) for s in sims]
        out[k] = None if any(v is None for v in vals) else float(np.mean(_floats(vals)))
    return out


def aggregate(results: dict) -> dict:
    """``results`` with one entry per seed group inserted before its first member (a new dict)."""
    groups: dict = {}
    for name, r in results.items():
        group = r.get("seed_group")
        if group:
            groups.setdefault(group, []).append(name)
    groups = {g: names for g, names in groups.items() if len(names) >= 2}
    if not groups:
        return results
    out: dict = {}
    done = set()
    for name, r in results.items():
        group = r.get("seed_group")
        if group in groups and group not in done:
            label = group if group not in results else f"{group} (mean)"
            out[label] = _group_entry(groups[group], results)
            done.add(group)
        if group in groups:
            r["seed_of"] = group if group not in results else f"{group} (mean)"
        out[name] = r
    return out


def _group_entry(names: list, results: dict) -> dict:
    members = [results[n] for n in names]
    entry: dict = {"members": list(names), "seeds": [m.get("train_seed") for m in members], "spread": {}}
    for key in SCALARS:
        mean, spread = mean_and_spread([m.get(key) for m in members])
        entry[key] = mean
        entry["spread"][key] = spread
    blowups = [int(m.get("blowups") or 0) for m in members]
    entry["blowups"] = int(sum(blowups))
    entry["spread"]["blowups"] = {"std": float(np.std(blowups, ddof=1)), "min": min(blowups), "max": max(blowups)}
    entry["similarity"] = _mean_similarity(members)
    first = members[0]
    for key in ("trajectories", "window", "run_window", "window_limited_by", "timing", "blowup_times",
                "decorrelation_censored"):
        if key in first:
            entry[key] = first[key] if key != "blowup_times" else [b for m in members for b in m.get(key, [])]
    entry["speedup"] = (1.0 / entry["cost_ratio"]) if entry["cost_ratio"] and math.isfinite(entry["cost_ratio"]) \
        and entry["cost_ratio"] > 0 else None
    return entry
