"""Per-layer learning rates for mean-field-normalized networks (docs/normalization.md).

SGD (Yu & Spiliopoulos, FoDS 2021 and 2023): each group's rate makes one SGD
step move the output by O(1/N_L), so training time is t = k / N_L after k
steps; a width-sum carrying N^(-gamma) counts as N^(1 - gamma). With base
rate alpha and hidden widths N_1..N_L:

    lr_C   = alpha * N_L^(2 gamma_L - 2)
    lr_W^l = alpha / ( N_{l-1}^(1 - 2 gamma_{l-1}) N_l^(1 - 2 gamma_l) prod_{m>l} N_m^(2 - 2 gamma_m) N_L )
    (for l = 1 the factor N_0^(...) is absent: the input dimension does not grow)

which reproduces the published tables for 1, 2 and 3 hidden layers exactly.

Adam (not covered by the papers): Adam's update of an entry has size ~ its
rate whatever the gradient's scale, so each entry gets the displacement SGD
gives it per unit of time t, i.e. N_L * lr_SGD * |gradient entry|:

    lr_C   = eta * N_L^(gamma_L - 1)
    lr_W^l = eta * N_{l-1}^(gamma_{l-1} - 1) N_l^(gamma_l - 1) prod_{m>l} N_m^(gamma_m - 1)

so one Adam step advances the network by O(1) units of SGD time. For hidden
gamma = 1/2 and outer gamma = 1 the readout C and the last hidden matrix W^L
get muP's MuAdam rates (Yang & Hu, Tensor Programs IV/V: effective weights
move by eta / fan_in); an earlier W^l gets an extra N_l^(-1/2), because the
papers' counting keeps gamma = 1/2 layers lazy (NTK-like) where muP makes
every hidden layer learn features.

Biases are outside the theory. Each bias gets the rate that moves its
layer's pre-activation by as much per step as the layer's weight matrix does:

    SGD:  lr_b^1 = lr_W^1,  lr_b^l = lr_W^l N_{l-1}^(1 - 2 gamma_{l-1}),  lr_bC = lr_C N_L^(1 - 2 gamma_L) = alpha / N_L
    Adam: lr_b^1 = lr_W^1,  lr_b^l = lr_W^l N_{l-1}^(1 - gamma_{l-1}),    lr_bC = lr_C N_L^(1 - gamma_L)   = eta

At gamma = 1/2 this is the layer's own rate. At gamma = 1 the layer's own
rate would move Z^l N_{l-1} times faster than W^l does and diverge with width.
"""

from __future__ import annotations

from typing import Sequence

from torch import nn

from closure.nn.meanfield import ArchitectureError, MeanFieldNet, check_gammas, check_widths

OPTIMIZERS = ("sgd", "adam", "adamw")


def _power(n: int, exponent: float) -> float:
    return float(n) ** exponent


def _downstream(widths: Sequence[int], gammas: Sequence[float], layer: int, per_sum: float) -> float:
    """prod_{m > layer} N_m^(per_sum * (1 - gamma_m)) over hidden layers (1-based ``layer``)."""
    factor = 1.0
    for n, g in zip(widths[layer:], gammas[layer:]):
        factor *= _power(n, per_sum * (1.0 - g))
    return factor


def sgd_rates(widths: Sequence[int], gammas: Sequence[float], lr: float) -> dict[str, float]:
    """SGD rates {W1..WL, C, b1..bL, bC} from the general-depth formula (module docstring)."""
    widths = check_widths(widths)
    gammas = check_gammas(gammas, len(widths))
    n_last, g_last = widths[-1], gammas[-1]
    rates: dict[str, float] = {}
    for layer in range(1, len(widths) + 1):
        n, g = widths[layer - 1], gammas[layer - 1]
        fan = 1.0 if layer == 1 else _power(widths[layer - 2], 1.0 - 2.0 * gammas[layer - 2])
        rates[f"W{layer}"] = lr / (fan * _power(n, 1.0 - 2.0 * g) * _downstream(widths, gammas, layer, 2.0) * n_last)
    rates["C"] = lr * _power(n_last, 2.0 * g_last - 2.0)
    rates.update(_bias_rates(widths, gammas, rates, exponent=lambda g: 1.0 - 2.0 * g))
    return rates


def adam_rates(widths: Sequence[int], gammas: Sequence[float], lr: float) -> dict[str, float]:
    """Adam rates {W1..WL, C, b1..bL, bC}: SGD's per-unit-time displacement per step (module docstring)."""
    widths = check_widths(widths)
    gammas = check_gammas(gammas, len(widths))
    rates: dict[str, float] = {}
    for layer in range(1, len(widths) + 1):
        n, g = widths[layer - 1], gammas[layer - 1]
        fan = 1.0 if layer == 1 else _power(widths[layer - 2], gammas[layer - 2] - 1.0)
        rates[f"W{layer}"] = lr * fan * _power(n, g - 1.0) * _downstream(widths, gammas, layer, -1.0)
    rates["C"] = lr * _power(widths[-1], gammas[-1] - 1.0)
    rates.update(_bias_rates(widths, gammas, rates, exponent=lambda g: 1.0 - g))
    return rates


def _bias_rates(widths, gammas, rates: dict[str, float], exponent) -> dict[str, float]:
    """Bias rates: the layer's weight rate times N_fan^exponent(gamma_fan) (N_0 = 1 for b1)."""
    out = {"b1": rates["W1"]}
    for layer in range(2, len(widths) + 1):
        out[f"b{layer}"] = rates[f"W{layer}"] * _power(widths[layer - 2], exponent(gammas[layer - 2]))
    out["bC"] = rates["C"] * _power(widths[-1], exponent(gammas[-1]))
    return out


def layer_rates(widths: Sequence[int], gammas: Sequence[float], lr: float, optimizer: str = "sgd") -> dict[str, float]:
    """Rates by parameter name for ``optimizer`` in {sgd, adam, adamw}."""
    name = str(optimizer).lower()
    if name not in OPTIMIZERS:
        raise ArchitectureError(f"optimizer={optimizer!r} is not supported (expected one of {', '.join(OPTIMIZERS)})")
    return (sgd_rates if name == "sgd" else adam_rates)(widths, gammas, lr)


def mean_field_core(model: nn.Module) -> nn.Module:
    """The one mean-field network (MeanFieldMLP or MeanFieldCNN) inside ``model``."""
    cores = [m for m in model.modules() if isinstance(m, MeanFieldNet)]
    if len(cores) != 1:
        raise ArchitectureError(
            f"param_groups needs exactly one mean-field network inside {type(model).__name__}, found {len(cores)}"
        )
    return cores[0]


def param_groups(model: nn.Module, lr: float, optimizer: str = "sgd") -> list[dict]:
    """Optimizer parameter groups [{params, lr, name}] with the per-layer rates.

    Names are W1..WL, C (output weights) and b1..bL, bC (biases, each in its own
    group); works on MeanFieldMLP, MeanFieldCNN (channel counts as widths) and any
    module wrapping exactly one of them (StencilClosure, ConvClosure, GroupAveraged).
    Pass the result to torch.optim.SGD or torch.optim.Adam.
    """
    core = mean_field_core(model)
    rates = layer_rates(core.widths, core.gammas, float(lr), optimizer)
    named = core.layer_parameters()
    groups = [{"params": [p], "lr": rates[name], "name": name} for name, p in named.items() if p.requires_grad]
    covered = {id(p) for p in named.values()}
    stray = [n for n, p in model.named_parameters() if p.requires_grad and id(p) not in covered]
    if stray:
        raise ArchitectureError(f"param_groups: parameters outside the mean-field network have no rate: {stray}")
    return groups
