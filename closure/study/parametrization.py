"""Parametrizations compared by the rate-transfer study: gamma-derived rates, standard, muP.

A parametrization fixes, for a network of hidden widths N (all equal here), the initialization,
the forward multipliers and each parameter group's learning rate as a function of one base rate
``lr``. The study asks whether the base rate that minimizes the validation error moves with N.

- ``gamma:OUTER/INNER`` (aliases ``meanfield`` = 1/1, ``ntk`` = 0.5/0.5, ``mixed`` = 1/0.5): the
  ``MeanFieldMLP`` with hidden layer l scaled by ``N^(-gamma_l)`` and the per-layer rates of
  ``closure.nn.param_groups`` (SGD: the papers' rates, one step moves the output by O(1/N_L);
  Adam: the project's rule, one step is O(1) units of SGD time).
- ``standard``: ``nn.Linear`` layers with PyTorch's default initialization
  (``U(-1/sqrt(fan_in), 1/sqrt(fan_in))`` for weights and biases) and one rate for every parameter.
- ``mup``: the Maximal Update parametrization, Yang et al., "Tensor Programs V: Tuning Large
  Neural Networks via Zero-Shot Hyperparameter Transfer" (arXiv:2203.03466), Table 3, in its
  width-multiplier form with ``m = N / N_base``, so that muP equals ``standard`` at the base
  width: hidden weights initialized as standard, output weights' variance divided by ``m``
  (Table 3's ``1/fan_in^2``); SGD rates ``lr * m`` for the input weights and hidden biases, ``lr`` for hidden weights,
  ``lr / m`` for the output weights; Adam rates ``lr`` for the input weights and biases,
  ``lr / m`` for hidden and output weights. The output bias (no infinite dimension) gets ``lr``.
  These are the rules of the authors' ``mup`` package (MuSGD, MuAdam; its MuReadout's forward
  multiplier ``1/m`` with the weight rescaled by ``sqrt(m)`` is the same network as the readout
  here, initialized with ``1/sqrt(m)`` times the standard deviation, with rate ``lr / m``).
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import nn

ALIASES = {"meanfield": (1.0, 1.0), "ntk": (0.5, 0.5), "mixed": (1.0, 0.5)}


def parse(name: str) -> tuple[str, float, float]:
    """``(family, gamma_outer, gamma_inner)`` of a parametrization name; family is gamma / standard / mup.

    ``standard`` and ``mup`` carry gammas 0 (not used; NaN would break the equality of runs).
    """
    if name in ALIASES:
        return ("gamma",) + ALIASES[name]
    if name.startswith("gamma:"):
        outer, inner = name[len("gamma:"):].split("/")
        return ("gamma", float(outer), float(inner))
    if name in ("standard", "mup"):
        return (name, 0.0, 0.0)
    raise ValueError(f"unknown parametrization {name!r}")


class StandardMLP(nn.Module):
    """``tanh``-type MLP of ``nn.Linear`` layers: hidden widths ``hidden``, one output."""

    def __init__(self, in_features: int, hidden: Sequence[int], activation):
        super().__init__()
        fans = [int(in_features)] + [int(n) for n in hidden]
        self.hidden = nn.ModuleList(nn.Linear(f, n) for f, n in zip(fans[:-1], fans[1:]))
        self.readout = nn.Linear(fans[-1], 1)
        self.sigma = activation

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.hidden:
            x = self.sigma(layer(x))
        return self.readout(x)

    def reset_parameters(self, generator: torch.Generator, readout_scale: float = 1.0) -> None:
        """PyTorch's default Linear init, ``U(-1/sqrt(fan_in), 1/sqrt(fan_in))``, drawn from ``generator``;
        the readout weight (not its bias) multiplied by ``readout_scale``."""
        with torch.no_grad():
            for layer in list(self.hidden) + [self.readout]:
                bound = 1.0 / math.sqrt(layer.in_features)
                for p in (layer.weight, layer.bias):
                    p.copy_(torch.rand(p.shape, generator=generator, dtype=p.dtype) * 2 * bound - bound)
            self.readout.weight.mul_(readout_scale)


def width_multiplier(width: int, base_width: int) -> float:
    return float(width) / float(base_width)


def standard_groups(net: StandardMLP, lr: float) -> list[dict]:
    return [{"params": list(net.parameters()), "lr": float(lr), "name": "all"}]


def mup_groups(net: StandardMLP, lr: float, optimizer: str, base_width: int) -> list[dict]:
    """Per-group rates of muP (Tensor Programs V, Table 3) for ``net`` with hidden width N (module docstring)."""
    m = width_multiplier(net.readout.in_features, base_width)
    sgd = optimizer == "sgd"
    first, *inner = list(net.hidden)
    groups = [{"params": [first.weight], "lr": lr * m if sgd else lr, "name": "W1"}]
    for i, layer in enumerate(inner, start=2):
        groups.append({"params": [layer.weight], "lr": lr if sgd else lr / m, "name": f"W{i}"})
    for i, layer in enumerate(net.hidden, start=1):
        groups.append({"params": [layer.bias], "lr": lr * m if sgd else lr, "name": f"b{i}"})
    groups.append({"params": [net.readout.weight], "lr": lr / m, "name": "C"})
    groups.append({"params": [net.readout.bias], "lr": lr, "name": "bC"})
    return groups
