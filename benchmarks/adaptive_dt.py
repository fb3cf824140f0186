"""CFL-adaptive steps vs a config's fixed dt, at equal accuracy (self-convergence).

    python benchmarks/adaptive_dt.py [--config configs/quickstart.yaml] --dt 0.004 [--spinup 5]
                                     [--time 2] [--cfl 1.0 0.8 0.6 0.5 0.4 0.3] [--threads 1]

From the config's random initial condition (trajectory 0, or a batch of
``--trajectories``: the batch shares its steps, set by its fastest flow), the DNS is spun up for
``--spinup`` model time with the fixed step ``--dt`` (default: the config's
``dns.dt`` when it is a number; float64), then integrated for ``--time`` more with:
the fixed step, a reference fixed step ``dt / --ref-factor`` (default 8: its
ETDRK4 error is ~4000x smaller), and `solvers.CFL` steps for each ``--cfl`` (landing on the same save times, every
``dns.sample_interval``). The error is the relative L2 difference of the vorticity
to the reference over the saves. The table gives the steps, the mean step, the
wall time (one torch thread, best of ``--repeats`` interleaved rounds) and model
time per wall second; the last line names the largest CFL number whose error
does not exceed the fixed dt's and the steps and time it saves.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import solvers  # noqa: E402
from closure.config import load_config  # noqa: E402
from closure.data.system import dns_equation, initial_state, trajectory_seeds  # noqa: E402


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", default=str(ROOT / "configs" / "quickstart.yaml"))
    p.add_argument("--spinup", type=float, default=5.0, help="model time of fixed-dt spin-up")
    p.add_argument("--time", type=float, default=2.0, help="model time compared")
    p.add_argument("--cfl", type=float, nargs="+", default=[1.0, 0.8, 0.6, 0.5, 0.4, 0.3])
    p.add_argument("--dt", type=float, default=None,
                   help="the fixed step compared (default: the config's dns.dt; needed when it is auto)")
    p.add_argument("--trajectories", type=int, default=1,
                   help="trajectories 0..N-1 integrated as one batch (the batch shares its steps)")
    p.add_argument("--ref-factor", type=int, default=8)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=1)
    return p.parse_args(argv)


def main(args):
    torch.set_num_threads(args.threads)
    config = load_config(args.config, ["dtype=float64", "device=cpu"])
    d = config.dns
    if args.dt is None and d.adaptive:
        sys.exit(f"{args.config}: dns.dt is auto; give the fixed step to compare with --dt")
    dt = float(args.dt or d.dt)
    seeds = trajectory_seeds(config, range(args.trajectories))
    eq = dns_equation(config, dtype=torch.float64, device="cpu", seeds=seeds)
    w0 = initial_state(config, eq.grid, seeds).to(torch.float64)
    with torch.no_grad():
        w0 = eq.simulate(w0, dt, int(round(args.spinup / dt)))
        n_saves = max(1, int(round(args.time / d.sample_interval)))
        times = [args.spinup + (j + 1) * args.time / n_saves for j in range(n_saves)]
        runs = {f"fixed dt={dt:g}": dt, f"reference dt={dt / args.ref_factor:g}": dt / args.ref_factor}
        runs.update({f"cfl={c:g}": solvers.CFL(cfl=c) for c in args.cfl})
        results, best = {}, {name: float("inf") for name in runs}
        for r in range(args.repeats):
            for name, step in runs.items():
                if name.startswith("reference") and r:
                    continue
                count = []
                t0 = time.perf_counter()
                traj = eq.simulate(w0, step, time=args.spinup, save_times=times,
                                   on_step=lambda i, t, w: count.append(i))
                best[name] = min(best[name], time.perf_counter() - t0)
                results[name] = (traj[:, 1:], len(count))
    ref = results[next(n for n in runs if n.startswith("reference"))][0]
    load = os.getloadavg()[0]
    print(f"# {args.config}: DNS {d.resolution}^{config.system.ndim}, {d.integrator}, float64, {args.trajectories} trajectory(ies) in one batch, "
          f"spin-up {args.spinup:g} with dt={dt:g}, then {args.time:g} model time, saves every "
          f"{args.time / n_saves:g}; torch threads {args.threads}; load average {load:.1f} "
          f"on {os.cpu_count()} cores; wall: best of {args.repeats} interleaved rounds")
    print("| run | steps | mean dt | rel. error vs reference | wall s | model time / wall s |")
    print("|---|---:|---:|---:|---:|---:|")
    rows = {}
    for name in runs:
        traj, steps = results[name]
        err = float((traj - ref).norm() / ref.norm())
        rows[name] = (steps, err, best[name])
        print(f"| {name} | {steps} | {args.time / steps:.3g} | {err:.2e} | {best[name]:.2f} | "
              f"{args.time / best[name]:.3g} |")
    fixed_steps, fixed_err, fixed_wall = rows[f"fixed dt={dt:g}"]
    ok = [(c, rows[f"cfl={c:g}"]) for c in args.cfl if rows[f"cfl={c:g}"][1] <= fixed_err]
    if ok:
        c, (steps, err, wall) = max(ok, key=lambda x: x[0])
        print(f"\nLargest CFL number at the fixed dt's accuracy or better: {c:g} ({err:.2e} <= {fixed_err:.2e}): "
              f"{fixed_steps / steps:.2f}x fewer steps, {fixed_wall / wall:.2f}x the model time per wall second.")
    else:
        print(f"\nNo CFL number in {args.cfl} reaches the fixed dt's error {fixed_err:.2e}.")


if __name__ == "__main__":
    main(parse_args())
