"""The equations the framework knows: one `EquationSpec` per ``system.equation`` name.

A spec ties the config's name of an equation to everything decided from it: the
solver class, the number of space dimensions, the name of the state field, the
dataset's spatial dimensions and variable names, the forcing types that apply
and the random initial fields. Every other module asks the spec
(``equation_spec(config.system.equation)``); adding an equation is one entry in
`EQUATIONS`.

Dataset variables: a scalar state (the Burgers velocity ``u``, the 2D vorticity
``omega``) is stored as the variable ``field`` with its SGS term ``sgs``; a vector
state (the 3D velocity, in memory ``(batch, 3, n, n, n)``) as one variable per
component (``u, v, w`` and ``sgs_u, sgs_v, sgs_w``). The spatial dimensions are
ordered slowest first (``z, y, x``), as the arrays are indexed ``[..., z, y, x]``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import solvers

__all__ = ["EquationSpec", "EQUATIONS", "EQUATION_NAMES", "equation_spec"]


@dataclass(frozen=True)
class EquationSpec:
    """What the framework needs to know about one equation.

    - ``name``: the ``system.equation`` key;
    - ``solver``: the `solvers.SpectralEquation` subclass, called as
      ``solver(n, viscosity=, drag=, forcing=, length=, dtype=, device=)``;
    - ``ndim``: space dimensions;
    - ``field``: the name of the state (``u``, ``omega``);
    - ``dims``: the dataset's spatial dimension names, slowest first;
    - ``variables``: the dataset's state variables (one per component); ``sgs_variables``
      their SGS terms;
    - ``forcings``: the ``system.forcing.type`` values that apply;
    - ``initial``: ``initial(grid, seeds, initial_section)``, the initial states (one per seed).
    """

    name: str
    solver: type
    ndim: int
    field: str
    dims: tuple[str, ...]
    variables: tuple[str, ...]
    sgs_variables: tuple[str, ...]
    forcings: tuple[str, ...]
    initial: Callable


    @property
    def components(self) -> int:
        """Components of the state (1 for a scalar field)."""
        return len(self.variables)


def _random_vorticity(grid, seeds, ini):
    return solvers.random_vorticity(grid, seeds, peak_wavenumber=ini.peak_wavenumber, energy=ini.energy)


def _random_velocity(grid, seeds, ini):
    return solvers.random_velocity(grid, seeds, peak_wavenumber=ini.peak_wavenumber, energy=ini.energy)


def _velocity_3d(grid, seeds, ini):
    if ini.type == "taylor_green":  # E = V^2 / 8
        return solvers.taylor_green_vortex(grid, amplitude=(8 * ini.energy) ** 0.5, batch=len(seeds))
    return solvers.random_solenoidal_velocity(grid, seeds, peak_wavenumber=ini.peak_wavenumber, energy=ini.energy)


EQUATIONS: dict[str, EquationSpec] = {
    spec.name: spec for spec in (
        EquationSpec("navier_stokes_2d", solvers.NavierStokes2D, 2, "omega", ("y", "x"), ("omega",), ("sgs",),
                     ("none", "kolmogorov", "guan"), _random_vorticity),
        EquationSpec("burgers_1d", solvers.Burgers1D, 1, "u", ("x",), ("u",), ("sgs",),
                     ("none", "stochastic"), _random_velocity),
        EquationSpec("navier_stokes_3d", solvers.NavierStokes3D, 3, "velocity", ("z", "y", "x"), ("u", "v", "w"),
                     ("sgs_u", "sgs_v", "sgs_w"), ("none", "linear", "band"), _velocity_3d),
    )
}
EQUATION_NAMES = tuple(EQUATIONS)


def equation_spec(name: str) -> EquationSpec:
    """The spec of ``name``; ValueError naming the known equations otherwise."""
    try:
        return EQUATIONS[name]
    except KeyError:
        raise ValueError(f"unknown equation {name!r}; choose from {', '.join(EQUATIONS)}") from None
