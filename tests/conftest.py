"""Shared fixtures.

- `tiny_config`: a very small 2D config as a plain dict (DNS 32^2 -> LES 16^2,
  6 trajectories, 4 snapshots); validate it with `closure.config.config_from_dict`
  after any changes.
- `tiny_dataset`: a session-scoped dataset file generated from `tiny_config`
  (keep_dns on), in a temporary folder; open it with `closure.data.dataset.open_dataset`.
- `tiny_burgers_config` / `tiny_burgers_dataset`: the same for Burgers (DNS 64 -> LES 16).

Torch runs single-threaded in the tests: on small grids threads only add
overhead, and on a busy machine they can slow FFTs by two orders of magnitude.
"""

from __future__ import annotations

import copy
import math

import pytest
import torch

torch.set_num_threads(1)

_TINY_2D = {
    "seed": 0,
    "device": "cpu",
    "dtype": "float32",
    "system": {
        "equation": "navier_stokes_2d",
        "length": 2 * math.pi,
        "viscosity": 1.0e-2,
        "drag": 0.1,
        "forcing": {"type": "kolmogorov", "wavenumber": 2, "amplitude": 1.0},
    },
    "initial": {"peak_wavenumber": 4.0, "energy": 0.5},
    "dns": {"resolution": 32, "dt": 0.02, "spinup_time": 0.4, "sample_interval": 0.1, "samples": 4,
            "trajectories": 6, "batch_size": 3},
    "les": {"resolution": 16, "filter": {"type": "gaussian", "width": 2.0}},
    "data": {"keep_dns": True, "validation_fraction": 0.2, "test_fraction": 0.2},
    "model": {"type": "mlp", "stencil": 3, "hidden": [16, 16], "gammas": [1.0, 1.0]},
    "train": {"optimizer": "adam", "lr": 1.0e-3, "epochs": 2, "batch_size": 256},
    "run": {"time": 0.2, "dt": 0.02, "models": ["none", "smagorinsky", "learned"]},
    "sweep": {"gammas": [0.5, 1.0], "widths": [8, 16], "seeds": 1},
}

_TINY_BURGERS = {
    "seed": 0,
    "device": "cpu",
    "dtype": "float64",
    "system": {"equation": "burgers_1d", "length": 2 * math.pi, "viscosity": 2.0e-2, "drag": 0.0,
               "forcing": {"type": "stochastic", "amplitude": 0.1, "modes": 3, "interval": 0.1}},
    "initial": {"peak_wavenumber": 4.0, "energy": 0.5},
    "dns": {"resolution": 64, "dt": 0.01, "spinup_time": 0.2, "sample_interval": 0.05, "samples": 4,
            "trajectories": 6, "batch_size": 6},
    "les": {"resolution": 16, "filter": {"type": "box", "width": 1.0}},
    "data": {"keep_dns": True},
    "model": {"type": "mlp", "stencil": 3, "hidden": [16, 16], "gammas": [1.0, 1.0]},
    "train": {"optimizer": "adam", "lr": 1.0e-3, "epochs": 2, "batch_size": 128},
    "run": {"time": 0.1, "dt": 0.01, "models": ["none", "smagorinsky", "learned"]},
}


def tiny_config_dict() -> dict:
    """A fresh copy of the tiny 2D config (importable: ``from conftest import tiny_config_dict``)."""
    return copy.deepcopy(_TINY_2D)


def tiny_burgers_config_dict() -> dict:
    return copy.deepcopy(_TINY_BURGERS)


@pytest.fixture
def tiny_config() -> dict:
    """A very small 2D config as a raw dict (each test gets its own copy)."""
    return tiny_config_dict()


@pytest.fixture
def tiny_burgers_config() -> dict:
    return tiny_burgers_config_dict()


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory):
    """Path of a tiny 2D dataset (6 trajectories x 4 snapshots, 16^2, keep_dns) generated once per session."""
    from closure.config import config_from_dict
    from closure.data.generation import generate

    out = tmp_path_factory.mktemp("tiny_dataset") / "tiny.nc"
    return generate(config_from_dict(tiny_config_dict(), "tiny_config"), out, progress=False)


@pytest.fixture(scope="session")
def tiny_burgers_dataset(tmp_path_factory):
    """Path of a tiny Burgers dataset (6 trajectories x 4 snapshots, 16 points, keep_dns)."""
    from closure.config import config_from_dict
    from closure.data.generation import generate

    out = tmp_path_factory.mktemp("tiny_burgers") / "burgers.nc"
    return generate(config_from_dict(tiny_burgers_config_dict(), "tiny_burgers_config"), out, progress=False)


@pytest.fixture
def default_float64():
    """Set torch's default dtype to float64 for one test, restored afterwards (it is global)."""
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(old)
