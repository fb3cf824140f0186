"""generate -> train -> les -> evaluate end to end on the tiny config, and resuming."""

from __future__ import annotations

import json

import pytest

from closure.config import config_from_dict
from closure.errors import ClosureError
from closure.pipeline import pipeline
from closure.evaluation.report import FIGURES


def test_pipeline_end_to_end_and_resume(tiny_config, tmp_path):
    tiny_config["run"]["models"] = ["none", "smagorinsky", "learned"]
    config = config_from_dict(tiny_config)
    out = tmp_path / "exp"
    report = pipeline(config, out)
    assert report == out / "report" / "report.md" and report.is_file()
    assert (out / "dataset.nc").is_file()
    assert (out / "train" / "model.pt").is_file()
    for m in ("none", "smagorinsky", "learned"):
        assert (out / "les" / f"{m}.nc").is_file()
    metrics = json.loads((out / "report" / "metrics.json").read_text())
    assert set(metrics) == {"none", "smagorinsky", "learned"}
    for m in metrics.values():
        assert {"spectrum_error", "pdf_distance", "decorrelation_time", "blowups", "similarity"} <= set(m)
    for fig in FIGURES:
        assert (out / "report" / fig).is_file()
    assert "| learned |" in report.read_text()

    # a second call skips every finished stage
    stamps = {p: p.stat().st_mtime_ns for p in [out / "dataset.nc", out / "train" / "model.pt",
                                                *sorted((out / "les").glob("*.nc"))]}
    pipeline(config, out)
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps

    # another model: only its LES runs; a changed run section redoes the LES, not the data or training
    tiny_config["run"]["models"] = ["none", "smagorinsky", "learned", "leith"]
    pipeline(config_from_dict(tiny_config), out)
    assert (out / "les" / "leith.nc").is_file()
    assert (out / "les" / "none.nc").stat().st_mtime_ns == stamps[out / "les" / "none.nc"]
    tiny_config["run"]["smagorinsky_cs"] = 0.1
    pipeline(config_from_dict(tiny_config), out)
    assert (out / "les" / "smagorinsky.nc").stat().st_mtime_ns != stamps[out / "les" / "smagorinsky.nc"]
    assert (out / "dataset.nc").stat().st_mtime_ns == stamps[out / "dataset.nc"]
    assert (out / "train" / "model.pt").stat().st_mtime_ns == stamps[out / "train" / "model.pt"]
    assert set(json.loads((out / "report" / "metrics.json").read_text())) == {"none", "smagorinsky", "learned",
                                                                              "leith"}


def test_pipeline_without_learned_skips_training(tiny_config, tmp_path):
    tiny_config["run"]["models"] = ["none", "dynamic_smagorinsky"]
    pipeline(config_from_dict(tiny_config), tmp_path / "b")
    assert not (tmp_path / "b" / "train").exists()
    assert set(json.loads((tmp_path / "b" / "report" / "metrics.json").read_text())) == {"none",
                                                                                       "dynamic_smagorinsky"}


def test_pipeline_rejects_unknown_models(tiny_config, tmp_path):
    tiny_config["run"]["models"] = ["none", "bogus"]
    with pytest.raises(ClosureError, match="bogus"):
        pipeline(config_from_dict(tiny_config), tmp_path / "c")
