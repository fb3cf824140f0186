"""Streaming training data: (field, sgs) samples read block by block from a lazily opened dataset.

The dataset (docs/conventions.md schema) is opened with dask and never loaded as a
whole. It is cut into *blocks*: one trajectory and a run of consecutive
snapshots, aligned with the file's chunks along ``time`` (and capped at
``block_snapshots``). Only the blocks of the current *group* (``mix`` blocks)
are ever held in memory.

Why points, not whole fields: the stencil MLP costs the same per grid point
whether a point comes alone or inside a whole field, so a batch of B points
drawn from many snapshots and trajectories is as cheap as B/n whole-field
points and far less correlated. The pipeline therefore computes the model's
input channels (the field plus any derived features) once per block on whole
snapshots (spectral derivatives need the whole periodic field), normalizes
them with the model's statistics, and gathers the stencil patches of the
sampled points: ``(B, C * s^d)`` inputs and ``(B,)`` normalized targets that go
straight into the MLP. Models that are not a bare stencil MLP (the CNN, group
averaging) get whole snapshots instead (``mode="fields"``).

Sampling of one epoch (a function of ``(seed, epoch)`` only, never of the
number of processes):

1. the blocks of the split are put in a random order and cut into groups of
   ``mix`` consecutive blocks;
2. the epoch's ``ceil(samples / batch_size)`` global batches are shared among
   the groups in proportion to their blocks;
3. every global batch is *stratified*: it takes ``batch_size / k`` points (or
   snapshots) from each of the group's ``k`` blocks; the points of block ``b``
   come from a generator seeded by ``(seed, epoch, b)``.

With ``world_size`` processes rank ``r`` loads only the blocks ``j`` of each
group with ``j % world_size == r`` and yields its part of every global batch,
together with the global batch size. Each rank scales its summed loss by
``world_size / global_batch``; DistributedDataParallel averages the gradients
over ranks, so every step uses exactly the gradient of the single-process run
(up to floating-point summation order). A rank that owns no block of a group
yields empty parts (it still joins the gradient all-reduce).

    blocks = plan_blocks(ds, trajectories)
    stream = SampleStream(ds, blocks, model, batch_size=1024, samples=2**18, seed=0)
    stream.set_epoch(3)
    for batch in stream: ...      # Batch(inputs, targets, count, total)
"""

from __future__ import annotations

import math
import queue
import threading
from dataclasses import dataclass
from typing import Iterator, Optional, Sequence

import dask
import numpy as np
import torch
import xarray as xr

from closure.data.dataset import FIELD_NAMES
from closure.errors import ClosureError
from closure.nn import FieldClosure, StencilClosure, augment, random_transform
from closure.nn.stencil import point_patches

__all__ = [
    "Block", "Batch", "plan_blocks", "load_block", "SampleStream", "Prefetcher",
    "field_variable", "stream_seed", "closure_core", "channel_statistics",
    "dataset_statistics", "point_patches",
]


# --------------------------------------------------------------------------- helpers
def field_variable(ds: xr.Dataset) -> str:
    """The filtered field's variable name: ``omega`` (2D) or ``u`` (1D)."""
    return FIELD_NAMES[ds.attrs["equation"]]


def stream_seed(*keys: int) -> int:
    """A 63-bit seed that depends on every key (numpy's SeedSequence hashing)."""
    seq = np.random.SeedSequence([int(k) % (2 ** 63) for k in keys])
    return int(seq.generate_state(2, dtype=np.uint32).astype(np.uint64) @ np.array([1, 2 ** 31], dtype=np.uint64))


def _generator(*keys: int) -> torch.Generator:
    return torch.Generator().manual_seed(stream_seed(*keys))


def closure_core(model: torch.nn.Module):
    """The FieldClosure (module with the normalization buffers) inside ``model``."""
    for m in model.modules():
        if isinstance(m, FieldClosure):
            return m
    raise ClosureError(f"{type(model).__name__} has no FieldClosure (normalization buffers) inside")


def is_point_model(model: torch.nn.Module) -> bool:
    """True for a bare StencilClosure: its loss can be computed on isolated stencil patches."""
    return isinstance(model, StencilClosure)


# --------------------------------------------------------------------------- blocks
@dataclass(frozen=True)
class Block:
    """Snapshots ``start:stop`` of trajectory position ``trajectory`` (an index, not the id)."""

    trajectory: int
    start: int
    stop: int

    @property
    def snapshots(self) -> int:
        return self.stop - self.start


def _time_chunks(var: xr.DataArray) -> list[int]:
    chunks = var.chunks
    if chunks is None:
        return [var.sizes["time"]]
    return list(chunks[var.dims.index("time")])


def plan_blocks(ds: xr.Dataset, trajectories: Sequence[int], block_snapshots: Optional[int] = None) -> list[Block]:
    """The blocks of ``trajectories``: the file's time chunks, cut to at most ``block_snapshots`` snapshots."""
    var = ds[field_variable(ds)]
    bounds, t = [], 0
    for c in _time_chunks(var):
        bounds.append((t, t + c))
        t += c
    if block_snapshots:
        bounds = [(a, min(a + int(block_snapshots), b)) for a0, b in bounds for a in range(a0, b, int(block_snapshots))]
    return [Block(int(i), a, b) for i in trajectories for a, b in bounds]


def load_block(ds: xr.Dataset, block: Block, dtype=torch.float32, stride: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """(field, sgs) of one block as tensors ``(snapshots, *grid)``; reads just that block.

    With ``stride > 1`` only the snapshots whose time index is a multiple of
    ``stride`` are kept (possibly none).
    """
    name = field_variable(ds)
    first = -(-block.start // stride) * stride
    times = slice(first, block.stop, stride)
    sel = {"trajectory": block.trajectory, "time": times}
    field = np.asarray(ds[name].isel(sel).values)
    sgs = np.asarray(ds["sgs"].isel(sel).values)
    if not (np.isfinite(field).all() and np.isfinite(sgs).all()):
        source = ds.encoding.get("source", "dataset")
        raise ClosureError(f"{source}: non-finite values in trajectory index {block.trajectory}, "
                           f"snapshots {block.start}..{block.stop - 1}")
    return torch.from_numpy(field).to(dtype), torch.from_numpy(sgs).to(dtype)


# --------------------------------------------------------------------------- statistics
def dataset_statistics(ds: xr.Dataset, trajectories: Sequence[int]) -> dict:
    """Mean and std of the field and the SGS term over ``trajectories`` (one dask pass, never loaded)."""
    name = field_variable(ds)
    sub = ds[[name, "sgs"]].isel(trajectory=list(trajectories))
    f, s = sub[name].astype("float64"), sub["sgs"].astype("float64")
    values = dask.compute(f.mean(), f.std(), s.mean(), s.std(), np.isfinite(f).all(), np.isfinite(s).all())
    fm, fs, sm, ss, ok_f, ok_s = (np.asarray(getattr(v, "values", v)) for v in values)
    if not (bool(ok_f) and bool(ok_s)):
        raise ClosureError(f"{ds.encoding.get('source', 'dataset')}: non-finite values in the training trajectories")
    return {"field_mean": float(fm), "field_std": float(fs), "sgs_mean": float(sm), "sgs_std": float(ss)}


@torch.no_grad()
def channel_statistics(ds: xr.Dataset, blocks: Sequence[Block], model: torch.nn.Module,
                       symmetric: bool = False, parity: int = -1) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and std of the model's raw input channels over ``blocks``, streamed block by block.

    With ``symmetric`` every block is replaced by all its symmetry-group images
    (the statistics of the augmented data; the field's mean is then zero).
    """
    core = closure_core(model)
    total = s1 = s2 = None
    for block in blocks:
        field, sgs = load_block(ds, block, torch.float64)
        if symmetric:
            field, _ = augment(field, sgs, parity)
        x = core.channels(field)  # (T, C, *grid)
        dims = [0] + list(range(2, x.dim()))
        n = x.numel() // x.shape[1]
        a, b = x.sum(dim=dims), (x * x).sum(dim=dims)
        total, s1, s2 = (n, a, b) if total is None else (total + n, s1 + a, s2 + b)
    mean = s1 / total
    var = (s2 / total - mean * mean).clamp_min(0.0) * total / max(total - 1, 1)
    return mean, var.sqrt()


# --------------------------------------------------------------------------- the stream
@dataclass
class Batch:
    """This rank's part of one global batch.

    points mode: ``inputs`` (count, C*s^d) normalized patches, ``targets`` (count,) normalized SGS;
    fields mode: ``inputs`` (snapshots, *grid) raw fields, ``targets`` the raw SGS fields.
    ``count``: this part's samples (points); ``total``: the global batch's samples.
    """

    inputs: torch.Tensor
    targets: torch.Tensor
    count: int
    total: int

    def to(self, device, non_blocking: bool = False) -> "Batch":
        if device is None or torch.device(device).type == "cpu":
            return self
        pin = non_blocking and torch.cuda.is_available()
        ins = self.inputs.pin_memory() if pin else self.inputs
        tgt = self.targets.pin_memory() if pin else self.targets
        return Batch(ins.to(device, non_blocking=pin), tgt.to(device, non_blocking=pin), self.count, self.total)


class SampleStream(torch.utils.data.IterableDataset):
    """Batches of training samples streamed from ``blocks`` of a lazily opened dataset (module docstring).

    Args:
        ds: the dataset (dask-backed; only the current group's blocks are read).
        blocks: from ``plan_blocks`` (the training split).
        model: the closure; its normalization buffers must be set before iterating
            (points mode normalizes the inputs in the pipeline).
        batch_size: points per global batch.
        samples: points per epoch (None: as many as the blocks hold).
        seed: the run's seed. ``mix``: blocks held (and mixed into each batch) at a time.
        rank, world_size: this process's share (module docstring).
        mode: "points" (bare stencil MLP), "fields" or None (choose from the model).
        augment: apply a random symmetry-group element to each snapshot.
        dtype: the training dtype.

    ``stats`` records what the pipeline read: blocks loaded, values loaded, and
    the most values ever held at once (``max_resident``).
    """

    def __init__(self, ds: xr.Dataset, blocks: Sequence[Block], model: torch.nn.Module, *, batch_size: int,
                 samples: Optional[int] = None, seed: int = 0, mix: int = 4, rank: int = 0, world_size: int = 1,
                 mode: Optional[str] = None, augment: bool = False, parity: int = -1, dtype=torch.float32):
        super().__init__()
        if not blocks:
            raise ClosureError("no training data: the training split has no snapshots")
        self.ds, self.blocks, self.model = ds, list(blocks), model
        self.core = closure_core(model)
        self.mode = mode or ("points" if is_point_model(model) else "fields")
        if self.mode not in ("points", "fields"):
            raise ValueError(f"mode={mode!r}")
        self.stencil = getattr(model, "stencil", None)
        self.batch_size, self.seed, self.rank, self.world_size = int(batch_size), int(seed), int(rank), int(world_size)
        self.mix = max(int(mix), 1)
        self.mix = -(-self.mix // self.world_size) * self.world_size  # a multiple of world_size
        self.augment, self.parity, self.dtype = bool(augment), int(parity), dtype
        var = ds[field_variable(ds)]
        self.grid_shape = tuple(var.shape[2:])
        self.points_per_snapshot = int(np.prod(self.grid_shape))
        self.total_points = sum(b.snapshots for b in self.blocks) * self.points_per_snapshot
        self.samples = int(samples) if samples else self.total_points
        if self.mode == "fields":
            self.snapshots_per_batch = max(1, self.batch_size // self.points_per_snapshot)
        self.epoch = 0
        self.stats = {"blocks_loaded": 0, "values_loaded": 0, "max_resident": 0}

    # ----------------------------------------------------------------- plan
    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    @property
    def batch_units(self) -> int:
        """Draws per global batch: points (points mode) or snapshots (fields mode)."""
        return self.batch_size if self.mode == "points" else self.snapshots_per_batch

    @property
    def global_batch_samples(self) -> int:
        return self.batch_size if self.mode == "points" else self.snapshots_per_batch * self.points_per_snapshot

    def batches_per_epoch(self) -> int:
        return max(1, math.ceil(self.samples / self.global_batch_samples))

    def __len__(self) -> int:
        return self.batches_per_epoch()

    def groups(self) -> list[tuple[list[int], int]]:
        """This epoch's [(block indices of the group, global batches drawn from it)]."""
        order = torch.randperm(len(self.blocks), generator=_generator(self.seed, self.epoch, 0x0B10C)).tolist()
        groups = [order[i:i + self.mix] for i in range(0, len(order), self.mix)]
        n_batches, n_blocks = self.batches_per_epoch(), len(order)
        out, done = [], 0
        for g in groups:
            done_next = done + len(g)
            nb = (n_batches * done_next) // n_blocks - (n_batches * done) // n_blocks
            out.append((g, nb))
            done = done_next
        return out

    @staticmethod
    def counts(units: int, k: int, n_batches: int) -> torch.Tensor:
        """(n_batches, k) draws per batch and block: ``units // k`` each, the remainder rotating over blocks."""
        base = torch.full((n_batches, k), units // k, dtype=torch.long)
        extra = units % k
        if extra:
            for b in range(n_batches):
                for j in range(extra):
                    base[b, (b * extra + j) % k] += 1
        return base

    # ----------------------------------------------------------------- loading
    @torch.no_grad()
    def _prepare(self, block_index: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Read a block and turn it into (inputs, targets) ready for sampling."""
        field, sgs = load_block(self.ds, self.blocks[block_index], self.dtype)
        self.stats["blocks_loaded"] += 1
        self.stats["values_loaded"] += field.numel() + sgs.numel()
        if self.augment:
            gen = _generator(self.seed, self.epoch, 0xA06, block_index)
            field, sgs = random_transform(field, sgs, self.parity, generator=gen)
        if self.mode == "fields":
            return field, sgs
        core = self.core
        buffers = {k: getattr(core, k).detach().to("cpu", self.dtype) for k in
                   ("input_mean", "input_std", "output_mean", "output_std")}
        shape = (1, -1) + (1,) * len(self.grid_shape)
        x = (core.channels(field) - buffers["input_mean"].view(shape)) / buffers["input_std"].view(shape)
        y = ((sgs - buffers["output_mean"]) / buffers["output_std"]).reshape(sgs.shape[0], -1)
        return x.contiguous(), y

    def _draws(self, block_index: int, block_units: int, n: int) -> torch.Tensor:
        """``n`` unit indices of a block (points or snapshots), without replacement while they last."""
        gen = _generator(self.seed, self.epoch, 0x5A3, block_index)
        reps = max(1, -(-n // max(block_units, 1)))
        return torch.cat([torch.randperm(block_units, generator=gen) for _ in range(reps)])[:n]

    # ----------------------------------------------------------------- iteration
    def __iter__(self) -> Iterator[Batch]:
        for group, n_batches in self.groups():
            if n_batches == 0:
                continue
            k = len(group)
            counts = self.counts(self.batch_units, k, n_batches)
            owned = [j for j in range(k) if j % self.world_size == self.rank]
            data, draws, resident = {}, {}, 0
            for j in owned:
                x, y = self._prepare(group[j])
                data[j] = (x, y)
                resident += x.numel() + y.numel()
                units = self.blocks[group[j]].snapshots * (self.points_per_snapshot if self.mode == "points" else 1)
                draws[j] = self._draws(group[j], units, int(counts[:, j].sum()))
            self.stats["max_resident"] = max(self.stats["max_resident"], resident)
            offsets = {j: 0 for j in owned}
            for b in range(n_batches):
                parts_x, parts_y = [], []
                for j in owned:
                    c = int(counts[b, j])
                    idx = draws[j][offsets[j]:offsets[j] + c]
                    offsets[j] += c
                    x, y = data[j]
                    if self.mode == "points":
                        t, p = idx // self.points_per_snapshot, idx % self.points_per_snapshot
                        parts_x.append(point_patches(x, self.stencil, t, p))
                        parts_y.append(y[t, p])
                    else:
                        parts_x.append(x[idx])
                        parts_y.append(y[idx])
                yield self._batch(parts_x, parts_y)
            del data, draws

    def _batch(self, parts_x, parts_y) -> Batch:
        if parts_x:
            inputs, targets = torch.cat(parts_x), torch.cat(parts_y)
        elif self.mode == "points":
            width = self.core.n_channels * self.stencil ** len(self.grid_shape)
            inputs, targets = torch.zeros(0, width, dtype=self.dtype), torch.zeros(0, dtype=self.dtype)
        else:
            inputs = torch.zeros((0,) + self.grid_shape, dtype=self.dtype)
            targets = torch.zeros((0,) + self.grid_shape, dtype=self.dtype)
        count = targets.numel()
        return Batch(inputs, targets, count, self.global_batch_samples)


# --------------------------------------------------------------------------- prefetch
class Prefetcher:
    """Runs an iterator in a background thread, ``depth`` items ahead (and moves them to ``device``).

    Reading and patch gathering then overlap with the training step; on CUDA
    batches are pinned and copied asynchronously.
    """

    _END = object()

    def __init__(self, iterable, depth: int = 4, device=None):
        self.iterable, self.depth, self.device = iterable, max(1, int(depth)), device

    def __iter__(self):
        q: queue.Queue = queue.Queue(maxsize=self.depth)
        stop = threading.Event()
        cuda = self.device is not None and torch.device(self.device).type == "cuda"

        def work():
            try:
                for item in self.iterable:
                    if cuda:
                        item = item.to(self.device, non_blocking=True)
                    while not stop.is_set():
                        try:
                            q.put(item, timeout=0.1)
                            break
                        except queue.Full:
                            continue
                    if stop.is_set():
                        return
                q.put(self._END)
            except BaseException as exc:  # handed to the consumer
                q.put(exc)

        thread = threading.Thread(target=work, daemon=True)
        thread.start()
        try:
            while True:
                item = q.get()
                if item is self._END:
                    break
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            stop.set()
            while thread.is_alive():
                try:
                    q.get_nowait()
                except queue.Empty:
                    thread.join(timeout=0.05)
