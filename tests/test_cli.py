"""The command line: bad input gives one line on stderr and exit status 2, no traceback."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import xarray as xr
import yaml

from closure.cli import build_parser, main

ROOT = Path(__file__).resolve().parents[1]


def run_cli(*args, cwd=None):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "-m", "closure", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd, env=env, timeout=300)
    return proc.returncode, proc.stdout, proc.stderr


def _one_line_error(status, err, *fragments):
    assert status == 2, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("closure: error: ") and "Traceback" not in err
    for frag in fragments:
        assert frag in lines[0], (frag, lines[0])


@pytest.fixture
def config_file(tmp_path, tiny_config):
    tiny_config["dns"]["trajectories"] = 2
    tiny_config["dns"]["batch_size"] = 2
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(tiny_config))
    return path


# ---------------------------------------------------------------------------- subprocess
def test_generate_end_to_end_subprocess(tmp_path, config_file):
    out = tmp_path / "out" / "d.nc"
    status, stdout, err = run_cli("generate", config_file, "-o", out, "--set", "dns.samples=2")
    assert status == 0, err
    assert out.is_file() and str(out) in stdout
    with xr.open_dataset(out) as ds:
        assert ds.sizes["time"] == 2 and "sgs" in ds


def test_unknown_key_subprocess(config_file):
    status, _, err = run_cli("generate", config_file, "--set", "dns.resolutoin=64")
    _one_line_error(status, err, "dns.resolutoin", "unknown key")


def test_foreign_netcdf_subprocess(tmp_path, config_file):
    foreign = tmp_path / "foreign.nc"
    xr.Dataset({"temperature": (("x",), np.zeros(3))}).to_netcdf(foreign)
    status, _, err = run_cli("train", config_file, "--data", foreign, "-o", tmp_path / "run")
    _one_line_error(status, err, "foreign.nc", "not a closure dataset", "'sgs'")


def test_console_script_is_installed():
    script = Path(sys.executable).with_name("closure")
    if not script.exists():
        pytest.skip("the package is not installed in this environment (pip install -e .)")
    proc = subprocess.run([str(script), "--help"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and "generate" in proc.stdout


# ---------------------------------------------------------------------------- in-process (fast)
def test_missing_config_file(tmp_path, capsys):
    status = main(["generate", str(tmp_path / "nope.yaml")])
    _one_line_error(status, capsys.readouterr().err, "nope.yaml", "not found")


def test_config_that_is_not_yaml(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("dns: [unclosed\n  resolution: : 3\n")
    status = main(["generate", str(bad)])
    _one_line_error(status, capsys.readouterr().err, "bad.yaml", "not valid YAML")


def test_config_that_is_not_a_mapping(tmp_path, capsys):
    bad = tmp_path / "list.yaml"
    bad.write_text("- 1\n- 2\n")
    status = main(["generate", str(bad)])
    _one_line_error(status, capsys.readouterr().err, "list.yaml")


@pytest.mark.parametrize("override,fragments", [
    ("les.resolution=48", ("les.resolution",)),                      # does not divide the DNS grid
    ("dns.sample_interval=0.013", ("sample_interval", "dt")),       # not a multiple of dt
    ("dtype=float16", ("dtype",)),
    ("les.filter.type=tophat", ("filter",)),
    ("system.forcing.type=stochastic", ("forcing",)),               # Burgers forcing on a 2D equation
    ("model.gammas=[0.3, 1.0]", ("gammas",)),
    ("dns.resolution=abc", ("dns.resolution",)),
    ("nokey", ("--set",)),
])
def test_inconsistent_values(config_file, capsys, override, fragments):
    status = main(["generate", str(config_file), "--set", override])
    _one_line_error(status, capsys.readouterr().err, *fragments)


def test_missing_dataset_file(config_file, tmp_path, capsys):
    for argv in (["train", str(config_file), "--data", str(tmp_path / "none.nc")],
                 ["les", str(config_file), "--model", "none", "--data", str(tmp_path / "none.nc"),
                  "-o", str(tmp_path / "l.nc")],
                 ["sweep", str(config_file), "--data", str(tmp_path / "none.nc"), "-o", str(tmp_path / "s")],
                 ["evaluate", "--reference", str(tmp_path / "none.nc"), str(tmp_path / "l.nc"), "-o",
                  str(tmp_path / "r")]):
        status = main(argv)
        _one_line_error(status, capsys.readouterr().err, "none.nc", "not found")


def test_unknown_model_name(config_file, tiny_dataset, tmp_path, capsys):
    status = main(["les", str(config_file), "--model", "smagorinksy", "--data", str(tiny_dataset),
                   "-o", str(tmp_path / "l.nc")])
    _one_line_error(status, capsys.readouterr().err, "smagorinksy")


def test_dataset_of_the_wrong_schema(config_file, tmp_path, capsys):
    junk = tmp_path / "junk.nc"
    junk.write_bytes(b"\x89HDF\r\n not really")
    status = main(["train", str(config_file), "--data", str(junk)])
    _one_line_error(status, capsys.readouterr().err, "junk.nc")


def test_scheduler_and_workers_exclusive(config_file, capsys):
    status = main(["generate", str(config_file), "--workers", "2", "--scheduler", "tcp://127.0.0.1:1"])
    _one_line_error(status, capsys.readouterr().err, "--scheduler", "--workers")


def test_usage_errors_exit_2(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["generate"])
    assert exc.value.code == 2
    with pytest.raises(SystemExit) as exc:
        main(["frobnicate"])
    assert exc.value.code == 2
    assert "Traceback" not in capsys.readouterr().err


def test_keyboard_interrupt_exits_130(config_file, monkeypatch, capsys):
    import closure.data.generation

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(closure.data.generation, "generate", interrupted)
    assert main(["generate", str(config_file)]) == 130


def test_dispatch_passes_the_contract_arguments(config_file, tiny_dataset, tmp_path, monkeypatch, capsys):
    """Each subcommand calls its library function with the documented signature."""
    import importlib
    import types

    calls = {}

    def fake(module, name):
        def f(*args, **kwargs):
            calls[name] = (args, kwargs)
            return None
        try:
            mod = importlib.import_module(module)
            monkeypatch.setattr(mod, name, f)
        except ImportError:  # a stage module that cannot be imported here: stand in for it
            mod = types.ModuleType(module)
            setattr(mod, name, f)
            monkeypatch.setitem(sys.modules, module, mod)

    for module, name in [("closure.data.generation", "generate"), ("closure.training.trainer", "train"), ("closure.les.coupled", "run_les"),
                         ("closure.evaluation.compare", "evaluate"), ("closure.pipeline", "pipeline"),
                         ("closure.study.normalization", "sweep")]:
        fake(module, name)
    cfg = str(config_file)
    data = str(tiny_dataset)
    assert main(["generate", cfg, "-o", str(tmp_path / "g.nc"), "--workers", "3"]) == 0
    args, kwargs = calls["generate"]
    assert Path(args[1]) == tmp_path / "g.nc" and kwargs == {"scheduler": None, "workers": 3, "threads": None}
    for argv in (["-q", "generate", cfg], ["generate", cfg, "-q"]):  # quiet: no progress lines
        assert main(argv) == 0
        assert calls["generate"][1]["progress"] is False
    assert main(["train", cfg, "--data", data, "-o", str(tmp_path / "run"), "--resume"]) == 0
    args, kwargs = calls["train"]
    assert Path(args[1]) == Path(data) and Path(args[2]) == tmp_path / "run" and kwargs == {"resume": True,
                                                                                            "init": None}
    assert main(["les", cfg, "--model", "smagorinsky", "--data", data, "-o", str(tmp_path / "l.nc")]) == 0
    args, _ = calls["les"] if "les" in calls else calls["run_les"]
    assert args[1] == "smagorinsky" and Path(args[3]) == tmp_path / "l.nc"
    les_file = tmp_path / "l.nc"
    les_file.write_bytes(b"")
    assert main(["evaluate", "--reference", data, str(les_file), "-o", str(tmp_path / "rep")]) == 0
    args, _ = calls["evaluate"]
    assert Path(args[0]) == Path(data) and [Path(p) for p in args[1]] == [les_file]
    assert main(["pipeline", cfg, "-o", str(tmp_path / "p")]) == 0
    args, kwargs = calls["pipeline"]
    assert Path(args[1]) == tmp_path / "p" and Path(kwargs["config_path"]) == config_file
    assert main(["sweep", cfg, "--data", data, "-o", str(tmp_path / "sw"), "--scheduler", "tcp://h:1"]) == 0
    args, kwargs = calls["sweep"]
    assert Path(args[2]) == tmp_path / "sw" and kwargs == {"scheduler": "tcp://h:1", "workers": None}
    # --set reaches the config
    assert main(["train", cfg, "--data", data, "--set", "train.lr=0.25"]) == 0
    assert calls["train"][0][0].train.lr == 0.25


def test_help_lists_every_command():
    text = build_parser().format_help()
    for command in ("generate", "train", "les", "evaluate", "pipeline", "sweep"):
        assert command in text
