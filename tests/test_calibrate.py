"""closure calibrate: a classical constant fitted through the differentiable LES on validation trajectories."""

from __future__ import annotations

import json

import pytest
import torch
import yaml

from closure.cli import main
from closure.config import config_from_dict
from closure.data.dataset import open_dataset
from closure.les.baselines import Smagorinsky, make_closure
from closure.les.coupled import run_les
from closure.training.calibrate import ScaledClosure, calibrate


def _config(tiny_config, **calibrate):
    tiny_config["calibrate"] = {"iterations": 6, "lr": 0.3, "unroll_steps": 15, **calibrate}
    return tiny_config


def test_scaled_closure_is_the_closure_at_another_constant():
    import solvers

    eq = solvers.NavierStokes2D(16, viscosity=1e-2, dtype=torch.float64)
    w = solvers.random_vorticity(eq.grid, [0, 1], peak_wavenumber=4, energy=0.5)
    scaled = ScaledClosure(Smagorinsky.for_equation(eq, cs=0.17), 0.17, 2)
    with torch.no_grad():
        scaled.log_constant.fill_(torch.log(torch.tensor(0.3)))
    torch.testing.assert_close(scaled(w), Smagorinsky.for_equation(eq, cs=0.3)(w))


def test_calibration_lowers_the_validation_loss_and_les_accepts_the_run(tiny_config, tiny_dataset, tmp_path):
    # an over-dissipative default (Cs = 1): the fit must lower the constant and the unrolled loss
    raw = _config(tiny_config)
    raw["run"]["smagorinsky_cs"] = 1.0
    config = config_from_dict(raw)
    run_dir = calibrate(config, tiny_dataset, "smagorinsky", tmp_path / "smag", progress_enabled=False)
    record = json.loads((run_dir / "calibration.json").read_text())
    cs = record["constants"]["smagorinsky_cs"]
    assert record["model"] == "smagorinsky" and record["default"]["smagorinsky_cs"] == 1.0
    assert cs < 0.9, record
    assert record["validation_loss"]["calibrated"] < 0.9 * record["validation_loss"]["default"], record
    assert json.loads((run_dir / "splits.json").read_text())["validation"]
    history = (run_dir / "history.csv").read_text().splitlines()
    assert history[0] == "iteration,constant,validation_loss,seconds" and len(history) == 1 + 7

    # the run directory is a model for the LES: the classical closure at the fitted constant
    ds = open_dataset(tiny_dataset)
    from closure.data.system import les_equation

    closure = make_closure(str(run_dir), les_equation(config, unforced=True), config)
    assert isinstance(closure, Smagorinsky) and closure.cs == pytest.approx(cs)
    out = run_les(config, run_dir, ds, tmp_path / "les.nc", show_progress=False)
    les = open_dataset(out)
    assert les.attrs["model"] == "smag" and bool(les["omega"].notnull().all())


def test_calibrate_burgers_dynamic_runs(tiny_burgers_config, tiny_burgers_dataset, tmp_path):
    raw = _config(tiny_burgers_config, iterations=2, unroll_steps=10)
    raw["data"].update({"validation_fraction": 0.2, "test_fraction": 0.2})
    run_dir = calibrate(config_from_dict(raw), tiny_burgers_dataset, "dynamic_smagorinsky", tmp_path / "dyn",
                        progress_enabled=False)
    record = json.loads((run_dir / "calibration.json").read_text())
    assert set(record["constants"]) == {"dynamic_scale"} and record["constants"]["dynamic_scale"] > 0
    assert record["validation_loss"]["calibrated"] <= record["validation_loss"]["default"]


def _one_line_error(status, err, *fragments):
    lines = [line for line in err.splitlines() if line.strip()]
    assert status == 2 and len(lines) == 1 and "Traceback" not in err, err
    for frag in fragments:
        assert frag in lines[0], (frag, lines[0])


def test_cli_errors_are_one_line(tiny_config, tiny_dataset, tmp_path, capsys):
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(_config(tiny_config)))
    status = main(["calibrate", str(path), "--data", str(tmp_path / "missing.nc"), "--model", "smagorinsky"])
    _one_line_error(status, capsys.readouterr().err, "missing.nc")
    with pytest.raises(SystemExit) as exit_info:
        main(["calibrate", str(path), "--data", str(tiny_dataset), "--model", "learned"])
    assert exit_info.value.code == 2
    _one_line_error(2, capsys.readouterr().err, "learned")
    status = main(["calibrate", str(path), "--data", str(tiny_dataset), "--model", "leith",
                   "--set", "data.validation_fraction=0"])
    _one_line_error(status, capsys.readouterr().err, "validation")
