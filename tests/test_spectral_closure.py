"""A learned closure fed the solver's spectral state and nonlinear term (`solvers.equation.SpectralClosure`)
gives the tendency, the LES trajectory and the gradients of the physical path to roundoff."""

import pytest
import torch

import solvers
from closure.nn.cnn import ConvClosure
from closure.nn.stencil import StencilClosure

F64 = torch.float64
FEATURES = [[], ["dealias_residual"], ["dealias_residual", "gradient", "laplacian", "velocity_gradient"]]


def les_equation(n=32):
    return solvers.NavierStokes2D(n, viscosity=0.02, drag=0.1, forcing=solvers.Kolmogorov(4, 1.0), dtype=F64)


def closure(features, seed=0, kind=StencilClosure):
    """A small closure with random weights and normalization (so that every channel counts)."""
    torch.manual_seed(seed)
    model = kind(2, stencil=3, hidden=[8, 8], features=features).to(F64)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.5)
        c = model.n_channels
        model.input_mean.copy_(0.1 * torch.randn(c, dtype=F64))
        model.input_std.copy_(0.5 + torch.rand(c, dtype=F64))
        model.output_std.fill_(0.3)
    return model.eval()


def state(eq, seeds=(3, 4)):
    return solvers.random_vorticity(eq.grid, seeds=list(seeds), peak_wavenumber=4, energy=0.5)


def physical(model):
    """The same closure seen as a plain callable (the solver's physical path)."""
    return lambda w: model(w)


def relative(a, b):
    return float(((a - b).abs().max() / b.abs().max()).detach())


@pytest.mark.parametrize("kind", [StencilClosure, ConvClosure])
@pytest.mark.parametrize("features", FEATURES)
def test_closure_hat_is_the_spectrum_of_the_physical_tendency(features, kind):
    eq, model = les_equation(), closure(features, kind=kind)
    w_hat = eq.grid.to_spectral(state(eq))
    reference = eq.grid.to_spectral(model(eq.grid.to_physical(w_hat)))  # autograd on: the unfolded network
    for grad in (True, False):  # the unfolded network, and the folded one
        with torch.set_grad_enabled(grad):
            for nonlinear in (eq.nonlinear_hat(w_hat), None):
                assert relative(model.closure_hat(eq, w_hat, nonlinear), reference) < 1e-12


def test_closure_hat_uses_the_given_nonlinear_term_only_from_the_same_les_term():
    eq, model = les_equation(), closure(["dealias_residual"])
    w_hat = eq.grid.to_spectral(state(eq))

    class Scaled(solvers.NavierStokes2D):
        def nonlinear_hat(self, state_hat):
            return 0.5 * super().nonlinear_hat(state_hat)

    other = Scaled(32, viscosity=0.02, dtype=F64)
    with torch.no_grad():
        reference = model.closure_hat(eq, w_hat, None)
        # the given term is used (a wrong one changes the tendency) ...
        assert relative(model.closure_hat(eq, w_hat, 0.5 * eq.nonlinear_hat(w_hat)), reference) > 1e-5
        # ... but not another equation's nonlinear term
        assert relative(model.closure_hat(other, w_hat, other.nonlinear_hat(w_hat)), reference) < 1e-12


@pytest.mark.parametrize("per_stage", [True, False])
@pytest.mark.parametrize("features", FEATURES[1:])
def test_les_with_the_shared_terms_follows_the_physical_path(features, per_stage):
    eq, model = les_equation(), closure(features)
    w0 = state(eq)
    with torch.no_grad():
        shared = eq.simulate(w0, dt=0.05, steps=20, closure=model, save_every=5, closure_per_stage=per_stage)
        plain = eq.simulate(w0, dt=0.05, steps=20, closure=physical(model), save_every=5,
                            closure_per_stage=per_stage)
        free = eq.simulate(w0, dt=0.05, steps=20, save_every=5)
    assert relative(shared, plain) < 1e-11
    assert relative(plain, free) > 1e-3  # the closure matters


def test_the_shared_path_spares_the_les_nonlinear_term(monkeypatch):
    eq, model = les_equation(), closure(["dealias_residual"])
    w0 = state(eq)
    calls = []
    original = solvers.NavierStokes2D.nonlinear_hat

    def counted(self, state_hat):
        calls.append(self.n)
        return original(self, state_hat)

    monkeypatch.setattr(solvers.NavierStokes2D, "nonlinear_hat", counted)
    counts = []
    for c in (model, physical(model)):
        calls.clear()
        with torch.no_grad():
            eq.simulate(w0, dt=0.05, steps=2, closure=c)
        counts.append(calls.count(32))
    assert counts == [8, 16]  # ETDRK4: 4 stages a step; the physical path recomputes N_les in the feature


@pytest.mark.parametrize("per_stage", [True, False])
def test_gradients_through_the_solver_are_those_of_the_physical_path(per_stage):
    eq, model = les_equation(), closure(["dealias_residual", "gradient"])
    w0 = state(eq)

    def grads(c):
        model.zero_grad()
        w0_ = w0.clone().requires_grad_(True)
        final = solvers.simulate_checkpointed(eq, w0_, 0.05, 6, c, checkpoint_every=2, closure_per_stage=per_stage)
        (final ** 2).mean().backward()
        return [p.grad.clone() for p in model.parameters()] + [w0_.grad]

    shared, plain = grads(model), grads(physical(model))
    for a, b in zip(shared, plain):
        assert relative(a, b) < 1e-10
