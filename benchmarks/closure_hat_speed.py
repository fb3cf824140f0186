"""The learned LES step with the solver's spectra shared with the closure, against the physical path.

    python benchmarks/closure_hat_speed.py [--config configs/quickstart.yaml] [--model RUN_DIR --data DATASET]
                                           [--batches 2 4 16] [--steps 20] [--rounds 9] [--threads 1]

The closure is called at every integrator stage (``run.integrator``, ``run.dt``). "shared"
passes the closure itself to ``equation.simulate``: a learned closure takes the stage's
spectral state and nonlinear term (`closure.nn.features.FieldClosure.closure_hat`).
"physical" passes the same closure as a plain callable, so the solver calls it on the
physical field (the features transform it again and `dealias_residual` recomputes the LES
nonlinear term). With ``--model``/``--data``: a trained closure on the dataset's initial
LES fields; otherwise a freshly initialised closure of the config's ``model:`` section on
the config's random initial fields. The variants (and the no-closure step) are timed
interleaved in one process, ``--steps`` steps a round, best of ``--rounds``, in process
CPU time (CPU only).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT.parent))
sys.path.insert(0, str(ROOT))

from les_speed import learned_closure, random_state  # noqa: E402

from closure.config import load_config, resolve_dtype  # noqa: E402
from closure.data.system import les_equation, trajectory_seeds  # noqa: E402


def initial_fields(config, args, batch: int):
    """``(config, fields)``: the dataset's initial LES fields (with its config) or random ones."""
    if args.data is None:
        return config, None
    from closure.data import dataset as ds_io
    from closure.les.coupled import les_config

    ds = ds_io.open_dataset(args.data)
    config = les_config(config, ds_io.dataset_config(ds))
    var = ds_io.field_name(config.system.equation)
    fields = np.asarray(ds_io.les_view(ds, args.data)[var].isel(time=0).values)
    if fields.shape[0] < batch:
        raise SystemExit(f"{args.data}: {fields.shape[0]} trajectories, fewer than the batch {batch}")
    return config, fields


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default=str(ROOT.parent / "configs" / "quickstart.yaml"))
    p.add_argument("--model", default=None, help="a training run directory (with --data)")
    p.add_argument("--data", default=None, help="the dataset whose initial LES fields start the runs")
    p.add_argument("--batches", type=int, nargs="+", default=[2, 4, 16])
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--rounds", type=int, default=9)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    if (args.model is None) != (args.data is None):
        p.error("--model and --data go together")
    torch.set_num_threads(args.threads)
    config, fields = initial_fields(load_config(args.config), args, max(args.batches))
    dtype = resolve_dtype(config.dtype)
    run = config.run
    print(f"LES {config.les.resolution}^2 ({run.integrator}, run.dt = {run.dt}), {dtype}, cpu, {args.threads} "
          f"thread(s), load average {os.getloadavg()[0]:.1f}, best of {args.rounds} interleaved rounds of "
          f"{args.steps} steps, process CPU time; closure: {args.model or 'fresh ' + config.model.type}\n")
    print("| batch | physical ms / step | shared ms / step | shared / physical | x no-closure step: physical -> shared |")
    print("|---|---|---|---|---|")
    for batch in args.batches:
        seeds = trajectory_seeds(config, range(batch))
        equation = les_equation(config, dtype=dtype, device="cpu", seeds=seeds)
        if fields is None:
            state = random_state(config, equation.grid, batch).to(dtype)
            model = learned_closure(config, equation)
        else:
            from closure.les.baselines import make_closure

            state = torch.as_tensor(fields[:batch]).to(dtype)
            model = make_closure(args.model, equation, config).eval()
        variants = {"physical": lambda w: model(w), "shared": model, "none": None}
        best = dict.fromkeys(variants, float("inf"))
        with torch.no_grad():
            for closure in variants.values():  # warm-up
                equation.simulate(state, dt=run.dt, steps=2, closure=closure, method=run.integrator)
            for _ in range(args.rounds):
                for name, closure in variants.items():
                    start = time.process_time()
                    equation.simulate(state, dt=run.dt, steps=args.steps, closure=closure, method=run.integrator)
                    best[name] = min(best[name], (time.process_time() - start) / args.steps * 1e3)
        print(f"| {batch} | {best['physical']:.3g} | {best['shared']:.3g} | {best['shared'] / best['physical']:.3f} "
              f"| {best['physical'] / best['none']:.3g} -> {best['shared'] / best['none']:.3g} |", flush=True)


if __name__ == "__main__":
    main()
