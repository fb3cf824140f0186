"""The streaming data pipeline (closure.data.streaming): blocks, patches, sampling, sharding, memory."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from closure.data import dataset as cds
from closure.data import sgs as csgs
from closure.data import system
from closure.config import config_from_dict
from closure.errors import ClosureError
from closure.nn import build_model, stencil_patches
from closure.data.streaming import (Prefetcher, SampleStream, channel_statistics, dataset_statistics, load_block,
                               plan_blocks, point_patches)


def tiny_raw_config(equation: str = "navier_stokes_2d", n_dns: int = 32, n_les: int = 16, trajectories: int = 4,
                    samples: int = 12, filter_type: str = "gaussian") -> dict:
    """A small but real experiment: DNS n_dns -> LES n_les, a few trajectories and snapshots."""
    two_d = equation == "navier_stokes_2d"
    return {
        "seed": 0,
        "device": "cpu",
        "system": {"equation": equation, "viscosity": 1e-2 if two_d else 2e-2, "drag": 0.1 if two_d else 0.0,
                   "forcing": {"type": "kolmogorov", "wavenumber": 2} if two_d else {"type": "none"}},
        "initial": {"peak_wavenumber": 4.0, "energy": 0.5},
        "dns": {"resolution": n_dns, "dt": 0.01, "spinup_time": 0.5, "sample_interval": 0.1,
                "samples": samples, "trajectories": trajectories},
        "les": {"resolution": n_les, "filter": {"type": filter_type}},
        "data": {"validation_fraction": 0.25, "test_fraction": 0.25},
        "model": {"hidden": [32, 32], "gammas": [1.0, 1.0], "stencil": 3},
        "train": {"epochs": 3, "batch_size": 256, "samples_per_epoch": 2048, "lr": 1.0, "schedule": "cosine"},
    }


def write_tiny_dataset(path, raw: dict) -> str:
    """Real filtered DNS (closure.data.system / closure.data.sgs) written in the contract's schema."""
    config = config_from_dict(raw)
    samples, trajectories = config.dns.samples, config.dns.trajectories
    ids = list(range(trajectories))
    seeds = system.trajectory_seeds(config, ids)
    dns = system.dns_equation(config, torch.float64, seeds=seeds)
    les = system.les_equation(config, torch.float64, seeds=seeds)
    w = system.initial_state(config, dns.grid, seeds)
    w = dns.simulate(w, config.dns.dt, config.dns.spinup_steps)
    traj = dns.simulate(w, config.dns.dt, config.dns.sample_steps * (samples - 1),
                        save_every=config.dns.sample_steps, time=config.dns.spinup_time)
    field, sgs = csgs.filtered_field_and_sgs(traj.reshape((-1,) + traj.shape[2:]), dns, les, system.make_filter(config))
    shape = (trajectories, samples) + tuple(field.shape[1:])
    times = config.dns.spinup_time + config.dns.sample_interval * np.arange(samples)
    ds = cds.build_dataset(config, field.reshape(shape).numpy(), sgs.reshape(shape).numpy(), times, ids)
    cds.write(ds, path)
    return str(path)


@pytest.fixture(scope="module")
def data2d(tmp_path_factory):
    raw = tiny_raw_config(samples=10)
    return write_tiny_dataset(tmp_path_factory.mktemp("stream") / "tiny2d.nc", raw), raw


def _model(raw, ndim=2, **changes):
    cfg = dict(raw["model"], **changes)
    return build_model(cfg, ndim)


def test_blocks_cover_every_snapshot_once(data2d):
    path, _ = data2d
    ds = cds.open_dataset(path)
    blocks = plan_blocks(ds, [0, 2], block_snapshots=3)
    seen = [(b.trajectory, t) for b in blocks for t in range(b.start, b.stop)]
    assert sorted(seen) == [(i, t) for i in (0, 2) for t in range(ds.sizes["time"])]
    assert max(b.snapshots for b in blocks) <= 3
    field, sgs = load_block(ds, blocks[1])
    np.testing.assert_array_equal(field.numpy(), ds.omega.isel(trajectory=0, time=slice(3, 6)).values)
    strided, _ = load_block(ds, blocks[1], stride=2)  # snapshots 3..5 -> only t = 4
    np.testing.assert_array_equal(strided.numpy(), ds.omega.isel(trajectory=0, time=[4]).values)


@pytest.mark.parametrize("ndim,shape", [(1, (3, 20)), (2, (3, 12, 10))])
def test_point_patches_match_whole_field_patches(ndim, shape):
    torch.manual_seed(0)
    model = build_model({"stencil": 5, "hidden": [8], "gammas": [1.0], "features": ["gradient"]}, ndim)
    x = model.normalize_input(torch.randn(shape))
    full = stencil_patches(x, 5).reshape(shape[0], -1, x.shape[1] * 5 ** ndim)
    t = torch.randint(0, shape[0], (64,))
    p = torch.randint(0, full.shape[1], (64,))
    torch.testing.assert_close(point_patches(x, 5, t, p), full[t, p], rtol=0, atol=0)
    # and the network on isolated patches is the closure on the whole field
    pred = model.predict(x).reshape(shape[0], -1)
    torch.testing.assert_close(model.net(point_patches(x, 5, t, p)).squeeze(-1), pred[t, p])


def test_statistics_stream_and_match_numpy(data2d):
    path, raw = data2d
    ds = cds.open_dataset(path)
    stats = dataset_statistics(ds, [1, 3])
    f = ds.omega.isel(trajectory=[1, 3]).values.astype(np.float64)
    assert stats["field_mean"] == pytest.approx(f.mean(), abs=1e-9)
    assert stats["field_std"] == pytest.approx(f.std(), rel=1e-6)
    model = _model(raw, features=["gradient"])
    mean, std = channel_statistics(ds, plan_blocks(ds, [1, 3], 4), model)
    assert mean[0].item() == pytest.approx(f.mean(), abs=1e-6)
    assert std[0].item() == pytest.approx(f.std(ddof=1), rel=1e-6)
    assert mean.shape == (3,)
    # symmetry augmentation: the pseudo-scalar's mean vanishes over the group
    mean_sym, _ = channel_statistics(ds, plan_blocks(ds, [1, 3], 4), _model(raw), symmetric=True)
    assert abs(mean_sym[0].item()) < 1e-9


def _collect(stream, epoch):
    stream.set_epoch(epoch)
    return [(b.inputs.clone(), b.targets.clone(), b.count, b.total) for b in stream]


def test_stream_is_deterministic_and_counts_samples(data2d):
    path, raw = data2d
    ds = cds.open_dataset(path)
    model = _model(raw)
    blocks = plan_blocks(ds, [0, 1, 2], 4)
    make = lambda: SampleStream(ds, blocks, model, batch_size=100, samples=1000, seed=3, mix=2)  # noqa: E731
    a, b = _collect(make(), 0), _collect(make(), 0)
    assert len(a) == 10 and all(x[2] == 100 and x[3] == 100 for x in a)
    for (xa, ya, _, _), (xb, yb, _, _) in zip(a, b):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
    c = _collect(make(), 1)
    assert not torch.equal(a[0][1], c[0][1])
    assert a[0][0].shape == (100, 9)


def test_ranks_split_the_same_global_batches(data2d):
    """Two ranks together yield exactly the single process's batches (as sets of samples)."""
    path, raw = data2d
    ds = cds.open_dataset(path)
    model = _model(raw)
    blocks = plan_blocks(ds, [0, 1, 2, 3], 3)
    kw = dict(batch_size=96, samples=960, seed=1, mix=4)
    single = _collect(SampleStream(ds, blocks, model, **kw), 2)
    ranks = [_collect(SampleStream(ds, blocks, model, rank=r, world_size=2, **kw), 2) for r in range(2)]
    assert len(single) == len(ranks[0]) == len(ranks[1])
    for (x, y, count, total), r0, r1 in zip(single, *ranks):
        assert r0[3] == r1[3] == total == 96
        assert r0[2] + r1[2] == count
        merged_y = torch.cat([r0[1], r1[1]])
        merged_x = torch.cat([r0[0], r1[0]])
        assert torch.equal(torch.sort(merged_y).values, torch.sort(y).values)
        torch.testing.assert_close(merged_x.sum(0), x.sum(0))


def test_pipeline_never_holds_more_than_its_group(data2d, monkeypatch):
    """The stream reads block by block: at most `mix` blocks resident, each block read once per epoch."""
    path, raw = data2d
    ds = cds.open_dataset(path)
    total_values = 2 * ds.omega.size
    reads = []
    import closure.data.streaming as cs

    original = cs.load_block

    def spy(ds_, block, *a, **k):
        out = original(ds_, block, *a, **k)
        reads.append(out[0].numel() + out[1].numel())
        return out

    monkeypatch.setattr(cs, "load_block", spy)
    model = _model(raw)
    blocks = plan_blocks(ds, range(4), 2)
    stream = SampleStream(ds, blocks, model, batch_size=128, samples=4096, seed=0, mix=2)
    for _ in stream:
        pass
    per_block = 2 * 2 * 16 * 16
    assert max(reads) <= per_block < total_values
    assert sum(reads) == total_values  # one pass over the data per epoch, never more
    assert stream.stats["max_resident"] <= 2 * per_block < total_values / 4
    assert stream.stats["blocks_loaded"] == len(blocks)


def test_fields_mode_for_whole_field_models(data2d):
    path, raw = data2d
    ds = cds.open_dataset(path)
    model = _model(raw)
    stream = SampleStream(ds, plan_blocks(ds, [0, 1]), model, batch_size=512, samples=2048, seed=0, mode="fields")
    batches = _collect(stream, 0)
    assert len(batches) == 4
    assert batches[0][0].shape == (2, 16, 16) and batches[0][3] == 512


def test_prefetcher_keeps_order_and_raises():
    assert list(Prefetcher(range(50), depth=3)) == list(range(50))

    def broken():
        yield 1
        raise ClosureError("bad block")

    with pytest.raises(ClosureError, match="bad block"):
        list(Prefetcher(broken()))


def test_non_finite_block_is_a_closure_error(data2d, tmp_path):
    path, _ = data2d
    ds = cds.open_dataset(path).load()
    ds["sgs"][1, 2, 3, 4] = np.nan
    bad = tmp_path / "nan.nc"
    cds.write(ds, bad)
    with pytest.raises(ClosureError, match="non-finite"):
        load_block(cds.open_dataset(bad), plan_blocks(cds.open_dataset(bad), [1])[0])


@pytest.mark.parametrize("ndim,n", [(1, 16), (2, 16), (3, 8), (3, 12)])
def test_dealias_residual_feature_is_the_discarded_advection(ndim, n):
    """closure.nn's dealias_residual = P N(prolonged field) - N_les(field), N on a grid 4x as fine
    (in 3D the projected u x omega of the velocity)."""
    import solvers
    from closure.data.filters import prolong_hat, restrict_hat
    from closure.nn.features import dealias_residual

    cls = {1: solvers.Burgers1D, 2: solvers.NavierStokes2D, 3: solvers.NavierStokes3D}[ndim]
    les, fine = (cls(m, viscosity=1.0, dtype=torch.float64) for m in (n, 4 * n))
    torch.manual_seed(0)
    shape = (2,) + ((3,) if ndim == 3 else ()) + (n,) * ndim
    f = les.grid.to_physical(les.grid.to_spectral(torch.randn(shape, dtype=torch.float64)))
    if ndim == 3:
        f = les.project(f)
    f_hat = les.grid.to_spectral(f)
    exact = restrict_hat(fine.nonlinear_hat(prolong_hat(f_hat, les.grid, fine.grid)), fine.grid, les.grid)
    expected = les.grid.to_physical(exact - les.nonlinear_hat(f_hat))
    torch.testing.assert_close(dealias_residual(f, ndim, 2 * math.pi), expected)
