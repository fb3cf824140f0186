"""Integrator order, batching, dtypes, differentiability, blow-ups, devices."""

import math

import pytest
import torch

import solvers
from solvers.integrators import etdrk4_coefficients, stage_time

F64 = torch.float64

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def kolmogorov(n=32, dtype=F64, device="cpu"):
    return solvers.NavierStokes2D(n, viscosity=0.02, drag=0.1, forcing=solvers.Kolmogorov(4, 1.0),
                                  dtype=dtype, device=device)


def smooth_state(eq, seeds=(11,)):
    return solvers.random_vorticity(eq.grid, seeds=list(seeds), peak_wavenumber=3, energy=0.5)


def observed_order(eq, w0, method, dts, t_end):
    ref = eq.simulate(w0, dt=dts[-1] / 4, steps=int(round(t_end / (dts[-1] / 4))), method=method)
    errs = [(eq.simulate(w0, dt=dt, steps=int(round(t_end / dt)), method=method) - ref).abs().max().item()
            for dt in dts]
    return [math.log2(a / b) for a, b in zip(errs, errs[1:])], errs


def test_etdrk4_is_fourth_order_on_smooth_nonlinear_2d():
    eq = kolmogorov()
    orders, errs = observed_order(eq, smooth_state(eq), "etdrk4", [0.1, 0.05, 0.025], 1.0)
    assert errs[-1] > 1e-12
    assert min(orders) >= 3.8, orders


def test_cnrk4_is_second_order_in_the_implicit_part():
    # stiff linear part (viscosity) dominates the error at these steps
    eq = solvers.NavierStokes2D(32, viscosity=0.05, drag=0.0, dtype=F64)
    orders, _ = observed_order(eq, smooth_state(eq), "cnrk4", [0.1, 0.05, 0.025], 1.0)
    assert all(1.8 <= o <= 2.3 for o in orders), orders


def test_cnrk4_is_fourth_order_for_purely_explicit_dynamics():
    eq = solvers.NavierStokes2D(32, viscosity=0.0, dtype=F64)
    orders, _ = observed_order(eq, smooth_state(eq), "cnrk4", [0.1, 0.05, 0.025], 1.0)
    assert min(orders) >= 3.7, orders


def test_burgers_etdrk4_order():
    eq = solvers.Burgers1D(64, viscosity=0.05, dtype=F64)
    u0 = solvers.random_velocity(eq.grid, seeds=[1], peak_wavenumber=3, energy=0.2)
    orders, _ = observed_order(eq, u0, "etdrk4", [0.1, 0.05, 0.025], 1.0)
    assert min(orders) >= 3.8, orders


class SmoothInTime(solvers.Forcing):
    """``f = A cos(omega t + phi(x)) g(x)``: a forcing that varies smoothly in time (any dimension)."""

    steady = False

    def physical(self, grid, t=0.0):
        x = grid.mesh()[0]
        return 0.5 * torch.cos(3.0 * t + torch.sin(x)) * torch.cos(x)


class RedrawnEveryInterval(solvers.Forcing):
    """``f = s_j g(x)`` on ``[j tau, (j + 1) tau)`` with pseudo-random ``s_j``: piecewise constant in time."""

    steady = False
    piecewise_constant = True

    def __init__(self, interval):
        self.interval = interval

    def physical(self, grid, t=0.0):
        j = math.floor(t / self.interval + 1e-9)
        s = math.sin(12.9898 * j + 78.233)  # different on every interval, of order one
        x = grid.mesh()[0]
        return s * torch.cos(x + j)


def forced_case(equation, forcing):
    if equation == "burgers":
        eq = solvers.Burgers1D(64, viscosity=0.05, forcing=forcing, dtype=F64)
        return eq, solvers.random_velocity(eq.grid, seeds=[1], peak_wavenumber=3, energy=0.2)
    eq = solvers.NavierStokes2D(32, viscosity=0.02, drag=0.1, forcing=forcing, dtype=F64)
    return eq, smooth_state(eq)


@pytest.mark.parametrize("equation", ["burgers", "navier_stokes_2d"])
@pytest.mark.parametrize("method, expected", [("etdrk4", 3.7), ("cnrk4", 1.6)])
@pytest.mark.parametrize("kind", ["smooth", "piecewise_constant"])
def test_order_with_time_dependent_forcing(equation, method, expected, kind):
    # smooth: every stage must see its own time; piecewise constant (interval = the
    # largest step): every stage of a step must see the step's own interval. Either
    # mistake is a first-order error per step (observed order <= 1.25 with this
    # reference). CN-RK4 goes from 4 (explicit part) to 2 (Crank-Nicolson) here.
    forcing = SmoothInTime() if kind == "smooth" else RedrawnEveryInterval(interval=0.1)
    eq, w0 = forced_case(equation, forcing)
    orders, errs = observed_order(eq, w0, method, [0.1, 0.05, 0.025], 1.0)
    assert errs[-1] > 1e-13
    assert min(orders) >= expected, (orders, errs)


def test_piecewise_constant_forcing_is_sampled_at_the_step_start():
    forcing = RedrawnEveryInterval(interval=0.1)
    eq, _ = forced_case("burgers", forcing)
    assert [stage_time(eq, 0.1, c) for c in (0.0, 0.05, 0.1)] == [0.1, 0.1, 0.1]
    smooth, _ = forced_case("burgers", SmoothInTime())
    assert stage_time(smooth, 0.1, 0.05) == pytest.approx(0.15)
    assert solvers.StochasticBurgers([1]).piecewise_constant


def test_etdrk4_coefficients_match_direct_formulas_away_from_zero():
    L = torch.tensor([-50.0, -3.0, -0.7], dtype=F64)
    h = 0.1
    c = etdrk4_coefficients(L, h)
    z = h * L
    q = h * (torch.exp(z / 2) - 1) / z
    f1 = h * (-4 - z + torch.exp(z) * (4 - 3 * z + z ** 2)) / z ** 3
    f2 = h * (2 + z + torch.exp(z) * (z - 2)) / z ** 3
    f3 = h * (-4 - 3 * z - z ** 2 + torch.exp(z) * (4 - z)) / z ** 3
    for name, exact in [("Q", q), ("f1", f1), ("f2", f2), ("f3", f3)]:
        assert torch.allclose(c[name], exact, rtol=1e-12), name
    # the z -> 0 limits: Q = h/2, f1 = h/6, f2 = h/6, f3 = h/6
    c0 = etdrk4_coefficients(torch.zeros(1, dtype=F64), h)
    for name, lim in [("Q", h / 2), ("f1", h / 6), ("f2", h / 6), ("f3", h / 6)]:
        assert abs(c0[name].item() - lim) < 1e-14, name


def test_batch_equals_single_runs():
    eq = kolmogorov()
    w = smooth_state(eq, seeds=(1, 2, 3))
    batch = eq.simulate(w, dt=0.02, steps=20)
    for i in range(3):
        single = eq.simulate(w[i:i + 1], dt=0.02, steps=20)
        assert torch.allclose(batch[i], single[0], rtol=0, atol=1e-12)


def test_burgers_stochastic_forcing_is_independent_of_batching():
    seeds = [10, 20, 30]
    eq = solvers.Burgers1D(64, viscosity=0.05, forcing=solvers.StochasticBurgers(seeds, amplitude=0.1, interval=0.05),
                           dtype=F64)
    u0 = solvers.random_velocity(eq.grid, seeds=seeds, peak_wavenumber=3, energy=0.1)
    batch = eq.simulate(u0, dt=0.01, steps=30)
    eq1 = solvers.Burgers1D(64, viscosity=0.05, forcing=solvers.StochasticBurgers(seeds[1:2], amplitude=0.1, interval=0.05),
                            dtype=F64)
    single = eq1.simulate(u0[1:2], dt=0.01, steps=30)
    assert torch.allclose(batch[1], single[0], atol=1e-12)
    assert not torch.allclose(batch[0], batch[1])  # different seeds, different forcing
    # the forcing changes between intervals and is piecewise constant within one
    f = eq.forcing
    assert torch.equal(f.amplitudes(0.0), f.amplitudes(0.049))
    assert not torch.equal(f.amplitudes(0.0), f.amplitudes(0.05))


def test_random_initial_fields_are_reproducible_and_normalised():
    g = kolmogorov().grid
    a = solvers.random_vorticity(g, seeds=[5, 6], peak_wavenumber=4, energy=0.7)
    b = solvers.random_vorticity(g, seeds=[6], peak_wavenumber=4, energy=0.7)
    assert torch.allclose(a[1], b[0], atol=1e-14)
    eq = kolmogorov()
    assert torch.allclose(eq.energy(a), torch.full((2,), 0.7, dtype=F64), rtol=1e-12)


def test_float32_tracks_float64():
    eq64, eq32 = kolmogorov(dtype=F64), kolmogorov(dtype=torch.float32)
    w = smooth_state(eq64)
    a = eq64.simulate(w, dt=0.01, steps=50)
    b = eq32.simulate(w.float(), dt=0.01, steps=50)
    assert b.dtype == torch.float32
    assert ((b.double() - a).norm() / a.norm()).item() < 1e-4


@pytest.mark.parametrize("method", ["etdrk4", "cnrk4"])
def test_fused_step_matches_differentiable_path(method):
    # no autograd: the fused kept-columns step; a state requiring grad: the plain expressions
    eq = kolmogorov(48)   # K = (48 - 1) // 3 = 15: kept columns 0..15 of 25
    assert eq.kept_block() is not None
    w = solvers.random_vorticity(eq.grid, seeds=[1, 2], peak_wavenumber=6, energy=2.0)
    with torch.no_grad():
        fast = eq.simulate(w, dt=0.02, steps=10, method=method)
    ref = eq.simulate(w.clone().requires_grad_(True), dt=0.02, steps=10, method=method).detach()
    assert ((fast - ref).norm() / ref.norm()).item() < 1e-14
    assert not torch.equal(fast, w)
    # beyond the kept columns the state decays by exactly the linear factor
    fast_hat, w_hat = eq.grid.to_spectral(fast), eq.grid.to_spectral(w)
    factor = torch.exp(10 * 0.02 * eq.linear[..., 17:])
    if method == "etdrk4":
        assert torch.allclose(fast_hat[..., 17:], factor * w_hat[..., 17:], rtol=1e-12, atol=1e-9)


@pytest.mark.parametrize("method", ["etdrk4", "cnrk4"])
def test_fused_step_with_a_held_closure_matches_the_reference(method):
    # once per step: the kept-columns step with the held tendency (all modes, also beyond the
    # kept columns) equals the differentiable full-spectrum step to roundoff
    eq = kolmogorov(48)
    w = solvers.random_vorticity(eq.grid, seeds=[1, 2], peak_wavenumber=6, energy=2.0)
    x, y = eq.grid.mesh()
    pattern = torch.cos(3 * x + y) + 0.5 * torch.sin(20 * x - 7 * y)   # m_x = 20 > 16: beyond the kept columns

    def closure(state):
        return -0.3 * state + 0.5 * torch.tanh(state) * pattern

    block = eq.kept_block(solvers.integrators.HeldTendency(eq.grid.to_spectral(w)))
    assert block is not None
    with torch.no_grad():
        fast = eq.simulate(w, dt=0.02, steps=10, method=method, closure=closure, closure_per_stage=False)
    ref = eq.simulate(w.clone().requires_grad_(True), dt=0.02, steps=10, method=method, closure=closure,
                      closure_per_stage=False).detach()
    assert ((fast - ref).norm() / ref.norm()).item() < 1e-13
    plain = eq.simulate(w, dt=0.02, steps=10, method=method)
    assert ((fast - plain).norm() / plain.norm()).item() > 1e-2   # the closure acted


def test_fused_step_falls_back_without_the_kept_columns_layout():
    # a forcing beyond the kept columns, or a closure: the full-spectrum path
    eq = solvers.NavierStokes2D(24, viscosity=0.02, forcing=solvers.Guan(10, 1.0), dtype=F64)
    assert eq.kept_block() is None
    assert kolmogorov(24).kept_block(closure=lambda s: -s) is None


@pytest.mark.parametrize("method", ["etdrk4", "cnrk4"])
def test_gradcheck_through_steps_ns2d(method):
    eq = solvers.NavierStokes2D(8, viscosity=0.05, drag=0.1, forcing=solvers.Kolmogorov(1, 1.0), dtype=F64)
    w = (0.3 * smooth_state(eq)).requires_grad_(True)
    assert torch.autograd.gradcheck(lambda s: eq.simulate(s, dt=0.05, steps=3, method=method), (w,))


def test_gradcheck_through_steps_burgers_with_closure():
    eq = solvers.Burgers1D(16, viscosity=0.05, dtype=F64)
    u = solvers.random_velocity(eq.grid, seeds=[3], peak_wavenumber=2, energy=0.1).requires_grad_(True)
    c = torch.tensor(0.3, dtype=F64, requires_grad=True)
    closure = lambda s: -c * s  # noqa: E731 - a linear damping closure with a parameter
    assert torch.autograd.gradcheck(lambda s, c_: eq.simulate(s, dt=0.05, steps=3, closure=lambda x: -c_ * x),
                                    (u, c))
    closure(u)


def test_closure_is_called_at_every_stage():
    eq = kolmogorov()
    calls = []

    def closure(state):
        calls.append(state.shape)
        return torch.zeros_like(state)

    eq.simulate(smooth_state(eq), dt=0.01, steps=3, closure=closure)
    assert len(calls) == 3 * 4
    calls.clear()
    eq.simulate(smooth_state(eq), dt=0.01, steps=3, closure=closure, method="cnrk4")
    assert len(calls) == 3 * 5


def test_tendency_includes_closure_and_matches_time_derivative():
    eq = kolmogorov()
    w = smooth_state(eq)
    closure = lambda s: -0.5 * s  # noqa: E731
    dt = 1e-4
    traj = eq.simulate(w, dt=dt, steps=2, closure=closure, save_every=1)
    fd = (traj[:, 2] - traj[:, 0]) / (2 * dt)
    R = eq.tendency(traj[:, 1], closure=closure)
    assert ((fd - R).abs().max() / R.abs().max()).item() < 1e-6


def test_save_every_shapes_and_first_entry():
    eq = kolmogorov()
    w = smooth_state(eq, seeds=(1, 2))
    traj = eq.simulate(w, dt=0.01, steps=10, save_every=5)
    assert traj.shape == (2, 3, 32, 32)
    assert torch.equal(traj[:, 0], w)


def test_save_hooks_see_the_saved_states_and_steps():
    eq = kolmogorov(16)
    w = smooth_state(eq, seeds=(1, 2))
    traj = eq.simulate(w, dt=0.01, steps=6, save_every=3)
    seen, steps_seen = [], []
    final = eq.simulate(w, dt=0.01, steps=6, save_at=[0, 3, 6], time=1.0,
                        on_save=lambda step, t, w_hat: seen.append((step, t, eq.grid.to_physical(w_hat))),
                        on_step=lambda step, t, w_hat: steps_seen.append(step))
    assert [s for s, _, _ in seen] == [0, 3, 6] and steps_seen == [1, 2, 3, 4, 5, 6]
    assert [t for _, t, _ in seen] == [1.0, 1.0 + 3 * 0.01, 1.0 + 6 * 0.01]
    assert torch.equal(torch.stack([x for _, _, x in seen[1:]], dim=1), traj[:, 1:])
    assert torch.allclose(seen[0][2], w, atol=1e-12)  # the initial state, through the transform pair
    assert torch.equal(final, traj[:, -1])
    uneven = eq.simulate(w, dt=0.01, steps=5, save_at=[2, 5])
    assert torch.equal(uneven[:, 0], w) and torch.equal(uneven[:, 2], eq.simulate(w, dt=0.01, steps=5))


def test_checkpointed_variant_is_the_same_loop():
    eq = solvers.Burgers1D(32, viscosity=0.05, forcing=solvers.StochasticBurgers([3, 4], interval=0.02),
                           dtype=F64)
    u = torch.sin(eq.grid.mesh()[0])[None].repeat(2, 1)
    plain = eq.simulate(u, dt=0.01, steps=8, save_every=4, time=0.5)
    for group in (None, 1, 3):
        ckpt = solvers.simulate_checkpointed(eq, u, 0.01, 8, None, 4, 0.5, checkpoint_every=group)
        assert torch.equal(ckpt, plain)


def test_steppers_are_functions_of_an_implicit_explicit_equation():
    class Decay:  # w_t = -w + 0: exact solution e^{-t}
        grid = solvers.SpectralGrid(8, 2 * math.pi, 1, F64, torch.device("cpu"))
        linear = -torch.ones(5, dtype=F64)

        def explicit_hat(self, w_hat, t=0.0, closure=None):
            return torch.zeros_like(w_hat)

    eq = Decay()
    assert isinstance(eq, solvers.ImplicitExplicitEquation)
    w_hat = torch.ones(1, 5, dtype=torch.complex128)
    for method in solvers.STEPPERS:
        out = solvers.make_stepper(method, eq, 0.1).step(w_hat, 0.0)
        assert torch.allclose(out.real, torch.full_like(out.real, math.exp(-0.1)), atol=1e-5)


def test_blow_up_raises_with_step_and_members():
    eq = solvers.NavierStokes2D(32, viscosity=1e-4, dtype=F64)
    w = smooth_state(eq, seeds=(1, 2))
    w = w * torch.tensor([1.0, 1e6], dtype=F64)[:, None, None]
    with pytest.raises(solvers.BlowUpError) as info:
        eq.simulate(w, dt=1.0, steps=200)
    err = info.value
    assert err.members == [1]
    assert 1 <= err.step <= 200 and err.time == pytest.approx(err.step * 1.0)
    assert "step" in str(err) and "[1]" in str(err)


def test_stable_dt():
    eq = kolmogorov()
    w = smooth_state(eq)
    dt = eq.stable_dt(w, cfl=0.5)
    u, v = eq.velocity(w)
    assert dt == pytest.approx(0.5 * eq.grid.spacing / (u.abs().max() + v.abs().max()).item())


def test_bad_state_shape_is_rejected():
    eq = kolmogorov()
    with pytest.raises(ValueError, match="shape"):
        eq.simulate(torch.zeros(32, 32, dtype=F64), dt=0.1, steps=1)


@cuda
@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_cuda_matches_cpu(dtype):
    cpu = kolmogorov(64, dtype=dtype)
    gpu = kolmogorov(64, dtype=dtype, device="cuda")
    w = smooth_state(cpu, seeds=(1, 2)).to(dtype)
    a = cpu.simulate(w, dt=0.01, steps=20)
    b = gpu.simulate(w.cuda(), dt=0.01, steps=20).cpu()
    tol = 1e-10 if dtype == F64 else 1e-4
    assert ((a - b).norm() / a.norm()).item() < tol


@cuda
@pytest.mark.cuda
def test_cuda_taylor_green_and_blowup():
    eq = solvers.NavierStokes2D(32, viscosity=0.05, drag=0.1, dtype=F64, device="cuda")
    x, y = eq.grid.mesh()
    w0 = (2 * torch.sin(x) * torch.sin(y))[None]
    w = eq.simulate(w0, dt=0.01, steps=100)
    assert ((w - w0 * math.exp(-(0.1 + 0.1))).abs().max() / w0.abs().max()).item() < 1e-10
    with pytest.raises(solvers.BlowUpError):
        eq.simulate(w0 * 1e8, dt=10.0, steps=200)


@cuda
@pytest.mark.cuda
def test_cuda_gradients_flow():
    eq = kolmogorov(16, device="cuda")
    w = smooth_state(kolmogorov(16)).cuda().requires_grad_(True)
    eq.simulate(w, dt=0.05, steps=3).pow(2).mean().backward()
    assert torch.isfinite(w.grad).all() and w.grad.abs().sum() > 0


def test_cfl_steps_land_on_the_save_times_and_converge_at_fourth_order():
    eq = kolmogorov(32)
    w0 = smooth_state(eq, seeds=(1, 2))
    times = [0.3, 0.65, 1.0]   # not multiples of any step the controller picks
    ref = eq.simulate(w0, dt=1e-3, save_times=times)
    errors = []
    for cfl in (0.8, 0.4):
        seen = []
        out = eq.simulate(w0, solvers.CFL(cfl=cfl), save_times=times,
                          on_save=lambda step, t, w_hat: seen.append((step, t)))
        assert [t for _, t in seen] == times                       # exactly, not summed
        assert seen[0][0] > 1 and seen[-1][0] > seen[0][0]         # steps counted
        traj = eq.simulate(w0, solvers.CFL(cfl=cfl), save_times=times)
        assert traj.shape[1] == 4 and torch.equal(traj[:, 0], w0) and torch.equal(traj[:, -1], out)
        errors.append(((traj[:, 1:] - ref[:, 1:]).norm() / ref.norm()).item())
    assert errors[0] < 1e-4
    assert errors[0] / errors[1] > 10, errors                     # halving cfl: ~16x (fourth order)


def test_cfl_halves_the_step_when_the_flow_speeds_up_and_still_lands():
    # a nearly resting fluid under strong forcing: the first step size is too large later
    eq = solvers.NavierStokes2D(32, viscosity=0.02, forcing=solvers.Kolmogorov(2, 20.0), dtype=F64)
    w0 = 1e-3 * smooth_state(eq)
    steps = []
    out = eq.simulate(w0, solvers.CFL(cfl=0.5, max_dt=0.05, check_every=1), save_times=[1.0],
                      on_step=lambda step, t, w_hat: steps.append(t))
    ref = eq.simulate(w0, 1e-3, 1000)
    assert ((out[:, -1] - ref).norm() / ref.norm()).item() < 1e-3
    dts = torch.diff(torch.tensor([0.0] + steps, dtype=F64))
    assert steps[-1] == 1.0
    assert dts[0] == dts.max() <= 0.05 and dts.min() < dts.max() / 3   # halved (at least twice)
    u_max = eq.max_speed(ref)
    assert (dts[-1] * u_max.max() / eq.grid.spacing).item() <= 0.5 * 1.01


def test_cfl_arguments_are_checked():
    eq = kolmogorov(16)
    w0 = smooth_state(eq)
    with pytest.raises(ValueError, match="save_times"):
        eq.simulate(w0, solvers.CFL(), save_times=[0.5, 0.2])
    with pytest.raises(ValueError, match="adaptive"):
        eq.simulate(w0, solvers.CFL(), 10, save_times=[0.5])
    with pytest.raises(ValueError, match="cfl"):
        solvers.CFL(cfl=0)
    with pytest.raises(ValueError, match="multiples"):
        eq.simulate(w0, 0.1, save_times=[0.25])


def _damped_single_mode(closure_per_stage: bool, dt: float, a: float = 3.0, t_end: float = 0.4) -> float:
    """Max error of omega = sin(2x) under the closure -a omega (its advection vanishes) vs the exact decay."""
    eq = solvers.NavierStokes2D(16, viscosity=0.05, drag=0.1, dtype=F64)
    x, _ = eq.grid.mesh()
    w0 = torch.sin(2 * x)[None]
    out = eq.simulate(w0, dt=dt, steps=int(round(t_end / dt)), closure=lambda w: -a * w,
                      closure_per_stage=closure_per_stage)
    exact = w0 * math.exp(-(0.05 * 4 + 0.1 + a) * t_end)
    return (out - exact).abs().max().item()


def test_closure_once_per_step_is_first_order_and_per_stage_is_fourth():
    """A held closure is the step-start value on every stage: first order in dt; at every stage: ETDRK4's fourth."""
    held = [_damped_single_mode(False, dt) for dt in (0.04, 0.02, 0.01)]
    staged = [_damped_single_mode(True, dt) for dt in (0.04, 0.02, 0.01)]
    held_orders = [math.log2(a / b) for a, b in zip(held, held[1:])]
    assert all(0.8 < p < 1.3 for p in held_orders), held_orders
    assert staged[-1] < 1e-8 and staged[0] / staged[1] > 10, staged


def test_closure_once_per_step_calls_the_closure_once_per_step_and_a_constant_is_unchanged():
    eq = kolmogorov()
    calls = []

    def constant(state):
        calls.append(state.shape)
        return torch.full_like(state, 0.3) * torch.cos(torch.arange(32, dtype=F64))[None, :]

    w0 = smooth_state(eq)
    held = eq.simulate(w0, dt=0.01, steps=3, closure=constant, closure_per_stage=False)
    assert len(calls) == 3
    staged = eq.simulate(w0, dt=0.01, steps=3, closure=constant)
    torch.testing.assert_close(held, staged, rtol=1e-12, atol=1e-12)
    calls.clear()
    eq.simulate(w0, dt=0.01, steps=3, closure=constant, method="cnrk4", closure_per_stage=False)
    assert len(calls) == 3


@pytest.mark.parametrize("cls,ndim,n", [(solvers.Burgers1D, 1, 24), (solvers.NavierStokes2D, 2, 24),
                                        (solvers.NavierStokes3D, 3, 12), (solvers.NavierStokes3D, 3, 16)])
def test_two_thirds_rule_is_alias_free_when_three_divides_n(cls, ndim, n):
    """The 2/3 rule keeps |m| <= K = (n - 1) // 3 (3 K < n): the nonlinear term of a truncated
    field equals the exact (alias-free, 4x finer grid) product restricted to the kept modes.
    With K = n // 3 and 3 | n the pair (K, K) aliases onto the kept mode -K (a ~20% error)."""
    from closure.data.filters import prolong_hat, restrict_hat

    les, fine = (cls(m, viscosity=1.0, dtype=torch.float64) for m in (n, 4 * n))
    assert les.grid.dealias_cutoff == (n - 1) // 3
    torch.manual_seed(0)
    shape = (2,) + ((3,) if ndim == 3 else ()) + (n,) * ndim
    f_hat = les.grid.to_spectral(torch.randn(shape, dtype=torch.float64)) * les.grid.dealias
    if ndim == 3:
        f_hat = solvers.solenoidal_projection(f_hat, les.grid)
    exact = restrict_hat(fine.nonlinear_hat(prolong_hat(f_hat, les.grid, fine.grid)), fine.grid, les.grid)
    got = les.nonlinear_hat(f_hat)
    assert float(got.abs().max()) > 1e-3
    torch.testing.assert_close(got, exact * les.grid.dealias, rtol=1e-10, atol=1e-10 * float(exact.abs().max()))
