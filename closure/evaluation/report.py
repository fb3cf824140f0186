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

``report.md`` shows the table of metrics and the figures.
"""

from __future__ import annotations

import json
import math
import platform
from pathlib import Path

import numpy as np

from closure import storage

__all__ = ["write_report", "FIGURES"]

FIGURES = ("spectra.png", "pdf.png", "series.png", "correlation.png", "snapshots.png")
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
    from closure.evaluation import metrics as M

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
    ax.set_xlabel("vorticity" if ndim == 2 else "velocity")
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
                              ("energy", "enstrophy" if ndim == 2 else "<u_x^2>/2")):
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
    fig.colorbar(image, cax=cax, label="vorticity")
    storage.save_figure(fig, path, dpi=150)
    plt.close(fig)


def table(results: dict) -> str:
    """The Markdown table of the scalar metrics."""
    head = ("| model | spectrum error | PDF distance | decorrelation time | blow-ups | similarity "
            "(spectrum / PDF / decorrelation) | cost vs DNS |\n|---|---|---|---|---|---|---|\n")
    lines = []
    for name, r in results.items():
        sim = r.get("similarity") or {}
        sims = " / ".join(_fmt(sim.get(k)) for k in ("spectrum_error", "pdf_distance", "decorrelation_time")) \
            if sim else "-"
        censored = r.get("decorrelation_censored", 0)
        dec = _fmt(r["decorrelation_time"]) + (f" ({censored} never)" if censored else "")
        lines.append(f"| {name} | {_fmt(r['spectrum_error'])} | {_fmt(r['pdf_distance'])} | {dec} | "
                     f"{r['blowups']} | {sims} | {_fmt(r['cost_ratio'])} |")
    return head + "\n".join(lines) + "\n"


def write_report(report_dir, results, extras, reference, edges, attrs, ndim, length) -> Path:
    """Write the figures and ``report.md``; return the report's path."""
    report_dir = Path(report_dir)
    colors = _colors(list(results))
    _spectra(report_dir / "spectra.png", results, extras, reference, colors, ndim)
    _pdf(report_dir / "pdf.png", results, extras, reference, edges, colors, ndim)
    _series(report_dir / "series.png", results, reference, colors, ndim)
    _correlation(report_dir / "correlation.png", results, colors)
    _snapshots(report_dir / "snapshots.png", results, extras, ndim, length)
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
        f"every LES starts from the filtered DNS at the window's start.",
        f"Machine: {platform.machine()} {platform.system()}, Python {platform.python_version()}.",
        "",
        table(results),
        "Definitions: spectrum error = mean over 1 <= k <= k_les of |log10 E - log10 E_ref| of the time-averaged "
        "energy spectra; PDF distance = Hellinger distance of the field histograms; decorrelation time = first "
        "time the correlation with the filtered DNS drops below 0.95 (mean over trajectories; 'never' = stayed "
        "above for the whole window and counted as the window length); similarity = 1 - d(model)/d(none) "
        "(> 0 beats the no-closure LES; for the decorrelation time d is the time lost, window - time); "
        "cost = LES wall time per unit model time / DNS wall time per unit model time.",
        "",
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
