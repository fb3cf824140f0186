"""A-priori training (closure.training.trainer): outputs, determinism, resume, DDP, config/data errors."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from closure.config import config_from_dict
from closure.errors import ClosureError
from closure.nn import load_model
from closure.training.trainer import TrainingInterrupted, launch_local, learning_rate_factor, train

from test_streaming import tiny_raw_config, write_tiny_dataset

OUTPUTS = ("model.pt", "config.yaml", "splits.json", "metrics.json", "history.csv", "training_curve.png",
           "checkpoint.pt")


def _checkpoint_model(path):
    return torch.load(path, weights_only=True)["model"]


@pytest.fixture(scope="module")
def data2d(tmp_path_factory):
    raw = tiny_raw_config(samples=8)
    return write_tiny_dataset(tmp_path_factory.mktemp("train") / "tiny2d.nc", raw), raw


def _weights(run_dir):
    return load_model(run_dir / "model.pt").state_dict()


def _assert_same(a, b, exact=True):
    assert a.keys() == b.keys()
    for k in a:
        if exact:
            assert torch.equal(a[k], b[k]), k
        else:
            torch.testing.assert_close(a[k], b[k], rtol=2e-4, atol=2e-5, msg=k)


def test_train_writes_the_run_directory(data2d, tmp_path):
    path, raw = data2d
    run = train(config_from_dict(raw), path, tmp_path / "run", progress_enabled=False, block_snapshots=4)
    for name in OUTPUTS:
        assert (run / name).is_file(), name
    model, extra = load_model(run / "model.pt", with_extra=True)
    assert extra["equation"] == "navier_stokes_2d"
    splits = json.loads((run / "splits.json").read_text())
    assert sorted(splits["train"] + splits["validation"] + splits["test"]) == [0, 1, 2, 3]
    assert splits["test"] and splits["validation"]
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["training"]["epochs_run"] == 3
    ap = metrics["apriori"]
    for name in ("learned", "smagorinsky"):
        # an affine refit of any prediction reaches R^2 = corr^2, so R^2 <= corr^2
        assert ap[name]["r2"] <= ap[name]["correlation"] ** 2 + 1e-12 and "enstrophy_backscatter" in ap[name]
    assert "energy_transfer" in ap["truth"] and len(ap["truth"]["pdf"]) == len(ap["bins"]) - 1
    history = (run / "history.csv").read_text().splitlines()
    assert history[0].startswith("epoch,train_loss,validation_loss") and len(history) == 4
    # normalization was fitted on the training split only
    import xarray as xr

    ds = xr.open_dataset(path)
    train_mean = float(ds.omega.isel(trajectory=splits["train"]).mean())
    assert model.input_mean.item() == pytest.approx(train_mean, rel=1e-5, abs=1e-7)
    out = model(torch.from_numpy(ds.omega.isel(trajectory=0, time=slice(0, 2)).values))
    assert out.shape == (2, 16, 16) and torch.isfinite(out).all()


def test_training_reduces_the_loss(data2d, tmp_path):
    path, raw = data2d
    raw = json.loads(json.dumps(raw))
    # most of this coarse dataset's SGS term is the advection the LES's 2/3 rule discards:
    # the dealias_residual feature makes it learnable by a local model
    raw["model"].update(features=["dealias_residual"])
    raw["train"].update(epochs=6, samples_per_epoch=4096, optimizer="adam", lr=3e-2)
    run = train(config_from_dict(raw), path, tmp_path / "run", progress_enabled=False)
    rows = [line.split(",") for line in (run / "history.csv").read_text().splitlines()[1:]]
    losses = [float(r[1]) for r in rows]
    assert losses[-1] < 0.5 * losses[0]
    ap = json.loads((run / "metrics.json").read_text())["apriori"]
    assert ap["learned"]["correlation"] > max(0.6, ap["smagorinsky"]["correlation"] + 0.3)


def test_same_seed_same_weights(data2d, tmp_path):
    path, raw = data2d
    config = config_from_dict(raw)
    a = train(config, path, tmp_path / "a", progress_enabled=False, apriori=False)
    b = train(config, path, tmp_path / "b", progress_enabled=False, apriori=False)
    _assert_same(_weights(a), _weights(b))
    raw2 = json.loads(json.dumps(raw))
    raw2["seed"] = 1
    c = train(config_from_dict(raw2), path, tmp_path / "c", progress_enabled=False, apriori=False)
    assert not torch.equal(_weights(a)["net.C"], _weights(c)["net.C"])


def test_resume_equals_uninterrupted(data2d, tmp_path):
    path, raw = data2d
    raw = json.loads(json.dumps(raw))
    raw["train"].update(epochs=4, schedule="cosine", optimizer="sgd")
    config = config_from_dict(raw)
    full = train(config, path, tmp_path / "full", progress_enabled=False, apriori=False, block_snapshots=4)

    def kill_after_two(row):
        if row["epoch"] == 2:
            raise TrainingInterrupted

    with pytest.raises(TrainingInterrupted):
        train(config, path, tmp_path / "cut", progress_enabled=False, apriori=False, block_snapshots=4,
              callback=kill_after_two)
    assert not (tmp_path / "cut" / "model.pt").exists()
    resumed = train(config, path, tmp_path / "cut", resume=True, progress_enabled=False, apriori=False,
                    block_snapshots=4)
    _assert_same(_weights(full), _weights(resumed))
    ck_full = torch.load(full / "checkpoint.pt", weights_only=True)
    ck_cut = torch.load(resumed / "checkpoint.pt", weights_only=True)
    _assert_same(ck_full["model"], ck_cut["model"])
    assert (full / "history.csv").read_text().count("\n") == (resumed / "history.csv").read_text().count("\n")


def test_resume_needs_the_same_config_and_a_checkpoint(data2d, tmp_path):
    path, raw = data2d
    with pytest.raises(ClosureError, match="no checkpoint"):
        train(config_from_dict(raw), path, tmp_path / "none", resume=True, progress_enabled=False)
    train(config_from_dict(raw), path, tmp_path / "r", progress_enabled=False, apriori=False)
    raw2 = json.loads(json.dumps(raw))
    raw2["train"]["lr"] = 0.5
    with pytest.raises(ClosureError, match="train.lr"):
        train(config_from_dict(raw2), path, tmp_path / "r", resume=True, progress_enabled=False)


def test_init_from_a_previous_run(data2d, tmp_path):
    path, raw = data2d
    first = train(config_from_dict(raw), path, tmp_path / "first", progress_enabled=False, apriori=False)
    raw2 = json.loads(json.dumps(raw))
    raw2["train"].update(epochs=1, lr=1e-12, schedule="constant", optimizer="sgd")
    second = train(config_from_dict(raw2), path, tmp_path / "second", init=first, progress_enabled=False,
                   apriori=False)
    _assert_same(_weights(first), _weights(second), exact=False)


def test_ddp_two_processes_match_one(data2d, tmp_path):
    """torchrun-style 2-process gloo training gives the single-process weights (same global batches)."""
    path, raw = data2d
    raw = json.loads(json.dumps(raw))
    raw["train"].update(epochs=2, grad_clip=None)
    config = config_from_dict(raw)
    single = train(config, path, tmp_path / "single", progress_enabled=False, apriori=False, block_snapshots=4)
    multi = launch_local(2, config, path, tmp_path / "multi", apriori=False, block_snapshots=4)
    _assert_same(_weights(single), _weights(multi), exact=False)
    m = json.loads((multi / "metrics.json").read_text())
    assert m["training"]["world_size"] == 2


@pytest.mark.parametrize("change,match", [
    ({"system": {"equation": "burgers_1d", "forcing": {"type": "none"}}}, "equation"),
    ({"les": {"resolution": 8}}, "les_resolution"),
    ({"les": {"resolution": 16, "filter": {"type": "box"}}}, "filter"),
    ({"system": {"viscosity": 0.5}}, "viscosity"),
])
def test_config_that_does_not_fit_the_data(data2d, tmp_path, change, match):
    path, raw = data2d
    raw = json.loads(json.dumps(raw))
    for section, values in change.items():
        raw[section].update(values)
    with pytest.raises(ClosureError, match=match):
        train(config_from_dict(raw), path, tmp_path / "x", progress_enabled=False)


def test_wrong_schema_dataset(data2d, tmp_path):
    import xarray as xr

    _, raw = data2d
    foreign = tmp_path / "foreign.nc"
    xr.Dataset({"temperature": (("time", "x"), np.zeros((3, 4)))}).to_netcdf(foreign)
    with pytest.raises(ClosureError, match="not a closure dataset"):
        train(config_from_dict(raw), foreign, tmp_path / "x", progress_enabled=False)
    with pytest.raises(ClosureError, match="not found"):
        train(config_from_dict(raw), tmp_path / "missing.nc", tmp_path / "x", progress_enabled=False)


def test_burgers_and_whole_field_models(tmp_path):
    raw = tiny_raw_config("burgers_1d", n_dns=64, n_les=16, samples=6, trajectories=3)
    path = write_tiny_dataset(tmp_path / "b.nc", raw)
    run = train(config_from_dict(raw), path, tmp_path / "b", progress_enabled=False)
    ap = json.loads((run / "metrics.json").read_text())["apriori"]
    assert "energy_transfer" in ap["learned"] and "enstrophy_transfer" not in ap["learned"]
    raw["model"].update(type="cnn", hidden=[8], gammas=[1.0], stencil=3)
    raw["train"].update(epochs=1)
    run = train(config_from_dict(raw), path, tmp_path / "cnn", progress_enabled=False, apriori=False)
    assert (run / "model.pt").is_file()


def test_early_stopping_keeps_the_best_weights(data2d, tmp_path, monkeypatch):
    import closure.training.trainer as ct

    path, raw = data2d
    raw = json.loads(json.dumps(raw))
    raw["train"].update(epochs=6, patience=2)
    losses = iter([1.0, 0.5, 0.7, 0.6, 0.4, 0.3])
    monkeypatch.setattr(ct, "_validation_loss", lambda *a, **k: next(losses))
    snapshots = []
    run = train(config_from_dict(raw), path, tmp_path / "es", progress_enabled=False, apriori=False,
                callback=lambda row: snapshots.append(_checkpoint_model(tmp_path / "es" / "checkpoint.pt")))
    metrics = json.loads((run / "metrics.json").read_text())["training"]
    assert metrics["stopped_early"] and metrics["epochs_run"] == 4 and metrics["best_epoch"] == 2
    assert metrics["best_validation_loss"] == 0.5
    _assert_same(_weights(run), snapshots[1])


def test_schedules():
    assert learning_rate_factor("constant", 7, 10) == 1.0
    assert learning_rate_factor("cosine", 0, 10) == 1.0
    assert learning_rate_factor("cosine", 5, 10) == pytest.approx(0.5)
    assert learning_rate_factor("cosine", 10, 10) == pytest.approx(0.0, abs=1e-12)
    assert [learning_rate_factor("step", s, 8) for s in (0, 3, 4, 6)] == [1.0, 1.0, 0.1, 0.01]


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_bf16(data2d, tmp_path):
    path, raw = data2d
    raw = json.loads(json.dumps(raw))
    raw.update(device="cuda")
    raw["train"]["bf16"] = True
    run = train(config_from_dict(raw), path, tmp_path / "gpu", progress_enabled=False)
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["training"]["device"].startswith("cuda")
    assert math.isfinite(metrics["training"]["best_validation_loss"])


def test_trains_on_the_generator_fixture(tiny_config, tiny_dataset, tmp_path):
    """The shared fixture written by `closure generate` passes the compatibility checks and trains."""
    tiny_config["train"].update(epochs=1, samples_per_epoch=1024)
    run = train(config_from_dict(tiny_config), tiny_dataset, tmp_path / "fx", progress_enabled=False)
    assert (run / "model.pt").is_file() and (run / "metrics.json").is_file()
