"""A-posteriori (solver-in-the-loop) training end to end on the tiny datasets."""

import json

import pytest
import torch

from closure.config import config_from_dict
from closure.nn import load_model
from closure.training.trainer import train
from closure.training.unroll import curriculum, train_aposteriori


def test_curriculum_doubles_then_caps():
    assert [curriculum(e, 8, 32, 4) for e in range(4)] == [2, 4, 8, 8]
    assert curriculum(0, 2, 32, 5) == 1  # at least one snapshot


@pytest.mark.parametrize("which", ["2d", "burgers"])
def test_aposteriori_fine_tuning_writes_a_run_and_lowers_the_unrolled_loss(which, tmp_path, request,
                                                                             tiny_config, tiny_burgers_config):
    raw = tiny_config if which == "2d" else tiny_burgers_config
    data = request.getfixturevalue("tiny_dataset" if which == "2d" else "tiny_burgers_dataset")
    raw["train"].update({"epochs": 1})
    apriori = train(config_from_dict(raw), data, tmp_path / "apriori", progress_enabled=False, apriori=False)
    raw["train"].update({"mode": "aposteriori", "optimizer": "adam", "lr": 0.1, "epochs": 3,
                         "unroll_steps": 5, "unroll_max_steps": 10, "unroll_batch": 2, "windows_per_epoch": 4})
    run = train_aposteriori(config_from_dict(raw), data, tmp_path / "post", init=apriori, progress_enabled=False)
    for name in ("model.pt", "config.yaml", "splits.json", "history.csv", "metrics.json", "training_curve.png"):
        assert (run / name).is_file(), name
    model = load_model(run / "model.pt")
    assert isinstance(model, torch.nn.Module)
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["training"]["epochs_run"] == 3
    assert "apriori" in metrics
    # the unrolled loss on the validation trajectories (the longest unroll) is lower than the a-priori model's
    before, after = (_validation_loss(load_model(r / "model.pt"), config_from_dict(raw), data) for r in (apriori, run))
    assert after < 0.998 * before, (before, after)  # fails if fine-tuning leaves the weights unchanged


def _validation_loss(model, config, data) -> float:
    from closure.data.dataset import open_dataset, split_trajectories
    from closure.training.unroll import _fixed_windows, steps_per_sample, windows_loss

    ds = open_dataset(data)
    per_sample = steps_per_sample(float(ds["time"][1] - ds["time"][0]), config.run.dt)
    samples = min(config.train.unroll_max_steps // per_sample, ds.sizes["time"] - 1)
    splits = split_trajectories(ds.sizes["trajectory"], config.data.validation_fraction, config.data.test_fraction,
                                config.seed)
    windows = _fixed_windows(ds.sizes["time"], samples, splits["validation"])
    model = model.to(torch.float64 if config.dtype == "float64" else torch.float32).eval()
    with torch.no_grad():
        return float(windows_loss(model, config, ds, windows, samples, per_sample,
                                  dtype=next(model.parameters()).dtype))


def test_history_records_unroll_length_and_skipped_windows(tmp_path, tiny_config, tiny_dataset):
    import csv

    tiny_config["train"].update({"mode": "aposteriori", "optimizer": "adam", "lr": 1e-3, "epochs": 2,
                                 "unroll_steps": 5, "unroll_max_steps": 10, "unroll_batch": 2,
                                 "windows_per_epoch": 2})
    run = train_aposteriori(config_from_dict(tiny_config), tiny_dataset, tmp_path / "post", progress_enabled=False)
    rows = list(csv.DictReader((run / "history.csv").read_text().splitlines()))
    assert [int(r["unroll_steps"]) for r in rows] == [5, 10]
    assert all(int(r["skipped_windows"]) == 0 for r in rows)


def test_aposteriori_shares_the_apriori_normalization_and_optimizer(tmp_path, tiny_config, tiny_dataset,
                                                                    monkeypatch):
    """With derived features the input normalization is per channel, as in a-priori training, and
    the optimizer carries train.weight_decay."""
    import closure.training.loop as loop
    from closure.data.streaming import closure_core

    tiny_config["model"]["features"] = ["gradient"]
    tiny_config["train"].update({"epochs": 1, "weight_decay": 0.25})
    apriori = train(config_from_dict(tiny_config), tiny_dataset, tmp_path / "apriori", progress_enabled=False,
                    apriori=False)
    tiny_config["train"].update({"mode": "aposteriori", "unroll_steps": 5, "unroll_max_steps": 5,
                                 "unroll_batch": 1, "windows_per_epoch": 1})
    seen = []
    step = loop.optimizer_step
    monkeypatch.setattr(loop, "optimizer_step", lambda loss, model, opt, *a: (seen.append(opt), step(loss, model, opt, *a)))
    post = train_aposteriori(config_from_dict(tiny_config), tiny_dataset, tmp_path / "post", progress_enabled=False)
    a, b = closure_core(load_model(apriori / "model.pt")), closure_core(load_model(post / "model.pt"))
    assert a.input_mean.numel() == 3  # the field and its two gradient components
    for buffer in ("input_mean", "input_std", "output_mean", "output_std"):
        assert torch.equal(getattr(a, buffer), getattr(b, buffer)), buffer
    assert seen and all(g["weight_decay"] == 0.25 for g in seen[0].param_groups)


def test_finetune_after_the_apriori_fit_is_one_training_call(tmp_path, tiny_config, tiny_dataset):
    """train.finetune_epochs: the a-priori fit in run/apriori, then the fine-tuned model in run; the
    run's config.yaml is the config that asked for it; the result never loses to its start."""
    import yaml

    from closure.training.trainer import APRIORI_DIR

    tiny_config["train"].update({"epochs": 1, "finetune_epochs": 2, "finetune_lr": 0.03, "unroll_steps": 5,
                                 "unroll_max_steps": 10, "unroll_batch": 2, "windows_per_epoch": 4})
    config = config_from_dict(tiny_config)
    run = train(config, tiny_dataset, tmp_path / "run", progress_enabled=False)
    assert (run / APRIORI_DIR / "model.pt").is_file() and (run / "model.pt").is_file()
    stored = yaml.safe_load((run / "config.yaml").read_text())["train"]
    assert stored["mode"] == "apriori" and stored["finetune_epochs"] == 2
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["training"]["epochs_run"] == 2
    check = config_from_dict(dict(tiny_config, train=dict(tiny_config["train"], mode="aposteriori")))
    before, after = (_validation_loss(load_model(r / "model.pt"), check, tiny_dataset) for r in (run / APRIORI_DIR, run))
    assert after <= before * (1 + 1e-6)
    assert metrics["normalization"]["init_validation_loss"] == pytest.approx(before, rel=1e-4)


def test_finetune_keeps_the_apriori_model_when_no_epoch_beats_it(tmp_path, tiny_config, tiny_dataset):
    from closure.training.trainer import APRIORI_DIR

    # a rate so large that every fine-tuning epoch is worse than the a-priori model (or blows up)
    tiny_config["train"].update({"epochs": 1, "finetune_epochs": 1, "finetune_lr": 50.0, "grad_clip": None,
                                 "unroll_steps": 5, "unroll_max_steps": 10, "unroll_batch": 2,
                                 "windows_per_epoch": 4})
    run = train(config_from_dict(tiny_config), tiny_dataset, tmp_path / "run", progress_enabled=False)
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["training"]["best_epoch"] == 0
    a, b = (load_model(r / "model.pt").state_dict() for r in (run / APRIORI_DIR, run))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_finetune_honours_the_closure_held_over_the_step(tmp_path, tiny_config, tiny_dataset, monkeypatch):
    """run.closure_per_stage: false trains as it runs: every unroll of the fine-tuning (training windows,
    validation windows, the gradient checkpoints' recomputation) calls the network once per step,
    a quarter of the per-stage (ETDRK4) calls."""
    import closure.training.unroll as unroll

    tiny_config["train"].update({"epochs": 1})
    apriori = train(config_from_dict(tiny_config), tiny_dataset, tmp_path / "apriori", progress_enabled=False,
                    apriori=False)
    tiny_config["train"].update({"mode": "aposteriori", "epochs": 1, "unroll_steps": 5, "unroll_max_steps": 5,
                                 "unroll_batch": 2, "windows_per_epoch": 2})
    load, finish = unroll.load_init, unroll.finish
    calls = {}
    for per_stage in (True, False):
        count = [0]

        def counted(*args, **kwargs):
            model = load(*args, **kwargs)
            model.register_forward_hook(lambda *_: count.__setitem__(0, count[0] + 1))
            return model

        def finished(*args, per_stage=per_stage, **kwargs):  # the calls of the unrolls, before the a-priori metrics
            calls[per_stage] = count[0]
            return finish(*args, **kwargs)

        monkeypatch.setattr(unroll, "load_init", counted)
        monkeypatch.setattr(unroll, "finish", finished)
        tiny_config["run"]["closure_per_stage"] = per_stage
        train_aposteriori(config_from_dict(tiny_config), tiny_dataset, tmp_path / f"post{per_stage}",
                          init=apriori, progress_enabled=False)
    assert calls[False] > 0 and calls[True] == 4 * calls[False], calls
