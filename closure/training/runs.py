"""Training runs: the run directory and everything both training objectives share.

A run directory holds ``config.yaml`` (the resolved config), ``splits.json`` (the
train / validation / test trajectories, positions and ids), ``checkpoint.pt``
(a-priori training, after every ``train.checkpoint_every`` epochs),
``history.csv`` and ``training_curve.png`` (one row / point per epoch),
``model.pt`` (`closure.nn.save_model`: the best validation weights) and
``metrics.json`` (training summary, normalization, a-priori metrics on the validation split).
Every file is written atomically (`closure.storage`).

Also here: the config and dataset checks, seeding and the random-number state
of a checkpoint, the optimizer (per-layer mean-field rates,
`closure.nn.param_groups`, with ``train.weight_decay``) and its schedule:

constant 1; cosine ``(1 + cos(pi s / S)) / 2``; step ``0.1`` after half and
``0.01`` after three quarters of the steps (per optimizer step s of S in total,
multiplying every group's rate).
"""

from __future__ import annotations

import csv
import json
import math
import os
import random
import time
from pathlib import Path
from typing import Optional

import matplotlib
import numpy as np
import torch
import xarray as xr
from torch import nn

from closure import storage
from closure.config import (Config, config_from_dict, config_from_yaml, config_to_yaml, first_difference,
                            load_config)
from closure.data.dataset import dataset_identity, les_view, open_dataset, split_trajectories, validate
from closure.data.streaming import channel_statistics, closure_core, dataset_statistics, field_variable
from closure.errors import ClosureError
from closure.nn import load_model, param_groups, save_model
from closure.nn.io import model_file
from closure.progress import log
from closure.training.apriori import baseline_closures, evaluate

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after choosing the non-interactive backend)

__all__ = [
    "CHECKPOINT", "CHECKPOINT_FORMAT", "TEST_POINTS", "as_config", "open_data", "check_dataset", "default_run_dir",
    "trajectory_splits", "write_run_start", "seed_everything", "rng_state", "set_rng_state", "load_init", "fit_normalization", "make_optimizer",
    "optimizer_step", "learning_rate_factor", "write_history", "plot_history", "save_checkpoint", "read_checkpoint", "made_for_run",
    "finish",
]

CHECKPOINT = "checkpoint.pt"
CHECKPOINT_FORMAT = "closure.training.trainer/1"
TEST_POINTS = 1 << 21  # cap on the points of the (validation) split used for the a-priori metrics


def as_config(config) -> Config:
    if isinstance(config, Config):
        return config
    if isinstance(config, (str, os.PathLike)):
        return load_config(config)
    if isinstance(config, dict):
        return config_from_dict(config)
    raise TypeError(f"config must be a Config, a mapping or a path, got {type(config).__name__}")


def open_data(data):
    """A dataset (path(s) or an opened ``xarray.Dataset``), checked against the schema, as the closure
    sees it (`closure.data.dataset.les_view`: the truncated pair for the correction formulation)."""
    if isinstance(data, xr.Dataset):
        source = data.encoding.get("source", "dataset")
        return les_view(validate(data, source), source)
    ds = open_dataset(data)
    return les_view(ds, ds.encoding.get("source", str(data)))


def check_dataset(config: Config, ds) -> None:
    """Raise ClosureError if the dataset does not fit the config (equation, domain, LES grid)."""
    source = ds.encoding.get("source", "dataset")
    eq = ds.attrs.get("equation")
    if eq != config.system.equation:
        raise ClosureError(f"{source}: dataset equation {eq!r} differs from system.equation={config.system.equation!r}")
    n = int(ds.attrs.get("les_resolution", ds.sizes["x"]))
    if n != config.les.resolution:
        raise ClosureError(f"{source}: dataset les_resolution={n} differs from les.resolution={config.les.resolution}")
    length = float(ds.attrs.get("length", config.system.length))
    if not math.isclose(length, config.system.length, rel_tol=1e-9):
        raise ClosureError(f"{source}: dataset length={length} differs from system.length={config.system.length}")
    for key in ("viscosity", "drag"):
        if key in ds.attrs and not math.isclose(float(ds.attrs[key]), getattr(config.system, key),
                                                rel_tol=1e-9, abs_tol=1e-15):
            raise ClosureError(f"{source}: dataset {key}={float(ds.attrs[key])} differs from "
                               f"system.{key}={getattr(config.system, key)}")
    if "forcing" in ds.attrs:
        mine = config.system.forcing.model_dump(mode="json")
        try:
            theirs = json.loads(ds.attrs["forcing"])
        except (TypeError, ValueError):
            theirs = None
        if isinstance(theirs, dict) and theirs != mine:
            raise ClosureError(f"{source}: dataset forcing {ds.attrs['forcing']} differs from system.forcing={mine}")
    if "filter" in ds.attrs:
        try:
            flt = json.loads(ds.attrs["filter"])
        except (TypeError, ValueError):
            flt = None
        cf = config.les.filter
        if isinstance(flt, dict) and (flt.get("type") != cf.type or
                                      not math.isclose(float(flt.get("width", cf.width)), cf.width, rel_tol=1e-9)):
            raise ClosureError(f"{source}: dataset filter {flt.get('type')} (width {flt.get('width')}) differs from "
                               f"les.filter={cf.type} (width {cf.width})")
    if ds.sizes.get("trajectory", 0) < 2:
        raise ClosureError(f"{source}: needs at least 2 trajectories to split into train and test, "
                           f"has {ds.sizes.get('trajectory', 0)}")
    if config.model.type == "mlp" and config.model.stencil > n:
        raise ClosureError(f"model.stencil={config.model.stencil} exceeds the LES grid ({n} points)")


def optimizer_step(loss: torch.Tensor, model: nn.Module, optimizer, scheduler, grad_clip: Optional[float]) -> None:
    """Backpropagate ``loss``, clip the gradient norm (if set), step the optimizer and the schedule."""
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if grad_clip:
        torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    optimizer.step()
    scheduler.step()


def learning_rate_factor(schedule: str, step: int, total: int) -> float:
    """The schedule's multiplier at optimizer step ``step`` of ``total`` (module docstring)."""
    frac = min(step / max(total, 1), 1.0)
    if schedule == "constant":
        return 1.0
    if schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * frac))
    if schedule == "step":
        return 1.0 if frac < 0.5 else (0.1 if frac < 0.75 else 0.01)
    raise ClosureError(f"train.schedule={schedule!r} is not one of constant, cosine, step")


def write_history(path: Path, history: list[dict]) -> None:
    keys = ["epoch", "train_loss", "validation_loss", "lr_factor", "samples", "seconds", "samples_per_second"]
    keys = list(dict.fromkeys(keys + [k for row in history for k in row]))  # e.g. the a-posteriori columns

    def write(tmp):
        with open(tmp, "w", newline="") as fh:
            w = csv.DictWriter(fh, fieldnames=keys)
            w.writeheader()
            for row in history:
                w.writerow({k: row.get(k) for k in keys})

    storage.write_with(path, write)


def plot_history(path: Path, history: list[dict], title: str) -> None:
    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    epochs = [h["epoch"] for h in history]
    ax.semilogy(epochs, [h["train_loss"] for h in history], "o-", label="train")
    ax.semilogy(epochs, [h["validation_loss"] for h in history], "s-", label="validation")
    ax.set_xlabel("epoch")
    ax.set_ylabel("MSE of the normalized SGS term")
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    storage.save_figure(fig, path, dpi=110)
    plt.close(fig)


def rng_state() -> dict:
    np_state = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "numpy_keys": torch.from_numpy(np_state[1].astype(np.int64)),
        "numpy_pos": int(np_state[2]),
        "python": [int(v) for v in random.getstate()[1]],
        "python_version": int(random.getstate()[0]),
    }


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(("MT19937", state["numpy_keys"].numpy().astype(np.uint32), state["numpy_pos"], 0, 0.0))
    random.setstate((state["python_version"], tuple(state["python"]), None))


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2 ** 32))
    torch.manual_seed(seed)


def default_run_dir(config: Config) -> Path:
    source = getattr(config, "source", None)
    stem = Path(source).stem if source else "train"
    return Path("runs") / stem


def load_init(init, device, dtype, expect: Optional[dict] = None) -> nn.Module:
    """The model (and its normalization) of run directory (or model file) ``init``, to start a training
    from; checked against ``expect`` (`made_for_run`; its dataset may differ)."""
    expect = {k: v for k, v in (expect or {}).items() if k != "dataset"}
    return load_model(model_file(init), map_location=device, expect=expect).to(dtype=dtype)


def made_for_run(config: Config, ds) -> dict:
    """What a model trained here is for (stored in model.pt and checkpoints; `closure.nn.io.check_made_for`)."""
    return {"equation": config.system.equation, "les_resolution": int(config.les.resolution),
            "length": float(config.system.length), "field": field_variable(ds), "dataset": dataset_identity(ds)}


def save_checkpoint(path: Path, config_yaml: str, model, optimizer, scheduler, best_state, state,
                    dataset: str) -> None:
    """The training state after an epoch (atomically): weights, best weights, optimizer, schedule,
    history, random-number state, and the identity of the dataset it trains on."""
    payload = {
        "format": CHECKPOINT_FORMAT,
        "config": config_yaml,
        "dataset": dataset,
        "model": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "best_model": {k: v.detach().cpu() for k, v in best_state.items()},
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "state": json.dumps(state),
        "rng": rng_state(),
    }
    storage.torch_save(payload, path)


CHECKPOINT_KEYS = ("config", "model", "best_model", "optimizer", "scheduler", "state", "rng")


def read_checkpoint(path: Path, config: Config, config_yaml: str, dataset: str) -> dict:
    """The checkpoint at ``path``, checked: readable, complete, same config, same dataset."""
    if not path.is_file():
        raise ClosureError(f"{path}: no checkpoint to resume from")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ClosureError(f"{path}: unreadable checkpoint ({type(exc).__name__})") from None
    if not isinstance(checkpoint, dict) or checkpoint.get("format") != CHECKPOINT_FORMAT:
        raise ClosureError(f"{path}: not a training checkpoint")
    missing = [k for k in CHECKPOINT_KEYS if k not in checkpoint]
    if missing:
        raise ClosureError(f"{path}: damaged checkpoint (missing {', '.join(missing)}); "
                           "start a fresh run without --resume")
    if checkpoint["config"] != config_yaml:
        stored = config_from_yaml(checkpoint["config"], f"{path} (stored config)").model_dump()
        diff = first_difference(stored, config.model_dump())
        raise ClosureError(f"{path}: --resume needs the same config as the interrupted run ({diff} differs)")
    stored_data = checkpoint.get("dataset")
    if stored_data is not None and stored_data != dataset:
        raise ClosureError(f"{path}: the interrupted run trained on another dataset (identity {str(stored_data)[:20]}, "
                           f"--data has {dataset}); --resume needs the same --data")
    return checkpoint


def finish(config, ds, run_dir, model, state, splits, splits_doc, data_source, world, device, apriori,
           progress_enabled, title: str = "a-priori training") -> None:
    """Write the run's results: ``model.pt``, ``metrics.json`` (with the a-priori test metrics of the
    model and the classical closures when ``apriori``), ``history.csv`` and ``training_curve.png``."""
    history = state["history"]
    metrics: dict = {
        "training": {
            "epochs_run": state["epoch"],
            "best_epoch": state["best_epoch"],
            "best_validation_loss": state["best_loss"],
            "final_train_loss": history[-1]["train_loss"] if history else None,
            "stopped_early": state["stopped_early"],
            "seconds": state["seconds"],
            "samples_per_second": (sum(h["samples"] for h in history) / max(sum(h["seconds"] for h in history), 1e-9)
                                   if history else None),
            "world_size": world,
            "device": str(device),
        },
        "normalization": state.get("normalization"),
        "splits": {k: v for k, v in splits.items()},
    }
    if apriori and splits["validation"]:
        # on the validation split: the test split is read once, by the final (a-posteriori) evaluation
        closures = {"learned": model}
        closures.update(baseline_closures(config))
        metrics["apriori"] = evaluate(ds, splits["validation"], closures, config, max_points=TEST_POINTS,
                                      progress_enabled=progress_enabled)
        metrics["apriori"]["split"] = "validation"
        summary = {name: {k: metrics["apriori"][name][k] for k in ("correlation", "r2", "relative_l2")}
                   for name in closures}
        metrics["apriori_summary"] = summary
        log.info("a-priori validation metrics: %s", json.dumps(summary))
    extra = {
        "config": config_to_yaml(config),
        "equation": config.system.equation,
        "dataset": data_source,
        "made_for": made_for_run(config, ds),
        "splits": json.dumps(splits_doc),
        "best_epoch": int(state["best_epoch"]),
        "validation_loss": float(state["best_loss"]),
    }
    save_model(run_dir / "model.pt", model, extra)
    storage.write_text(run_dir / "metrics.json", json.dumps(metrics, indent=2, default=float) + "\n")
    write_history(run_dir / "history.csv", history)
    if history:
        plot_history(run_dir / "training_curve.png", history, f"{config.system.equation}: {title}")


def trajectory_splits(config: Config, ds, data_source: str) -> tuple[dict, dict]:
    """The trajectory split of ``config`` (`closure.data.dataset.split_trajectories`: positions) and
    its record for ``splits.json`` (positions, trajectory ids, dataset)."""
    n_traj = ds.sizes["trajectory"]
    splits = split_trajectories(n_traj, config.data.validation_fraction, config.data.test_fraction, config.seed)
    traj_ids = [int(v) for v in ds["trajectory"].values] if "trajectory" in ds.coords else list(range(n_traj))
    splits_doc = {name: idx for name, idx in splits.items()}
    splits_doc.update({f"{name}_ids": [traj_ids[i] for i in idx] for name, idx in splits.items()})
    splits_doc["dataset"] = data_source
    return splits, splits_doc


def write_run_start(run_dir: Path, config: Config, splits_doc: dict) -> None:
    """Create ``run_dir`` with its ``splits.json`` and ``config.yaml``."""
    run_dir.mkdir(parents=True, exist_ok=True)
    storage.write_text(run_dir / "splits.json", json.dumps(splits_doc, indent=2) + "\n")
    storage.write_text(run_dir / "config.yaml", config_to_yaml(config))


def fit_normalization(model: nn.Module, ds, trajectories, blocks, symmetry: str = "none") -> dict:
    """Set the model's input/output normalization from the training trajectories; return the statistics.

    Inputs: the mean and standard deviation of the field (dask reductions), or, when
    derived features or the symmetry group change the channels, per input channel
    (`closure.data.streaming.channel_statistics`, a streamed pass over ``blocks``).
    Output: the SGS term's mean and standard deviation; under the symmetry group
    (``augment``/``average``) a mean of 0 and the root mean square (the group
    averages the mean out).
    """
    start = time.time()
    core = closure_core(model)
    symmetric = symmetry in ("augment", "average")
    stats = dataset_statistics(ds, trajectories)
    with torch.no_grad():
        if core.features or symmetric:
            mean, std = channel_statistics(ds, blocks, model, symmetric=symmetric)
            core.input_mean.copy_(mean.to(core.input_mean))
            core.input_std.copy_(std.clamp_min(1e-12).to(core.input_std))
        else:
            core.input_mean.fill_(stats["field_mean"])
            core.input_std.fill_(max(stats["field_std"], 1e-12))
        out_mean = 0.0 if symmetric else stats["sgs_mean"]
        out_std = math.sqrt(stats["sgs_std"] ** 2 + stats["sgs_mean"] ** 2) if symmetric else stats["sgs_std"]
        core.output_mean.fill_(out_mean)
        core.output_std.fill_(max(out_std, 1e-12))
    return dict(stats, seconds=time.time() - start)


def make_optimizer(model: nn.Module, tc) -> torch.optim.Optimizer:
    """SGD or Adam (``train.optimizer``) on the mean-field parameter groups, with ``train.weight_decay``."""
    groups = param_groups(model, tc.lr, tc.optimizer)
    if tc.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=tc.lr, weight_decay=tc.weight_decay)
    return torch.optim.Adam(groups, lr=tc.lr, weight_decay=tc.weight_decay)
