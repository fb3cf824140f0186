"""The cost-accuracy front (closure.evaluation.front) on hand-made rows."""

from __future__ import annotations

import math

from closure.evaluation import front as F


def row(cost, spectrum, pdf, decorrelation, blowups=0):
    return {"les_seconds_per_model_time": cost, "spectrum_error": spectrum, "pdf_distance": pdf,
            "decorrelation_time": decorrelation, "blowups": blowups}


LADDER = {
    "plain@32": row(0.2, 0.24, 0.017, 1.3),
    "plain@48": row(0.4, 0.07, 0.023, 2.6),
    "plain@64": row(0.5, 0.03, 0.016, 3.9),
}


def test_worse_on_one_metric_only_stays_on_the_front():
    # costlier than plain@32 and worse on the PDF distance only: better spectrum and decorrelation
    models = {"m": row(0.3, 0.10, 0.030, 1.8)}
    v = F.verdict("m", models, LADDER)
    assert v["on_front"] and v["dominated_by"] == []
    assert v["as_good"] == {"spectrum_error": "plain@48", "pdf_distance": "plain@32",
                            "decorrelation_time": "plain@48"}
    assert "m" in F.front({**LADDER, **models})


def test_worse_on_every_metric_than_a_cheaper_run_is_dominated():
    models = {"m": row(4.0, 0.08, 0.033, 1.85), "none": row(0.19, 0.5, 0.06, 1.05)}
    v = F.verdict("m", models, LADDER)
    assert not v["on_front"]
    assert v["dominated_by"] == ["plain@48", "plain@64"]  # cheapest first
    assert F.verdict("none", models, LADDER)["on_front"]  # the cheapest run of all
    assert F.front({**LADDER, **models}) == ["none", "plain@32", "plain@48", "plain@64"]


def test_ties_cost_and_nonfinite_values():
    a, b = row(1.0, 0.1, 0.1, 1.0), row(1.0, 0.1, 0.1, 1.0)
    assert not F.dominates(a, b) and not F.dominates(b, a)  # equal rows: neither is strictly better
    assert F.dominates(row(0.9, 0.1, 0.1, 1.0), a)  # the same accuracy for less
    assert F.dominates(row(1.0, 0.1, 0.1, 1.1), a)  # better at the same cost
    assert not F.dominates(row(1.1, 0.0, 0.0, 9.0), a)  # costlier never dominates
    unscored = row(0.1, math.nan, 0.1, 1.0)
    assert not F.dominates(unscored, a)  # a NaN metric is the worst value
    assert F.cheapest_as_good(row(1, 0.01, 0.001, 99.0), LADDER, "spectrum_error") is None


def test_a_run_that_blew_up_is_never_on_the_front():
    models = {"fast": row(0.01, 0.0, 0.0, 9.0, blowups=1)}
    v = F.verdict("fast", models, LADDER)
    assert v["blew_up"] and not v["on_front"] and v["dominated_by"] == []
    assert "fast" not in F.front({**LADDER, **models})
