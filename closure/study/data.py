"""The study's data: normalized stencil inputs and targets of the splits, loaded once per worker."""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Union

import numpy as np
import torch

from closure.config import Config, resolve_dtype
from closure.errors import ClosureError
from closure.study.grid import derived_seed

def gather_patches(channels: torch.Tensor, flat: torch.Tensor, stencil: int) -> torch.Tensor:
    """Stencil patches at flat point indices of ``channels`` (S, C, n) or (S, C, ny, nx).

    ``flat`` indexes the S * n (or S * ny * nx) points in C order. Returns (B, C * s^d)
    in the order of ``closure.nn.stencil_patches``, periodic in space.
    """
    s_count, c = channels.shape[:2]
    grid = channels.shape[2:]
    off = torch.arange(stencil, device=channels.device) - stencil // 2
    b = flat.shape[0]
    if len(grid) == 1:
        n = grid[0]
        snap, j = flat // n, flat % n
        rows = (j[:, None] + off) % n
        p = channels.permute(0, 2, 1)[snap[:, None], rows]  # (B, s, C)
        return p.permute(0, 2, 1).reshape(b, c * stencil)
    ny, nx = grid
    snap, rem = flat // (ny * nx), flat % (ny * nx)
    rows = (rem // nx)[:, None] + off
    cols = (rem % nx)[:, None] + off
    p = channels.permute(0, 2, 3, 1)[snap[:, None, None], (rows % ny)[:, :, None], (cols % nx)[:, None, :]]
    return p.permute(0, 3, 1, 2).reshape(b, c * stencil * stencil)



class StudyData:
    """Normalized stencil inputs and targets of the train / validation / test splits, loaded once.

    The normalization (input mean/std per channel, output mean/std) is fitted on the
    training split, exactly as the training of closure.training.trainer does, and stored in a
    template ``StencilClosure`` whose buffers every run copies.
    """

    def __init__(self, data: Union[str, Path], config: Config):
        from closure.data.dataset import dataset_config, field_name, open_dataset, split_trajectories
        from closure.nn import StencilClosure

        self.path = str(data)
        ds = open_dataset(data, chunks=False)
        try:
            self.data_config = dataset_config(ds)
            equation = ds.attrs["equation"]
            self.var = field_name(equation)
            self.ndim = 1 if equation == "burgers_1d" else 2
            self.length = float(ds.attrs["length"])
            n = int(ds.sizes["trajectory"])
            d = config.data
            self.splits = split_trajectories(n, d.validation_fraction, d.test_fraction, config.seed)
            field = np.asarray(ds[self.var].values)
            sgs = np.asarray(ds["sgs"].values)
            self.trajectory_ids = [int(v) for v in np.asarray(ds["trajectory"].values)]
            self.times = np.asarray(ds["time"].values, dtype=np.float64)
        finally:
            ds.close()
        if not (np.all(np.isfinite(field)) and np.all(np.isfinite(sgs))):
            raise ClosureError(f"{data}: non-finite values in the dataset")
        self.dtype = resolve_dtype(config.dtype)
        m = config.model
        self.stencil, self.features, self.activation = int(m.stencil), list(m.features), m.activation
        self.template = StencilClosure(self.ndim, self.stencil, hidden=[1], gammas=[1.0], activation=m.activation,
                                       features=self.features, length=self.length).to(self.dtype)
        grid = field.shape[2:]

        def snaps(split, array):
            return torch.as_tensor(array[self.splits[split]].reshape((-1,) + grid)).to(self.dtype)

        self.template.fit_normalization(snaps("train", field), snaps("train", sgs))
        self.out_mean = float(self.template.output_mean)
        self.out_std = float(self.template.output_std)
        self.channels, self.targets = {}, {}
        with torch.no_grad():
            for split in ("train", "validation", "test"):
                if not self.splits[split]:
                    continue
                self.channels[split] = self.template.normalize_input(snaps(split, field))
                self.targets[split] = ((snaps(split, sgs) - self.out_mean) / self.out_std).reshape(-1)
        sw = config.sweep
        self.points = {}
        for split, count, key in (("test", sw.test_points, 1), ("validation", sw.validation_points, 2)):
            if split not in self.channels:
                continue
            total = self.targets[split].numel()
            gen = torch.Generator().manual_seed(derived_seed(config.seed, 0x7E57, key))
            flat = torch.randperm(total, generator=gen)[: min(count, total)]
            self.points[split] = (gather_patches(self.channels[split], flat, self.stencil), self.targets[split][flat])
        self.probe = self.points["test"][0][: sw.probe_points]
        # inputs outside the training distribution: i.i.d. Gaussian patches, ood_scale x the data's unit std
        gen = torch.Generator().manual_seed(derived_seed(config.seed, 0x00D, sw.probe_points))
        self.probe_ood = sw.ood_scale * torch.randn(self.probe.shape, generator=gen, dtype=torch.float64).to(self.dtype)
        self.n_train_points = int(self.targets["train"].numel())
        self.train_subset: Optional[tuple[torch.Tensor, torch.Tensor]] = None
        if sw.train_points is not None:  # a fixed training set (module ``closure.study.run``)
            gen = torch.Generator().manual_seed(derived_seed(config.seed, 0x7EA1, sw.train_points))
            flat = torch.randperm(self.n_train_points, generator=gen)[: sw.train_points]
            self.train_subset = (gather_patches(self.channels["train"], flat, self.stencil),
                                 self.targets["train"][flat])
        self._aposteriori_none: Optional[dict] = None

    @property
    def in_features(self) -> int:
        return int(self.channels["train"].shape[1]) * self.stencil ** self.ndim


_CACHE: dict = {}


def study_data(data: str, config: Config, key: str) -> StudyData:
    """The worker's StudyData for (data, settings), loaded on first use (one entry kept)."""
    if key not in _CACHE:
        _CACHE.clear()
        _CACHE[key] = StudyData(data, config)
    return _CACHE[key]

