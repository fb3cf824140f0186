"""solvers: differentiable pseudo-spectral PDE solvers in PyTorch.

Pure physics and numerics: batched (a leading batch dimension everywhere),
any device, float32 or float64, differentiable end to end. No I/O, no ML.

    eq = solvers.NavierStokes2D(n, viscosity=1e-3, drag=0.1, forcing=solvers.Kolmogorov(4, 1.0))
    omega = solvers.random_vorticity(eq.grid, seeds=[0, 1, 2])
    traj = eq.simulate(omega, dt=1e-3, steps=1000, save_every=100)
"""

from solvers.burgers import Burgers1D
from solvers.equation import ImplicitExplicitEquation, SpectralEquation
from solvers.forcing import (BandForcing, Forcing, Guan, Kolmogorov, LinearForcing, StochasticBurgers,
                             solenoidal_projection)
from solvers.initial import (abc_flow, random_solenoidal_velocity, random_velocity, random_vorticity,
                             taylor_green_vortex)
from solvers.integrators import (STEPPERS, BlowUpError, CrankNicolsonRK4, ETDRK4, HeldTendency, make_stepper,
                                 simulate, simulate_checkpointed)
from solvers.navier_stokes import NavierStokes2D
from solvers.navier_stokes_3d import NavierStokes3D
from solvers.spectral import SpectralGrid
from solvers.timestep import CFL

__all__ = [
    "Burgers1D", "NavierStokes2D", "NavierStokes3D", "SpectralEquation", "ImplicitExplicitEquation",
    "SpectralGrid",
    "Forcing", "Kolmogorov", "Guan", "StochasticBurgers", "LinearForcing", "BandForcing",
    "solenoidal_projection",
    "random_vorticity", "random_velocity", "random_solenoidal_velocity", "taylor_green_vortex", "abc_flow",
    "ETDRK4", "CrankNicolsonRK4", "STEPPERS", "make_stepper", "BlowUpError", "simulate",
    "simulate_checkpointed", "CFL", "HeldTendency",
]
