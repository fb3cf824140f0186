"""The local (stencil) closure: one mean-field MLP applied at every grid point.

At grid point j the input is the periodic patch of s points per direction
(s = ``stencil``, odd, r = s // 2) of every input channel c:

    1D: x_j[c * s + a]               = f_c[(j + a - r) mod n]
    2D: x_jk[c * s^2 + a * s + b]    = f_c[(j + a - r) mod ny, (k + b - r) mod nx]

and the SGS term there is g(x_j), g a ``MeanFieldMLP`` with one output. The
whole field is done at once by gathering the patches with periodic index
arithmetic (no loop over points), for any grid size; the model commutes with
periodic shifts by construction.

Inference (without autograd recording) runs `FoldedMLP`: the same function with
the input normalization, the layer multipliers, the output scaling and the
affine part of tanh(z) = 2 sigmoid(2z) - 1 folded into the weights and biases,
i.e. the first layer as one periodic convolution of the raw channels (no patch
gather), then per layer one matrix product with bias and one in-place
activation, and the readout.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F

from closure.nn.features import FieldClosure, FoldedNet
from closure.nn.meanfield import ArchitectureError, MeanFieldMLP


def check_stencil(stencil: int) -> int:
    if isinstance(stencil, bool) or not isinstance(stencil, int) or stencil < 1 or stencil % 2 == 0:
        raise ArchitectureError(f"stencil={stencil!r} must be a positive odd integer (a patch centred on the point)")
    return stencil


def _shifted(j: torch.Tensor, stencil: int, n: int) -> torch.Tensor:
    """Index table (len(j), s): entry [i, a] = (j_i + a - s // 2) mod n."""
    a = torch.arange(stencil, device=j.device)[None, :] - stencil // 2
    return (j[:, None] + a) % n


def _periodic_offsets(n: int, stencil: int, device) -> torch.Tensor:
    """Index table (n, s): entry [j, a] = (j + a - s // 2) mod n."""
    return _shifted(torch.arange(n, device=device), stencil, n)


def stencil_patches(x: torch.Tensor, stencil: int) -> torch.Tensor:
    """Periodic patches of a (batch, C, n) or (batch, C, ny, nx) tensor.

    Returns (batch, n, C*s) or (batch, ny, nx, C*s*s) in the order of the module docstring.
    """
    batch, c = x.shape[:2]
    if x.dim() == 3:
        idx = _periodic_offsets(x.shape[-1], stencil, x.device)
        patches = x[:, :, idx]  # (batch, C, n, s)
        return patches.permute(0, 2, 1, 3).reshape(batch, x.shape[-1], c * stencil)
    ny, nx = x.shape[-2:]
    r = stencil // 2
    if r <= min(ny, nx):
        # circular padding + strided windows (views) then one copy: the same values and order as the
        # index gather below, ~4x faster on the CPU (this runs at every stage of a coupled LES)
        padded = torch.nn.functional.pad(x, (r, r, r, r), mode="circular")
        patches = padded.unfold(2, stencil, 1).unfold(3, stencil, 1)  # (batch, C, ny, nx, s, s)
    else:
        iy = _periodic_offsets(ny, stencil, x.device)[:, None, :, None]
        ix = _periodic_offsets(nx, stencil, x.device)[None, :, None, :]
        patches = x[:, :, iy, ix]  # (batch, C, ny, nx, s, s)
    return patches.permute(0, 2, 3, 1, 4, 5).reshape(batch, ny, nx, c * stencil * stencil)


def point_patches(x: torch.Tensor, stencil: int, t: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
    """Stencil patches of channels ``x`` (T, C, *grid) at flat points (t, p); same layout as ``stencil_patches``.

    Returns ``(len(t), C * s^d)``: 1D ``[c * s + a]``, 2D ``[c * s^2 + a * s + b]``,
    ``a`` the offset along the first spatial axis (y in 2D).
    """
    c = x.shape[1]
    if x.dim() == 3:
        ix = _shifted(points, stencil, x.shape[-1])  # (B, s)
        patches = x[t[:, None], :, ix]  # (B, s, C)
        return patches.permute(0, 2, 1).reshape(len(t), c * stencil)
    ny, nx = x.shape[-2:]
    y, xx = points // nx, points % nx
    iy = _shifted(y, stencil, ny)[:, :, None]  # (B, s, 1)
    ix = _shifted(xx, stencil, nx)[:, None, :]  # (B, 1, s)
    patches = x[t[:, None, None], :, iy, ix]  # (B, s, s, C)
    return patches.permute(0, 3, 1, 2).reshape(len(t), c * stencil * stencil)


# FoldedMLP runs batches of more than this many grid points in parts of whole fields: on the CPU
# the hidden activations of a larger part leave the core's cache (32^2 LES, [32, 32], one thread:
# 16 fields in one piece 3.6 ms, in parts of 4 fields 1.3 ms; up to 8 fields one piece is as fast).
FOLDED_CHUNK_POINTS = 8192


class FoldedMLP(FoldedNet):
    """The inference form of a `StencilClosure`: raw input channels -> physical SGS tendency.

    Input j of the patch is channel c = j // s^d, so the normalization is the affine image
    ``alpha_j u_j + beta_j`` (alpha = 1/sd_c, beta = -mu_c/sd_c) of the raw patch u; with the
    layer multipliers a_l every layer is then ``W_eff u + b_eff`` with

        W_eff = k a_l W diag(alpha),    b_eff = k (b + a_l W beta),

    k = 2 before a tanh (the stored activation is sigmoid(2z), whose image 2u - 1 is the next
    layer's alpha = 2, beta = -1) and 1 otherwise; the readout ``s (c C (alpha u + beta) + b_C) + m``
    likewise. Folded in float64 from the current parameters, then cast to their dtype. Same
    values as ``StencilClosure.forward`` to roundoff.
    """

    def __init__(self, closure: "StencilClosure"):
        net = closure.net
        dtype = closure.input_mean.dtype
        tanh = net.activation == "tanh"
        taps = closure.stencil ** closure.ndim
        with torch.no_grad():
            alpha = (1.0 / closure.input_std.double()).repeat_interleave(taps)
            beta = -closure.input_mean.double().repeat_interleave(taps) * alpha
            self.layers = []
            for layer, (w, a) in enumerate(zip(net.weights, net.layer_scales())):
                w = w.double() * a
                bias = w @ beta
                if net.biases is not None:
                    bias = bias + net.biases[layer].double()
                k = 2.0 if tanh else 1.0
                self.layers.append(((k * w * alpha).to(dtype), (k * bias).to(dtype)))
                alpha, beta = self.next_affine(bias, tanh)
            self.fold_readout(net, closure, alpha, beta, dtype)
        self.stencil = closure.stencil
        self.activation = torch.sigmoid_ if tanh or net.activation == "sigmoid" else net.sigma

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """Raw channels (batch, C, *grid) -> the tendency (batch, *grid), in parts of at most
        `FOLDED_CHUNK_POINTS` grid points (whole fields)."""
        fields = max(1, FOLDED_CHUNK_POINTS // x[0, 0].numel())
        if x.shape[0] > fields:
            return torch.cat([self._run(part) for part in x.split(fields)])
        return self._run(x)

    def _run(self, x: torch.Tensor) -> torch.Tensor:
        """One part of the batch.

        The first layer on all patches is a periodic convolution of the channels with the
        weights viewed as (N_1, C, s, ..., s) (the patch order is the kernel's); it runs as one
        (``torch.nn.functional.conv1d``/``conv2d``, ~4x faster on the CPU than gathering the
        patches, docs/performance.md) unless the grid is smaller than the patch."""
        grid = x.shape[2:]
        r = self.stencil // 2
        (w, b), rest = self.layers[0], self.layers[1:]
        if r <= min(grid):
            conv = F.conv1d if len(grid) == 1 else F.conv2d
            kernel = w.view(w.shape[0], x.shape[1], *(self.stencil,) * len(grid))
            h = self.activation(conv(F.pad(x, (r, r) * len(grid), mode="circular"), kernel, b)).flatten(2)
        else:
            patches = stencil_patches(x, self.stencil)
            h = self.activation(torch.addmm(b, patches.reshape(-1, w.shape[1]), w.t()))
            h = h.view(x.shape[0], -1, w.shape[0]).transpose(1, 2)
        for w, b in rest:  # (batch, N, points): pointwise layers as matrix products over the channels
            h = self.activation(torch.matmul(w, h).add_(b.unsqueeze(-1)))
        weight, bias = self.readout
        return torch.matmul(weight, h).add_(bias.unsqueeze(-1)).view(x.shape[:1] + grid)


class StencilClosure(FieldClosure):
    """Local closure sgs(j) = g(patch around j), g a MeanFieldMLP; ``model(state) -> tendency``.

    Args:
        ndim: 1 (state (batch, n)) or 2 (state (batch, ny, nx)).
        stencil: points per direction of the patch (odd).
        hidden, gammas, activation: the MeanFieldMLP's widths, exponents, activation.
        features: derived input channels (see closure.nn.features), default none.
        length: the periodic domain's length (for spectral derived features).
        **mlp_options: bias, output_bias, output_init, input_scaling of MeanFieldMLP.
    """

    def __init__(
        self,
        ndim: int,
        stencil: int = 5,
        hidden: Sequence[int] = (256, 256),
        gammas=None,
        activation: str = "tanh",
        features: Sequence[str] | None = None,
        length: float = 2.0 * math.pi,
        **mlp_options,
    ):
        super().__init__(ndim, features, length)
        if self.ndim == 3:
            raise ArchitectureError("model.type 'mlp' (a stencil network) is 1D/2D only; use model.type 'cnn' in 3D")
        self.stencil = check_stencil(stencil)
        in_features = self.n_channels * self.stencil**self.ndim
        self.net = MeanFieldMLP(in_features, hidden, 1, gammas, activation, **mlp_options)

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        """Normalized channels (batch, C, *grid) -> normalized SGS (batch, *grid)."""
        return self.net(stencil_patches(x, self.stencil)).squeeze(-1)

    def tendency(self, x: torch.Tensor) -> torch.Tensor:
        """SGS tendency from the raw input channels; without autograd recording through
        `FoldedMLP` (rebuilt when a parameter or statistic changes), unless ``predict`` was
        replaced (`closure.les.coupled.compile_closure`)."""
        if torch.is_grad_enabled() or "predict" in vars(self):
            return super().tendency(x)
        return self.folded()(x)

    def fold(self) -> FoldedMLP:
        return FoldedMLP(self)

    def architecture(self) -> dict:
        net = self.net.architecture()["kwargs"]
        return self._architecture(net["hidden"], net)

    def extra_repr(self) -> str:
        return f"ndim={self.ndim}, stencil={self.stencil}, features={self.features}"
