"""Science hygiene: nothing before the final evaluation reads the test split.

The test trajectories of a copy of the tiny dataset are poisoned with NaN: training
(a-priori and a-posteriori), its validation and its a-priori metrics must not notice;
the coupled LES, which starts the final evaluation from the test trajectories, must.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import xarray as xr

from closure.config import config_from_dict
from closure.data.dataset import split_trajectories
from closure.errors import ClosureError
from closure.les.coupled import run_les
from closure.training.trainer import train


@pytest.fixture(scope="module")
def poisoned(tiny_dataset, tmp_path_factory):
    from conftest import tiny_config_dict

    raw = tiny_config_dict()
    config = config_from_dict(raw)
    splits = split_trajectories(raw["dns"]["trajectories"], config.data.validation_fraction,
                                config.data.test_fraction, config.seed)
    path = tmp_path_factory.mktemp("poisoned") / "poisoned.nc"
    with xr.open_dataset(tiny_dataset) as ds:
        ds = ds.load()
    for name in ("omega", "sgs", "omega_dns", "omega_dns_t0"):
        ds[name][dict(trajectory=splits["test"])] = np.nan
    ds.to_netcdf(path)
    return path, raw, splits


def _finite(value) -> bool:
    if isinstance(value, dict):
        return all(_finite(v) for v in value.values())
    if isinstance(value, list):
        return all(_finite(v) for v in value)
    return not (isinstance(value, float) and math.isnan(value))


@pytest.mark.parametrize("mode", ["apriori", "aposteriori"])
def test_training_never_reads_the_test_split(poisoned, tmp_path, mode):
    path, raw, splits = poisoned
    raw = json.loads(json.dumps(raw))
    raw["train"].update(mode=mode, epochs=1, windows_per_epoch=2, unroll_batch=1, unroll_steps=2,
                        unroll_max_steps=2)
    run = train(config_from_dict(raw), path, tmp_path / mode, progress_enabled=False)
    metrics = json.loads((run / "metrics.json").read_text())
    assert _finite(metrics), metrics
    assert math.isfinite(metrics["training"]["best_validation_loss"])
    if mode == "apriori":
        assert metrics["apriori"]["split"] == "validation"
        assert math.isfinite(metrics["apriori"]["learned"]["correlation"])
    assert json.loads((run / "splits.json").read_text())["test"] == splits["test"]
    # the final evaluation is where the test split is read: the LES starts from it
    with pytest.raises(ClosureError, match="non-finite values in the initial"):
        run_les(config_from_dict(raw), run, path, tmp_path / "les.nc", show_progress=False)
