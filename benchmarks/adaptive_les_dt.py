"""CFL-adaptive LES steps (``run.dt: auto``) vs the config's fixed ``run.dt``, at equal accuracy.

    python benchmarks/adaptive_les_dt.py --data data/quickstart.nc [--config configs/quickstart.yaml]
        [--model smagorinsky] [--time 2] [--cfl 1.0 0.7 0.5 0.35] [--ref-factor 8] [--repeats 2]

Runs the coupled LES (`closure.les.coupled.run_les`, the test trajectories of the dataset,
float64, one torch thread) for ``--time`` model time with: the config's fixed ``run.dt``, a
reference step ``run.dt / --ref-factor``, and CFL steps for each ``--cfl`` (landing on the
dataset's snapshot times). The error is the relative L2 difference of the LES field to the
reference's over the snapshots; the table gives the steps taken (``les_steps``), the mean
step, the error and the wall seconds of the stepping (the LES output's
``les_seconds_per_model_time``, warm-up excluded; best of ``--repeats`` interleaved rounds); the last line names the largest CFL number at the fixed step's accuracy.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from closure.config import load_config  # noqa: E402
from closure.data import dataset as ds_io  # noqa: E402
from closure.les.coupled import run_les  # noqa: E402


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", required=True)
    p.add_argument("--config", default=str(ROOT / "configs" / "quickstart.yaml"))
    p.add_argument("--model", default="smagorinsky")
    p.add_argument("--time", type=float, default=2.0)
    p.add_argument("--cfl", type=float, nargs="+", default=[1.0, 0.7, 0.5, 0.35])
    p.add_argument("--ref-factor", type=int, default=8)
    p.add_argument("--repeats", type=int, default=2)
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    base = ["dtype=float64", "device=cpu", f"run.time={args.time}"]
    config = load_config(args.config, base)
    dt = config.run.fixed_dt("this benchmark's fixed step (the config's run.dt)")
    runs = {f"fixed dt={dt:g}": [f"run.dt={dt}"], f"reference dt={dt / args.ref_factor:g}":
            [f"run.dt={dt / args.ref_factor}"]}
    runs.update({f"cfl={c:g}": ["run.dt=auto", f"run.cfl={c}"] for c in args.cfl})
    best, fields, steps = {}, {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.repeats):
            for name, sets in runs.items():
                if name.startswith("reference") and r:
                    continue
                cfg = load_config(args.config, base + sets)
                path = run_les(cfg, args.model, args.data, Path(tmp) / f"r{r}-{len(best)}.nc", show_progress=False)
                with ds_io.open_dataset(path) as out:
                    seconds = out.attrs["les_seconds_per_model_time"] * args.time
                    best[name] = min(best.get(name, float("inf")), seconds)
                    fields[name] = np.asarray(out["omega"].values)
                    steps[name] = int(out["les_steps"].values.sum())
    ref = fields[next(n for n in runs if n.startswith("reference"))]
    print(f"# {args.config} LES {config.les.resolution}^{config.system.ndim}, model {args.model}, "
          f"{config.run.integrator}, float64, {args.time:g} model time from {args.data}; one torch thread; "
          f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores; stepping s: best of {args.repeats}")
    print("| run | steps | mean dt | rel. error vs reference | stepping s |")
    print("|---|---:|---:|---:|---:|")
    errs = {}
    for name in runs:
        errs[name] = float(np.linalg.norm(fields[name] - ref) / np.linalg.norm(ref))
        print(f"| {name} | {steps[name]} | {args.time / steps[name]:.3g} | {errs[name]:.2e} | {best[name]:.2f} |")
    fixed = f"fixed dt={dt:g}"
    ok = [c for c in args.cfl if errs[f"cfl={c:g}"] <= errs[fixed]]
    if ok:
        c = max(ok)
        print(f"\nLargest CFL number at the fixed dt's accuracy or better: {c:g}: "
              f"{steps[fixed] / steps[f'cfl={c:g}']:.2f}x fewer steps, {best[fixed] / best[f'cfl={c:g}']:.2f}x "
              "less stepping time.")
    else:
        print(f"\nNo CFL number in {args.cfl} reaches the fixed dt's error {errs[fixed]:.2e}.")


if __name__ == "__main__":
    main()
