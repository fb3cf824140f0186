"""Mean-field MLP: published learning rates, N^(1-2 gamma) output variance, coordinate check,
gamma = 1/2 as the standard (NTK/Xavier) parameterization.

References: Yu & Spiliopoulos, FoDS 2021 (arXiv 2011.10487) and FoDS 2023 (arXiv 2209.01018);
Yang & Hu, Tensor Programs IV/V (muP coordinate check). See docs/normalization.md.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn
from torch.func import functional_call, stack_module_state, vmap

import closure
from closure.nn import MeanFieldMLP, adam_rates, param_groups, sgd_rates
from solvers.forcing import seed_for

D = 5  # input dimension of the synthetic regression
WIDTHS = [64, 128, 256, 512, 1024]


# ---------------------------------------------------------------- learning rates


def published_sgd(widths, gammas, a=1.0):
    """The published tables (notes, 'Learning rates'), written out layer by layer."""
    if len(widths) == 1:
        (n,), (g,) = widths, gammas
        return {"W1": a * n ** (2 * g - 2), "C": a * n ** (2 * g - 2)}
    if len(widths) == 2:
        (n1, n2), (g1, g2) = widths, gammas
        return {
            "C": a / n2 ** (2 - 2 * g2),
            "W2": a / (n1 ** (1 - 2 * g1) * n2 ** (2 - 2 * g2)),
            "W1": a / (n1 ** (1 - 2 * g1) * n2 ** (3 - 2 * g2)),
        }
    (n1, n2, n3), (g1, g2, g3) = widths, gammas
    return {
        "C": a / n3 ** (2 - 2 * g3),
        "W3": a / (n2 ** (1 - 2 * g2) * n3 ** (2 - 2 * g3)),
        "W2": a / (n1 ** (1 - 2 * g1) * n2 ** (1 - 2 * g2) * n3 ** (3 - 2 * g3)),
        "W1": a / (n1 ** (1 - 2 * g1) * n2 ** (2 - 2 * g2) * n3 ** (3 - 2 * g3)),
    }


CASES = [
    ([100], [1.0]),
    ([64], [0.5]),
    ([1000], [0.7]),
    ([64, 256], [1.0, 0.5]),
    ([300, 50], [0.6, 0.9]),
    ([128, 128], [0.75, 0.75]),
    ([100, 200, 400], [1.0, 0.5, 0.75]),
    ([512, 64, 32], [0.55, 0.95, 1.0]),
    ([256, 256, 256], [0.5, 0.5, 0.5]),
]


@pytest.mark.parametrize("widths,gammas", CASES)
@pytest.mark.parametrize("alpha", [1.0, 0.3])
def test_sgd_rates_equal_published_tables(widths, gammas, alpha):
    rates = sgd_rates(widths, gammas, alpha)
    for name, expected in published_sgd(widths, gammas, alpha).items():
        assert rates[name] == pytest.approx(expected, rel=1e-12), name


def test_sgd_rates_n100_example():
    ones = sgd_rates([100] * 3, [1.0] * 3, 1.0)
    halves = sgd_rates([100] * 3, [0.5] * 3, 1.0)
    names = ["W1", "W2", "W3", "C"]
    assert [ones[n] for n in names] == pytest.approx([1, 100, 100, 1], rel=1e-12)
    assert [halves[n] for n in names] == pytest.approx([1e-6, 1e-4, 1e-2, 1e-2], rel=1e-12)


def test_param_groups_names_rates_and_optimizers():
    torch.manual_seed(0)
    model = MeanFieldMLP(D, [32, 16, 8], gammas=[0.5, 0.75, 1.0])
    groups = param_groups(model, 0.5)
    names = [g["name"] for g in groups]
    assert names == ["W1", "W2", "W3", "C", "b1", "b2", "b3", "bC"]
    expected = sgd_rates([32, 16, 8], [0.5, 0.75, 1.0], 0.5)
    assert all(g["lr"] == expected[g["name"]] for g in groups)
    assert {id(p) for g in groups for p in g["params"]} == {id(p) for p in model.parameters()}
    for optimizer, cls in (("sgd", torch.optim.SGD), ("adam", torch.optim.Adam)):
        opt = cls(param_groups(model, 0.5, optimizer))
        model(torch.randn(4, D)).pow(2).sum().backward()
        opt.step()
        assert [g["name"] for g in opt.param_groups] == names


def test_bias_rates_match_their_layer_at_gamma_half():
    rates = sgd_rates([64, 32], [0.5, 0.5], 1.0)
    assert rates["b1"] == rates["W1"] and rates["b2"] == pytest.approx(rates["W2"])
    assert rates["bC"] == pytest.approx(rates["C"])
    # at gamma = 1 the output bias moves the output by O(1/N_L) per step, like C
    assert sgd_rates([64, 32], [1.0, 1.0], 1.0)["bC"] == pytest.approx(1 / 32)


@pytest.mark.parametrize("widths,gammas", CASES)
def test_adam_rates_formula(widths, gammas):
    eta = 0.01
    rates = adam_rates(widths, gammas, eta)
    assert rates["C"] == pytest.approx(eta * widths[-1] ** (gammas[-1] - 1))
    for l in range(1, len(widths) + 1):
        fan = 1.0 if l == 1 else widths[l - 2] ** (gammas[l - 2] - 1)
        down = math.prod(n ** (g - 1) for n, g in zip(widths[l:], gammas[l:]))
        assert rates[f"W{l}"] == pytest.approx(eta * fan * widths[l - 1] ** (gammas[l - 1] - 1) * down)


def test_adam_is_muadam_for_hidden_half_outer_one():
    """Hidden gamma 1/2, outer 1: the readout and the last hidden matrix get muP's MuAdam rate
    (effective weights N^-gamma W move by eta / fan_in); an earlier hidden matrix W^l gets an extra
    N_l^(-1/2): the papers' counting keeps gamma = 1/2 layers lazy (NTK), muP does not."""
    widths, eta = [64, 256, 128], 1e-3
    rates = adam_rates(widths, [0.5, 0.5, 1.0], eta)
    assert rates["C"] * widths[2] ** -1.0 == pytest.approx(eta / widths[2])
    assert rates["W3"] * widths[1] ** -0.5 == pytest.approx(eta / widths[1])
    assert rates["W2"] * widths[0] ** -0.5 == pytest.approx(eta / widths[0] * widths[1] ** -0.5)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"gammas": [0.4]}, "gamma"),
        ({"gammas": [1.01]}, "gamma"),
        ({"gammas": [1.0, 1.0]}, "2 entries"),
        ({"activation": "relu"}, "activation"),
        ({"hidden": []}, "hidden"),
        ({"output_init": "normal"}, "output_init"),
    ],
)
def test_bad_architecture_is_a_one_line_value_error(kwargs, match):
    args = {"in_features": D, "hidden": [8], "gammas": [1.0], **kwargs}
    with pytest.raises(ValueError, match=match) as info:
        MeanFieldMLP(**args)
    assert "\n" not in str(info.value)
    assert isinstance(info.value, closure.ClosureError)


def test_initialization_scales():
    torch.manual_seed(0)
    model = MeanFieldMLP(D, [4096, 64], gammas=[1.0, 1.0])
    assert model.C.min() >= -1 and model.C.max() <= 1 and abs(model.C.mean()) < 0.3
    assert torch.all(model.bC == 0)
    assert model.weights[0].std().item() == pytest.approx(1.0, abs=0.05)
    assert model.weights[1].std().item() == pytest.approx(1.0, abs=0.05)  # width independent O(1)
    authors = MeanFieldMLP(D, [4096], output_init="uniform01")
    assert authors.C.min() >= 0 and authors.C.mean().item() == pytest.approx(0.5, abs=0.05)


@pytest.mark.parametrize("activation", ["tanh", "sigmoid", "gelu", "silu", "softplus"])
def test_activations_run_and_are_smooth(activation):
    model = MeanFieldMLP(D, [16, 16], gammas=[0.5, 1.0], activation=activation).double()
    x = torch.randn(3, D, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x: model(x), (x,))


# -------------------------------------------------- gamma = 1/2 is the standard parameterization


def test_gamma_half_equals_standard_parameterization():
    """A standard nn.Linear net with weights W / sqrt(fan_in) computes the same function."""
    torch.manual_seed(0)
    widths = [48, 96, 32]
    model = MeanFieldMLP(D, widths, out_features=2, gammas=[0.5] * 3).double()
    layers, fans = [], [D] + widths
    for w, b, fan in zip(model.weights, model.biases, fans):
        lin = nn.Linear(fan, w.shape[0]).double()
        with torch.no_grad():
            lin.weight.copy_(w / math.sqrt(fan))
            lin.bias.copy_(b)
        layers += [lin, nn.Tanh()]
    readout = nn.Linear(widths[-1], 2).double()
    with torch.no_grad():
        readout.weight.copy_(model.C / math.sqrt(widths[-1]))
        readout.bias.copy_(model.bC)
    standard = nn.Sequential(*layers, readout)
    x = torch.randn(10, D, dtype=torch.float64)
    torch.testing.assert_close(model(x), standard(x), rtol=1e-13, atol=1e-13)


def test_folding_the_normalization_into_the_init_changes_sgd():
    """Same function at init, but the folded net trained with one width-independent rate moves its
    output by O(N) in one step (slope +1), the mean-field net with the derived rates by O(1/N)."""
    x, _, _ = _regression_data()
    folded_moves, meanfield_moves = [], []
    for n in WIDTHS[:4]:
        torch.manual_seed(1)
        model = MeanFieldMLP(D, [n], gammas=[0.5], input_scaling=False).double()
        folded = nn.Sequential(nn.Linear(D, n), nn.Tanh(), nn.Linear(n, 1)).double()
        with torch.no_grad():
            folded[0].weight.copy_(model.weights[0])
            folded[0].bias.copy_(model.biases[0])
            folded[2].weight.copy_(model.C / math.sqrt(n))
            folded[2].bias.zero_()
        torch.testing.assert_close(folded(x), model(x))
        folded_moves.append(_one_step_move(folded, torch.optim.SGD(folded.parameters(), lr=0.1), x))
        meanfield_moves.append(_one_step_move(model, torch.optim.SGD(param_groups(model, 0.1)), x))
    assert abs(_slope(WIDTHS[:4], folded_moves) - 1.0) < 0.15
    assert abs(_slope(WIDTHS[:4], meanfield_moves) + 1.0) < 0.15


def _one_step_move(model, opt, x):
    """|delta g| after one optimizer step on mean(g(x)) (unit residual)."""
    before = model(x).detach()
    opt.zero_grad()
    model(x).mean().backward()
    opt.step()
    return (model(x).detach() - before).abs().mean().item()


# ---------------------------------------------------------------- ensembles over seeds


def _regression_data(n_train=8, n_test=16):
    gen = torch.Generator().manual_seed(123)
    x = torch.randn(n_train, D, generator=gen, dtype=torch.float64)
    y = torch.sin(x.sum(-1, keepdim=True))
    x_test = torch.randn(n_test, D, generator=gen, dtype=torch.float64)
    return x, y, x_test


def _slope(widths, values):
    return float(np.polyfit(np.log(widths), np.log(values), 1)[0])


class Ensemble:
    """`seeds` independent MeanFieldMLPs evaluated and trained at once (torch.func.vmap)."""

    def __init__(self, widths, gammas, seeds, first_seed=0, **kwargs):
        models = []
        for seed in range(first_seed, first_seed + seeds):
            torch.manual_seed(seed)
            models.append(MeanFieldMLP(D, widths, 1, gammas, **kwargs).double())
        self.base = models[0]
        params, _ = stack_module_state(models)
        self.params = {k: v.detach().clone() for k, v in params.items()}
        rate_of = {id(p): g["lr"] for g in param_groups(self.base, 1.0) for p in g["params"]}
        self.rates = {name: rate_of[id(p)] for name, p in self.base.named_parameters()}

    def __call__(self, x, params=None):
        call = lambda p, x: functional_call(self.base, p, (x,))  # noqa: E731
        return vmap(call, in_dims=(0, None))(params or self.params, x)

    def sgd(self, x, y, steps):
        """Full-batch SGD with the derived per-layer rates on 0.5 * mean (g - y)^2, every seed at once."""
        params = {k: v.clone().requires_grad_(True) for k, v in self.params.items()}
        for _ in range(steps):
            loss = 0.5 * (self(x, params) - y).pow(2).mean(dim=(1, 2)).sum()
            grads = torch.autograd.grad(loss, list(params.values()))
            with torch.no_grad():
                for (name, p), g in zip(params.items(), grads):
                    p -= self.rates[name] * g
        self.params = {k: v.detach() for k, v in params.items()}


def _slope_tolerance(seeds: int) -> float:
    """Three standard errors of the fitted log-log slope over WIDTHS when each variance is estimated
    from ``seeds`` independent draws (relative standard error sqrt(2 / (seeds - 1)) per width)."""
    logs = np.log(WIDTHS)
    return 3 * math.sqrt(2 / (seeds - 1)) / math.sqrt(((logs - logs.mean()) ** 2).sum())


def _variance_over_seeds(widths_of, gammas, seeds, train_time=0.0, independent_seeds=False, **kwargs):
    x, y, x_test = _regression_data()
    variances = []
    for n in WIDTHS:
        widths = widths_of(n)
        # independent_seeds: other seeds for every (gammas, width), so that each gamma's slope is its own
        # measurement (at init with seeds shared across gammas the variances of two gammas differ by the
        # exact factor N^(2 (gamma' - gamma)): one measurement plus exact offsets)
        first = seed_for(n, *(round(1000 * g) for g in gammas)) % 2 ** 31 if independent_seeds else 0
        ens = Ensemble(widths, gammas, seeds, first_seed=first, **kwargs)
        if train_time:
            ens.sgd(x, y, steps=int(round(train_time * widths[-1])))  # t = k / N_L
        variances.append(ens(x_test).var(dim=0).mean().item())
    return _slope(WIDTHS, variances)


@pytest.mark.parametrize("gamma", [0.5, 0.625, 0.75, 0.875, 1.0])
def test_output_variance_at_init_scales_like_N_to_1_minus_2gamma(gamma):
    slope = _variance_over_seeds(lambda n: [n], [gamma], seeds=128, independent_seeds=True)
    assert abs(slope - (1 - 2 * gamma)) < _slope_tolerance(128), slope  # 0.17


@pytest.mark.parametrize("inner", [0.5, 1.0])
@pytest.mark.parametrize("outer", [0.5, 0.75, 1.0])
def test_output_variance_at_init_follows_the_outer_gamma(inner, outer):
    """Two hidden layers (N1 = 64 fixed, N2 = N): the law is set by gamma_2, hardly by gamma_1."""
    slope = _variance_over_seeds(lambda n: [64, n], [inner, outer], seeds=64, independent_seeds=True)
    assert abs(slope - (1 - 2 * outer)) < _slope_tolerance(64), slope  # 0.24


@pytest.mark.parametrize("gamma", [0.5, 1.0])
def test_output_variance_after_training_time_t(gamma):
    """After t = k / N_L = 1 of full-batch SGD with the derived rates, still N_L^(1 - 2 gamma)."""
    slope = _variance_over_seeds(lambda n: [n], [gamma], seeds=16, train_time=1.0)
    assert abs(slope - (1 - 2 * gamma)) < 0.1, slope


@pytest.mark.slow
@pytest.mark.parametrize("gamma", [0.625, 0.75, 0.875])
def test_output_variance_after_training_intermediate_gammas(gamma):
    slope = _variance_over_seeds(lambda n: [n], [gamma], seeds=24, train_time=2.0)
    assert abs(slope - (1 - 2 * gamma)) < 0.1, slope


@pytest.mark.slow
@pytest.mark.parametrize("inner", [0.5, 1.0])
@pytest.mark.parametrize("outer", [0.5, 1.0])
def test_output_variance_after_training_two_layers(inner, outer):
    """The trained law follows the outer gamma whatever the inner one. With 24 seeds the fitted
    slope carries a standard error of ~0.09 (docs/normalization.md), hence 0.15 here."""
    slope = _variance_over_seeds(lambda n: [64, n], [inner, outer], seeds=24, train_time=1.0)
    assert abs(slope - (1 - 2 * outer)) < 0.15, slope


# ---------------------------------------------------------------- one step, coordinate check


def _single_group_move(model, name, rate, x):
    """|delta g| after one SGD step of parameter group `name` alone on the loss mean(g(x)):
    a unit residual, so the move is rate * (the group's part of the neural tangent kernel)."""
    param = model.layer_parameters()[name]
    before = model(x).detach()
    (grad,) = torch.autograd.grad(model(x).mean(), [param])
    with torch.no_grad():
        param -= rate * grad
    return (model(x) - before).abs().mean().item()


@pytest.mark.parametrize(
    "widths_of,gammas,expected",
    [
        (lambda n: [n], [1.0], {"W1": 0, "b1": 0, "C": 0, "bC": 0}),
        (lambda n: [n], [0.75], {"W1": 0, "b1": 0, "C": 0, "bC": 0}),
        (lambda n: [n], [0.5], {"W1": 0, "b1": 0, "C": 0, "bC": 0}),
        (lambda n: [64, n], [1.0, 0.75], {"W2": 0, "b2": 0, "C": 0, "bC": 0}),
        (lambda n: [n, n], [0.5, 0.5], {"W1": -1, "W2": 0, "b2": 0, "C": 0, "bC": 0}),
        (lambda n: [n, n], [1.0, 1.0], {"W1": -1, "W2": 0, "b2": 0, "C": 0, "bC": 0}),
    ],
)
def test_one_sgd_step_moves_the_output_by_one_over_N(widths_of, gammas, expected):
    """The rule behind the rates: each group's step moves g by O(1/N_L), i.e. N_L |delta g| flat
    (slope 0). Measured honestly for the deep first layer: the published rate counts the backward
    sum over N_2 as N_2^(1 - gamma_2), at init it is N_2^(1/2 - gamma_2), so W1 moves g by O(1/N_L N_2)."""
    x, _, _ = _regression_data()
    widths = WIDTHS[:4]
    for name, predicted in expected.items():
        moves = []
        for n in widths:
            move = 0.0
            for seed in range(4):
                torch.manual_seed(seed)
                model = MeanFieldMLP(D, widths_of(n), gammas=gammas).double()
                rate = sgd_rates(model.widths, gammas, 1.0)[name]
                move += model.widths[-1] * _single_group_move(model, name, rate, x)
            moves.append(move)
        slope = _slope(widths, moves)
        assert abs(slope - predicted) < 0.15, (name, slope)


def _coordinates(widths, gammas, times, seeds=2):
    """Mean |Z^l| per layer, mean |g| and mean |g - g_0| at training times t (k = t N_L SGD steps)."""
    x, y, _ = _regression_data()
    rows = []
    for seed in range(seeds):
        torch.manual_seed(seed)
        model = MeanFieldMLP(D, widths, gammas=gammas).double()
        opt = torch.optim.SGD(param_groups(model, 1.0))
        g0, k, row = model(x).detach(), 0, []
        for t in times:
            while k < round(t * widths[-1]):
                opt.zero_grad()
                (0.5 * (model(x) - y).pow(2).mean()).backward()
                opt.step()
                k += 1
            with torch.no_grad():
                zs, hs = model.trace(x)
                g = model.readout(hs[-1])
            row += [z.abs().mean().item() for z in zs] + [g.abs().mean().item()]
            row += [(g - g0).abs().mean().item()] if t > 0 else []
        rows.append(row)
    return np.mean(rows, axis=0)


@pytest.mark.parametrize("gammas", [[1.0, 1.0], [0.75, 0.75], [0.5, 1.0], [1.0, 0.5, 0.75]])
def test_weight_term_of_deep_preactivations_scales_like_N_to_half_minus_gamma(gammas):
    """Z^l = N^(-gamma_(l-1)) W^l H^(l-1) + b^l for l >= 2: the N(0, 1) bias dominates Z^l when
    gamma > 1/2, so the coordinate check's flat |Z^l| says little there. The weight term itself is a
    sum of N roughly independent O(1) terms at init: mean |Z^l - b^l| ~ N^(1/2 - gamma_(l-1))."""
    x, _, _ = _regression_data()
    widths = [64, 256, 1024]
    table = []
    for n in widths:
        row = np.zeros(len(gammas) - 1)
        for seed in range(4):
            torch.manual_seed(seed)
            model = MeanFieldMLP(D, [n] * len(gammas), gammas=gammas).double()
            with torch.no_grad():
                zs, _ = model.trace(x)
                row += [(z - model.biases[layer]).abs().mean().item() for layer, z in enumerate(zs) if layer > 0]
        table.append(row / 4)
    slopes = np.polyfit(np.log(widths), np.log(np.array(table)), 1)[0]
    expected = [0.5 - g for g in gammas[:-1]]
    assert np.allclose(slopes, expected, atol=0.08), (slopes.round(3), expected)


@pytest.mark.parametrize("gammas", [[1.0], [0.5], [1.0, 1.0], [0.75, 0.75], [0.5, 1.0]])
def test_coordinate_check_is_flat_in_width(gammas):
    """muP coordinate check: mean |pre-activation| of every layer, mean |output| and the output's
    movement over the first units of training time are flat in width (|slope| < 0.15)."""
    widths = [64, 128, 256, 512]
    table = np.array([_coordinates([n] * len(gammas), gammas, times=(0.0, 0.5, 1.0)) for n in widths])
    slopes = np.polyfit(np.log(widths), np.log(table), 1)[0]
    if gammas[-1] > 0.5:  # |g| at init is N^(1/2 - gamma) by design: check it after training only
        slopes = np.delete(slopes, len(gammas))
    assert np.all(np.abs(slopes) < 0.15), slopes.round(3)


def test_tanh_activation_is_tanh_with_and_without_autograd():
    """The sigmoid form of tanh (fast on the CPU) equals torch.tanh, values and derivative."""
    from closure.nn.meanfield import tanh

    x = torch.linspace(-30, 30, 2001, dtype=torch.float64, requires_grad=True)
    y = tanh(x)
    torch.testing.assert_close(y, torch.tanh(x), rtol=0, atol=1e-15)
    (grad,) = torch.autograd.grad(y.sum(), x)
    torch.testing.assert_close(grad, 1 - torch.tanh(x.detach()) ** 2, rtol=0, atol=1e-14)
    with torch.no_grad():
        z = x.detach().float()
        torch.testing.assert_close(tanh(z), torch.tanh(z), rtol=0, atol=3e-7)
