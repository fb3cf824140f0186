"""Kill -9 at random points: the re-run gives the uninterrupted result and leaves no debris.

A command runs in a subprocess and is killed (SIGKILL: no cleanup of any kind) at a
random moment after it started working; the same command is then run again (``train``
with ``--resume`` when a checkpoint exists) and its outputs are compared with those of
an uninterrupted run: bitwise for datasets and weights. No temp file may remain. The
default run kills ``generate`` and ``train`` once each; ``-m slow`` kills them and the
whole pipeline at several points.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import xarray as xr
import yaml

from closure.cli import main
from conftest import tiny_config_dict

ROOT = Path(__file__).resolve().parents[1]


def _config(tmp_path: Path) -> Path:
    raw = tiny_config_dict()
    raw["dns"].update(trajectories=4, batch_size=1, samples=4)
    raw["train"].update(epochs=3, samples_per_epoch=2048)
    raw["run"].update(models=["none", "learned"], time=0.2)
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def _kill_at_random(argv: list[str], marker: str, delay: float) -> int:
    """Start ``closure argv`` and SIGKILL it ``delay`` seconds after a stderr line containing ``marker``."""
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    proc = subprocess.Popen([sys.executable, "-m", "closure", *argv], stderr=subprocess.PIPE, text=True, env=env)
    for line in proc.stderr:
        if marker in line:
            break
    time.sleep(delay)
    proc.send_signal(signal.SIGKILL)
    proc.stderr.close()
    return proc.wait(timeout=120)


def _debris(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if p.name.endswith(".tmp") or p.name.endswith(".parts")]


def _same_dataset(a: Path, b: Path) -> None:
    with xr.open_dataset(a) as x, xr.open_dataset(b) as y:
        assert set(x.data_vars) == set(y.data_vars)
        for name in x.data_vars:
            np.testing.assert_array_equal(x[name].values, y[name].values, err_msg=name)


def _same_weights(a: Path, b: Path) -> None:
    x = torch.load(a, weights_only=True)["state_dict"]
    y = torch.load(b, weights_only=True)["state_dict"]
    assert x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x)


def _generate_case(tmp_path: Path, delays) -> None:
    cfg = _config(tmp_path)
    assert main(["-q", "generate", str(cfg), "-o", str(tmp_path / "whole" / "d.nc")]) == 0
    for i, delay in enumerate(delays):
        out = tmp_path / f"cut{i}" / "d.nc"
        _kill_at_random(["generate", str(cfg), "-o", str(out)], "generate", delay)
        assert main(["-q", "generate", str(cfg), "-o", str(out)]) == 0
        _same_dataset(tmp_path / "whole" / "d.nc", out)
        assert not _debris(out.parent), _debris(out.parent)


def _train_case(tmp_path: Path, data: Path, delays) -> None:
    cfg = _config(tmp_path)
    whole = tmp_path / "whole"
    assert main(["-q", "train", str(cfg), "--data", str(data), "-o", str(whole)]) == 0
    for i, delay in enumerate(delays):
        run = tmp_path / f"cut{i}"
        _kill_at_random(["train", str(cfg), "--data", str(data), "-o", str(run)], "normalization", delay)
        resume = ["--resume"] if (run / "checkpoint.pt").exists() else []
        assert main(["-q", "train", str(cfg), "--data", str(data), "-o", str(run), *resume]) == 0
        _same_weights(whole / "model.pt", run / "model.pt")
        assert not _debris(run), _debris(run)


def test_generate_killed_then_rerun(tmp_path):
    _generate_case(tmp_path, [random.Random(0).uniform(0.0, 1.0)])


def test_train_killed_then_resumed(tmp_path, tiny_dataset):
    _train_case(tmp_path, tiny_dataset, [random.Random(1).uniform(0.0, 1.0)])


@pytest.mark.slow
def test_generate_killed_at_many_points(tmp_path):
    rng = random.Random(2)
    _generate_case(tmp_path, [rng.uniform(0.0, 3.0) for _ in range(5)])


@pytest.mark.slow
def test_train_killed_at_many_points(tmp_path, tiny_dataset):
    rng = random.Random(3)
    _train_case(tmp_path, tiny_dataset, [rng.uniform(0.0, 3.0) for _ in range(5)])


@pytest.mark.slow
def test_pipeline_killed_at_many_points(tmp_path):
    cfg = _config(tmp_path)
    assert main(["-q", "pipeline", str(cfg), "-o", str(tmp_path / "whole")]) == 0
    rng = random.Random(4)
    for i in range(4):
        out = tmp_path / f"cut{i}"
        _kill_at_random(["pipeline", str(cfg), "-o", str(out)], "generate", rng.uniform(0.0, 8.0))
        assert main(["-q", "pipeline", str(cfg), "-o", str(out)]) == 0
        _same_dataset(tmp_path / "whole" / "dataset.nc", out / "dataset.nc")
        _same_weights(tmp_path / "whole" / "train" / "model.pt", out / "train" / "model.pt")
        for les in ("none.nc", "learned.nc"):
            _same_dataset(tmp_path / "whole" / "les" / les, out / "les" / les)
        assert not _debris(out), _debris(out)
