"""A-priori training of a closure on a filtered-DNS dataset (``closure train``).

    run_dir = train(config, "data/quickstart.nc", "runs/quickstart/train")

Steps:

1. open the dataset lazily (dask) and check that it fits the config (equation,
   domain, LES resolution); split its trajectories into train / validation /
   test with ``split_trajectories`` (``splits.json``: the test trajectories are
   the ones the coupled LES starts from);
2. fit the model's input/output normalization on the training split only
   (dask reductions; a streamed pass when derived features or symmetry
   augmentation change the channels);
3. optimize the mean-squared error of the normalized SGS term with SGD and the
   mean-field per-layer rates (``closure.nn.param_groups``; or Adam), a
   constant / cosine / step schedule, gradient clipping and early stopping on
   the validation loss; batches come from ``closure.data.streaming.SampleStream``
   (stencil patches at random points of many snapshots) through a prefetch
   thread; a checkpoint is written atomically after every epoch and
   ``resume=True`` continues a killed run to bitwise the same weights (CPU);
4. write ``model.pt`` (best validation weights, ``closure.nn.save_model``),
   ``config.yaml``, ``splits.json``, ``history.csv``, ``training_curve.png``
   and ``metrics.json`` with the a-priori metrics against the exact SGS
   term and the classical closures (``closure.training.apriori``) on the
   validation split: nothing in training reads the test split, which is read
   once, by the final a-posteriori evaluation.

Under ``torchrun`` (``WORLD_SIZE > 1``) the same call trains with
DistributedDataParallel (nccl on GPUs, gloo on CPUs); each rank reads its
share of the blocks and computes its part of every global batch, so the
updates are those of a single process (see closure.data.streaming).

Schedules (per optimizer step s of S in total, multiplying every group's rate):
constant 1; cosine ``(1 + cos(pi s / S)) / 2``; step ``0.1`` after half and
``0.01`` after three quarters of the steps.
"""

from __future__ import annotations

import csv
import json
import math
import os
import random
import time
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Callable, Optional, Sequence, Union

import numpy as np
import torch
from torch import nn

from closure.config import (Config, config_from_dict, config_from_yaml, config_to_yaml, first_difference,
                            load_config, resolve_device, resolve_dtype)
from closure import storage
from closure.errors import ClosureError
from closure.progress import log, progress
from closure.data.streaming import (Prefetcher, SampleStream, channel_statistics, closure_core, dataset_statistics,
                               field_variable, is_point_model, load_block, plan_blocks)

__all__ = ["train", "made_for_run", "check_dataset", "learning_rate_factor", "launch_local", "TrainingInterrupted"]

CHECKPOINT = "checkpoint.pt"
CHECKPOINT_FORMAT = "closure.training.trainer/1"
VALIDATION_POINTS = 1 << 17  # points of the validation split used per epoch (every k-th snapshot)
TEST_POINTS = 1 << 21  # cap on the points of the (validation) split used for the a-priori metrics


class TrainingInterrupted(Exception):
    """Raised by a callback to stop training after a checkpoint (used by tests to emulate a kill)."""


# --------------------------------------------------------------------------- config / data
def _as_config(config) -> Config:
    if isinstance(config, Config):
        return config
    if isinstance(config, (str, os.PathLike)):
        return load_config(config)
    if isinstance(config, dict):
        return config_from_dict(config)
    raise TypeError(f"config must be a Config, a mapping or a path, got {type(config).__name__}")


def _open(data):
    import xarray as xr

    from closure.data.dataset import open_dataset

    if isinstance(data, xr.Dataset):
        from closure.data.dataset import validate

        return validate(data, data.encoding.get("source", "dataset"))
    return open_dataset(data)


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


# --------------------------------------------------------------------------- distributed
def _dist_env() -> tuple[int, int, int]:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    return int(os.environ.get("RANK", "0")), world, int(os.environ.get("LOCAL_RANK", "0"))


@contextmanager
def _distributed(device_name: str):
    """Initialise torch.distributed when launched by torchrun with several processes."""
    import torch.distributed as dist

    rank, world, local = _dist_env()
    if world <= 1:
        yield 0, 1, resolve_device(device_name)
        return
    use_cuda = torch.cuda.is_available() and device_name != "cpu"
    device = torch.device(f"cuda:{local}") if use_cuda else torch.device("cpu")
    if use_cuda:
        torch.cuda.set_device(device)
    owned = not dist.is_initialized()
    if owned:
        dist.init_process_group("nccl" if use_cuda else "gloo")
    try:
        yield dist.get_rank(), dist.get_world_size(), device
    finally:
        if owned:
            dist.barrier()
            dist.destroy_process_group()


def _all_reduce(values: Sequence[float], world: int, device) -> list[float]:
    if world <= 1:
        return [float(v) for v in values]
    import torch.distributed as dist

    t = torch.tensor([float(v) for v in values], dtype=torch.float64,
                     device=device if device.type == "cuda" else "cpu")
    dist.all_reduce(t)
    return t.cpu().tolist()


def _barrier(world: int) -> None:
    if world > 1:
        import torch.distributed as dist

        dist.barrier()


# --------------------------------------------------------------------------- objective
class _Objective(nn.Module):
    """Sum of squared errors of the normalized SGS term over a batch (what DDP wraps)."""

    def __init__(self, model: nn.Module, mode: str):
        super().__init__()
        self.model, self.mode = model, mode

    def forward(self, inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        if self.mode == "points":
            pred = self.model.net(inputs).squeeze(-1)
            return ((pred - targets) ** 2).sum()
        core = closure_core(self.model)
        return (((self.model(inputs) - targets) / core.output_std) ** 2).sum()


# --------------------------------------------------------------------------- files
_write_text = storage.write_text  # (kept under this name for closure.training.unroll)


def _write_history(path: Path, history: list[dict]) -> None:
    keys = ["epoch", "train_loss", "validation_loss", "lr_factor", "samples", "seconds", "samples_per_second"]
    keys = list(dict.fromkeys(keys + [k for row in history for k in row]))  # e.g. the a-posteriori columns

    def write(tmp):
        with open(tmp, "w", newline="") as fh:
            w = csv.DictWriter(fh, fieldnames=keys)
            w.writeheader()
            for row in history:
                w.writerow({k: row.get(k) for k in keys})

    storage.write_with(path, write)


def _plot_history(path: Path, history: list[dict], title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

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


def _rng_state() -> dict:
    np_state = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "numpy_keys": torch.from_numpy(np_state[1].astype(np.int64)),
        "numpy_pos": int(np_state[2]),
        "python": [int(v) for v in random.getstate()[1]],
        "python_version": int(random.getstate()[0]),
    }


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(("MT19937", state["numpy_keys"].numpy().astype(np.uint32), state["numpy_pos"], 0, 0.0))
    random.setstate((state["python_version"], tuple(state["python"]), None))


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2 ** 32))
    torch.manual_seed(seed)


def default_run_dir(config: Config) -> Path:
    source = getattr(config, "source", None)
    stem = Path(source).stem if source else "train"
    return Path("runs") / stem


# --------------------------------------------------------------------------- evaluation
@torch.no_grad()
def _validation_loss(model: nn.Module, ds, blocks, stride: int, rank: int, world: int, device, dtype,
                     chunk_points: int = 1 << 15) -> float:
    """Mean squared error of the normalized SGS term on every ``stride``-th snapshot of ``blocks``."""
    core = closure_core(model)
    sse, count = 0.0, 0
    for j, block in enumerate(blocks):
        if j % world != rank:
            continue
        field, sgs = load_block(ds, block, dtype, stride=stride)
        if not field.shape[0]:
            continue
        per = max(1, chunk_points // int(np.prod(field.shape[1:])))
        for i in range(0, field.shape[0], per):
            f, s = field[i:i + per].to(device), sgs[i:i + per].to(device)
            err = (model(f) - s) / core.output_std
            sse += float((err.double() ** 2).sum())
            count += s.numel()
    sse, count = _all_reduce([sse, count], world, device)
    return sse / max(count, 1)


def _stride_for(ds, trajectories, max_points: int) -> int:
    var = ds[field_variable(ds)]
    n = var.sizes["time"] * len(trajectories) * int(np.prod(var.shape[2:]))
    return max(1, math.ceil(n / max_points))


# --------------------------------------------------------------------------- main entry
def train(config, data, run_dir: Union[str, os.PathLike, None] = None, *, resume: bool = False,
          init: Union[str, os.PathLike, None] = None, callback: Optional[Callable[[dict], None]] = None,
          block_snapshots: Optional[int] = None, mix: int = 4, progress_enabled: Optional[bool] = None,
          apriori: bool = True) -> Path:
    """Train the closure of ``config`` on ``data`` (dataset path(s)); return the run directory.

    Args:
        config: a Config, a raw mapping or a YAML path.
        data: a dataset file, a list of files (concatenated along trajectory) or an opened Dataset.
        run_dir: output folder (default ``runs/<config file stem>``).
        resume: continue from ``run_dir/checkpoint.pt`` (same config required).
        init: a run directory or model file whose weights (and normalization) start the training.
        callback: called with each epoch's history row after its checkpoint (raise to stop).
        block_snapshots, mix: streaming block size cap and blocks held at once (closure.data.streaming).
        apriori: compute the a-priori metrics on the validation split at the end.
    """
    config = _as_config(config)
    run_dir = Path(run_dir) if run_dir is not None else default_run_dir(config)
    tc = config.train
    if tc.mode == "aposteriori":
        from closure.training.unroll import train_aposteriori

        if resume:
            raise ClosureError("--resume is not supported with train.mode=aposteriori; re-run with --init")
        return train_aposteriori(config, data, run_dir, init=init, progress_enabled=progress_enabled)
    ds = _open(data)
    check_dataset(config, ds)
    data_source = str(ds.encoding.get("source", data if isinstance(data, (str, os.PathLike)) else "dataset"))

    previous_det = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        with _distributed(config.device) as (rank, world, device):
            return _train(config, ds, data_source, run_dir, resume, init, callback, block_snapshots, mix,
                          progress_enabled, apriori, rank, world, device)
    finally:
        torch.use_deterministic_algorithms(previous_det)
        ds.close()


def made_for_run(config: Config, ds) -> dict:
    """What a model trained here is for (stored in model.pt and checkpoints; `closure.nn.io.check_made_for`)."""
    from closure.data.dataset import dataset_identity

    return {"equation": config.system.equation, "les_resolution": int(config.les.resolution),
            "length": float(config.system.length), "field": field_variable(ds), "dataset": dataset_identity(ds)}


def _load_init(init, device, dtype, expect: Optional[dict] = None) -> nn.Module:
    """The model of run directory (or model file) ``init``, checked against ``expect`` (its dataset may differ)."""
    from closure.nn import load_model
    from closure.nn.io import model_file

    expect = {k: v for k, v in (expect or {}).items() if k != "dataset"}
    return load_model(model_file(init), map_location=device, expect=expect).to(dtype=dtype)


CHECKPOINT_KEYS = ("config", "model", "best_model", "optimizer", "scheduler", "state", "rng")


def _read_checkpoint(path: Path, config: Config, config_yaml: str, dataset: str) -> dict:
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


def _train(config: Config, ds, data_source: str, run_dir: Path, resume: bool, init, callback, block_snapshots,
           mix, progress_enabled, apriori, rank: int, world: int, device) -> Path:
    from closure.data.dataset import split_trajectories
    from closure.nn import build_model, param_groups, save_model

    tc, dtype = config.train, resolve_dtype(config.dtype)
    ndim = config.system.ndim
    main = rank == 0
    config_yaml = config_to_yaml(config)
    ckpt_path = run_dir / CHECKPOINT
    if main:
        run_dir.mkdir(parents=True, exist_ok=True)
    checkpoint = None
    purpose = made_for_run(config, ds)
    if resume:
        checkpoint = _read_checkpoint(ckpt_path, config, config_yaml, purpose["dataset"])
    elif main and ckpt_path.exists():
        log.warning("%s: starting a fresh run over an existing one (use --resume to continue it)", run_dir)

    # splits ------------------------------------------------------------------------------
    n_traj = ds.sizes["trajectory"]
    splits = split_trajectories(n_traj, config.data.validation_fraction, config.data.test_fraction, config.seed)
    traj_ids = [int(v) for v in ds["trajectory"].values] if "trajectory" in ds.coords else list(range(n_traj))
    splits_doc = {name: idx for name, idx in splits.items()}
    splits_doc.update({f"{name}_ids": [traj_ids[i] for i in idx] for name, idx in splits.items()})
    splits_doc["dataset"] = data_source
    if main:
        _write_text(run_dir / "splits.json", json.dumps(splits_doc, indent=2) + "\n")
        _write_text(run_dir / "config.yaml", config_yaml)

    # model and normalization ---------------------------------------------------------------
    _seed_everything(config.training_seed)
    if init is not None and checkpoint is None:
        model = _load_init(init, device, dtype, purpose)
    else:
        model = build_model(config.model, ndim, length=config.system.length, dtype=dtype, device=device)
    core = closure_core(model)
    symmetric = config.model.symmetry in ("augment", "average")
    train_blocks = plan_blocks(ds, splits["train"], block_snapshots)
    normalization = None
    if checkpoint is None and init is None:
        t0 = time.time()
        stats = dataset_statistics(ds, splits["train"])
        with torch.no_grad():
            if core.features or symmetric:
                mean, std = channel_statistics(ds, train_blocks, model, symmetric=symmetric)
                core.input_mean.copy_(mean.to(core.input_mean))
                core.input_std.copy_(std.clamp_min(1e-12).to(core.input_std))
            else:
                core.input_mean.fill_(stats["field_mean"])
                core.input_std.fill_(max(stats["field_std"], 1e-12))
            out_mean = 0.0 if symmetric else stats["sgs_mean"]
            out_std = math.sqrt(stats["sgs_std"] ** 2 + stats["sgs_mean"] ** 2) if symmetric else stats["sgs_std"]
            core.output_mean.fill_(out_mean)
            core.output_std.fill_(max(out_std, 1e-12))
        normalization = dict(stats, seconds=time.time() - t0)
        if main:
            log.info("normalization on %d training trajectories: %s", len(splits["train"]), stats)

    mode = "points" if is_point_model(model) else "fields"
    stream = SampleStream(ds, train_blocks, model, batch_size=tc.batch_size, samples=tc.samples_per_epoch,
                          seed=config.training_seed, mix=mix, rank=rank, world_size=world, mode=mode,
                          augment=config.model.symmetry == "augment", dtype=dtype)
    objective = _Objective(model, mode)
    if world > 1:
        from torch.nn.parallel import DistributedDataParallel

        ddp = DistributedDataParallel(objective, device_ids=[device.index] if device.type == "cuda" else None)
    else:
        ddp = objective

    groups = param_groups(model, tc.lr, tc.optimizer)
    if tc.optimizer == "sgd":
        optimizer = torch.optim.SGD(groups, lr=tc.lr, weight_decay=tc.weight_decay)
    else:
        optimizer = torch.optim.Adam(groups, lr=tc.lr, weight_decay=tc.weight_decay)
    steps_per_epoch = stream.batches_per_epoch()
    total_steps = steps_per_epoch * tc.epochs
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: learning_rate_factor(tc.schedule, s, total_steps))

    # state (fresh or resumed) ----------------------------------------------------------------
    state = {"epoch": 0, "best_loss": float("inf"), "best_epoch": 0, "bad_epochs": 0, "stopped_early": False,
             "history": [], "seconds": 0.0, "normalization": normalization}
    best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    if checkpoint is not None:
        try:
            model.load_state_dict(checkpoint["model"])
            optimizer.load_state_dict(checkpoint["optimizer"])
            scheduler.load_state_dict(checkpoint["scheduler"])
            best_state = {k: v.to(device) for k, v in checkpoint["best_model"].items()}
            state.update(json.loads(checkpoint["state"]))
            _set_rng_state(checkpoint["rng"])
        except (KeyError, ValueError, TypeError, RuntimeError, AttributeError) as exc:
            raise ClosureError(f"{ckpt_path}: damaged checkpoint ({type(exc).__name__}); "
                               "start a fresh run without --resume") from None
        if main:
            log.info("resuming %s after epoch %d", run_dir, state["epoch"])

    val_blocks = plan_blocks(ds, splits["validation"] or splits["train"], block_snapshots)
    val_stride = _stride_for(ds, splits["validation"] or splits["train"], VALIDATION_POINTS)
    use_bf16 = bool(tc.bf16) and device.type == "cuda"
    autocast = (lambda: torch.autocast("cuda", dtype=torch.bfloat16)) if use_bf16 else nullcontext

    # loop ---------------------------------------------------------------------------------------
    remaining = (tc.epochs - state["epoch"]) * steps_per_epoch if not state["stopped_early"] else 0
    with progress(total=remaining, desc="train", unit="batch", enabled=progress_enabled if main else False) as bar:
        while state["epoch"] < tc.epochs and not state["stopped_early"]:
            epoch = state["epoch"]
            stream.set_epoch(epoch)
            model.train()
            t0 = time.time()
            sse, count = 0.0, 0
            for batch in Prefetcher(stream, depth=4, device=device):
                inputs, targets = batch.inputs.to(device), batch.targets.to(device)
                with autocast():
                    local = ddp(inputs, targets)
                optimizer_step(local * (world / batch.total), model, optimizer, scheduler, tc.grad_clip)
                sse += float(local.detach())
                count += batch.count
                bar.update(1)
                if count:
                    bar.set_postfix(loss=sse / count, rate=f"{count * world / max(time.time() - t0, 1e-9):.3g}/s")
            sse, count = _all_reduce([sse, count], world, device)
            train_seconds = time.time() - t0
            model.eval()
            val_loss = _validation_loss(model, ds, val_blocks, val_stride, rank, world, device, dtype)
            if not math.isfinite(val_loss) or not math.isfinite(sse):
                raise ClosureError(f"training diverged at epoch {epoch + 1} (loss {sse / max(count, 1):.3g}); "
                                   f"lower train.lr={tc.lr} or set train.grad_clip")
            row = {"epoch": epoch + 1, "train_loss": sse / max(count, 1), "validation_loss": val_loss,
                   "lr_factor": learning_rate_factor(tc.schedule, scheduler.last_epoch, total_steps),
                   "samples": int(count), "seconds": round(time.time() - t0, 4),
                   "samples_per_second": count / max(train_seconds, 1e-9)}
            state["history"].append(row)
            state["seconds"] += time.time() - t0
            state["epoch"] = epoch + 1
            if val_loss < state["best_loss"]:
                state.update(best_loss=val_loss, best_epoch=epoch + 1, bad_epochs=0)
                best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
            else:
                state["bad_epochs"] += 1
                if tc.patience and state["bad_epochs"] >= tc.patience:
                    state["stopped_early"] = True
            bar.set_postfix(loss=row["train_loss"], val=val_loss, epoch=epoch + 1)
            if main and (state["epoch"] % tc.checkpoint_every == 0 or state["epoch"] == tc.epochs
                         or state["stopped_early"]):
                _save_checkpoint(ckpt_path, config_yaml, model, optimizer, scheduler, best_state, state,
                                 purpose["dataset"])
                _write_history(run_dir / "history.csv", state["history"])
            if main:
                log.info("epoch %d/%d: train %.4g, validation %.4g (%.1f s)", epoch + 1, tc.epochs,
                         row["train_loss"], val_loss, row["seconds"])
            _barrier(world)
            if callback is not None:
                callback(dict(row))

    # finish ---------------------------------------------------------------------------------------
    model.load_state_dict(best_state)
    model.eval()
    if main:
        _finish(config, ds, run_dir, model, state, splits, splits_doc, data_source, world, device, apriori,
                progress_enabled, save_model)
    _barrier(world)
    return run_dir


def _save_checkpoint(path: Path, config_yaml: str, model, optimizer, scheduler, best_state, state,
                     dataset: str) -> None:
    payload = {
        "format": CHECKPOINT_FORMAT,
        "config": config_yaml,
        "dataset": dataset,
        "model": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "best_model": {k: v.detach().cpu() for k, v in best_state.items()},
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "state": json.dumps(state),
        "rng": _rng_state(),
    }
    storage.torch_save(payload, path)


def _finish(config, ds, run_dir, model, state, splits, splits_doc, data_source, world, device, apriori,
            progress_enabled, save_model) -> None:
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
        from closure.training.apriori import baseline_closures, evaluate

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
    _write_text(run_dir / "metrics.json", json.dumps(metrics, indent=2, default=float) + "\n")
    _write_history(run_dir / "history.csv", history)
    if history:
        _plot_history(run_dir / "training_curve.png", history, f"{config.system.equation}: a-priori training")


# --------------------------------------------------------------------------- local multi-process
def _spawned(rank: int, world: int, port: int, config_yaml: str, data, run_dir: str, kwargs: dict) -> None:
    os.environ.update({"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "RANK": str(rank),
                       "WORLD_SIZE": str(world), "LOCAL_RANK": str(rank)})
    torch.set_num_threads(1)
    train(config_from_yaml(config_yaml), data, run_dir, **kwargs)


def launch_local(nprocs: int, config, data, run_dir, **kwargs) -> Path:
    """Run ``train`` in ``nprocs`` local processes (gloo on CPUs), like ``torchrun --nproc_per_node``."""
    import socket

    import torch.multiprocessing as mp

    config = _as_config(config)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    kwargs.setdefault("progress_enabled", False)
    mp.spawn(_spawned, args=(nprocs, port, config_to_yaml(config), data, str(run_dir), kwargs), nprocs=nprocs,
             join=True)
    return Path(run_dir)
