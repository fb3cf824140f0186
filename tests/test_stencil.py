"""Stencil and convolutional closures: per-point equivalence, shift equivariance, normalization
buffers, build_model from a config section, save/load round trip."""

from __future__ import annotations

import math

import pytest
import torch

import closure
import closure.nn.stencil as stencil_module
from closure.nn import (
    ConvClosure,
    GroupAveraged,
    MeanFieldCNN,
    MeanFieldMLP,
    StencilClosure,
    build_model,
    load_model,
    param_groups,
    save_model,
    sgd_rates,
)



@pytest.fixture(autouse=True)
def _float64(default_float64):
    """float64 for exact comparisons (conftest.default_float64)."""


def _explicit_patch_1d(u, j, s):
    r = s // 2
    n = u.shape[-1]
    return torch.stack([u[:, (j + a - r) % n] for a in range(s)], dim=-1)


def _explicit_patch_2d(f, y, x, s):
    r = s // 2
    ny, nx = f.shape[-2:]
    rows = [f[:, (y + a - r) % ny, (x + b - r) % nx] for a in range(s) for b in range(s)]
    return torch.stack(rows, dim=-1)


def test_stencil_1d_equals_explicit_per_point_mlp():
    torch.manual_seed(0)
    model = StencilClosure(1, stencil=5, hidden=[16, 8], gammas=[0.75, 1.0])
    u = torch.randn(3, 11)
    out = model(u)
    for j in range(11):
        expected = model.net(_explicit_patch_1d(u, j, 5)).squeeze(-1)
        torch.testing.assert_close(out[:, j], expected)


def test_stencil_2d_equals_explicit_per_point_mlp_on_non_square_grid():
    torch.manual_seed(0)
    model = StencilClosure(2, stencil=3, hidden=[12], gammas=[1.0])
    f = torch.randn(2, 7, 9)
    out = model(f)
    for y in range(7):
        for x in range(9):
            expected = model.net(_explicit_patch_2d(f, y, x, 3)).squeeze(-1)
            torch.testing.assert_close(out[:, y, x], expected)


def test_stencil_larger_than_grid_wraps_periodically():
    model = StencilClosure(1, stencil=7, hidden=[4])
    u = torch.randn(2, 3)
    torch.testing.assert_close(model(u)[:, 1], model.net(_explicit_patch_1d(u, 1, 7)).squeeze(-1))


@pytest.mark.parametrize("ndim,features", [(1, []), (1, ["gradient", "laplacian"]), (2, []), (2, ["velocity_gradient", "gradient"])])
@pytest.mark.parametrize("kind", ["mlp", "cnn"])
def test_closures_commute_with_periodic_shifts(ndim, features, kind):
    torch.manual_seed(1)
    model = build_model({"type": kind, "stencil": 3, "hidden": [8, 8], "gammas": [1.0, 0.5], "features": features}, ndim)
    state = torch.randn(2, *([12] * ndim))
    out = model(state)
    assert out.shape == state.shape
    for shift in (1, 5):
        dims = tuple(range(1, ndim + 1))
        shifts = (shift,) * ndim
        torch.testing.assert_close(model(torch.roll(state, shifts, dims)), torch.roll(out, shifts, dims))


def test_velocity_gradient_features_of_a_single_mode():
    """omega = cos(x) cos(y): psi = omega / 2, u = psi_y, v = -psi_x."""
    model = StencilClosure(2, stencil=1, hidden=[4], features=["velocity_gradient"], length=2 * math.pi)
    n = 16
    g = torch.arange(n) * 2 * math.pi / n
    y, x = torch.meshgrid(g, g, indexing="ij")
    omega = (torch.cos(x) * torch.cos(y))[None]
    ch = model.channels(omega)[0]
    torch.testing.assert_close(ch[1], 0.5 * torch.sin(x) * torch.sin(y))  # u_x = psi_xy
    torch.testing.assert_close(ch[2], -0.5 * torch.cos(x) * torch.cos(y))  # u_y = psi_yy
    torch.testing.assert_close(ch[3], 0.5 * torch.cos(x) * torch.cos(y))  # v_x = -psi_xx
    # consistency: v_x - u_y = omega
    torch.testing.assert_close(ch[3] - ch[2], omega[0])


def test_normalization_buffers_map_physical_fields():
    torch.manual_seed(2)
    model = StencilClosure(1, stencil=3, hidden=[8], features=["gradient"])
    field = 3.0 + 2.0 * torch.randn(16, 32)
    sgs = -1.0 + 0.01 * torch.randn(16, 32)
    model.fit_normalization(field, sgs)
    assert model.input_mean[0].item() == pytest.approx(3.0, abs=0.1)
    assert model.input_std[0].item() == pytest.approx(2.0, abs=0.1)
    assert model.output_mean.item() == pytest.approx(-1.0, abs=0.01)
    assert set(model.state_dict()) >= {"input_mean", "input_std", "output_mean", "output_std"}
    x = (model.channels(field) - model.input_mean[None, :, None]) / model.input_std[None, :, None]
    torch.testing.assert_close(model(field), model.predict(x) * model.output_std + model.output_mean)


def test_closure_rejects_wrong_shapes():
    model = StencilClosure(2, stencil=3, hidden=[4])
    with pytest.raises(ValueError, match=r"\(batch, ny, nx\)"):
        model(torch.randn(8, 8))


def test_closure_is_differentiable_and_dtype_device_agnostic():
    model = StencilClosure(2, stencil=3, hidden=[8]).float()
    state = torch.randn(2, 8, 8, dtype=torch.float32, requires_grad=True)
    out = model(state)
    assert out.dtype == torch.float32
    out.sum().backward()
    assert state.grad is not None and torch.isfinite(state.grad).all()


def test_cnn_with_unit_kernel_is_the_pointwise_mlp():
    torch.manual_seed(3)
    cnn = MeanFieldCNN(2, in_channels=2, channels=[8, 4], kernel_size=1, gammas=[0.5, 1.0])
    mlp = MeanFieldMLP(2, [8, 4], gammas=[0.5, 1.0])
    with torch.no_grad():
        for wm, wc in zip(mlp.weights, cnn.weights):
            wm.copy_(wc[:, :, 0, 0])
        for bm, bc in zip(mlp.biases, cnn.biases):
            bm.copy_(bc)
        mlp.C.copy_(cnn.C)
    x = torch.randn(3, 2, 5, 6)
    expected = mlp(x.movedim(1, -1)).movedim(-1, 1)
    torch.testing.assert_close(cnn(x), expected)


def test_cnn_param_groups_use_channel_counts():
    model = ConvClosure(2, stencil=3, hidden=[16, 32], gammas=[0.5, 1.0])
    groups = {g["name"]: g["lr"] for g in param_groups(model, 0.7)}
    assert groups == sgd_rates([16, 32], [0.5, 1.0], 0.7)


def test_cnn_output_variance_follows_channel_law():
    """Output variance over seeds ~ C_L^(1 - 2 gamma) with the channel count as N."""
    import numpy as np

    x = torch.randn(1, 1, 16, 16, generator=torch.Generator().manual_seed(0))
    for gamma in (0.5, 1.0):
        variances = []
        channels = [16, 32, 64, 128]
        for c in channels:
            outs = []
            for seed in range(32):
                torch.manual_seed(seed)
                outs.append(MeanFieldCNN(2, 1, [c], gammas=[gamma], kernel_size=3)(x))
            variances.append(torch.stack(outs).var(dim=0).mean().item())
        slope = np.polyfit(np.log(channels), np.log(variances), 1)[0]
        assert abs(slope - (1 - 2 * gamma)) < 0.15, slope


def _set_stored_normalization(model):
    """Non-trivial stored input/output normalization and output bias (what training leaves)."""
    with torch.no_grad():
        model.input_mean.normal_()
        model.input_std.uniform_(0.5, 2.0)
        model.output_mean.fill_(0.3)
        model.output_std.fill_(2.0)
        model.net.bC.fill_(0.2)


def _folded_equals_network(model, x, shape=None):
    """The no-grad (folded) output equals the network's own (grad mode) to 1e-13; returns it."""
    reference = model(x).detach()          # grad mode: the network itself
    with torch.no_grad():
        fast = model(x)
    assert fast.shape == reference.shape and (shape is None or fast.shape == shape)
    assert (fast - reference).abs().max() <= 1e-13 * reference.abs().max()
    return fast


@pytest.mark.parametrize("ndim,shape", [(1, (3, 20)), (2, (3, 12, 12)), (3, (2, 3, 6, 6, 6))])
@pytest.mark.parametrize("activation", ["tanh", "gelu"])
def test_cnn_folded_inference_equals_the_network(ndim, shape, activation):
    """Without autograd the closure runs its folded form (normalization, scales and tanh's
    affine part inside the convolutions): the same values to roundoff, rebuilt after updates."""
    torch.manual_seed(0)
    features = ["gradient"] if ndim < 3 else []
    model = ConvClosure(ndim, stencil=3, hidden=[4, 6], gammas=[0.5, 1.0], activation=activation, features=features)
    x = torch.randn(*shape)
    _set_stored_normalization(model)

    def compare():
        return _folded_equals_network(model, x)

    before = compare()
    folded = model.folded().tensors()
    with torch.no_grad():                       # an optimizer-like in-place update: refolded in place
        model.net.weights[1].mul_(1.5)
        model.input_std.mul_(0.5)
    after = compare()
    assert not torch.allclose(before, after)
    assert all(a is b for a, b in zip(folded, model.folded().tensors()))   # what a CUDA graph captured


@pytest.mark.parametrize("ndim,shape,stencil", [(1, (3, 20), 3), (2, (3, 12, 12), 3), (2, (2, 12, 10), 5),
                                                (1, (2, 2), 7), (2, (2, 3, 4), 7)])  # the last two: patch > grid
@pytest.mark.parametrize("activation", ["tanh", "gelu"])
def test_stencil_folded_inference_equals_the_network(ndim, shape, stencil, activation, monkeypatch):
    """Without autograd the stencil MLP runs its folded form (normalization, layer multipliers,
    output scaling and tanh's affine part in the weights; the first layer as a periodic
    convolution): the same values to roundoff, rebuilt (in place) after updates."""
    torch.manual_seed(0)
    model = StencilClosure(ndim, stencil=stencil, hidden=[4, 6], gammas=[0.5, 1.0], activation=activation,
                           features=["gradient"]).double()
    x = torch.randn(*shape, dtype=torch.float64)
    _set_stored_normalization(model)

    def compare():
        return _folded_equals_network(model, x, shape=x.shape)

    before = compare()
    monkeypatch.setattr(stencil_module, "FOLDED_CHUNK_POINTS", 1)   # the batch in parts of one field
    compare()
    monkeypatch.undo()
    folded = model.folded().tensors()
    with torch.no_grad():                       # an optimizer-like in-place update: refolded in place
        model.net.weights[0].mul_(1.5)
        model.input_std.mul_(0.5)
    after = compare()
    assert not torch.allclose(before, after)
    assert all(a is b for a, b in zip(folded, model.folded().tensors()))   # what a CUDA graph captured


def test_gradient_features_are_the_exact_derivatives():
    """channels [f, f_x, f_y] of f = sin(2x + 3y) on [0, L)^2 (state indexed [y, x])."""
    from closure.nn.features import feature_channels

    n, length = 16, 3.0
    k = 2 * math.pi / length
    coords = torch.arange(n) * length / n
    y, x = torch.meshgrid(coords, coords, indexing="ij")
    phase = k * (2 * x + 3 * y)
    channels = feature_channels(torch.sin(phase)[None], 2, ["gradient"], length)
    torch.testing.assert_close(channels[0, 1], 2 * k * torch.cos(phase))
    torch.testing.assert_close(channels[0, 2], 3 * k * torch.cos(phase))


class Section:
    """A config section as an object with attributes (like the pydantic ModelConfig)."""

    def __init__(self, **kw):
        self.__dict__.update(kw)


def test_build_model_from_dict_or_object():
    cfg = {"type": "mlp", "stencil": 5, "hidden": [32, 16], "gammas": [1.0, 0.75], "activation": "silu"}
    a = build_model(cfg, 2)
    b = build_model(Section(**cfg, features=[], symmetry="none"), 2)
    assert isinstance(a, StencilClosure) and isinstance(b, StencilClosure)
    assert a.net.widths == [32, 16] and a.net.gammas == [1.0, 0.75] and a.net.activation == "silu"
    assert isinstance(build_model({**cfg, "symmetry": "average"}, 2), GroupAveraged)
    assert isinstance(build_model({**cfg, "type": "cnn"}, 1), ConvClosure)
    with pytest.raises(ValueError, match="model.type"):
        build_model({**cfg, "type": "transformer"}, 2)
    with pytest.raises(closure.ClosureError, match="gamma"):
        build_model({**cfg, "gammas": [0.2, 1.0]}, 2)


@pytest.mark.parametrize(
    "cfg,ndim",
    [
        ({"type": "mlp", "stencil": 3, "hidden": [8, 8], "gammas": [0.5, 1.0], "features": ["gradient"]}, 2),
        ({"type": "cnn", "stencil": 3, "hidden": [4, 4], "gammas": [1.0, 1.0]}, 1),
        ({"type": "mlp", "stencil": 3, "hidden": [8], "gammas": [0.75], "symmetry": "average"}, 2),
    ],
)
def test_save_load_round_trip(tmp_path, cfg, ndim):
    torch.manual_seed(4)
    model = build_model(cfg, ndim, dtype=torch.float32)
    state = torch.randn(5, *([10] * ndim), dtype=torch.float32)
    inner = model.model if isinstance(model, GroupAveraged) else model
    inner.fit_normalization(state, 0.1 * state**2)
    path = save_model(tmp_path / "run" / "model.pt", model, extra={"epoch": 3, "config": {"lr": 1.0}})
    assert not [p for p in path.parent.iterdir() if p.name != "model.pt"]  # no temp file left behind
    raw = torch.load(path, weights_only=True)
    assert isinstance(raw["architecture"], str)
    loaded, extra = load_model(path, with_extra=True)
    assert type(loaded) is type(model) and extra == {"epoch": 3, "config": {"lr": 1.0}}
    assert next(loaded.parameters()).dtype == torch.float32
    torch.testing.assert_close(loaded(state), model(state), rtol=0, atol=0)


def test_load_model_errors_name_the_file(tmp_path):
    with pytest.raises(closure.ClosureError, match="does not exist"):
        load_model(tmp_path / "missing.pt")
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a model")
    with pytest.raises(closure.ClosureError, match="bad.pt"):
        load_model(bad)
