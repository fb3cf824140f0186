"""A-posteriori (solver-in-the-loop) gradients: finite differences, checkpointing."""

import pytest
import torch

import solvers
from closure.nn import build_model
from closure.training.unroll import rollout, steps_per_sample, trajectory_loss, window_loss

F64 = torch.float64


def burgers_case():
    eq = solvers.Burgers1D(32, viscosity=0.05, dtype=F64)
    u0 = solvers.random_velocity(eq.grid, [1, 2], peak_wavenumber=3, energy=0.1)
    reference = eq.simulate(u0, dt=0.02, steps=20, save_every=5)
    return eq, reference


def test_unrolled_gradient_matches_finite_differences():
    eq, reference = burgers_case()
    torch.manual_seed(0)
    model = build_model({"type": "mlp", "stencil": 3, "hidden": [8], "gammas": [1.0]}, 1, dtype=F64)
    params = [p for p in model.parameters() if p.requires_grad]

    def loss():
        return window_loss(eq, model, reference, 0.02, 5).sum()

    model.zero_grad()
    loss().backward()
    grads = [p.grad.clone() for p in params]
    direction = [torch.randn_like(p) for p in params]
    analytic = sum((g * d).sum() for g, d in zip(grads, direction)).item()
    h = 1e-6
    with torch.no_grad():
        for p, d in zip(params, direction):
            p.add_(h * d)
        plus = loss().item()
        for p, d in zip(params, direction):
            p.sub_(2 * h * d)
        minus = loss().item()
        for p, d in zip(params, direction):
            p.add_(h * d)
    numeric = (plus - minus) / (2 * h)
    assert analytic != 0
    assert abs(analytic - numeric) < 1e-6 * max(1.0, abs(numeric))


@pytest.mark.parametrize("group", [1, 3])
def test_checkpointed_gradients_equal_plain_ones(group):
    eq, reference = burgers_case()
    torch.manual_seed(1)
    model = build_model({"type": "mlp", "stencil": 3, "hidden": [8], "gammas": [1.0]}, 1, dtype=F64)
    grads = []
    for ck in (None, group):
        model.zero_grad()
        window_loss(eq, model, reference, 0.02, 5, checkpoint_every=ck).sum().backward()
        grads.append([p.grad.clone() for p in model.parameters()])
    for a, b in zip(*grads):
        assert torch.allclose(a, b, rtol=1e-12, atol=1e-14)


def saved_bytes(steps, checkpoint_every):
    eq = solvers.NavierStokes2D(32, viscosity=1e-3, drag=0.1, forcing=solvers.Kolmogorov(4, 1.0), dtype=F64)
    model = build_model({"type": "mlp", "stencil": 3, "hidden": [16], "gammas": [1.0]}, 2, dtype=F64)
    w0 = solvers.random_vorticity(eq.grid, seeds=[0, 1], peak_wavenumber=4)
    total = [0]

    def pack(t):
        total[0] += t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        traj = rollout(eq, model, w0, 1e-3, steps, steps, checkpoint_every=checkpoint_every)
    traj[:, -1].pow(2).mean().backward()
    return total[0]


def test_checkpointing_memory_grows_far_slower_than_unroll_length():
    """Memory kept for the backward pass: K = 32 costs at most 3x K = 4 with checkpointing
    (the plain rollout grows ~8x); benchmarks/unroll_memory.py measures resident memory."""
    ck4, ck32 = saved_bytes(4, 1), saved_bytes(32, 1)
    plain4, plain32 = saved_bytes(4, None), saved_bytes(32, None)
    assert plain32 / plain4 > 6
    # per-step checkpoints keep one spectral state per step; the recomputed step adds
    # one step's worth of intermediates (plain4 / 4) at a time during the backward pass
    peak4, peak32 = ck4 + plain4 / 4, ck32 + plain4 / 4
    assert peak32 / peak4 <= 3


def test_trajectory_loss_is_zero_on_the_reference_and_positive_otherwise():
    _, reference = burgers_case()
    assert torch.all(trajectory_loss(reference, reference, 1, spectral_weight=1.0) == 0)
    assert torch.all(trajectory_loss(reference * 1.1, reference, 1, spectral_weight=1.0) > 0)


def test_steps_per_sample_requires_whole_multiples():
    assert steps_per_sample(0.1, 0.01) == 10
    with pytest.raises(ValueError, match="whole multiple"):
        steps_per_sample(0.1, 0.03)
