"""Figures and the Markdown report of an a-posteriori evaluation (`closure.evaluation.compare`).

Figures (PNG, 150 dpi) in the report directory:

- ``spectra.png``: time-averaged energy spectra of every model and of the
  filtered DNS on log-log axes up to the LES cutoff (dashed: the LES
  dealiasing cutoff n/3, above which the LES has no resolved advection);
- ``pdf.png``: PDFs of the field on the common bins, log y axis;
- ``series.png``: energy and enstrophy against time;
- ``correlation.png``: correlation with the filtered DNS against time (0.95 line);
- ``snapshots.png``: side-by-side fields of the filtered DNS and every model
  at a few times (first test trajectory), one shared, symmetric colour scale
  (1D: the velocity profiles).

- ``front.png`` (when the runs include the plain-solver ladder, `closure.les.ladder`):
  the cost-accuracy plane, one panel per metric, x = wall seconds per unit model
  time (log scale); each ladder start is a line through its rungs (labelled by
  their grid size), each model a point.

``report.md`` shows the table of metrics, how the runs were timed, the blow-ups,
the front table (per model and ladder start: the cheapest rung at least as good
on each metric, and whether the model is on the front or which runs dominate it;
`closure.evaluation.front`) and the figures.
"""

from __future__ import annotations

import json
import math
import platform
from pathlib import Path
from typing import Optional

import numpy as np

from closure import storage
from closure.evaluation import metrics as M

__all__ = ["write_report", "FIGURES", "table", "front_table", "standing_text", "verdict_line", "verdict_lines",
           "timing_text", "FRONT_METRICS"]

FIGURES = ("spectra.png", "pdf.png", "series.png", "correlation.png", "snapshots.png")
FRONT_FIGURE = "front.png"
FRONT_METRICS = (("spectrum_error", "spectrum error"), ("pdf_distance", "PDF distance"),
                 ("decorrelation_time", "decorrelation time"))
_START_WORDS = {"dns": "DNS start", "filtered": "filtered start"}
_START_STYLE = {"dns": dict(color="black", ls="-", marker="o"), "filtered": dict(color="dimgray", ls="--", marker="s")}
_REF_STYLE = dict(color="black", lw=2.2, label="filtered DNS")


def _plt():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _colors(names):
    plt = _plt()
    cmap = plt.get_cmap("tab10")
    return {name: cmap(i % 10) for i, name in enumerate(names)}


def _fmt(v, digits=3):
    if v is None:
        return "-"
    if isinstance(v, float):
        if not math.isfinite(v):
            return "nan" if math.isnan(v) else ("inf" if v > 0 else "-inf")
        return f"{v:.{digits}g}"
    return str(v)


def _spectra(path, results, extras, reference, colors, ndim):
    plt = _plt()
    k = np.asarray(reference["k"])
    fig, ax = plt.subplots(figsize=(5.5, 4.2))
    ax.loglog(k, np.asarray(reference["series"][0]["spectrum"]), **_REF_STYLE)
    for name in results:
        E = np.asarray(extras[name]["spectrum"])
        if np.all(np.isfinite(E)):
            ax.loglog(k, E, color=colors[name], lw=1.4, label=name)
    n = reference["les_resolution"]
    ax.axvline(n // 3, color="gray", ls="--", lw=0.8)
    ax.set_xlabel("wavenumber k")
    ax.set_ylabel("E(k)")
    ax.set_title("time-averaged energy spectrum")
    ax.legend(fontsize=8)
    ax.grid(True, which="both", alpha=0.2)
    fig.tight_layout()
    storage.save_figure(fig, path, dpi=150)
    plt.close(fig)


def _pdf(path, results, extras, reference, edges, colors, ndim):
    plt = _plt()
    inner = edges[1:-1]
    centers = 0.5 * (inner[1:] + inner[:-1])
    width = np.diff(inner)
    fig, ax = plt.subplots(figsize=(5.5, 4.2))
    ref_p = np.asarray(reference["pdf"]) / width
    ax.semilogy(centers, np.where(ref_p > 0, ref_p, np.nan), **_REF_STYLE)
    for name in results:
        f = extras[name]["field"]
        p = M.histogram(f, edges)[1:-1] / width
        ax.semilogy(centers, np.where(p > 0, p, np.nan), color=colors[name], lw=1.4, label=name)
    ax.set_xlabel("vorticity" if ndim == 2 else ("velocity (all components)" if ndim == 3 else "velocity"))
    ax.set_ylabel("probability density")
    ax.set_title("PDF over the run window")
    ax.legend(fontsize=8)
    fig.tight_layout()
    storage.save_figure(fig, path, dpi=150)
    plt.close(fig)


def _series(path, results, reference, colors, ndim):
    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    ref = reference["series"][0]
    for ax, key, label in zip(axes, ("energy", "enstrophy"),
                              ("energy", "enstrophy" if ndim >= 2 else "<u_x^2>/2")):
        ax.plot(ref["time"], ref[key], **_REF_STYLE)
        for name, r in results.items():
            ax.plot(r["time"], np.asarray(r[key], dtype=float), color=colors[name], lw=1.3, label=name)
        ax.set_xlabel("time")
        ax.set_ylabel(label)
        ax.grid(alpha=0.2)
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    storage.save_figure(fig, path, dpi=150)
    plt.close(fig)


def _correlation(path, results, colors):
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    for name, r in results.items():
        t = np.asarray(r["time"]) - r["time"][0]
        ax.plot(t, np.asarray(r["correlation"], dtype=float), color=colors[name], lw=1.4, label=name)
    ax.axhline(0.95, color="gray", ls="--", lw=0.8)
    ax.set_xlabel("time since the initial condition")
    ax.set_ylabel("correlation with filtered DNS")
    ax.set_ylim(top=1.02)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.2)
    fig.tight_layout()
    storage.save_figure(fig, path, dpi=150)
    plt.close(fig)


def _snapshots(path, results, extras, ndim, length, n_times=4):
    plt = _plt()
    names = list(results)
    first = extras[names[0]]
    times = first["times"]
    picks = np.unique(np.linspace(0, len(times) - 1, n_times).round().astype(int))
    ref = first["ref"][0]  # first test trajectory
    if ndim == 3:  # the x velocity on the plane z = 0
        ref = ref[:, 0, 0]
        extras = {name: dict(extras[name], field=extras[name]["field"][:, :, 0, 0]) for name in names}
    if ndim == 1:
        fig, axes = plt.subplots(1, len(picks), figsize=(3.4 * len(picks), 3.0), sharey=True, squeeze=False)
        x = np.arange(ref.shape[-1]) * length / ref.shape[-1]
        colors = _colors(names)
        for j, ti in enumerate(picks):
            ax = axes[0, j]
            ax.plot(x, ref[ti], color="black", lw=2, label="filtered DNS")
            for name in names:
                ax.plot(x, extras[name]["field"][0, ti], color=colors[name], lw=1.1, label=name)
            ax.set_title(f"t = {times[ti]:.3g}")
            ax.set_xlabel("x")
        axes[0, 0].legend(fontsize=7)
        fig.tight_layout()
        storage.save_figure(fig, path, dpi=150)
        plt.close(fig)
        return
    rows = ["filtered DNS"] + names
    vmax = float(np.nanmax(np.abs(ref[picks]))) or 1.0
    fig, axes = plt.subplots(len(rows), len(picks), figsize=(2.3 * len(picks) + 0.8, 2.3 * len(rows)),
                             squeeze=False)
    image = None
    for i, row in enumerate(rows):
        data = ref if i == 0 else extras[row]["field"][0]
        for j, ti in enumerate(picks):
            ax = axes[i, j]
            image = ax.imshow(data[ti], origin="lower", cmap="RdBu_r", vmin=-vmax, vmax=vmax,
                              extent=(0, length, 0, length), interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                ax.set_title(f"t = {times[ti]:.3g}", fontsize=9)
            if j == 0:
                ax.set_ylabel(row, fontsize=9)
    fig.subplots_adjust(right=0.86, wspace=0.05, hspace=0.08)
    cax = fig.add_axes([0.89, 0.15, 0.025, 0.7])
    fig.colorbar(image, cax=cax, label="x velocity on z = 0" if ndim == 3 else "vorticity")
    storage.save_figure(fig, path, dpi=150)
    plt.close(fig)


def _ladder_rungs(results: dict, start=None) -> dict:
    return {n: r for n, r in results.items() if "ladder" in r and (start is None or r["ladder"]["start"] == start)}


def _models(results: dict) -> dict:
    return {n: r for n, r in results.items() if "ladder" not in r}


def _front_models(results: dict) -> dict:
    """The models judged on the front: baselines, single runs and seed groups (not their seeds)."""
    return {n: r for n, r in results.items() if "ladder" not in r and "seed_of" not in r}


def _cell(r: dict, key: str) -> str:
    """A metric, as ``mean ± std (min..max)`` for a seed group."""
    spread = (r.get("spread") or {}).get(key)
    if spread is None:
        return _fmt(r.get(key))
    return f"{_fmt(r.get(key))} ± {_fmt(spread['std'], 2)}"


def _starts(results: dict) -> list:
    starts = {r["ladder"]["start"] for r in _ladder_rungs(results).values()}
    return sorted(starts, key=lambda s: (s != "dns", s))


def table(results: dict) -> str:
    """The Markdown table of the scalar metrics (models first, then the ladder rungs)."""
    head = ("| run | s / model time | step (CFL) | spectrum error (k <= n/3 / above) | PDF distance | "
            "decorrelation time | blow-ups | similarity (spectrum / PDF / decorrelation) | cost vs DNS |\n"
            "|---|---|---|---|---|---|---|---|---|\n")
    lines = []
    ordered = list(_models(results)) + sorted(_ladder_rungs(results), key=lambda n: (
        results[n]["ladder"]["start"] != "dns", results[n]["ladder"]["resolution"]))
    for name in ordered:
        r = results[name]
        sim = r.get("similarity") or {}
        sims = " / ".join(_fmt(sim.get(k)) for k in ("spectrum_error", "pdf_distance", "decorrelation_time")) \
            if sim else "-"
        censored = r.get("decorrelation_censored", 0) if "members" not in r else 0
        dec = _cell(r, "decorrelation_time") + (f" ({censored} never)" if censored else "")
        spec = (f"{_cell(r, 'spectrum_error')} ({_cell(r, 'spectrum_error_low_k')} / "
                f"{_cell(r, 'spectrum_error_high_k')})")
        label = name
        if "ladder" in r:
            label = f"{name} ({_START_WORDS.get(r['ladder']['start'], r['ladder']['start'])})"
        elif "members" in r:
            label = f"**{name}** (mean ± std of {len(r['members'])} seeds)"
        elif "seed_of" in r:
            label = f"&nbsp;&nbsp;{name} (seed {r.get('train_seed')})"
        step = "-" if r.get("dt") is None else f"{r['dt']:.3g}" + ("" if r.get("cfl") is None else f" ({r['cfl']:.2g})")
        lines.append(f"| {label} | {_cell(r, 'les_seconds_per_model_time')} | {step} | {spec} | "
                     f"{_cell(r, 'pdf_distance')} | {dec} | {r['blowups']} | {sims} | {_fmt(r.get('cost_ratio'))} |")
    return head + "\n".join(lines) + "\n"


def _rung_cell(name, results) -> str:
    if name is None:
        return "no rung"
    return f"{name} ({_fmt(results[name].get('les_seconds_per_model_time'))} s)"


def standing_text(v: dict) -> str:
    """A front verdict (`closure.evaluation.front.verdict`) in words."""
    standing = _standing_of(v)
    if standing == "blew up":
        return "not on the front (blew up)"
    ties = v.get("cost_ties") or []
    tolerance = v.get("cost_tolerance", 0.0)
    tie_words = (f"a cost tie with {', '.join(ties)} (at least as good on every metric, cost within a factor "
                 f"{1 + tolerance:g})")
    if standing == "cost tie":
        return "not decided: " + tie_words
    if standing == "on the front":
        return "on the front"
    by = [n for n in v["dominated_by"] if n not in ties]
    return "dominated by " + ", ".join(by[:3]) + (f" and {len(by) - 3} more" if len(by) > 3 else "")


def verdict_line(name: str, r: dict, results: dict) -> str:
    """One line per model: where it stands on the cost-accuracy front, per ladder start."""
    parts = []
    for start, v in (r.get("front") or {}).items():
        where = f"against the {_START_WORDS[start]} ladder" if start in _START_WORDS else "(no ladder)"
        parts.append(f"{standing_text(v)} {where}")
    cost = _fmt(r.get("les_seconds_per_model_time"))
    line = f"{name} ({cost} s / model time): " + "; ".join(parts)
    members = [results[m] for m in r.get("members", []) if m in results]
    if members:
        on = [sum(1 for m in members if _standing(m, start) == "on the front") for start in (r.get("front") or {})]
        tied = [sum(1 for m in members if _standing(m, start) == "cost tie") for start in (r.get("front") or {})]
        line += (f" [{len(members)} seeds; on the front: " + " / ".join(f"{k} of {len(members)}" for k in on)
                 + (("; cost ties: " + " / ".join(f"{k} of {len(members)}" for k in tied)) if any(tied) else "") + "]")
    return line


def _tolerance(results: dict) -> float:
    for r in results.values():
        for v in (r.get("front") or {}).values() if isinstance(r, dict) else ():
            return float(v.get("cost_tolerance", 0.0))
    return 0.0


def _standing_of(v: dict) -> str:
    """A verdict's standing (one of `closure.evaluation.front.STANDINGS`); for a verdict written
    without one, its plain Pareto verdict."""
    if v.get("standing"):
        return v["standing"]
    return "blew up" if v.get("blew_up") else "on the front" if v.get("on_front") else "dominated"


def _standing(row: dict, start: str) -> Optional[str]:
    v = (row.get("front") or {}).get(start)
    return _standing_of(v) if v else None


def verdict_lines(results: dict) -> list:
    """`verdict_line` of every model (not the ladder rungs) of a metrics mapping."""
    return [verdict_line(n, r, results) for n, r in _front_models(results).items() if isinstance(r, dict)]


def front_table(results: dict) -> str:
    """Per model and ladder start: the cheapest rung at least as good on each metric, and the verdict."""
    head = ("| model | ladder | s / model time | " + " | ".join(f"as good on {label}" for _, label in FRONT_METRICS)
            + " | verdict |\n|" + "---|" * (4 + len(FRONT_METRICS)) + "\n")
    lines = []
    for name, r in _front_models(results).items():
        for start, v in (r.get("front") or {}).items():
            cells = [_rung_cell(v["as_good"].get(m), results) for m, _ in FRONT_METRICS]
            verdict = standing_text(v)
            verdict = "**on the front**" if verdict == "on the front" else verdict
            lines.append(f"| {name} | {_START_WORDS.get(start, start)} | {_fmt(r.get('les_seconds_per_model_time'))} | "
                         + " | ".join(cells) + f" | {verdict} |")
    return head + "\n".join(lines) + "\n"


def timing_text(results: dict) -> str:
    """How the runs were timed (and a warning when they were not timed alike)."""
    setups = {}
    for name, r in results.items():
        t = r.get("timing") or {}
        key = (t.get("device"), t.get("torch_threads"), t.get("batch"))
        setups.setdefault(key, []).append(name)
    text = ("Cost: wall-clock seconds of the time stepping per unit model time for the whole batch of test "
            "trajectories (one untimed warm-up step first; I/O, set-up and the coarse-graining of the ladder's "
            "snapshots excluded). ")
    if len(setups) == 1:
        (device, threads, batch), = setups
        text += (f"Every run was timed alike: device {device}, {threads} torch thread(s), a batch of {batch} "
                 "trajectories (the pipeline runs them one after the other in one process).")
    else:
        listing = "; ".join(f"{', '.join(names)}: device {d}, {t} thread(s), batch {b}"
                            for (d, t, b), names in setups.items())
        text += f"**The runs were not timed alike** ({listing}): compare their costs with care."
    return text


def _front_figure(path, results, colors):
    plt = _plt()
    models = _models(results)
    fig, axes = plt.subplots(1, len(FRONT_METRICS), figsize=(4.6 * len(FRONT_METRICS), 4.0), squeeze=False)
    for ax, (metric, label) in zip(axes[0], FRONT_METRICS):
        for start in _starts(results):
            rungs = sorted(_ladder_rungs(results, start).items(), key=lambda kv: kv[1]["ladder"]["resolution"])
            x = [r.get("les_seconds_per_model_time") for _, r in rungs]
            y = [r.get(metric) for _, r in rungs]
            x = np.asarray([np.nan if v is None else v for v in x], dtype=float)
            y = np.asarray([np.nan if v is None else v for v in y], dtype=float)
            ax.plot(x, y, lw=1.3, ms=5, label=f"plain solver, {_START_WORDS.get(start, start)}",
                    **_START_STYLE.get(start, {}))
            for (_, r), xi, yi in zip(rungs, x, y):
                if np.isfinite(xi) and np.isfinite(yi):
                    ax.annotate(str(r["ladder"]["resolution"]), (xi, yi), textcoords="offset points",
                                xytext=(4, 4), fontsize=7, color=_START_STYLE.get(start, {}).get("color", "k"))
        for name, r in models.items():
            xv, yv = r.get("les_seconds_per_model_time"), r.get(metric)
            if xv is None or yv is None or not (math.isfinite(xv) and math.isfinite(yv)):
                continue
            if "seed_of" in r:  # a seed of a group: small and faded, in the group's colour
                ax.plot([xv], [yv], ls="none", marker="o", ms=4, alpha=0.5, color=colors[r["seed_of"]])
                continue
            spread = (r.get("spread") or {}).get(metric)
            legend = name + (f" (mean ± std, {len(r['members'])} seeds)" if "members" in r else "") \
                + (" (blew up)" if r.get("blowups") else "")
            ax.errorbar([xv], [yv], yerr=None if spread is None else [[spread["std"]], [spread["std"]]],
                        ls="none", marker="D" if r.get("blowups") else "o", ms=7, color=colors[name], capsize=3,
                        label=legend)
        ax.set_xscale("log")
        if metric != "decorrelation_time":
            ax.set_yscale("log")
        _plain_log_ticks(ax)
        ax.set_xlabel("wall seconds per unit model time")
        ax.set_ylabel(label + (" (higher is better)" if metric == "decorrelation_time" else " (lower is better)"))
        ax.grid(True, which="both", alpha=0.2)
    axes[0, 0].legend(fontsize=7)
    fig.suptitle("cost and accuracy: plain-solver ladder (lines, labelled by grid size) and models (points)",
                 fontsize=10)
    fig.tight_layout()
    storage.save_figure(fig, path, dpi=150)
    plt.close(fig)


def _plain_log_ticks(ax):
    """Log axes labelled with plain numbers at the major ticks only (minor labels overlap)."""
    from matplotlib.ticker import FuncFormatter, NullFormatter

    plain = FuncFormatter(lambda v, _: f"{v:g}")
    for axis, scale in ((ax.xaxis, ax.get_xscale()), (ax.yaxis, ax.get_yscale())):
        if scale == "log":
            axis.set_major_formatter(plain)
            axis.set_minor_formatter(NullFormatter())


def _blowup_text(results: dict) -> list:
    lines = []
    for name, r in results.items():
        for b in r.get("blowup_times") or []:
            when = "at an unrecorded time" if b.get("time") is None else f"at t = {_fmt(b['time'], 4)}"
            lines.append(f"- {name}: trajectory {b['trajectory']} became non-finite {when}")
    return lines


def _window_text(results: dict) -> str:
    first = next(iter(results.values()))
    window, span = first["window"], first.get("run_window", first["window"])
    limited = sorted({n for r in results.values() for n in r.get("window_limited_by", [])})
    text = (f"Every run is scored on the same snapshots: t = {window[0]:.4g} .. {window[1]:.4g}, the times all runs "
            "share, up to the first non-finite snapshot of any run.")
    if limited:
        text += (f" The window was cut short (from t = {span[1]:.4g}) by the blow-up of {', '.join(limited)}; "
                 "evaluate without it for the whole window.")
    return text


def write_report(report_dir, results, extras, reference, edges, attrs, ndim, length) -> Path:
    """Write the figures and ``report.md``; return the report's path."""
    report_dir = Path(report_dir)
    colors = _colors(list(results))
    # the ladder has its own figure; a seed group's mean has no fields (its seeds are shown)
    shown = {n: r for n, r in (_models(results) or results).items() if n in extras}
    _spectra(report_dir / "spectra.png", shown, extras, reference, colors, ndim)
    _pdf(report_dir / "pdf.png", shown, extras, reference, edges, colors, ndim)
    _series(report_dir / "series.png", shown, reference, colors, ndim)
    _correlation(report_dir / "correlation.png", shown, colors)
    _snapshots(report_dir / "snapshots.png", shown, extras, ndim, length)
    has_ladder = bool(_ladder_rungs(results))
    if has_ladder:
        _front_figure(report_dir / FRONT_FIGURE, results, colors)
    first = next(iter(results.values()))
    forcing = attrs.get("forcing", "")
    try:
        forcing = json.dumps(json.loads(forcing))
    except (TypeError, ValueError):
        pass
    lines = [
        "# A-posteriori evaluation",
        "",
        f"Reference: `{reference['file']}` ({attrs.get('equation')}, DNS {attrs.get('dns_resolution')} -> "
        f"LES {attrs.get('les_resolution')}, viscosity {attrs.get('viscosity')}, drag {attrs.get('drag')}, "
        f"forcing {forcing}, filter {attrs.get('filter')}).",
        f"Test trajectories {first['trajectories']}, window t = {first['window'][0]:.4g} .. {first['window'][1]:.4g}; "
        f"every LES starts from the filtered DNS at the window's start (the plain-solver ladder: see below).",
        f"Machine: {platform.machine()} {platform.system()}, Python {platform.python_version()}.",
        "",
        table(results),
        timing_text(results),
        "",
        *([("Velocity-gradient PDF distance (Hellinger, du/dx, dv/dy, dw/dz pooled): "
            + ", ".join(f"{name} {_fmt(r.get('gradient_pdf_distance'))}" for name, r in results.items()) + "."), ""]
          if ndim == 3 else []),
        "Definitions: spectrum error = mean over 1 <= k <= k_les of |log10 E - log10 E_ref| of the time-averaged "
        "energy spectra; PDF distance = Hellinger distance of the field histograms; decorrelation time = first "
        "time the correlation with the filtered DNS drops below 0.95 (mean over trajectories; 'never' = stayed "
        "above for the whole window and counted as the window length); similarity = 1 - d(model)/d(none) "
        "(> 0 beats the no-closure LES; for the decorrelation time d is the time lost, window - time); "
        "cost = LES wall time per unit model time / DNS wall time per unit model time; in brackets the spectrum "
        "error over k <= n/3 (the modes the LES advects) and over n/3 < k < n/2.",
        "",
        _window_text(results),
        "",
    ]
    blowups = _blowup_text(results)
    lines += ["## Blow-ups", ""] + (blowups or ["None: every run stayed finite."]) + [""]
    if has_ladder:
        lines += [
            "## Cost and accuracy: the plain-solver ladder",
            "",
            "The plain solver (no closure, the DNS forcing) at finer grids, each snapshot coarse-grained with the "
            "dataset's filter and restriction and scored like the models. DNS start: from the DNS state at the first "
            "snapshot, truncated to the rung's grid (what the plain solver at that resolution would have given). "
            "Filtered start: from the LES's own initial field, zero-padded (the same information the LES starts "
            "from). A model is on the front when no rung of that ladder and no other model is at most as costly "
            "and at least as good on every metric (spectrum error, PDF distance, decorrelation time, blow-ups); "
            "each 'as good on' cell names the cheapest rung at least as good as the model on that metric. "
            f"Costs are wall times, which vary between runs: a run at least as good on every metric whose cost is "
            f"within a factor {1 + _tolerance(results):g} of the model's, above or below, is a cost tie, and the "
            "verdict is then not decided (neither on the front nor dominated; `closure evaluate --cost-tolerance`).",
            "",
            front_table(results),
            "Verdicts:",
            "",
        ]
        lines += [f"- {line}" for line in verdict_lines(results)]
        lines += ["", f"![front]({FRONT_FIGURE})", ""]
    lines += [
        "## Spectra",
        "",
        "![spectra](spectra.png)",
        "",
        "## PDFs",
        "",
        "![pdf](pdf.png)",
        "",
        "## Energy and enstrophy",
        "",
        "![series](series.png)",
        "",
        "## Correlation with the filtered DNS",
        "",
        "![correlation](correlation.png)",
        "",
        "## Snapshots (first test trajectory)",
        "",
        "![snapshots](snapshots.png)",
        "",
    ]
    path = report_dir / "report.md"
    storage.write_text(path, "\n".join(lines))
    return path
