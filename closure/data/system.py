"""Config -> solver objects, in one place.

`dns_equation` builds the DNS equation of a config; `les_equation` the LES
equation: the same physics at ``les.resolution`` with the filtered forcing
``P G f`` (docs/conventions.md), so that linear terms and forcing commute with ``P G``;
`plain_equation` the DNS physics (unfiltered forcing ``f``) at any resolution.
With ``les.formulation: correction`` the LES advances the truncated field ``P w``
(`solver_filter`: the truncation alone), so its forcing is ``P f``.
Seeds for per-trajectory random forcing are ``trajectory_seeds(config, ids)``.
"""

from __future__ import annotations

import math
from typing import Optional, Sequence

import torch

from closure.data.filters import Filter
from solvers import CFL
from solvers.forcing import Forcing, seed_for
from solvers.spectral import SpectralGrid

__all__ = ["trajectory_seeds", "make_forcing", "make_filter", "solver_filter", "dns_equation", "les_equation",
           "initial_state", "FilteredForcing",
           "plain_equation"]


def trajectory_seeds(config, trajectory_ids: Sequence[int]) -> list[int]:
    """One seed per trajectory, a function of ``(config.seed, trajectory id)`` only."""
    return [seed_for(config.seed, int(i)) for i in trajectory_ids]


def make_forcing(config, seeds: Optional[Sequence[int]] = None) -> Optional[Forcing]:
    """The solver forcing of ``config.system.forcing`` (None without forcing)."""
    return config.system.forcing.build(seeds)


def make_filter(config) -> Filter:
    """The dataset's filter ``G`` (``les.filter``): what the LES output is scored after."""
    return Filter.from_config(config.les, config.system.length)


def solver_filter(config) -> Filter:
    """The filter of the field the LES advances: ``G`` (formulation ``filtered``), or the
    truncation ``P`` alone (formulation ``correction``: the transfer function 1)."""
    if config.les.formulation == "correction":
        return Filter("spectral", config.les.resolution, config.system.length)
    return make_filter(config)


class FilteredForcing(Forcing):
    """``P G f`` of a forcing ``f`` on the LES grid: the transfer function times f, Nyquist zeroed."""

    def __init__(self, base: Forcing, filter: Filter):
        self.base, self.filter = base, filter
        self.steady = getattr(base, "steady", True)
        self.piecewise_constant = getattr(base, "piecewise_constant", False)
        self.ndim = getattr(base, "ndim", None)

    def spectral(self, grid: SpectralGrid, t: float = 0.0) -> Optional[torch.Tensor]:
        keep = grid.truncation_mask(grid.n // 2, strict=True)
        base = self.base.spectral(grid, t)
        return None if base is None else base * (self.filter.transfer(grid) * keep)

    def linear_coefficient(self, grid: SpectralGrid) -> Optional[torch.Tensor]:
        """A forcing linear in the state is diagonal in k: it commutes with ``P G`` and is kept as is."""
        return self.base.linear_coefficient(grid)

    def subset(self, index):
        return FilteredForcing(self.base.subset(index), self.filter)

    def __repr__(self):
        return f"FilteredForcing({self.base!r}, {self.filter.type})"


def _equation(config, n: int, forcing, dtype, device):
    s = config.system
    return s.spec.solver(n, viscosity=s.viscosity, drag=s.drag, forcing=forcing, length=s.length,
                         dtype=dtype, device=device)


def dns_equation(config, dtype=torch.float64, device="cpu", seeds: Optional[Sequence[int]] = None):
    return _equation(config, config.dns.resolution, make_forcing(config, seeds), dtype, device)


def plain_equation(config, n: int, dtype=torch.float64, device="cpu", seeds: Optional[Sequence[int]] = None):
    """The DNS equation (the same physics and forcing ``f``) on an ``n``-point grid: the plain solver."""
    return _equation(config, int(n), make_forcing(config, seeds), dtype, device)


def les_equation(config, dtype=torch.float64, device="cpu", seeds: Optional[Sequence[int]] = None,
                 unforced: bool = False):
    """The LES equation with the filtered forcing ``P G f`` (``P f`` for the correction
    formulation, `solver_filter`); ``unforced=True`` leaves the forcing out (for closures and
    diagnostics that only need the LES grid and operators)."""
    base = None if unforced else make_forcing(config, seeds)
    forcing = None if base is None else FilteredForcing(base, solver_filter(config))
    return _equation(config, config.les.resolution, forcing, dtype, device)


def dns_step_rule(config):
    """The DNS's ``dt`` for `solvers.simulate`: the fixed ``dns.dt``, or for ``dns.dt: auto`` a
    `solvers.CFL` (CFL number ``dns.cfl``, steps at most ``dns.max_dt``)."""
    d = config.dns
    return CFL(cfl=d.cfl, max_dt=d.max_dt or math.inf) if d.adaptive else float(d.dt)


def dns_step_size(config, equation, w_hat: torch.Tensor) -> float:
    """One DNS step for the spectral state ``w_hat``: the fixed ``dns.dt``, or the CFL step
    (at most the sample interval) for ``dns.dt: auto``."""
    rule = dns_step_rule(config)
    if isinstance(rule, float):
        return rule
    return min(config.dns.sample_interval, rule.largest_step(equation, w_hat))


def initial_state(config, grid: SpectralGrid, seeds: Sequence[int]) -> torch.Tensor:
    """Random initial DNS fields (one per seed) from the ``initial`` section."""
    ini = config.initial
    return config.system.spec.initial(grid, seeds, ini)
