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

The run directory, the optimizer and its schedules, checkpoints and the final
files are those of `closure.training.runs`; ``train.mode: aposteriori`` trains
through the solver instead (`closure.training.unroll`). With
``train.finetune_epochs > 0`` the a-priori fit goes to ``run_dir/apriori`` and is
then fine-tuned through the solver into ``run_dir`` (`finetune_config`): the
a-priori model is the starting point and stays the result if no fine-tuning epoch
lowers its unrolled validation loss.
"""

from __future__ import annotations

import json
import math
import os
import socket
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Callable, Optional, Sequence, Union

import numpy as np
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from closure.config import Config, config_from_yaml, config_to_yaml, resolve_device, resolve_dtype
from closure.data.streaming import (Prefetcher, SampleStream, closure_core, field_variable, is_point_model,
                                    load_block, plan_blocks)
from closure.errors import ClosureError
from closure.nn import build_model
from closure.progress import log, progress
from closure.training.loop import fit, new_state
from closure.training.runs import (CHECKPOINT, as_config, check_dataset, default_run_dir, finish, fit_normalization,
                                   learning_rate_factor, load_init, made_for_run, make_optimizer, open_data,
                                   read_checkpoint, save_checkpoint, seed_everything, set_rng_state,
                                   trajectory_splits, write_history, write_run_start)
from closure.training.unroll import train_aposteriori

__all__ = ["train", "made_for_run", "check_dataset", "learning_rate_factor", "launch_local", "TrainingInterrupted",
           "finetune_config", "APRIORI_DIR"]

APRIORI_DIR = "apriori"  # the a-priori stage's run directory inside a fine-tuned run

VALIDATION_POINTS = 1 << 17  # points of the validation split used per epoch (every k-th snapshot)


class TrainingInterrupted(Exception):
    """Raised by a callback to stop training after a checkpoint (used by tests to emulate a kill)."""


# --------------------------------------------------------------------------- distributed
def _dist_env() -> tuple[int, int, int]:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    return int(os.environ.get("RANK", "0")), world, int(os.environ.get("LOCAL_RANK", "0"))


@contextmanager
def _distributed(device_name: str):
    """Initialise torch.distributed when launched by torchrun with several processes."""
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
    t = torch.tensor([float(v) for v in values], dtype=torch.float64,
                     device=device if device.type == "cuda" else "cpu")
    dist.all_reduce(t)
    return t.cpu().tolist()


def _barrier(world: int) -> None:
    if world > 1:
        dist.barrier()


# --------------------------------------------------------------------------- objective
class _SquaredError(nn.Module):
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


class PointwiseObjective:
    """The a-priori objective of `closure.training.loop.fit`: the squared error of the normalized SGS
    term on streamed batches (stencil points or whole fields), summed over the processes."""

    def __init__(self, loss_module, stream, device, world: int, autocast, epoch_done, lr: float, validate):
        self.loss_module, self.stream, self.device, self.world = loss_module, stream, device, world
        self.autocast, self.epoch_done, self.lr, self._validate = autocast, epoch_done, lr, validate

    def batches(self, epoch: int):
        self.stream.set_epoch(epoch)
        return Prefetcher(self.stream, depth=4, device=self.device)

    def loss(self, batch):
        inputs, targets = batch.inputs.to(self.device), batch.targets.to(self.device)
        with self.autocast():
            local = self.loss_module(inputs, targets)
        return local * (self.world / batch.total), float(local.detach()), batch.count

    def reduce(self, summed: float, count: int):
        return _all_reduce([summed, count], self.world, self.device)

    def postfix(self, summed: float, count: int, seconds: float) -> dict:
        return {"loss": summed / count, "rate": f"{count * self.world / max(seconds, 1e-9):.3g}/s"}

    def validate(self, epoch: int, train_loss: float):
        val_loss = self._validate()
        if not math.isfinite(val_loss) or not math.isfinite(train_loss):
            raise ClosureError(f"training diverged at epoch {epoch + 1} (loss {train_loss:.3g}); "
                               f"lower train.lr={self.lr} or set train.grad_clip")
        return val_loss, {}


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
def finetune_config(config: Config) -> Config:
    """The a-posteriori stage of a fine-tuned run: ``train.mode: aposteriori`` for
    ``train.finetune_epochs`` epochs at ``train.finetune_lr`` (default ``train.lr``)."""
    tc = config.train
    return config.model_copy(update={"train": tc.model_copy(update={
        "mode": "aposteriori", "epochs": tc.finetune_epochs, "lr": tc.finetune_lr or tc.lr, "finetune_epochs": 0,
        "patience": None})})



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
    config = as_config(config)
    run_dir = Path(run_dir) if run_dir is not None else default_run_dir(config)
    tc = config.train
    if tc.mode == "aposteriori":
        if resume:
            raise ClosureError("--resume is not supported with train.mode=aposteriori; re-run with --init")
        return train_aposteriori(config, data, run_dir, init=init, progress_enabled=progress_enabled)
    if tc.finetune_epochs > 0:
        first = config.model_copy(update={"train": tc.model_copy(update={"finetune_epochs": 0})})
        apriori_dir = train(first, data, run_dir / APRIORI_DIR, resume=resume, init=init, callback=callback,
                            block_snapshots=block_snapshots, mix=mix, progress_enabled=progress_enabled,
                            apriori=False)
        if _dist_env()[0] != 0:
            return run_dir
        return train_aposteriori(finetune_config(config), data, run_dir, init=apriori_dir,
                                 progress_enabled=progress_enabled, record=config)
    ds = open_data(data)
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


def _train(config: Config, ds, data_source: str, run_dir: Path, resume: bool, init, callback, block_snapshots,
           mix, progress_enabled, apriori, rank: int, world: int, device) -> Path:
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
        checkpoint = read_checkpoint(ckpt_path, config, config_yaml, purpose["dataset"])
    elif main and ckpt_path.exists():
        log.warning("%s: starting a fresh run over an existing one (use --resume to continue it)", run_dir)

    # splits ------------------------------------------------------------------------------
    splits, splits_doc = trajectory_splits(config, ds, data_source)
    if main:
        write_run_start(run_dir, config, splits_doc)

    # model and normalization ---------------------------------------------------------------
    seed_everything(config.training_seed)
    if init is not None and checkpoint is None:
        model = load_init(init, device, dtype, purpose)
    else:
        model = build_model(config.model, ndim, length=config.system.length, dtype=dtype, device=device)
    train_blocks = plan_blocks(ds, splits["train"], block_snapshots)
    normalization = None
    if checkpoint is None and init is None:
        normalization = fit_normalization(model, ds, splits["train"], train_blocks, config.model.symmetry)
        if main:
            log.info("normalization on %d training trajectories: %s", len(splits["train"]),
                     {k: v for k, v in normalization.items() if k != "seconds"})

    mode = "points" if is_point_model(model) else "fields"
    stream = SampleStream(ds, train_blocks, model, batch_size=tc.batch_size, samples=tc.samples_per_epoch,
                          seed=config.training_seed, mix=mix, rank=rank, world_size=world, mode=mode,
                          augment=config.model.symmetry == "augment", dtype=dtype)
    squared_error = _SquaredError(model, mode)
    if world > 1:
        ddp = DistributedDataParallel(squared_error, device_ids=[device.index] if device.type == "cuda" else None)
    else:
        ddp = squared_error

    optimizer = make_optimizer(model, tc)
    steps_per_epoch = stream.batches_per_epoch()
    total_steps = steps_per_epoch * tc.epochs
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: learning_rate_factor(tc.schedule, s, total_steps))

    # state (fresh or resumed) ----------------------------------------------------------------
    state = new_state(normalization)
    best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    if checkpoint is not None:
        try:
            model.load_state_dict(checkpoint["model"])
            optimizer.load_state_dict(checkpoint["optimizer"])
            scheduler.load_state_dict(checkpoint["scheduler"])
            best_state = {k: v.to(device) for k, v in checkpoint["best_model"].items()}
            state.update(json.loads(checkpoint["state"]))
            set_rng_state(checkpoint["rng"])
        except (KeyError, ValueError, TypeError, RuntimeError, AttributeError) as exc:
            raise ClosureError(f"{ckpt_path}: damaged checkpoint ({type(exc).__name__}); "
                               "start a fresh run without --resume") from None
        if main:
            log.info("resuming %s after epoch %d", run_dir, state["epoch"])

    val_blocks = plan_blocks(ds, splits["validation"] or splits["train"], block_snapshots)
    val_stride = _stride_for(ds, splits["validation"] or splits["train"], VALIDATION_POINTS)
    use_bf16 = bool(tc.bf16) and device.type == "cuda"
    autocast = (lambda: torch.autocast("cuda", dtype=torch.bfloat16)) if use_bf16 else nullcontext

    def epoch_done(row: dict, state: dict, best: dict) -> None:
        if main and (state["epoch"] % tc.checkpoint_every == 0 or state["epoch"] == tc.epochs
                     or state["stopped_early"]):
            save_checkpoint(ckpt_path, config_yaml, model, optimizer, scheduler, best, state, purpose["dataset"])
            write_history(run_dir / "history.csv", state["history"])
        if main:
            log.info("epoch %d/%d: train %.4g, validation %.4g (%.1f s)", row["epoch"], tc.epochs,
                     row["train_loss"], row["validation_loss"], row["seconds"])
        _barrier(world)
        if callback is not None:
            callback(dict(row))

    objective = PointwiseObjective(
        ddp, stream, device, world, autocast, epoch_done, tc.lr,
        validate=lambda: _validation_loss(model, ds, val_blocks, val_stride, rank, world, device, dtype))

    # loop ---------------------------------------------------------------------------------------
    remaining = (tc.epochs - state["epoch"]) * steps_per_epoch if not state["stopped_early"] else 0
    with progress(total=remaining, desc="train", unit="batch", enabled=progress_enabled if main else False) as bar:
        best_state = fit(objective, model, optimizer, scheduler, tc, state, bar, total_steps, best_state)

    # finish ---------------------------------------------------------------------------------------
    model.load_state_dict(best_state)
    model.eval()
    if main:
        finish(config, ds, run_dir, model, state, splits, splits_doc, data_source, world, device, apriori,
               progress_enabled)
    _barrier(world)
    return run_dir


# --------------------------------------------------------------------------- local multi-process
def _spawned(rank: int, world: int, port: int, config_yaml: str, data, run_dir: str, kwargs: dict) -> None:
    os.environ.update({"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "RANK": str(rank),
                       "WORLD_SIZE": str(world), "LOCAL_RANK": str(rank)})
    torch.set_num_threads(1)
    train(config_from_yaml(config_yaml), data, run_dir, **kwargs)


def launch_local(nprocs: int, config, data, run_dir, **kwargs) -> Path:
    """Run ``train`` in ``nprocs`` local processes (gloo on CPUs), like ``torchrun --nproc_per_node``."""
    config = as_config(config)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    kwargs.setdefault("progress_enabled", False)
    mp.spawn(_spawned, args=(nprocs, port, config_to_yaml(config), data, str(run_dir), kwargs), nprocs=nprocs,
             join=True)
    return Path(run_dir)
