"""Nothing lost, nothing silently wrong (docs/reliability.md).

One test per failure class: data loss, silently wrong results, tracebacks instead of a
message, messages that are not one line, lost work, concurrency, non-atomic writes.
Commands are called in-process (`closure.cli.main`) where possible.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
import xarray as xr
import yaml

from closure.cli import main
from closure.config import config_from_dict, load_config
from closure.data import dataset as ds_io
from closure.errors import ClosureError


def _one_line(status, err, *fragments):
    assert status == 2, err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("closure: error: ") and "Traceback" not in err, err
    for frag in fragments:
        assert frag in lines[0], (frag, lines[0])
    return lines[0]


@pytest.fixture
def cfg_file(tmp_path, tiny_config):
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(tiny_config))
    return path


@pytest.fixture(scope="module")
def other_seed_dataset(tiny_dataset, tmp_path_factory):
    """A copy of the tiny dataset that says it was generated with seed 1 (another reference)."""
    from closure.data.generation import generation_key

    raw = config_from_dict(yaml.safe_load(xr.open_dataset(tiny_dataset).attrs["config"]))
    other = raw.model_copy(update={"seed": 1})
    out = tmp_path_factory.mktemp("other") / "seed1.nc"
    with xr.open_dataset(tiny_dataset) as ds:
        ds = ds.load()
    ds.attrs["config"] = yaml.safe_dump(other.model_dump(mode="json"), sort_keys=False)
    ds.attrs["generation_key"] = generation_key(other)
    ds_io.write(ds, out)
    return out


@pytest.fixture(scope="module")
def trained(tiny_dataset, tmp_path_factory):
    """A tiny training run (1 epoch) on the tiny dataset."""
    from closure.training.trainer import train
    from conftest import tiny_config_dict

    raw = tiny_config_dict()
    raw["train"]["epochs"] = 1
    return train(config_from_dict(raw), tiny_dataset, tmp_path_factory.mktemp("run") / "run",
                 progress_enabled=False, apriori=False)


# --------------------------------------------------------------------------- data loss
def test_les_refuses_to_write_over_its_dataset(cfg_file, tiny_dataset, tmp_path, capsys):
    data = tmp_path / "d.nc"
    shutil.copy(tiny_dataset, data)
    before = data.read_bytes()
    status = main(["les", str(cfg_file), "--model", "none", "--data", str(data), "-o", str(data)])
    _one_line(status, capsys.readouterr().err, "d.nc", "also an input")
    assert data.read_bytes() == before


def test_generate_refuses_a_dataset_of_another_config(cfg_file, tiny_dataset, tmp_path, capsys):
    out = tmp_path / "d.nc"
    shutil.copy(tiny_dataset, out)
    before = out.read_bytes()
    status = main(["generate", str(cfg_file), "-o", str(out), "--set", "seed=7"])
    _one_line(status, capsys.readouterr().err, "d.nc", "another config", "seed", "--overwrite")
    assert out.read_bytes() == before
    from closure import storage

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = storage.temp_name(out).name.replace(f"_{os.getpid()}.", f"_{dead.pid}.")
    (tmp_path / stale).write_bytes(b"half a dataset")  # a kill during the final write
    status = main(["-q", "generate", str(cfg_file), "-o", str(out), "--set", "seed=7", "--set", "dns.samples=2",
                   "--set", "dns.trajectories=2", "--set", "dns.batch_size=2", "--overwrite"])
    assert status == 0, capsys.readouterr().err
    with xr.open_dataset(out) as ds:
        assert ds.sizes["trajectory"] == 2
    assert not (tmp_path / stale).exists()


# --------------------------------------------------------------------------- silently wrong
def test_evaluate_refuses_an_les_of_another_reference(tiny_config, tiny_dataset, other_seed_dataset, tmp_path,
                                                      capsys):
    from closure.les.coupled import run_les

    les = run_les(config_from_dict(tiny_config), "none", tiny_dataset, tmp_path / "none.nc", show_progress=False)
    status = main(["evaluate", "--reference", str(other_seed_dataset), str(les), "-o", str(tmp_path / "rep")])
    _one_line(status, capsys.readouterr().err, "none.nc", "another dataset", "seed1.nc")
    with xr.open_dataset(les) as ds:  # an LES file without the identity: its stored config decides
        ds = ds.load()
    ds.attrs.pop("reference_identity", None)
    ds.to_netcdf(tmp_path / "old.nc")
    from closure.evaluation.compare import evaluate

    with pytest.raises(ClosureError, match="seed section differs"):
        evaluate(other_seed_dataset, [tmp_path / "old.nc"], tmp_path / "rep2", figures=False)


def test_resume_with_another_dataset_is_refused(tiny_config, trained, other_seed_dataset):
    from closure.training.trainer import train

    tiny_config["train"]["epochs"] = 1
    with pytest.raises(ClosureError, match="another dataset.*same --data"):
        train(config_from_dict(tiny_config), other_seed_dataset, trained, resume=True, progress_enabled=False,
              apriori=False)


@pytest.mark.parametrize("text, fragment", [
    ("", "empty"),
    ("# only a comment\n", "empty"),
    ("system: {viscosity: .inf}\n", "system.viscosity"),
    ("initial: {energy: .nan}\n", "initial.energy"),
    ("run: {time: .inf}\n", "run.time"),
    ("seed: -1\n", "seed"),
    ("seed: 100000000000000000000\n", "seed"),
    ("dns: {resolution: 10000000}\n", "dns.resolution"),
    ("dns: {dt: 1.0e-300}\n", "steps"),
    ("dns: {dt: .inf, spinup_time: 0, sample_interval: .inf}\n", "dns.dt"),
    ("seed: 1\nseed: 2\n", "duplicate key 'seed' at line 2"),
])
def test_config_hardening(tmp_path, text, fragment):
    path = tmp_path / "c.yaml"
    path.write_text(text)
    with pytest.raises(ClosureError, match=None) as err:
        load_config(path)
    assert fragment in str(err.value) and "\n" not in str(err.value)


# --------------------------------------------------------------------------- tracebacks
def _save(path, model, **extra):
    from closure.nn import save_model

    return save_model(path, model, extra)


def test_model_for_another_equation_is_refused(cfg_file, tiny_config, tiny_dataset, tmp_path, capsys):
    from closure.nn import build_model

    run = tmp_path / "burgers-run"
    run.mkdir()
    model = build_model(tiny_config["model"], 1)
    _save(run / "model.pt", model, made_for={"equation": "burgers_1d", "les_resolution": 16, "field": "u"})
    status = main(["les", str(cfg_file), "--model", str(run), "--data", str(tiny_dataset), "-o",
                   str(tmp_path / "o.nc")])
    _one_line(status, capsys.readouterr().err, "model.pt", "equation='burgers_1d'", "navier_stokes_2d")
    status = main(["train", str(cfg_file), "--data", str(tiny_dataset), "--init", str(run), "-o",
                   str(tmp_path / "t")])
    _one_line(status, capsys.readouterr().err, "model.pt", "equation")


@pytest.mark.parametrize("damage, fragment", [
    (lambda p: p.update(architecture=json.dumps({"class": "MeanFieldMLP", "kwargs": {"bogus": 1}})),
     "cannot be built"),
    (lambda p: p.update(architecture="{not json"), "cannot be built"),
    (lambda p: p["state_dict"].pop(next(iter(p["state_dict"]))), "do not fit"),
    (lambda p: p.update(dtype="float99"), "unknown model dtype"),
    (lambda p: p.pop("state_dict"), "missing state_dict"),
])
def test_damaged_model_files_are_one_line_errors(tiny_config, tmp_path, damage, fragment):
    from closure.nn import build_model, load_model

    path = _save(tmp_path / "model.pt", build_model(tiny_config["model"], 2))
    payload = torch.load(path, weights_only=True)
    damage(payload)
    torch.save(payload, path)
    with pytest.raises(ClosureError, match=fragment) as err:
        load_model(path)
    assert "model.pt" in str(err.value) and "\n" not in str(err.value)
    path.write_bytes(b"garbage")
    with pytest.raises(ClosureError, match="not a readable closure model"):
        load_model(path)


def test_checkpoint_without_optimizer_state(tiny_config, tiny_dataset, trained, tmp_path):
    from closure.training.trainer import train

    run = tmp_path / "run"
    shutil.copytree(trained, run)
    checkpoint = torch.load(run / "checkpoint.pt", weights_only=True)
    del checkpoint["optimizer"]
    torch.save(checkpoint, run / "checkpoint.pt")
    tiny_config["train"]["epochs"] = 1
    with pytest.raises(ClosureError, match="checkpoint.pt: damaged checkpoint .missing optimizer"):
        train(config_from_dict(tiny_config), tiny_dataset, run, resume=True, progress_enabled=False)


def test_evaluate_with_a_reference_that_goes_non_finite(tiny_config, tiny_dataset, tmp_path, capsys):
    from closure.les.coupled import run_les

    ref = tmp_path / "ref.nc"
    with xr.open_dataset(tiny_dataset) as ds:
        ds = ds.load()
    ds["omega"].values[:, 3:] = np.nan  # the last snapshot is missing
    ds_io.write(ds, ref)
    les = run_les(config_from_dict(tiny_config), "none", ref, tmp_path / "none.nc", show_progress=False)
    status = main(["evaluate", "--reference", str(ref), str(les), "-o", str(tmp_path / "rep")])
    out, err = capsys.readouterr()
    assert status == 0 and "Traceback" not in err, err
    metrics = json.loads((tmp_path / "rep" / "metrics.json").read_text())["none"]
    assert metrics["window"][1] == pytest.approx(float(ds["time"][2]))  # cut where the reference ends
    assert np.isfinite(metrics["spectrum_error"])


def test_metrics_table_shows_missing_values():
    from closure.cli import _metrics_table

    table = _metrics_table({"none": {"spectrum_error": None, "pdf_distance": float("nan"),
                                     "decorrelation_time": 0.5, "blowups": 1}})
    assert table.splitlines()[1].split()[:5] == ["none", "n/a", "n/a", "0.5", "1"]


def test_config_that_is_not_text(tmp_path, capsys):
    path = tmp_path / "c.yaml"
    path.write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\xff\xfe")
    _one_line(main(["generate", str(path)]), capsys.readouterr().err, "c.yaml", "not a text file")


# --------------------------------------------------------------------------- one line
def test_yaml_aliases_do_not_make_a_huge_message(tmp_path, capsys):
    levels = ["a: &a [xxxxxxxxxx, xxxxxxxxxx, xxxxxxxxxx, xxxxxxxxxx, xxxxxxxxxx, xxxxxxxxxx]"]
    for k in range(1, 8):
        prev, name = chr(ord("a") + k - 1), chr(ord("a") + k)
        levels.append(f"{name}: &{name} [" + ", ".join([f"*{prev}"] * 6) + "]")
    path = tmp_path / "bomb.yaml"
    path.write_text("\n".join(levels) + "\nseed: *h\n")
    line = _one_line(main(["generate", str(path)]), capsys.readouterr().err)
    assert len(line) < 300, len(line)
    status = main(["generate", str(path), "--set", "seed=" + "9" * 5000])
    assert len(capsys.readouterr().err) < 300 and status == 2


# --------------------------------------------------------------------------- lost work
def test_pipeline_resumes_an_interrupted_training(tiny_config, tmp_path, monkeypatch):
    import closure.training.trainer as trainer
    from closure.nn import load_model
    from closure.pipeline import pipeline

    tiny_config["run"].update(models=["none", "learned"], time=0.1)
    tiny_config["dns"].update(trajectories=4, batch_size=4)
    tiny_config["train"]["epochs"] = 2
    config = config_from_dict(tiny_config)
    real_train, calls = trainer.train, []

    def interrupted(*args, resume=False, **kwargs):
        calls.append(resume)

        def stop(row):
            raise trainer.TrainingInterrupted

        return real_train(*args, resume=resume, callback=stop if len(calls) == 1 else None, **kwargs)

    monkeypatch.setattr(trainer, "train", interrupted)
    with pytest.raises(trainer.TrainingInterrupted):
        pipeline(config, tmp_path / "p")
    assert (tmp_path / "p" / "train" / "checkpoint.pt").is_file()
    pipeline(config, tmp_path / "p")
    assert calls == [False, True]  # the second run continued from epoch 1
    monkeypatch.setattr(trainer, "train", real_train)
    whole = real_train(config, tmp_path / "p" / "dataset.nc", tmp_path / "whole", progress_enabled=False,
                       apriori=False)
    a = load_model(tmp_path / "p" / "train" / "model.pt").state_dict()
    b = load_model(whole / "model.pt").state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)

    # a model of another training config is not replaced silently
    tiny_config["train"]["lr"] = 0.5
    with pytest.raises(ClosureError, match=r"train: exists and it was trained with another config \(train.lr"):
        pipeline(config_from_dict(tiny_config), tmp_path / "p")


# --------------------------------------------------------------------------- non-atomic writes
def test_every_output_of_evaluate_is_written_atomically(tiny_config, tiny_dataset, tmp_path, monkeypatch):
    from closure.evaluation.compare import evaluate
    from closure.les.coupled import run_les

    from closure import storage

    les = run_les(config_from_dict(tiny_config), "none", tiny_dataset, tmp_path / "none.nc", show_progress=False)
    written = []
    real = storage.atomic_path

    def spy(path):
        written.append(path.name)
        return real(path)

    monkeypatch.setattr(storage, "atomic_path", spy)
    evaluate(tiny_dataset, [les], tmp_path / "rep")
    on_disk = sorted(p.name for p in (tmp_path / "rep").iterdir())
    assert on_disk == sorted(set(written)) and "report.md" in on_disk and any(n.endswith(".png") for n in on_disk)
