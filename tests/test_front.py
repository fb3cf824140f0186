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


# the demo's case: a model better than plain@64 on the spectrum and about as costly as plain@96,
# which is better on every metric (costs of reruns: 0.74x .. 1.10x plain@96's)
DEMO = {
    "plain@64": row(0.021, 0.0194, 0.0139, 4.95),
    "plain@96": row(0.054, 0.0038, 0.0065, 7.60),
}


def test_a_cost_difference_within_the_tolerance_is_a_tie_whichever_run_is_cheaper():
    for ratio in (0.90, 0.97, 1.03, 1.10, 1.19):  # model cost / plain@96 cost, the order flips
        models = {"learned": row(0.054 * ratio, 0.0176, 0.0180, 3.23)}
        plain = F.verdict("learned", models, DEMO)
        assert plain["on_front"] == (ratio < 1)  # the plain Pareto verdict follows the noise
        v = F.verdict("learned", models, DEMO, tolerance=0.2)
        assert v["on_front"] == plain["on_front"] and v["dominated_by"] == plain["dominated_by"]
        assert v["standing"] == "cost tie" and v["cost_ties"] == ["plain@96"], ratio
        assert v["cost_tolerance"] == 0.2


def test_a_cost_difference_beyond_the_tolerance_decides():
    cheap = {"learned": row(0.054 / 1.25, 0.0176, 0.0180, 3.23)}
    v = F.verdict("learned", cheap, DEMO, tolerance=0.2)
    assert v["standing"] == "on the front" and v["cost_ties"] == [] and v["on_front"]
    dear = {"learned": row(0.054 * 1.25, 0.0176, 0.0180, 3.23)}
    v = F.verdict("learned", dear, DEMO, tolerance=0.2)
    assert v["standing"] == "dominated" and v["cost_ties"] == [] and v["dominated_by"] == ["plain@96"]
    # a tie with one rung does not hide a domination beyond the tolerance by another
    worse = {"learned": row(0.057, 0.03, 0.0180, 3.23)}  # now plain@64 (2.6x cheaper) is better everywhere
    v = F.verdict("learned", worse, DEMO, tolerance=0.2)
    assert v["standing"] == "dominated" and v["cost_ties"] == ["plain@96"]
    assert v["dominated_by"] == ["plain@64", "plain@96"]


def test_no_tie_without_being_as_good_everywhere_and_tolerance_zero_is_plain_pareto():
    # plain@96 within the tolerance but worse on the decorrelation time: no tie
    models = {"learned": row(0.054, 0.0176, 0.0180, 8.0)}
    v = F.verdict("learned", models, DEMO, tolerance=0.2)
    assert v["standing"] == "on the front" and v["cost_ties"] == []
    # equal cost and better on a metric: dominated, not a tie
    equal = {"learned": row(0.054, 0.0176, 0.0180, 3.23)}
    v = F.verdict("learned", equal, DEMO, tolerance=0.2)
    assert v["standing"] == "dominated" and v["cost_ties"] == []
    for ratio in (0.9, 1.1):
        models = {"learned": row(0.054 * ratio, 0.0176, 0.0180, 3.23)}
        v = F.verdict("learned", models, DEMO)
        assert v["cost_ties"] == [] and v["standing"] == ("on the front" if ratio < 1 else "dominated")
    try:
        F.cost_ties("learned", {**DEMO, **models}, -0.1)
    except ValueError as exc:
        assert "tolerance" in str(exc)
    else:
        raise AssertionError("a negative tolerance was accepted")


def test_the_report_words_a_cost_tie_and_the_seeds_count_it():
    from closure.evaluation.compare import standing
    from closure.evaluation.report import front_table, verdict_lines

    def results(ratio):
        rungs = {n: dict(r, ladder={"resolution": int(n[6:]), "factor": int(n[6:]) / 32, "start": "dns"})
                 for n, r in DEMO.items()}
        seeds = {f"learned-s{i}": dict(row(0.054 * ratio, 0.017, 0.018, 3.2 + 0.01 * i), seed_of="learned")
                 for i in range(2)}
        group = dict(row(0.054 * ratio, 0.017, 0.018, 3.2), members=list(seeds))
        return {**rungs, **seeds, "learned": group}

    tied = results(1.05)
    standing(tied, 0.2)
    line = [x for x in verdict_lines(tied) if x.startswith("learned (")][0]
    assert "not decided: a cost tie with plain@96" in line and "cost ties: 2 of 2" in line, line
    assert "on the front: 0 of 2" in line
    assert "cost tie with plain@96" in front_table(tied)
    plain = results(1.05)
    standing(plain, 0.0)
    line = [x for x in verdict_lines(plain) if x.startswith("learned (")][0]
    assert "dominated by plain@96" in line and "tie" not in line, line


def test_evaluate_refuses_a_negative_cost_tolerance(tmp_path, capsys):
    from closure.cli import main

    status = main(["evaluate", "--reference", str(tmp_path / "ref.nc"), str(tmp_path / "les.nc"),
                   "-o", str(tmp_path / "report"), "--cost-tolerance", "-0.1"])
    err = capsys.readouterr().err.strip().splitlines()
    assert status == 2 and len(err) == 1 and "--cost-tolerance -0.1" in err[0], err
