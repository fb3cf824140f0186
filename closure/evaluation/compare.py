"""A-posteriori evaluation: LES runs against the filtered DNS they started from.

    evaluate(reference, runs, report_dir) -> dict      # {model name: metrics}

``reference`` is the filtered-DNS dataset, ``runs`` the LES files written by
`closure.les.coupled.run_les` (and the plain-solver ladder, `closure.les.ladder`).
Each run is matched with the reference by trajectory id and time (the LES saves at
the dataset's sample times).

The scoring window is common to all runs: the reference times that every run
has (a run longer than the dataset is evaluated where the reference exists), up
to the first snapshot at which any run has a non-finite value in any trajectory.
Every run is scored on the same snapshots, so a run that blows up early cannot
look good by being scored only near its initial condition; its blow-up is
reported apart (``blowups``, ``blowup_times``), and ``window_limited_by`` names
the runs that shortened the window (evaluate without them for the full window).

Metrics per model (definitions in `closure.evaluation.metrics`):

- ``spectrum_error``: time- and trajectory-averaged spectra over the window,
  mean ``|log10 E - log10 E_ref|`` over ``1 <= k <= k_les = n_les/2 - 1``;
  ``spectrum_error_low_k`` the same over ``k <= n_les/3`` (the modes the LES
  advects: its 2/3 rule), ``spectrum_error_high_k`` over ``n_les/3 < k < n_les/2``.
- ``pdf_distance``: Hellinger distance of the field's histograms (vorticity in
  2D, velocity in 1D) over the same snapshots, on common bins fixed by the
  reference (`closure.evaluation.metrics.pdf_edges`).
- ``decorrelation_time``: first time (since the start) at which the Pearson
  correlation with the reference falls below 0.95, averaged over trajectories;
  ``decorrelation_censored`` counts the trajectories that stayed above it for
  the whole window (their time is the window length).
- ``blowups``: the number of trajectories that went non-finite
  (``blowup_times`` lists them).
- ``similarity``: ``{metric: 1 - d(model) / d(none)}`` with ``d`` the spectrum
  error, the PDF distance and, for the decorrelation time, the time lost
  ``window - decorrelation_time`` (all "distances": 0 is perfect, so > 0 beats
  the no-closure LES and 1 is perfect). Null without a ``none`` run.
- ``time``, ``energy``, ``enstrophy``: the trajectory-mean series over the
  window (NaN -> null where every trajectory has blown up);
  ``correlation``: the trajectory-mean correlation series.
- ``cost_ratio``: LES wall time per unit model time over the DNS's
  (`closure.les.coupled`); ``speedup`` its inverse; plus the raw timings
  (``les_seconds_per_model_time``) and how they were taken (``timing``: device,
  torch threads, batch).
- ladder rungs carry ``ladder`` (``resolution``, ``factor``, ``start``); every
  other run gets ``front`` (per ladder start, `closure.evaluation.front.verdict`:
  on the front or not, the runs that dominate it, the cost ties within
  ``cost_tolerance`` and the ``standing`` they leave: on the front, cost tie,
  dominated or blew up; the cheapest rung at least as good on each metric) and
  ``dominated_by`` (the union over the starts).

Writes ``metrics.json``, ``metrics.csv``, ``reference.json`` (the filtered
DNS's series and spectrum), the figures and ``report.md`` (`closure.evaluation.report`).
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
from pathlib import Path
from typing import Optional, Sequence, Union

import numpy as np
import xarray as xr

from closure.data import dataset as ds_io
from closure.evaluation import front as F
from closure.evaluation import metrics as M
from closure.evaluation import spread
from closure.evaluation import report
from closure import storage
from closure.equations import equation_spec
from closure.errors import ClosureError

log = logging.getLogger("closure.evaluation.compare")

__all__ = ["evaluate", "compare", "load_run", "match_times", "SCALAR_KEYS", "standing", "ladder_runs"]

SCALAR_KEYS = ("spectrum_error", "pdf_distance", "decorrelation_time", "blowups")


def match_times(run_times: np.ndarray, ref_times: np.ndarray, tol: float = 1e-6) -> tuple[np.ndarray, np.ndarray]:
    """Index pairs ``(i_run, i_ref)`` of equal times (to ``tol`` relative to the sample interval)."""
    run_times, ref_times = np.asarray(run_times, float), np.asarray(ref_times, float)
    scale = float(np.min(np.diff(ref_times))) if ref_times.size > 1 else 1.0
    i_run, i_ref = [], []
    for i, t in enumerate(run_times):
        j = int(np.argmin(np.abs(ref_times - t)))
        if abs(ref_times[j] - t) <= tol * max(scale, 1e-12) + 1e-12:
            i_run.append(i)
            i_ref.append(j)
    return np.asarray(i_run, dtype=int), np.asarray(i_ref, dtype=int)


def load_run(path: Union[str, Path]) -> xr.Dataset:
    path = Path(path)
    if not path.is_file():
        raise ClosureError(f"{path}: LES file not found")
    try:
        ds = xr.open_dataset(path, engine="netcdf4")
    except (OSError, ValueError, RuntimeError) as exc:
        raise ClosureError(f"{path}: not a netCDF file ({exc.__class__.__name__})") from None
    if "model" not in ds.attrs:
        raise ClosureError(f"{path}: not an LES output of `closure les` (missing attribute 'model')")
    return ds_io.stack_components(ds_io.validate(ds, str(path)))


def _mean_series(values: np.ndarray) -> np.ndarray:
    """Mean over trajectories of (trajectory, time) ignoring NaN; NaN where all are NaN."""
    with np.errstate(invalid="ignore"):
        finite = np.isfinite(values)
        count = finite.sum(axis=0)
        total = np.where(finite, values, 0.0).sum(axis=0)
        return np.where(count > 0, total / np.maximum(count, 1), np.nan)


def compare(field: np.ndarray, ref: np.ndarray, times: np.ndarray, ndim: int, length: float,
            edges: np.ndarray) -> dict:
    """The metrics of one run ``field (trajectory, time, *grid)`` against ``ref`` of the same shape."""
    field = np.asarray(field, dtype=np.float64)
    ref = np.asarray(ref, dtype=np.float64)
    axes = M.field_axes(ndim)
    with np.errstate(invalid="ignore", over="ignore"):
        finite = np.all(np.isfinite(field), axis=axes)  # (trajectory, time)
    t_rel = times - times[0]
    window = float(t_rel[-1]) if t_rel.size else 0.0
    out: dict = {}
    if finite.any():
        E = M.energy_spectrum(field[finite], ndim, length).mean(axis=0)
        E_ref = M.energy_spectrum(ref[finite], ndim, length).mean(axis=0)
        out["spectrum_error"] = M.spectrum_error(E, E_ref)
        low = M.wavenumbers(field.shape[-1]) <= field.shape[-1] // 3
        out["spectrum_error_low_k"] = M.spectrum_error(E[low], E_ref[low])
        out["spectrum_error_high_k"] = M.spectrum_error(E[~low], E_ref[~low]) if (~low).any() else float("nan")
        out["pdf_distance"] = M.hellinger(M.histogram(field[finite], edges), M.histogram(ref[finite], edges))
        if ndim == 3:  # the PDF of the longitudinal velocity gradients (its skewness is the cascade's signature)
            g, g_ref = M.longitudinal_gradients(field[finite], length), M.longitudinal_gradients(ref[finite], length)
            g_edges = M.pdf_edges(g_ref)
            out["gradient_pdf_distance"] = M.hellinger(M.histogram(g, g_edges), M.histogram(g_ref, g_edges))
    else:
        E = np.full(field.shape[-1] // 2 - 1, np.nan)
        for key in ("spectrum_error", "spectrum_error_low_k", "spectrum_error_high_k", "pdf_distance"):
            out[key] = float("nan")
    corr = M.pearson(field, ref, ndim)
    corr = np.where(finite, corr, np.nan)
    t_d, censored = M.decorrelation_times(corr, t_rel)
    out["decorrelation_time"] = float(np.mean(t_d))
    out["decorrelation_censored"] = int(censored.sum())
    out["window"] = window
    out["spectrum"] = E
    with np.errstate(invalid="ignore", over="ignore"):
        out["energy"] = _mean_series(np.where(finite, M.energy(np.nan_to_num(field), ndim, length), np.nan))
        out["enstrophy"] = _mean_series(np.where(finite, M.enstrophy(np.nan_to_num(field), ndim, length), np.nan))
    out["correlation"] = _mean_series(corr)
    return out


def _jsonable(value):
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, np.ndarray)):
        return [_jsonable(v) for v in (value.tolist() if isinstance(value, np.ndarray) else value)]
    if isinstance(value, (np.floating, float)):
        v = float(value)
        return v if math.isfinite(v) else None
    if isinstance(value, np.integer):
        return int(value)
    return value


def _unique_name(name: str, taken: set, path: Path) -> str:
    if name not in taken:
        return name
    candidate = path.stem
    k = 2
    while candidate in taken:
        candidate = f"{path.stem}-{k}"
        k += 1
    return candidate


def _finite_reference_window(ref_var, i_run, i_ref, ref_times, reference):
    """Cut the window where the reference stops being finite (a damaged reference): the leading finite run."""
    values = np.asarray(ref_var.isel(time=i_ref).values)
    with np.errstate(invalid="ignore"):
        ok = np.all(np.isfinite(values), axis=tuple(k for k in range(values.ndim) if k != 1))
    if ok.all():
        return i_run, i_ref
    keep = int(np.argmin(ok))  # the first non-finite snapshot
    if keep < 2:
        raise ClosureError(f"{reference}: the reference is non-finite at t = {ref_times[i_ref[keep]]:.6g}; "
                           "fewer than two finite snapshots to compare")
    log.warning("%s: the reference is non-finite from t = %.6g on; the comparison window ends there",
                reference, ref_times[i_ref[keep]])
    return i_run[:keep], i_ref[:keep]


_IDENTITY_SECTIONS = ("seed", "system", "initial", "dns", "les")


def _check_reference(path, ds, reference, ref_ds, identity: str) -> None:
    """Refuse an LES file that was run from another dataset than ``reference`` (another seed, physics, grid).

    Files of `closure les` carry ``reference_identity``; for older ones the sections of
    the stored configs that determine the initial fields are compared.
    """
    stored = ds.attrs.get("reference_identity")
    if stored is not None:
        if str(stored) != identity:
            raise ClosureError(f"{path}: was run from another dataset (identity {str(stored)[:20]}) than the "
                               f"reference {reference} ({identity}); evaluate it against its own reference")
        return
    try:
        mine, theirs = ds_io.dataset_config(ds).model_dump(), ds_io.dataset_config(ref_ds).model_dump()
    except ClosureError:
        return  # no stored config: nothing to compare (the schema checks still apply)
    for section in _IDENTITY_SECTIONS:
        a, b = mine.get(section), theirs.get(section)
        if section == "dns":
            a, b = ({k: v for k, v in (d or {}).items() if k != "batch_size"} for d in (a, b))
        if a != b:
            raise ClosureError(f"{path}: was run from another dataset than the reference {reference} "
                               f"(its {section} section differs); evaluate it against its own reference")


def evaluate(reference: Union[str, Path], runs: Sequence[Union[str, Path]], report_dir: Union[str, Path],
             figures: bool = True, cost_tolerance: float = F.COST_TOLERANCE) -> dict:
    """Compare each LES run with the filtered DNS ``reference``; write the report; return the metrics.

    ``cost_tolerance``: relative cost differences within which the front verdicts call two
    runs a cost tie (`closure.evaluation.front`).
    """
    if not runs:
        raise ClosureError("evaluate: no LES files given")
    report_dir = Path(report_dir)
    ref_ds = ds_io.open_dataset(reference)
    equation = ref_ds.attrs["equation"]
    var = ds_io.field_name(equation)
    ndim = equation_spec(equation).ndim
    length = float(ref_ds.attrs["length"])
    ref_times = np.asarray(ref_ds["time"].values, dtype=np.float64)
    ref_ids = [int(i) for i in np.asarray(ref_ds["trajectory"].values)]

    identity = ds_io.dataset_identity(ref_ds)
    loaded = []
    for path in runs:
        ds = load_run(path)
        _check_reference(path, ds, reference, ref_ds, identity)
        if ds.attrs["equation"] != equation or int(ds.attrs["les_resolution"]) != int(ref_ds.attrs["les_resolution"]):
            raise ClosureError(f"{path}: LES of {ds.attrs['equation']} at {ds.attrs['les_resolution']} points does not "
                               f"match the reference ({equation} at {ref_ds.attrs['les_resolution']})")
        ids = [int(i) for i in np.asarray(ds["trajectory"].values)]
        missing = [i for i in ids if i not in ref_ids]
        if missing:
            raise ClosureError(f"{path}: trajectories {missing} are not in the reference {reference}")
        i_run, i_ref = match_times(ds["time"].values, ref_times)
        if i_run.size < 2:
            raise ClosureError(f"{path}: fewer than two of its snapshot times coincide with the reference's")
        i_run, i_ref = _finite_reference_window(ref_ds[var].sel(trajectory=ids), i_run, i_ref, ref_times, reference)
        loaded.append((Path(path), ds, ids, i_run, i_ref))

    # the common window: reference times every run has, up to the first non-finite snapshot of any run
    common = sorted(set.intersection(*[set(int(j) for j in i_ref) for *_, i_ref in loaded]))
    if len(common) < 2:
        raise ClosureError(f"evaluate: the runs share fewer than two snapshot times with each other and "
                           f"the reference {reference}")
    fields, end, limited_by = [], len(common), []
    for path, ds, ids, i_run, i_ref in loaded:
        position = {int(j): int(i) for i, j in zip(i_run, i_ref)}
        field = np.asarray(ds[var].isel(time=[position[j] for j in common]).values)
        with np.errstate(invalid="ignore", over="ignore"):
            finite = np.all(np.isfinite(field.reshape(field.shape[:2] + (-1,))), axis=(0, 2))  # per time
        first_bad = int(np.argmin(finite)) if not finite.all() else len(common)
        fields.append(field)
        if first_bad < end:
            end, limited_by = first_bad, [str(ds.attrs["model"])]
        elif first_bad == end and first_bad < len(common):
            limited_by.append(str(ds.attrs["model"]))
    end = max(end, 1)
    window_ref = common[:end]

    # common PDF bins from the reference over every trajectory and time of the window
    all_ids = sorted({i for _, _, ids, _, _ in loaded for i in ids})
    ref_sample = np.asarray(ref_ds[var].sel(trajectory=all_ids).isel(time=window_ref).values)
    edges = M.pdf_edges(ref_sample)
    run_span = [float(ref_times[common[0]]), float(ref_times[common[-1]])]

    results: dict = {}
    extras: dict = {}
    reference_series: dict = {}
    taken: set = set()
    for (path, ds, ids, i_run, i_ref), full in zip(loaded, fields):
        name = _unique_name(str(ds.attrs["model"]), taken, path)
        taken.add(name)
        field = full[:, :end]
        ref = np.asarray(ref_ds[var].sel(trajectory=ids).isel(time=window_ref).values)
        times = ref_times[window_ref]
        m = compare(field, ref, times, ndim, length, edges)
        blow = np.asarray(ds["blowup_time"].values) if "blowup_time" in ds else np.full(len(ids), np.nan)
        blowups = [{"trajectory": ids[k], "time": float(blow[k])} for k in range(len(ids)) if np.isfinite(blow[k])]
        # a trajectory that went non-finite without a recorded time (e.g. written by other tools)
        with np.errstate(invalid="ignore"):
            nonfinite = ~np.all(np.isfinite(full), axis=tuple(range(1, full.ndim)))
        for k in np.nonzero(nonfinite)[0]:
            if not np.isfinite(blow[k]):
                blowups.append({"trajectory": ids[k], "time": None})
        cost = float(ds.attrs.get("cost_ratio", float("nan")))
        results[name] = {
            "spectrum_error": m["spectrum_error"],
            "spectrum_error_low_k": m["spectrum_error_low_k"],
            "spectrum_error_high_k": m["spectrum_error_high_k"],
            "pdf_distance": m["pdf_distance"],
            "decorrelation_time": m["decorrelation_time"],
            **({"gradient_pdf_distance": m.get("gradient_pdf_distance")} if ndim == 3 else {}),
            "blowups": len(blowups),
            "similarity": None,
            "cost_ratio": cost,
            "speedup": (1.0 / cost) if cost and math.isfinite(cost) and cost > 0 else None,
            "les_seconds_per_model_time": float(ds.attrs.get("les_seconds_per_model_time", float("nan"))),
            "dns_seconds_per_model_time": float(ds.attrs.get("dns_seconds_per_model_time", float("nan"))),
            "les_ms_per_step": float(ds.attrs.get("les_ms_per_step", float("nan"))),
            "dt": _float_or_none(ds.attrs.get("dt")),
            "cfl": _float_or_none(ds.attrs.get("cfl")),
            "timing": {"device": ds.attrs.get("device"), "torch_threads": _int_or_none(ds.attrs.get("torch_threads")),
                       "batch": _int_or_none(ds.attrs.get("batch", len(ids)))},
            "decorrelation_censored": m["decorrelation_censored"],
            "blowup_times": blowups,
            "trajectories": ids,
            "window": [float(times[0]), float(times[-1])],
            "run_window": run_span,
            "window_limited_by": sorted(set(limited_by)),
            "time": times,
            "energy": m["energy"],
            "enstrophy": m["enstrophy"],
            "correlation": m["correlation"],
            "file": str(path),
        }
        if ds.attrs.get("seed_group"):
            results[name]["seed_group"] = str(ds.attrs["seed_group"])
            results[name]["train_seed"] = _int_or_none(ds.attrs.get("train_seed"))
        if "ladder_resolution" in ds.attrs:
            results[name]["ladder"] = {"resolution": int(ds.attrs["ladder_resolution"]),
                                       "factor": float(ds.attrs["ladder_factor"]),
                                       "start": str(ds.attrs["ladder_start"])}
        extras[name] = {"spectrum": m["spectrum"], "field": field, "ref": ref, "times": times, "ids": ids,
                        "window": m["window"]}
        key = tuple(ids), tuple(window_ref)
        if key not in reference_series:
            with np.errstate(invalid="ignore"):
                reference_series[key] = {
                    "trajectories": ids, "time": times,
                    "energy": _mean_series(M.energy(ref, ndim, length)),
                    "enstrophy": _mean_series(M.enstrophy(ref, ndim, length)),
                    "spectrum": M.energy_spectrum(ref.reshape((-1,) + ref.shape[2:]), ndim, length).mean(axis=0),
                }
        ds.close()

    # similarity against the no-closure LES
    base = results.get("none")
    for name, r in results.items():
        if base is None:
            r["similarity"] = None
            continue
        lost = lambda res, ex: ex["window"] - res["decorrelation_time"]  # noqa: E731
        r["similarity"] = {
            "spectrum_error": M.similarity(r["spectrum_error"], base["spectrum_error"]),
            "pdf_distance": M.similarity(r["pdf_distance"], base["pdf_distance"]),
            **({"gradient_pdf_distance": M.similarity(r["gradient_pdf_distance"], base["gradient_pdf_distance"])}
               if ndim == 3 else {}),
            "decorrelation_time": M.similarity(lost(r, extras[name]), lost(base, extras["none"])),
        }

    results = spread.aggregate(results)
    standing(results, cost_tolerance)
    report_dir.mkdir(parents=True, exist_ok=True)
    reference_info = {
        "file": str(reference),
        "equation": equation,
        "les_resolution": int(ref_ds.attrs["les_resolution"]),
        "dns_resolution": int(ref_ds.attrs["dns_resolution"]),
        "k": M.wavenumbers(int(ref_ds.attrs["les_resolution"])),
        "series": list(reference_series.values()),
        "pdf_edges": edges[1:-1],
        "pdf": M.histogram(ref_sample, edges)[1:-1],
    }
    _write_json(report_dir / "metrics.json", results)
    _write_json(report_dir / "reference.json", reference_info)
    _write_csv(report_dir / "metrics.csv", results)
    if figures:
        report.write_report(report_dir, results, extras, reference_info, edges, ref_ds.attrs, ndim, length)
    ref_ds.close()
    return _jsonable(results)


def _float_or_none(v):
    try:
        v = float(v)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


def _int_or_none(v):
    try:
        return int(v)
    except (TypeError, ValueError):
        return None


def ladder_runs(results: dict, start: Optional[str] = None) -> dict:
    """The plain-solver ladder entries of ``results`` (of one ``start``, or all), by name."""
    return {n: r for n, r in results.items() if "ladder" in r and (start is None or r["ladder"]["start"] == start)}


def standing(results: dict, cost_tolerance: float = 0.0) -> None:
    """Add the front verdicts to every model of ``results`` (in place; `closure.evaluation.front`).

    Each model (every run that is not a ladder rung) gets ``front``: for each ladder start, the
    `closure.evaluation.front.verdict` against that start's rungs and the other models; and
    ``dominated_by``: every run that dominates it against either ladder (empty: on the front).
    The models are the baselines, single runs and the seed groups' means (`closure.evaluation.spread`);
    a seed of a group is judged on its own against the ladder and the models other than its group.
    ``cost_tolerance``: the relative cost tolerance of the verdicts' ``standing`` and ``cost_ties``.
    """
    models = {n: r for n, r in results.items() if "ladder" not in r and "seed_of" not in r}
    starts = sorted({r["ladder"]["start"] for r in ladder_runs(results).values()}, key=_start_order)
    for name, r in results.items():
        if "ladder" in r:
            continue
        rivals = models if "seed_of" not in r else {n: m for n, m in models.items() if n != r["seed_of"]}
        rivals = dict(rivals, **{name: r})
        r["front"] = {s: F.verdict(name, rivals, ladder_runs(results, s), tolerance=cost_tolerance) for s in starts}
        if not starts:
            r["front"] = {"none": F.verdict(name, rivals, {}, tolerance=cost_tolerance)}
        by = [n for v in r["front"].values() for n in v["dominated_by"]]
        r["dominated_by"] = sorted(set(by), key=lambda n: F.value(results[n], F.COST))


def _start_order(start: str) -> tuple:
    return (0 if start == "dns" else 1, start)


def _write_json(path: Path, obj) -> None:
    storage.write_json(path, _jsonable(obj), indent=1, allow_nan=False)


def _write_csv(path: Path, results: dict) -> None:
    cols = ["model", "spectrum_error", "pdf_distance", "decorrelation_time", "blowups",
            "similarity_spectrum_error", "similarity_pdf_distance", "similarity_decorrelation_time",
            "cost_ratio", "speedup", "les_ms_per_step", "spectrum_error_low_k", "spectrum_error_high_k",
            "les_seconds_per_model_time", "dominated_by"]
    buffer = io.StringIO(newline="")
    w = csv.writer(buffer)
    w.writerow(cols)
    for name, r in results.items():
        sim = r["similarity"] or {}
        row = [name, r["spectrum_error"], r["pdf_distance"], r["decorrelation_time"], r["blowups"],
               sim.get("spectrum_error"), sim.get("pdf_distance"), sim.get("decorrelation_time"),
               r["cost_ratio"], r["speedup"], r["les_ms_per_step"], r["spectrum_error_low_k"],
               r["spectrum_error_high_k"], r["les_seconds_per_model_time"], " ".join(r.get("dominated_by", []))]
        w.writerow(["" if v is None else (f"{v:.6g}" if isinstance(v, float) else v) for v in row])
    storage.write_text(path, buffer.getvalue(), newline="")
