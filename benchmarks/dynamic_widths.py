"""Enstrophy transfer <omega c> of the dynamic Smagorinsky model with a fixed test-to-grid ratio of 2
and with the ratio derived from the dataset's filter, against the exact SGS term (a-priori).

    .venv/bin/python benchmarks/dynamic_widths.py DATASET.nc [--test-width 2]

DATASET.nc: a 2D dataset with a Gaussian or box filter (e.g. ``closure generate
configs/quickstart.yaml -o runs/quickstart/dataset.nc``). All snapshots of all
trajectories, float64.
"""

from __future__ import annotations

import argparse
import math

import torch

from closure.data import dataset as ds_io
from closure.data.system import les_equation
from closure.les.baselines import DynamicSmagorinsky


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dataset")
    parser.add_argument("--test-width", type=float, default=2.0)
    args = parser.parse_args()
    ds = ds_io.open_dataset(args.dataset)
    config = ds_io.dataset_config(ds)
    f = config.les.filter
    eq = les_equation(config, dtype=torch.float64, unforced=True)
    n = config.les.resolution
    w = torch.as_tensor(ds["omega"].values, dtype=torch.float64).reshape(-1, n, n)
    s = torch.as_tensor(ds["sgs"].values, dtype=torch.float64).reshape(-1, n, n)
    tw = args.test_width
    # a fixed ratio alpha = tw (the Gaussian composition rule with the grid width tw / sqrt(tw^2 - 1))
    fixed = DynamicSmagorinsky.for_equation(eq, filter_type="gaussian", filter_width=tw / math.sqrt(tw ** 2 - 1),
                                            test_width=tw)
    derived = DynamicSmagorinsky.for_filter(eq, f, test_width=tw)
    rows = [("exact SGS", s), (f"dynamic, alpha = {fixed.ratio:.3g} (fixed)", fixed(w)),
            (f"dynamic, alpha = {derived.ratio:.3g} (from the {f.type} filter of width {f.width:g})", derived(w))]
    exact = float((w * s).mean())
    print(f"{len(w)} snapshots of {args.dataset}\n")
    print("| closure | <omega c> | / exact |\n| --- | --- | --- |")
    for name, c in rows:
        value = float((w * c).mean())
        print(f"| {name} | {value:.3f} | {value / exact:.2f} |")


if __name__ == "__main__":
    main()
