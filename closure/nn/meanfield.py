"""The mean-field-normalized multilayer perceptron.

Forward pass (docs/normalization.md; Yu & Spiliopoulos, "Normalization effects
on shallow neural networks", FoDS 2021, and "... on deep neural networks",
FoDS 2023), hidden widths N_1..N_L, exponents gamma_1..gamma_L in [1/2, 1]:

    H^1  = sigma(W^1 x + b^1)                           (input layer: no width normalization)
    Z^l  = N_{l-1}^(-gamma_{l-1}) W^l H^(l-1) + b^l      l = 2..L
    H^l  = sigma(Z^l)
    g(x) = N_L^(-gamma_L) C H^L + b_C

The factors N^(-gamma) are fixed multipliers of the forward pass, never folded
into the initialization (folding them changes the SGD dynamics). Weights are
i.i.d. O(1) and width independent: W ~ N(0, 1), hidden biases ~ N(0, 1),
C ~ U[-1, 1] (mean zero, bounded), b_C = 0.

One documented addition: with ``input_scaling=True`` (the default) the input
x is multiplied by the fixed constant d^(-1/2), d = in_features. d does not
grow with width, so this leaves every width law untouched; it keeps the first
pre-activation and its per-step change O(1) for any stencil size (a 5x5 patch
has d = 25). ``input_scaling=False`` is the papers' network exactly.
"""

from __future__ import annotations

import math
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from closure.errors import ClosureError


class ArchitectureError(ClosureError, ValueError):
    """A network description that cannot be built (width, gamma, activation, ...)."""


def tanh(x: torch.Tensor) -> torch.Tensor:
    """tanh(x) = 2 sigmoid(2x) - 1 (the same function to float roundoff, ~2e-7 in float32).

    torch's CPU tanh kernel is ~20x slower than its sigmoid (docs/performance.md,
    "Coupled LES"): with this form the activation stops dominating a small network's
    cost inside the LES. In no-grad mode the affine part runs in place (with grad mode
    on it never does: functorch transforms hide ``requires_grad``).
    """
    s = torch.sigmoid(2.0 * x)
    if torch.is_grad_enabled():
        return 2.0 * s - 1.0
    return s.mul_(2.0).sub_(1.0)


ACTIVATIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "tanh": tanh,
    "sigmoid": torch.sigmoid,
    "gelu": F.gelu,
    "silu": F.silu,
    "softplus": F.softplus,
}

OUTPUT_INITS = ("uniform", "uniform01")


def activation_function(name: str) -> Callable[[torch.Tensor], torch.Tensor]:
    """The smooth activation sigma called ``name`` (tanh, sigmoid, gelu, silu, softplus)."""
    if name not in ACTIVATIONS:
        raise ArchitectureError(
            f"activation={name!r} is not supported (expected one of {', '.join(ACTIVATIONS)})"
        )
    return ACTIVATIONS[name]


def check_widths(hidden: Sequence[int], what: str = "hidden") -> list[int]:
    """Hidden widths N_1..N_L as positive ints (at least one layer)."""
    widths = [hidden] if isinstance(hidden, int) else list(hidden)
    if not widths:
        raise ArchitectureError(f"{what}=[] : a mean-field network needs at least one hidden layer")
    for n in widths:
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ArchitectureError(f"{what}={widths}: every width must be a positive integer, got {n!r}")
    return widths


def check_gammas(gammas, n_layers: int) -> list[float]:
    """Exponents gamma_1..gamma_L in [1/2, 1]; a scalar is used for every layer, None means 1 (mean field)."""
    if gammas is None:
        gammas = 1.0
    if isinstance(gammas, (int, float)) and not isinstance(gammas, bool):
        gammas = [float(gammas)] * n_layers
    values = [float(g) for g in gammas]
    if len(values) != n_layers:
        raise ArchitectureError(
            f"gammas={values} has {len(values)} entries but there are {n_layers} hidden layers"
        )
    for g in values:
        if not (0.5 <= g <= 1.0) or math.isnan(g):
            raise ArchitectureError(f"gammas={values}: each gamma must lie in [0.5, 1], got {g}")
    return values


def width_factor(n: int, gamma: float) -> float:
    """The forward-pass normalization N^(-gamma)."""
    return float(n) ** (-gamma)


class MeanFieldNet(nn.Module):
    """Shared parts of the mean-field networks (MLP and CNN).

    Subclasses set ``widths``, ``gammas``, ``weights`` (W^1..W^L), ``biases``
    (b^1..b^L or None), ``C``, ``bC`` (or None) and ``output_init``.
    """

    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        """O(1) width-independent initialization: W, b ~ N(0, 1); C ~ U[-1, 1] (or U[0, 1]); b_C = 0."""
        with torch.no_grad():
            for w in self.weights:
                w.normal_(0.0, 1.0, generator=generator)
            for b in self.biases if self.biases is not None else []:
                b.normal_(0.0, 1.0, generator=generator)
            low = 0.0 if self.output_init == "uniform01" else -1.0
            self.C.uniform_(low, 1.0, generator=generator)
            if self.bC is not None:
                self.bC.zero_()

    @property
    def output_scale(self) -> float:
        """The output normalization N_L^(-gamma_L)."""
        return width_factor(self.widths[-1], self.gammas[-1])

    def layer_parameters(self) -> dict[str, nn.Parameter]:
        """Parameters by their name in the theory: W1..WL, C, then b1..bL, bC (when present)."""
        named = {f"W{i + 1}": w for i, w in enumerate(self.weights)}
        named["C"] = self.C
        for i, b in enumerate(self.biases if self.biases is not None else []):
            named[f"b{i + 1}"] = b
        if self.bC is not None:
            named["bC"] = self.bC
        return named


class MeanFieldMLP(MeanFieldNet):
    """Multilayer perceptron with the mean-field normalization N_l^(-gamma_l) (see module docstring).

    Parameters are exposed under the names of the theory by ``layer_parameters``:
    W1..WL, C (output weights), b1..bL, bC (biases). ``param_groups`` uses them.

    Args:
        in_features: input dimension d.
        hidden: widths [N_1, ..., N_L].
        out_features: output dimension.
        gammas: [gamma_1, ..., gamma_L] in [1/2, 1] (scalar: same for all; None: all 1).
        activation: tanh | sigmoid | gelu | silu | softplus.
        bias: O(1) random hidden biases b^l ~ N(0, 1).
        output_bias: output bias b_C (starts at zero).
        output_init: "uniform" (C ~ U[-1, 1], default) or "uniform01" (U[0, 1], the
            authors' code, to reproduce it exactly).
        input_scaling: multiply x by d^(-1/2) (a width-independent constant).
    """

    def __init__(
        self,
        in_features: int,
        hidden: Sequence[int],
        out_features: int = 1,
        gammas=None,
        activation: str = "tanh",
        *,
        bias: bool = True,
        output_bias: bool = True,
        output_init: str = "uniform",
        input_scaling: bool = True,
    ):
        super().__init__()
        self.widths = check_widths(hidden)
        self.gammas = check_gammas(gammas, len(self.widths))
        self.sigma = activation_function(activation)
        if output_init not in OUTPUT_INITS:
            raise ArchitectureError(f"output_init={output_init!r} (expected one of {', '.join(OUTPUT_INITS)})")
        self.in_features, self.out_features = int(in_features), int(out_features)
        self.activation, self.output_init = activation, output_init
        self.use_bias, self.use_output_bias, self.input_scaling = bool(bias), bool(output_bias), bool(input_scaling)
        fans = [self.in_features] + self.widths[:-1]
        self.weights = nn.ParameterList(nn.Parameter(torch.empty(n, f)) for n, f in zip(self.widths, fans))
        self.biases = nn.ParameterList(nn.Parameter(torch.empty(n)) for n in self.widths) if bias else None
        self.C = nn.Parameter(torch.empty(self.out_features, self.widths[-1]))
        self.bC = nn.Parameter(torch.zeros(self.out_features)) if output_bias else None
        self.reset_parameters()

    @property
    def input_scale(self) -> float:
        """The constant multiplying x: d^(-1/2) with input_scaling, else 1."""
        return self.in_features ** -0.5 if self.input_scaling else 1.0

    def layer_scales(self) -> list[float]:
        """Forward multipliers of W^1..W^L: [input_scale, N_1^-gamma_1, ..., N_{L-1}^-gamma_{L-1}]."""
        inner = [width_factor(n, g) for n, g in zip(self.widths[:-1], self.gammas[:-1])]
        return [self.input_scale] + inner

    def _bias(self, layer: int):
        return None if self.biases is None else self.biases[layer]

    def trace(self, x: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Pre-activations [Z^1..Z^L] and activations [H^1..H^L] for x of shape (..., in_features)."""
        zs, hs, h = [], [], x
        for layer, (w, scale) in enumerate(zip(self.weights, self.layer_scales())):
            z = F.linear(h, w) * scale
            b = self._bias(layer)
            z = z if b is None else z + b
            h = self.sigma(z)
            zs.append(z)
            hs.append(h)
        return zs, hs

    def hidden_states(self, x: torch.Tensor) -> list[torch.Tensor]:
        """[H^1, ..., H^L] for inputs x of shape (..., in_features)."""
        return self.trace(x)[1]

    def readout(self, h: torch.Tensor) -> torch.Tensor:
        """g = N_L^(-gamma_L) C H^L + b_C."""
        return F.linear(h, self.C) * self.output_scale + (0.0 if self.bC is None else self.bC)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """g(x) for x of shape (..., in_features); returns (..., out_features)."""
        return self.readout(self.hidden_states(x)[-1])

    def architecture(self) -> dict:
        """A JSON-able description from which ``load_model`` rebuilds the network."""
        return {
            "class": "MeanFieldMLP",
            "kwargs": {
                "in_features": self.in_features,
                "hidden": list(self.widths),
                "out_features": self.out_features,
                "gammas": list(self.gammas),
                "activation": self.activation,
                "bias": self.use_bias,
                "output_bias": self.use_output_bias,
                "output_init": self.output_init,
                "input_scaling": self.input_scaling,
            },
        }

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, hidden={self.widths}, out_features={self.out_features}, "
            f"gammas={self.gammas}, activation={self.activation}"
        )
