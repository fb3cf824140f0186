"""The study's figures (error, variance law, outer-vs-inner sensitivity) and Markdown summary."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Iterable, Union

import numpy as np

from closure import storage
from closure.study.results import quiet_nan

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

    with quiet_nan():
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
        storage.save_figure(fig, paths[-1], dpi=110)
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
        storage.save_figure(fig, paths[-1], dpi=110)
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
        storage.save_figure(fig, paths[-1], dpi=110)
        plt.close(fig)
        paths.append(_plot_slopes(ds, out_dir / f"{prefix}variance_slopes.png", plt))
    return paths


def _save(fig, path: Path, plt) -> Path:
    fig.tight_layout()
    storage.save_figure(fig, path, dpi=110)
    plt.close(fig)
    return path


def _plot_slopes(ds, path: Path, plt) -> Path:
    """Fitted variance slopes (± stderr) vs the varied gamma: at init and trained, on test and OOD probes."""
    vary = json.loads(ds.attrs["vary"])
    fixed = ds.attrs["fixed_gamma"]
    fig, axes = plt.subplots(1, len(vary), figsize=(4.8 * len(vary), 3.8), squeeze=False)
    series = (("init_variance_slope", "init, test inputs", "o", 0.0), ("init_variance_slope_ood", "init, OOD inputs",
                                                                         "s", 0.01),
              ("variance_slope", "trained, test inputs", "^", 0.02), ("variance_slope_ood", "trained, OOD inputs",
                                                                       "v", 0.03))
    for ax, mode in zip(axes[0], vary):
        line = _outer_line if mode == "outer" else _inner_line
        gdim = "gamma_outer" if mode == "outer" else "gamma_inner"
        for name, label, marker, shift in series:
            if name not in ds:
                continue
            sl, se = line(ds, name), line(ds, name + "_stderr")
            ax.errorbar(sl[gdim].values + shift, sl.values, yerr=se.values, fmt=marker, ms=4, capsize=2, label=label)
        gg = np.linspace(0.5, 1.0, 11)
        if mode == "outer":
            ax.plot(gg, 1 - 2 * gg, "k:", label="theory 1 - 2 gamma_outer")
        else:
            ax.axhline(1 - 2 * fixed, color="k", ls=":", label=f"theory {1 - 2 * fixed:+g}")
        ax.set_xlabel(f"{gdim} ({'inner' if mode == 'outer' else 'outer'} = {fixed:g})")
        ax.set_ylabel("d log Var g / d log N (± fit stderr)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=6.5)
    return _save(fig, path, plt)


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
    with quiet_nan():
        for mode in vary:
            line = _outer_line if mode == "outer" else _inner_line
            gdim = "gamma_outer" if mode == "outer" else "gamma_inner"
            other = "inner" if mode == "outer" else "outer"
            lines += [f"## {mode.capitalize()} gamma varied ({other} gammas = {fixed:g})", ""]
            lines += ["Output variance across seeds: fitted log-log slope vs width (± standard error)", ""]
            lines += [f"| {gdim} | base rate | slope (trained) | slope (init) | slope (trained, OOD) | "
                      "slope (init, OOD) | theory 1 - 2 gamma_outer |",
                      "| --- | --- | --- | --- | --- | --- | --- |"]
            lr = line(ds, "lr")
            for g in lr[gdim].values:
                go = g if mode == "outer" else fixed
                cells = []
                for name in ("variance_slope", "init_variance_slope", "variance_slope_ood", "init_variance_slope_ood"):
                    if name not in ds:
                        cells.append("")
                        continue
                    cells.append(f"{_num(line(ds, name).sel({gdim: g}), '+.2f')} ± "
                                 f"{_num(line(ds, name + '_stderr').sel({gdim: g}), '.2f')}")
                lines.append(f"| {g:g} | {float(lr.sel({gdim: g})):.3g} | " + " | ".join(cells) + f" | {1 - 2 * go:+.2f} |")
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
                lines += ["", "A posteriori: LES field error ||LES - DNS|| / ||DNS|| (mean ± std over seeds; "
                          f"no closure: {_num(np.nanmean(ds['aposteriori_error_none'].values))})", ""]
                lines += [f"| {gdim} | " + " | ".join(f"N={w}" for w in widths) + " |",
                          "| --- |" + " --- |" * len(widths)]
                arr = line(ds, "aposteriori_error")
                for g in arr[gdim].values:
                    lines.append(f"| {g:g} | " + " | ".join(f"{_num(arr.sel({gdim: g, 'width': w}).mean('seed'))} ± "
                                                             f"{_num(arr.sel({gdim: g, 'width': w}).std('seed'))}"
                                                             for w in widths) + " |")
                lines += _ladder_rows(ds, len(widths))
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

# --------------------------------------------------------------------------- the rate-transfer study
def _ladder_rows(ds, columns: int) -> list[str]:
    """Rows of the plain-solver ladder (one value, repeated in every width column) under the a-posteriori table."""
    if "ladder_error" not in ds:
        return []
    rows = []
    for label in ds["ladder"].values:
        e = _num(float(ds["ladder_error"].sel(ladder=label)))
        rows.append(f"| {label} (plain solver, no network) | " + " | ".join([e] * columns) + " |")
    return rows


def _grid(plt, rows, cols, w=3.2, h=2.8):
    fig, axes = plt.subplots(rows, cols, figsize=(w * cols, h * rows), squeeze=False)
    return fig, axes




def plot_transfer(ds, out_dir: Union[str, Path], prefix: str = "") -> list[Path]:
    """transfer_rate.png (best base rate / its value at the smallest width, vs width), transfer_error.png
    (test error at the best rate), transfer_curves.png (validation curves at the best rate, per width),
    transfer_landscape.png (validation MSE vs base rate per width); return their paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir = Path(out_dir)
    names = [str(p) for p in ds["parametrization"].values]
    opts = [str(o) for o in ds["optimizer"].values]
    widths = ds["width"].values
    ratio = float(ds.attrs["lr_ratio"])
    paths = []
    with quiet_nan():
        fig, axes = _grid(plt, 1, len(opts), 4.6, 3.6)
        for ax, opt in zip(axes[0], opts):
            for n, name in enumerate(names):
                shift = 1.0 + 0.03 * (n - (len(names) - 1) / 2)  # side by side: equal rates do not hide each other
                best = ds["best_lr"].sel(parametrization=name, optimizer=opt).values
                ok = ds["bracketed"].sel(parametrization=name, optimizer=opt).values.astype(bool)
                rel = best / best[0]
                s = float(ds["best_lr_slope"].sel(parametrization=name, optimizer=opt))
                e = float(ds["best_lr_slope_stderr"].sel(parametrization=name, optimizer=opt))
                line = ax.errorbar(widths * shift, rel, yerr=[rel - rel / ratio ** 0.5, rel * ratio ** 0.5 - rel],
                                   marker="o", ms=4, capsize=2,
                                   label=f"{name}: slope {_num(s, '+.2f')} ± {_num(e, '.2f')}")
                ax.plot(widths[~ok] * shift, rel[~ok], "o", ms=9, mfc="none", color=line[0].get_color())
            ax.set_xscale("log")
            ax.set_yscale("log", base=2)
            _width_ticks(ax, widths)
            ax.set_xlabel("width N")
            ax.set_ylabel("best base rate / best at smallest N")
            ax.set_title(f"{opt}: optimal base rate (open ring: not bracketed)", fontsize=8)
            ax.grid(alpha=0.3, which="both")
            ax.legend(fontsize=6.5)
        paths.append(_save(fig, out_dir / f"{prefix}transfer_rate.png", plt))

        fig, axes = _grid(plt, 1, len(opts), 4.6, 3.6)
        for ax, opt in zip(axes[0], opts):
            for name in names:
                e = ds["best_relative_l2"].sel(parametrization=name, optimizer=opt)
                ax.errorbar(widths, e.mean("seed").values, yerr=e.std("seed").values, marker="o", ms=4, capsize=2,
                            label=name)
            ax.set_xscale("log")
            _width_ticks(ax, widths)
            ax.set_xlabel("width N")
            ax.set_ylabel("test relative L2 error at the best rate")
            ax.set_title(f"{opt}: error at the optimum (mean ± std over seeds)", fontsize=8)
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7)
        paths.append(_save(fig, out_dir / f"{prefix}transfer_error.png", plt))

        cmap = plt.get_cmap("viridis")
        fig, axes = _grid(plt, len(opts), len(names))
        for r, opt in enumerate(opts):
            for c, name in enumerate(names):
                ax = axes[r][c]
                for n, w in enumerate(widths):
                    sel = dict(parametrization=name, optimizer=opt, width=w)
                    steps = ds["curve_steps"].sel(sel).values
                    cv = ds["best_curve_validation_mse"].sel(sel).mean("seed").values
                    keep = steps >= 0
                    ax.plot(steps[keep], cv[keep], "-", color=cmap(n / max(1, len(widths) - 1)), label=f"N = {w}")
                ax.set_title(f"{name}, {opt}", fontsize=8)
                ax.set_xlabel("step")
                ax.set_ylabel("validation MSE at best rate")
                ax.grid(alpha=0.3)
        axes[0][0].legend(fontsize=6.5)
        paths.append(_save(fig, out_dir / f"{prefix}transfer_curves.png", plt))

        fig, axes = _grid(plt, len(opts), len(names))
        for r, opt in enumerate(opts):
            for c, name in enumerate(names):
                ax = axes[r][c]
                for n, w in enumerate(widths):
                    sel = dict(parametrization=name, optimizer=opt, width=w)
                    lr, sc = ds["lr"].sel(sel).values, ds["score"].sel(sel).values
                    keep = np.isfinite(lr)
                    color = cmap(n / max(1, len(widths) - 1))
                    ax.plot(lr[keep], sc[keep], "o-", ms=3, color=color, label=f"N = {w}")
                    diverged = keep & ~np.isfinite(sc)
                    if diverged.any():
                        ax.plot(lr[diverged], np.full(int(diverged.sum()), np.nanmax(ds["score"].values)), "x",
                                color=color)
                ax.set_xscale("log")
                ax.set_title(f"{name}, {opt} (x: diverged)", fontsize=8)
                ax.set_xlabel("base rate")
                ax.set_ylabel("validation MSE (mean over seeds)")
                ax.grid(alpha=0.3)
        axes[0][0].legend(fontsize=6.5)
        paths.append(_save(fig, out_dir / f"{prefix}transfer_landscape.png", plt))
    return paths


# the rate-transfer study's convergence tables: variable, title (percent, mean over seeds)
_CONVERGENCE_TABLES = (
    ("best_curve_drop", "Convergence: fall of the validation MSE at the best rate over the last quarter of "
                        "training, % (mean over seeds; about 0 = flattened, < 0 = rising again)"),
    ("best_curve_drop_mean", "Convergence, averaged: fall of the validation MSE at the best rate from the third to "
                             "the last quarter of training, each quarter's checkpoints averaged, % (mean over seeds)"),
)


def transfer_markdown(ds, figures: Iterable[Path] = ()) -> str:
    """The rate-transfer study's tables as Markdown."""
    names = [str(p) for p in ds["parametrization"].values]
    widths = [int(w) for w in ds["width"].values]
    lines = [
        "# Rate-transfer study (closure sweep, sweep.study = transfer)",
        "",
        f"- dataset: `{ds.attrs['dataset']}`",
        f"- network: stencil MLP, {ds.attrs['depth']} hidden layers of width N; batch {ds.attrs['batch_size']}; "
        f"budget {ds.attrs['budget']}; muP base width {ds.attrs['mup_base_width']}",
        f"- rate grid: ratio {ds.attrs['lr_ratio']:g} between neighbours, extended up to "
        f"{ds.attrs['bracket_steps']} times per side until the optimum (lowest mean validation MSE over "
        f"{ds.sizes['seed']} seeds) is bracketed; `*` = not bracketed",
        "",
    ]
    with quiet_nan():
        for opt in [str(o) for o in ds["optimizer"].values]:
            lines += [f"## {opt}", "", "Best base rate (d log rate / d log N ± stderr; 0 = the rate transfers)", ""]
            lines += ["| parametrization | " + " | ".join(f"N={w}" for w in widths) + " | slope |",
                      "| --- |" + " --- |" * (len(widths) + 1)]
            for name in names:
                sel = dict(parametrization=name, optimizer=opt)
                best, ok = ds["best_lr"].sel(sel).values, ds["bracketed"].sel(sel).values
                cells = [f"{_num(b, '.3g')}{'' if k else '*'}" for b, k in zip(best, ok)]
                lines.append(f"| {name} | " + " | ".join(cells) + f" | {_num(ds['best_lr_slope'].sel(sel), '+.2f')} ± "
                             f"{_num(ds['best_lr_slope_stderr'].sel(sel), '.2f')} |")
            lines += ["", "Test relative L2 error at the best rate (mean ± std over seeds)", ""]
            lines += ["| parametrization | " + " | ".join(f"N={w}" for w in widths) + " |",
                      "| --- |" + " --- |" * len(widths)]
            for name in names:
                e = ds["best_relative_l2"].sel(parametrization=name, optimizer=opt)
                lines.append(f"| {name} | " + " | ".join(
                    f"{_num(e.sel(width=w).mean('seed'))} ± {_num(e.sel(width=w).std('seed'))}" for w in widths) + " |")
            for var, title in _CONVERGENCE_TABLES:
                if var not in ds:
                    continue
                lines += ["", title, ""]
                lines += ["| parametrization | " + " | ".join(f"N={w}" for w in widths) + " |",
                          "| --- |" + " --- |" * len(widths)]
                for name in names:
                    d = ds[var].sel(parametrization=name, optimizer=opt)
                    lines.append(f"| {name} | " + " | ".join(_num(100 * d.sel(width=w).mean("seed"), "+.1f")
                                                            for w in widths) + " |")
            lines += ["", "Validation MSE vs base rate (mean over seeds; `div` = a seed diverged)", ""]
            for name in names:
                for w in widths:
                    sel = dict(parametrization=name, optimizer=opt, width=w)
                    lr, sc = ds["lr"].sel(sel).values, ds["score"].sel(sel).values
                    pts = [f"{lr_:.3g}: {_num(s_, '.4f') if np.isfinite(s_) else 'div'}"
                           for lr_, s_ in zip(lr, sc) if np.isfinite(lr_)]
                    lines.append(f"- {name}, N = {w}: " + ", ".join(pts))
            lines.append("")
    figs = [Path(f).name for f in figures]
    if figs:
        lines += ["## Figures", ""] + [f"![{f}]({f})" for f in figs] + [""]
    return "\n".join(lines)
