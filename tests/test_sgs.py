"""The SGS identity (docs/conventions.md): d(P G w)/dt = R_les(P G w) + sgs.

1. Exactly (to roundoff): one ETDRK4 stepper advances a joint system (DNS, LES)
   in which the LES closure at each stage is the exact sgs of the concurrent DNS
   stage. Every ETDRK4 coefficient is a function of the diagonal L, which is the
   same on the DNS and LES modes, and P G is diagonal, so the LES state stays
   P G w at every stage.
2. Time discretisation: the LES whose sgs comes from the DNS only at step starts
   (frozen within the step) recovers P G w with an error O(dt) (first order: a
   piecewise-constant forcing term).
"""

from __future__ import annotations

import math

import pytest
import torch


from closure.config import config_from_dict
from closure.data.filters import Filter
from closure.data.sgs import filtered_field_and_sgs, sgs_hat
from closure.data.system import dns_equation, initial_state, les_equation, make_filter, trajectory_seeds
from solvers.integrators import ETDRK4


class JointEquation:
    """(DNS spectral state, LES spectral state) packed in one flat complex vector."""

    def __init__(self, dns, les, filt: Filter):
        self.dns, self.les, self.filt = dns, les, filt
        components = (3,) if dns.grid.ndim == 3 else ()  # the 3D state has a component axis
        self.shape_d = components + dns.grid.spectral_shape
        self.shape_l = components + les.grid.spectral_shape
        self.nd, self.nl = math.prod(self.shape_d), math.prod(self.shape_l)
        self.linear = torch.cat([dns.linear.expand(self.shape_d).reshape(-1),
                                 les.linear.expand(self.shape_l).reshape(-1)])

    def pack(self, w_hat, v_hat):
        return torch.cat([w_hat.reshape(w_hat.shape[0], -1), v_hat.reshape(v_hat.shape[0], -1)], dim=-1)

    def unpack(self, z):
        b = z.shape[0]
        return z[:, :self.nd].reshape(b, *self.shape_d), z[:, self.nd:].reshape(b, *self.shape_l)

    def explicit_hat(self, z, t=0.0, closure=None):
        w_hat, v_hat = self.unpack(z)
        _, s_hat = sgs_hat(w_hat, self.dns, self.les, self.filt)
        return self.pack(self.dns.explicit_hat(w_hat, t), self.les.explicit_hat(v_hat, t) + s_hat)


def _setup(equation: str, filter_type: str, width: float = 2.0):
    if equation == "navier_stokes_3d":
        raw = {"dtype": "float64", "system": {"equation": equation, "viscosity": 2e-2, "drag": 0.05,
                                              "forcing": {"type": "linear", "coefficient": 0.3, "wavenumber": 2}},
               "initial": {"peak_wavenumber": 3.0, "energy": 0.5},
               "dns": {"resolution": 24, "dt": 0.02}, "les": {"resolution": 12}}
    elif equation == "navier_stokes_2d":
        raw = {"dtype": "float64", "system": {"equation": equation, "viscosity": 1e-2, "drag": 0.1,
                                              "forcing": {"type": "kolmogorov", "wavenumber": 2}},
               "initial": {"peak_wavenumber": 4.0, "energy": 0.5},
               "dns": {"resolution": 48, "dt": 0.01}, "les": {"resolution": 16}}
    else:
        raw = {"dtype": "float64", "system": {"equation": equation, "viscosity": 2e-2,
                                              "forcing": {"type": "stochastic", "amplitude": 0.2, "interval": 0.05}},
               "initial": {"peak_wavenumber": 5.0, "energy": 0.5},
               "dns": {"resolution": 96, "dt": 0.01}, "les": {"resolution": 24}}
    raw["les"]["filter"] = {"type": filter_type, "width": width}
    config = config_from_dict(raw)
    seeds = trajectory_seeds(config, [0, 1])
    dns = dns_equation(config, torch.float64, "cpu", seeds)
    les = les_equation(config, torch.float64, "cpu", seeds)
    filt = make_filter(config)
    w0 = initial_state(config, dns.grid, seeds)
    return config, dns, les, filt, w0


CASES = [(eq, f) for eq in ("navier_stokes_2d", "burgers_1d") for f in ("spectral", "gaussian", "box")]
CASES += [("navier_stokes_3d", "box")]


@pytest.mark.parametrize("equation,filter_type", CASES)
def test_les_with_concurrent_exact_sgs_recovers_filtered_dns(equation, filter_type):
    config, dns, les, filt, w0 = _setup(equation, filter_type)
    joint = JointEquation(dns, les, filt)
    w_hat = dns.grid.to_spectral(w0)
    v_hat = filt.coarse_grain_hat(w_hat, dns.grid, les.grid)
    z = joint.pack(w_hat, v_hat)
    dt, steps = (0.02, 15) if equation == "navier_stokes_3d" else (0.01, 60)
    stepper = ETDRK4(joint, dt)
    for i in range(steps):
        z = stepper.step(z, i * dt)
    w_hat, v_hat = joint.unpack(z)
    target = les.grid.to_physical(filt.coarse_grain_hat(w_hat, dns.grid, les.grid))
    v = les.grid.to_physical(v_hat)
    scale = float(target.abs().max())
    err = float((v - target).abs().max()) / scale
    # the flow evolves: without the sgs term the LES departs visibly from P G w
    les_alone = les.simulate(les.grid.to_physical(filt.coarse_grain_hat(dns.grid.to_spectral(w0), dns.grid, les.grid)),
                             dt=dt, steps=steps)
    gap = float((les_alone - target).abs().max()) / scale
    assert err < 1e-11, err
    assert gap > 1e-4, gap


def _frozen_sgs_error(equation: str, filter_type: str, dt: float, t_end: float = 0.4) -> float:
    config, dns, les, filt, w0 = _setup(equation, filter_type)
    steps = int(round(t_end / dt))
    w_hat = dns.grid.to_spectral(w0)
    v_hat = filt.coarse_grain_hat(w_hat, dns.grid, les.grid)
    dns_step, les_step = dns.stepper("etdrk4", dt), les.stepper("etdrk4", dt)
    for i in range(steps):
        t = i * dt
        _, s_hat = sgs_hat(w_hat, dns, les, filt)
        s = les.grid.to_physical(s_hat)
        v_hat = les_step.step(v_hat, t, lambda v, s=s: s)
        w_hat = dns_step.step(w_hat, t)
    target = filt.coarse_grain_hat(w_hat, dns.grid, les.grid)
    return float((les.grid.to_physical(v_hat - target)).abs().max() / les.grid.to_physical(target).abs().max())


@pytest.mark.parametrize("equation,filter_type", [("navier_stokes_2d", "gaussian"), ("burgers_1d", "box")])
def test_frozen_sgs_converges_at_first_order(equation, filter_type):
    errors = [_frozen_sgs_error(equation, filter_type, dt) for dt in (0.02, 0.01, 0.005)]
    orders = [math.log2(errors[i] / errors[i + 1]) for i in range(2)]
    assert errors[-1] < 1e-2, errors
    for p in orders:
        assert 0.8 < p < 1.3, (errors, orders)


@pytest.mark.parametrize("equation", ["navier_stokes_2d", "navier_stokes_3d"])
def test_sgs_definition_equals_filtered_tendency_difference(equation):
    """sgs = P G R(w) - R_les(P G w): the linear terms and forcing (linear forcing in 3D) cancel."""
    config, dns, les, filt, w0 = _setup(equation, "gaussian")
    field, sgs = filtered_field_and_sgs(w0, dns, les, filt)
    lhs = filt.coarse_grain(dns.tendency(w0), dns.grid, les.grid) - les.tendency(field)
    assert torch.allclose(sgs, lhs, atol=1e-11 * float(lhs.abs().max()))


def test_sgs_vanishes_for_fields_the_les_resolves_without_interaction():
    """A single-shell field (Taylor-Green) has N = 0 on both grids: sgs = 0 for any filter."""
    config, dns, les, filt, _ = _setup("navier_stokes_2d", "gaussian")
    x, y = dns.grid.mesh()
    w = (2 * torch.sin(x) * torch.sin(y)).unsqueeze(0)
    _, sgs = filtered_field_and_sgs(w, dns, les, filt)
    assert float(sgs.abs().max()) < 1e-12


def test_sgs_is_nonzero_and_finite_for_a_turbulent_field():
    config, dns, les, filt, w0 = _setup("navier_stokes_2d", "spectral")
    field, sgs = filtered_field_and_sgs(w0, dns, les, filt)
    assert torch.isfinite(sgs).all()
    assert float(sgs.std()) > 1e-3 * float(field.std())


def test_les_forcing_keeps_the_piecewise_constant_time_rule():
    """P G f of a piecewise-constant forcing is sampled like f: at the step start in every stage."""
    _, dns, les, _, _ = _setup("burgers_1d", "box")
    assert dns.forcing.piecewise_constant and les.forcing.piecewise_constant


def test_sgs_vanishes_for_a_beltrami_field_in_3d():
    """The ABC flow has u x omega = 0 on both grids: sgs = 0, and P G keeps it (a single shell |m| = 1)."""
    import solvers

    config, dns, les, filt, _ = _setup("navier_stokes_3d", "gaussian")
    u = solvers.abc_flow(dns.grid, 1.0, 0.6, 0.3)
    field, sgs = filtered_field_and_sgs(u, dns, les, filt)
    assert float(sgs.abs().max()) < 1e-12
    G1 = math.exp(-(2 * (2 * math.pi / 12)) ** 2 / 24)  # the Gaussian at |k| = 1, width 2 LES spacings
    assert torch.allclose(field, G1 * solvers.abc_flow(les.grid, 1.0, 0.6, 0.3), atol=1e-12)
