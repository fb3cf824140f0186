"""Several training seeds: mean and spread (closure.evaluation.spread), and the pipeline's train.seeds."""

from __future__ import annotations

import json

import numpy as np
import pytest

from closure.config import config_from_dict
from closure.evaluation.spread import aggregate
from closure.pipeline import pipeline


def _row(spectrum, decorrelation, cost, seed, blowups=0):
    return {"spectrum_error": spectrum, "pdf_distance": 0.1, "decorrelation_time": decorrelation,
            "les_seconds_per_model_time": cost, "blowups": blowups, "seed_group": "learned", "train_seed": seed,
            "similarity": {"spectrum_error": 1 - spectrum}}


def test_aggregate_gives_mean_and_spread_and_keeps_the_members():
    results = {"none": {"spectrum_error": 0.5, "blowups": 0},
               "learned-s0": _row(0.1, 1.0, 2.0, 0), "learned-s1": _row(0.3, 2.0, 4.0, 1, blowups=1)}
    out = aggregate(results)
    assert list(out) == ["none", "learned", "learned-s0", "learned-s1"]
    g = out["learned"]
    assert g["spectrum_error"] == pytest.approx(0.2) and g["les_seconds_per_model_time"] == pytest.approx(3.0)
    assert g["spread"]["spectrum_error"]["std"] == pytest.approx(np.std([0.1, 0.3], ddof=1))
    assert g["spread"]["decorrelation_time"]["min"] == 1.0 and g["spread"]["decorrelation_time"]["max"] == 2.0
    assert g["blowups"] == 1 and g["members"] == ["learned-s0", "learned-s1"] and g["seeds"] == [0, 1]
    assert g["similarity"]["spectrum_error"] == pytest.approx(0.8)
    assert out["learned-s0"]["seed_of"] == "learned"
    # a single run is not a group
    assert aggregate({"learned-s0": _row(0.1, 1.0, 2.0, 0)}) == {"learned-s0": _row(0.1, 1.0, 2.0, 0)}


def test_pipeline_trains_several_seeds_and_reports_their_spread(tiny_config, tmp_path):
    tiny_config["run"].update(models=["none", "learned"], ladder=[1], ladder_starts=["dns"])
    tiny_config["train"].update(seeds=2, epochs=1)
    out = tmp_path / "seeds"
    report = pipeline(config_from_dict(tiny_config), out)
    assert (out / "train" / "seed-0" / "model.pt").is_file() and (out / "train" / "seed-1" / "model.pt").is_file()
    metrics = json.loads((out / "report" / "metrics.json").read_text())
    assert {"learned", "learned-s0", "learned-s1", "none", "plain@16"} == set(metrics)
    g = metrics["learned"]
    assert g["members"] == ["learned-s0", "learned-s1"]
    values = [metrics[m]["spectrum_error"] for m in g["members"]]
    assert values[0] != values[1]  # different seeds, different models
    assert g["spectrum_error"] == pytest.approx(np.mean(values))
    assert "dominated_by" in g and "dominated_by" in metrics["learned-s0"]
    assert "(mean ± std of 2 seeds)" in report.read_text()
