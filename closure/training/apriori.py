"""A-priori (offline) metrics of SGS closures against the exact SGS term.

For a closure ``c`` and the exact term ``s`` (dataset variable ``sgs``), over all
grid points of all snapshots considered:

- ``correlation``: Pearson correlation of c and s (1 is perfect; invariant to
  scaling c, so a Smagorinsky coefficient does not change it);
- ``r2``: ``1 - sum (c - s)^2 / sum (s - mean s)^2`` (1 perfect, 0 = predicting
  the mean, negative = worse than the mean);
- ``relative_l2``: ``||c - s|| / ||s||``;
- the PDF of the SGS term: a histogram on common bins for the truth and every
  closure, and its ``pdf_hellinger`` distance to the truth's histogram;
- the transfer of resolved quantities by the SGS term. 2D (vorticity form):
  the resolved energy ``E = 1/2 <|u|^2> = 1/2 <psi omega>`` (``omega = -lap psi``)
  changes by ``<psi c>`` and the resolved enstrophy ``Z = 1/2 <omega^2>`` by
  ``<omega c>``; 1D (Burgers): the energy ``1/2 <u^2>`` by ``<u c>``. ``<.>`` is
  the average over points and snapshots. Negative means the closure drains the
  resolved scales (forward scatter), positive that it feeds them. The
  ``backscatter`` fractions are the fractions of points where the *local*
  transfer (``psi c``, ``omega c`` or ``u c``) is positive.

Everything is accumulated in float64 by ``AprioriAccumulator`` one block at a
time, so a test split of any size is streamed, never loaded.

    metrics = evaluate(ds, test_trajectories, {"learned": model, "smagorinsky": smag}, config)
"""

from __future__ import annotations

import math
from typing import Callable, Mapping, Optional, Sequence

import dask
import numpy as np
import torch

from closure.data.streaming import field_variable, load_block, plan_blocks
from closure.data.system import les_equation
from closure.les.baselines import make_closure
from closure.progress import progress
from solvers.spectral import SpectralGrid

__all__ = [
    "correlation", "r2", "relative_l2", "transfer_fields", "hellinger", "probabilities", "AprioriAccumulator",
    "baseline_closures", "evaluate",
]


def _flat64(x) -> torch.Tensor:
    return torch.as_tensor(x).detach().to("cpu", torch.float64).reshape(-1)


def correlation(pred, true) -> float:
    """Pearson correlation coefficient of two arrays (all points together)."""
    p, t = _flat64(pred), _flat64(true)
    p, t = p - p.mean(), t - t.mean()
    return float((p * t).sum() / torch.sqrt((p * p).sum() * (t * t).sum()))


def r2(pred, true) -> float:
    """Coefficient of determination ``1 - SSE / SST`` of ``pred`` for ``true``."""
    p, t = _flat64(pred), _flat64(true)
    return float(1.0 - ((p - t) ** 2).sum() / ((t - t.mean()) ** 2).sum())


def relative_l2(pred, true) -> float:
    """``||pred - true|| / ||true||``."""
    p, t = _flat64(pred), _flat64(true)
    return float(torch.linalg.vector_norm(p - t) / torch.linalg.vector_norm(t))


def hellinger(p: np.ndarray, q: np.ndarray) -> float:
    """Hellinger distance ``sqrt(1 - sum sqrt(p q))`` of two probability vectors on the same bins
    (0 = equal, 1 = disjoint); NaN if either has a non-finite entry."""
    p, q = np.asarray(p, dtype=np.float64), np.asarray(q, dtype=np.float64)
    if not (np.all(np.isfinite(p)) and np.all(np.isfinite(q))):
        return float("nan")
    return float(math.sqrt(max(0.0, 1.0 - float(np.sum(np.sqrt(p * q))))))


def probabilities(counts) -> np.ndarray:
    """Histogram counts (or densities) normalized to sum 1 (all zeros stay zero)."""
    counts = np.asarray(counts, dtype=np.float64)
    return counts / max(counts.sum(), 1e-300)


def _grid(ndim: int, n: int, length: float):
    return SpectralGrid(n, length=length, ndim=ndim, dtype=torch.float64)


def transfer_fields(field: torch.Tensor, sgs: torch.Tensor, length: float = 2 * math.pi) -> dict[str, torch.Tensor]:
    """Local transfer of the resolved invariants by an SGS tendency (module docstring).

    field, sgs: (batch, n) (Burgers velocity), (batch, n, n) (vorticity) or (batch, 3, n, n, n)
    (3D velocity). Returns ``{"energy": u sgs}`` in 1D, ``{"energy": psi sgs, "enstrophy": omega sgs}``
    in 2D and ``{"energy": u . sgs}`` in 3D.
    """
    field, sgs = field.to(torch.float64), sgs.to(torch.float64)
    if field.dim() == 2:
        return {"energy": field * sgs}
    if field.dim() == 5:  # 3D velocity (batch, 3, n, n, n): the local energy transfer u . sgs
        return {"energy": (field * sgs).sum(dim=1)}
    psi = _grid(2, field.shape[-1], length).streamfunction(field)
    return {"energy": psi * sgs, "enstrophy": field * sgs}


class AprioriAccumulator:
    """Streaming a-priori statistics of several closures against the exact SGS term.

    Args:
        names: the closures' names.
        edges: histogram bin edges for the SGS PDFs (values outside are counted apart).
        length: the periodic domain's length (for the streamfunction in 2D).
    """

    def __init__(self, names: Sequence[str], edges: np.ndarray, length: float = 2 * math.pi):
        self.names = list(names)
        self.edges = np.asarray(edges, dtype=np.float64)
        self.length = float(length)
        self.n = 0
        self.sums: dict[str, dict[str, float]] = {}
        self.hist: dict[str, np.ndarray] = {}
        self.outside: dict[str, int] = {}

    def _add(self, name: str, key: str, value: float) -> None:
        d = self.sums.setdefault(name, {})
        d[key] = d.get(key, 0.0) + float(value)

    def _histogram(self, name: str, values: torch.Tensor) -> None:
        v = values.reshape(-1).numpy()
        counts, _ = np.histogram(v, bins=self.edges)
        self.hist[name] = self.hist.get(name, 0) + counts
        self.outside[name] = self.outside.get(name, 0) + int(v.size - counts.sum())

    @torch.no_grad()
    def update(self, field: torch.Tensor, true: torch.Tensor, preds: Mapping[str, torch.Tensor]) -> None:
        """Add snapshots: field and true SGS ``(batch, *grid)``, predictions by closure name."""
        field, true = field.detach().cpu().double(), true.detach().cpu().double()
        self.n += true.numel()
        for name, values in [("truth", true)] + [(k, preds[k].detach().cpu().double()) for k in self.names]:
            for key, local in transfer_fields(field, values, self.length).items():
                self._add(name, f"{key}_transfer", local.sum())
                self._add(name, f"{key}_backscatter", (local > 0).sum())
            self._histogram(name, values)
            if name == "truth":
                self._add(name, "s", values.sum())
                self._add(name, "ss", (values * values).sum())
                continue
            self._add(name, "p", values.sum())
            self._add(name, "pp", (values * values).sum())
            self._add(name, "pt", (values * true).sum())
            self._add(name, "sse", ((values - true) ** 2).sum())

    def result(self) -> dict:
        """``{"truth": {...}, name: {...}, "bins": edges}`` (module docstring for the keys)."""
        n = max(self.n, 1)
        t = self.sums.get("truth", {})
        mean_t = t.get("s", 0.0) / n
        sst = t.get("ss", 0.0) - n * mean_t ** 2
        out: dict = {"points": self.n, "bins": self.edges.tolist()}
        for name in ["truth"] + self.names:
            d = self.sums.get(name, {})
            entry: dict = {}
            for key in ("energy", "enstrophy"):
                if f"{key}_transfer" in d:
                    entry[f"{key}_transfer"] = d[f"{key}_transfer"] / n
                    entry[f"{key}_backscatter"] = d[f"{key}_backscatter"] / n
            if name != "truth":
                mean_p = d.get("p", 0.0) / n
                cov = d.get("pt", 0.0) - n * mean_p * mean_t
                var_p = d.get("pp", 0.0) - n * mean_p ** 2
                denom = math.sqrt(max(var_p, 0.0) * max(sst, 0.0))
                entry["correlation"] = cov / denom if denom > 0 else float("nan")
                entry["r2"] = 1.0 - d.get("sse", 0.0) / sst if sst > 0 else float("nan")
                norm_t = math.sqrt(max(t.get("ss", 0.0), 0.0))
                entry["relative_l2"] = math.sqrt(max(d.get("sse", 0.0), 0.0)) / norm_t if norm_t > 0 else float("nan")
                entry["pdf_hellinger"] = hellinger(probabilities(self.hist.get(name, 0)),
                                                   probabilities(self.hist.get("truth", 0)))
            hist = np.asarray(self.hist.get(name, np.zeros(len(self.edges) - 1)))
            entry["pdf"] = hist.astype(int).tolist()
            entry["pdf_outside"] = self.outside.get(name, 0)
            out[name] = entry
        return out


# --------------------------------------------------------------------------- baselines
def baseline_closures(config, names: Optional[Sequence[str]] = None) -> dict:
    """Classical closures for the a-priori comparison (`closure.les.baselines.make_closure`), in float64
    on the LES grid; constants from ``config.run``."""
    les = les_equation(config, dtype=torch.float64, unforced=True)
    if names is None:
        names = ("smagorinsky", "leith", "dynamic_smagorinsky")
    return {name: make_closure(name, les, config) for name in names}


# --------------------------------------------------------------------------- evaluation
def _sgs_edges(ds, trajectories, bins: int) -> np.ndarray:
    sgs = ds["sgs"].isel(trajectory=list(trajectories))
    lo, hi = dask.compute(sgs.min(), sgs.max())
    lo, hi = float(lo), float(hi)
    if not hi > lo:
        hi = lo + 1.0
    return np.linspace(lo, hi, bins + 1)


@torch.no_grad()
def evaluate(ds, trajectories: Sequence[int], closures: Mapping[str, Callable], config=None, *,
             max_points: Optional[int] = None, bins: int = 101, batch_points: int = 1 << 16,
             progress_enabled: Optional[bool] = None) -> dict:
    """A-priori metrics of ``closures`` (name -> state -> SGS) on ``trajectories`` of ``ds``, streamed.

    ``max_points`` caps the points used by taking every k-th snapshot. Each
    closure is called on its own dtype/device (from its parameters or buffers).
    """
    length = float(ds.attrs.get("length", 2 * math.pi))
    var = ds[field_variable(ds)]
    per_snapshot = int(np.prod(var.shape[2:]))
    n_snap = var.sizes["time"] * len(trajectories)
    stride = 1 if not max_points else max(1, math.ceil(n_snap * per_snapshot / max_points))
    edges = _sgs_edges(ds, trajectories, bins)
    acc = AprioriAccumulator(list(closures), edges, length)
    blocks = plan_blocks(ds, trajectories)
    chunk = max(1, batch_points // per_snapshot)
    with progress(total=len(blocks), desc="a-priori", unit="block", enabled=progress_enabled) as bar:
        for block in blocks:
            field, sgs = load_block(ds, block, torch.float64, stride=stride)
            if field.shape[0]:
                preds = {}
                for name, fn in closures.items():
                    ref = next(iter(list(getattr(fn, "parameters", lambda: [])()) +
                                    list(getattr(fn, "buffers", lambda: [])())), None)
                    dtype = ref.dtype if ref is not None and ref.is_floating_point() else torch.float64
                    device = ref.device if ref is not None else torch.device("cpu")
                    outs = [fn(field[i:i + chunk].to(device, dtype)).to("cpu", torch.float64)
                            for i in range(0, field.shape[0], chunk)]
                    preds[name] = torch.cat(outs)
                acc.update(field, sgs, preds)
            bar.update(1)
    result = acc.result()
    result["snapshot_stride"] = stride
    return result
