"""Periodic convolutional network with the mean-field normalization over channels.

The channel count plays the width N (docs/normalization.md, "Convolutions"),
hidden channels N_1..N_L, kernel size s, d = ndim, periodic convolution (*):

    H^1  = sigma(a_0 W^1 * x + b^1)                                  a_0 = (C_in s^d)^(-1/2) or s^(-d/2)
    Z^l  = N_{l-1}^(-gamma_{l-1}) s^(-d/2) W^l * H^(l-1) + b^l        l = 2..L
    g    = N_L^(-gamma_L) C H^L + b_C                                 (pointwise readout)

s^(-d/2) is a fixed constant (kernel size does not grow with width): it keeps
the kernel sum O(1), as the notes assume, so pre-activations do not saturate
for large kernels. Init as in the MLP: W, b ~ N(0, 1), C ~ U[-1, 1], b_C = 0.
The per-layer rates are the MLP's with channel counts (``param_groups``).

Inference (`ConvClosure` without autograd recording) runs `FoldedCNN`: the same
function with the input normalization, the layer multipliers, the output scaling
and the affine part of tanh(z) = 2 sigmoid(2z) - 1 folded into the convolution
weights and biases (exact: the convolutions are periodic, so a constant input
offset is a constant output offset), i.e. per layer one circular pad, one
convolution with bias and one in-place activation, and one matrix product for
the readout.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from closure.nn.features import FieldClosure, FoldedNet, check_ndim
from closure.nn.meanfield import (
    OUTPUT_INITS,
    ArchitectureError,
    MeanFieldNet,
    activation_function,
    check_gammas,
    check_widths,
    width_factor,
)
from closure.nn.stencil import check_stencil


def periodic_pad(x: torch.Tensor, r: int, ndim: int) -> torch.Tensor:
    """Wrap-around padding of r points on both sides of the last ``ndim`` axes (any grid size)."""
    if 0 < r <= min(x.shape[-ndim:]):  # torch's circular pad (one kernel; it needs r <= n)
        return F.pad(x, (r, r) * ndim, mode="circular")
    for axis in range(x.dim() - ndim, x.dim()):
        n = x.shape[axis]
        idx = torch.arange(-r, n + r, device=x.device) % n
        x = x.index_select(axis, idx)
    return x


def periodic_conv(x: torch.Tensor, weight: torch.Tensor, ndim: int) -> torch.Tensor:
    """Periodic ('circular') convolution, output on the input grid."""
    conv = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}[ndim]
    return conv(periodic_pad(x, weight.shape[-1] // 2, ndim), weight)


class MeanFieldCNN(MeanFieldNet):
    """Periodic CNN, conv outputs scaled by C_in^(-gamma) (module docstring).

    Input (batch, in_channels, *grid) -> output (batch, out_channels, *grid).
    ``widths`` = channels; parameters named W1..WL, C, b1..bL, bC as in the MLP.
    """

    def __init__(
        self,
        ndim: int,
        in_channels: int = 1,
        channels: Sequence[int] = (32, 32),
        out_channels: int = 1,
        gammas=None,
        activation: str = "tanh",
        kernel_size: int = 5,
        *,
        bias: bool = True,
        output_bias: bool = True,
        output_init: str = "uniform",
        input_scaling: bool = True,
    ):
        super().__init__()
        self.ndim = check_ndim(ndim)
        self.widths = check_widths(channels, "channels")
        self.gammas = check_gammas(gammas, len(self.widths))
        self.kernel_size = check_stencil(kernel_size)
        self.sigma = activation_function(activation)
        if output_init not in OUTPUT_INITS:
            raise ArchitectureError(f"output_init={output_init!r} (expected one of {', '.join(OUTPUT_INITS)})")
        self.in_channels, self.out_channels = int(in_channels), int(out_channels)
        self.activation, self.output_init = activation, output_init
        self.use_bias, self.use_output_bias, self.input_scaling = bool(bias), bool(output_bias), bool(input_scaling)
        kernel = (self.kernel_size,) * self.ndim
        fans = [self.in_channels] + self.widths[:-1]
        self.weights = nn.ParameterList(nn.Parameter(torch.empty(n, f, *kernel)) for n, f in zip(self.widths, fans))
        self.biases = nn.ParameterList(nn.Parameter(torch.empty(n)) for n in self.widths) if bias else None
        self.C = nn.Parameter(torch.empty(self.out_channels, self.widths[-1]))
        self.bC = nn.Parameter(torch.zeros(self.out_channels)) if output_bias else None
        self.reset_parameters()

    def layer_scales(self) -> list[float]:
        """Multipliers of the convolutions W^1..W^L (module docstring)."""
        kernel = float(self.kernel_size) ** (-self.ndim / 2.0)
        first = kernel * (self.in_channels ** -0.5 if self.input_scaling else 1.0)
        inner = [width_factor(n, g) * kernel for n, g in zip(self.widths[:-1], self.gammas[:-1])]
        return [first] + inner

    def _broadcast(self, v: torch.Tensor) -> torch.Tensor:
        return v.view((1, -1) + (1,) * self.ndim)

    def hidden_states(self, x: torch.Tensor) -> list[torch.Tensor]:
        """[H^1, ..., H^L], each (batch, N_l, *grid)."""
        states, h = [], x
        for layer, (w, scale) in enumerate(zip(self.weights, self.layer_scales())):
            z = periodic_conv(h, w, self.ndim) * scale
            if self.biases is not None:
                z = z + self._broadcast(self.biases[layer])
            h = self.sigma(z)
            states.append(h)
        return states

    def readout(self, h: torch.Tensor) -> torch.Tensor:
        """g = N_L^(-gamma_L) C H^L + b_C, pointwise over the grid."""
        g = torch.einsum("oc,bc...->bo...", self.C, h) * self.output_scale
        return g if self.bC is None else g + self._broadcast(self.bC)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != self.ndim + 2 or x.shape[1] != self.in_channels:
            raise ValueError(
                f"input has shape {tuple(x.shape)}; expected (batch, {self.in_channels}, *grid) with {self.ndim} grid axes"
            )
        return self.readout(self.hidden_states(x)[-1])

    def architecture(self) -> dict:
        return {
            "class": "MeanFieldCNN",
            "kwargs": {
                "ndim": self.ndim,
                "in_channels": self.in_channels,
                "channels": list(self.widths),
                "out_channels": self.out_channels,
                "gammas": list(self.gammas),
                "activation": self.activation,
                "kernel_size": self.kernel_size,
                "bias": self.use_bias,
                "output_bias": self.use_output_bias,
                "output_init": self.output_init,
                "input_scaling": self.input_scaling,
            },
        }

    def extra_repr(self) -> str:
        return f"ndim={self.ndim}, channels={self.widths}, gammas={self.gammas}, kernel_size={self.kernel_size}"


# CPU convolutions whose in x out channel product is at most this run on torch's native
# (im2col + GEMM) kernel instead of oneDNN: for the closure's small layers on 32^2 grids
# oneDNN was 2-7x slower (docs/performance.md, "Coupled LES"); for 32 x 32 channels it wins.
NATIVE_CONV_MAX_CHANNELS = 64


class FoldedCNN(FoldedNet):
    """The inference form of a `ConvClosure`: raw input channels -> physical SGS tendency.

    With the stored input statistics (mu, sd), layer multipliers a_l, output scale c and
    output statistics (m, s), every layer's input is an affine image ``alpha u + beta`` per
    channel of the stored tensor u (the normalized channels for l = 1, with alpha = 1/sd,
    beta = -mu/sd; for tanh the stored ``u = sigmoid(2z)`` with alpha = 2, beta = -1), so

        W_eff = k a_l W alpha,    b_eff = k (b + a_l sum_{c, taps} W beta)

    with ``k = 2`` before a tanh (its sigmoid(2z)) and 1 otherwise; the readout
    ``s (c C (alpha u + beta) + b_C) + m`` likewise. Folded in float64 from the current
    parameters, then cast to their dtype. Same values as ``ConvClosure.forward`` to roundoff.
    """

    def __init__(self, closure: "ConvClosure"):
        net = closure.net
        dtype = closure.input_mean.dtype
        tanh = net.activation == "tanh"
        with torch.no_grad():
            alpha = 1.0 / closure.input_std.double()
            beta = -closure.input_mean.double() * alpha
            self.layers = []
            for layer, (w, a) in enumerate(zip(net.weights, net.layer_scales())):
                w = w.double() * a
                shape = (1, -1) + (1,) * net.ndim
                bias = (w * beta.view(shape)).flatten(1).sum(1)
                if net.biases is not None:
                    bias = bias + net.biases[layer].double()
                w = w * alpha.view(shape)
                k = 2.0 if tanh else 1.0
                self.layers.append(((k * w).to(dtype), (k * bias).to(dtype)))
                alpha, beta = self.next_affine(bias, tanh)
            self.fold_readout(net, closure, alpha, beta, dtype)
        self.ndim = net.ndim
        self.activation = torch.sigmoid_ if tanh or net.activation == "sigmoid" else net.sigma
        self.native = max(w.shape[0] * w.shape[1] for w, _ in self.layers) <= NATIVE_CONV_MAX_CHANNELS

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """Raw channels (batch, C, *grid) -> the tendency (batch, out_channels, *grid)."""
        if self.native and x.device.type == "cpu":
            # only the `enabled` flag changes (setting the others warns on builds without XPU)
            with torch.backends.mkldnn.flags(enabled=False, deterministic=None, allow_tf32=None, fp32_precision=None):
                return self._run(x)
        return self._run(x)

    def _run(self, x: torch.Tensor) -> torch.Tensor:
        conv = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}[self.ndim]
        h = x
        for w, b in self.layers:
            h = self.activation(conv(periodic_pad(h, w.shape[-1] // 2, self.ndim), w, b))
        weight, bias = self.readout
        y = torch.matmul(weight, h.flatten(2)).add_(bias.unsqueeze(-1))
        return y.view(h.shape[:1] + y.shape[1:2] + h.shape[2:])


class ConvClosure(FieldClosure):
    """Closure ``model(state) -> tendency`` with a MeanFieldCNN on the normalized channels."""

    def __init__(
        self,
        ndim: int,
        stencil: int = 5,
        hidden: Sequence[int] = (32, 32),
        gammas=None,
        activation: str = "tanh",
        features: Sequence[str] | None = None,
        length: float = 2.0 * math.pi,
        **cnn_options,
    ):
        super().__init__(ndim, features, length)
        self.stencil = check_stencil(stencil)
        self.net = MeanFieldCNN(self.ndim, self.n_channels, hidden, self.out_channels, gammas, activation,
                                self.stencil, **cnn_options)

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        y = self.net(x)
        return y if self.ndim == 3 else y.squeeze(1)  # 3D: the three SGS components

    def tendency(self, x: torch.Tensor) -> torch.Tensor:
        """SGS tendency from the raw input channels; without autograd recording through
        `FoldedCNN` (rebuilt when a parameter or statistic changes), unless ``predict`` was
        replaced (`closure.les.coupled.compile_closure`)."""
        if torch.is_grad_enabled() or "predict" in vars(self):
            return super().tendency(x)
        y = self.folded()(x)
        return y if self.ndim == 3 else y.squeeze(1)

    def fold(self) -> FoldedCNN:
        return FoldedCNN(self)

    def architecture(self) -> dict:
        net = self.net.architecture()["kwargs"]
        return self._architecture(net["channels"], net)
