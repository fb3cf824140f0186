"""Generation wall time on 1, 2, ... processes (one torch thread each): how it scales with cores.

    python benchmarks/generate_cores.py [--config configs/quickstart.yaml] [--workers 1 2]
                                        [--rounds 2] [--set dns.spinup_time=2.0 ...]

Runs the whole ``closure generate`` path (`closure.data.generation.generate`: DNS,
filtering, SGS terms, part files, merge) on the config with ``--workers`` N
processes (N = 1: in this process; N > 1: this process and N - 1 workers of a fresh
local dask cluster, its start-up included), the runs interleaved over ``--rounds``
rounds (best kept), into a temporary folder. The trajectories are split into parts
as `closure.data.parallelism` does (``dns.batch_size`` long with ``dns.dt: auto``). Prints the wall times, the speed-up over one
process, the CPU seconds of this process and of its workers (their work and start-up;
on free cores the wall time is about the larger of the two) and the load average (on a shared machine the speed-up is bounded by
the cores left free by other jobs).
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from closure.config import load_config  # noqa: E402
from closure.data.generation import generate  # noqa: E402


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", default=str(ROOT / "configs" / "quickstart.yaml"))
    p.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override")
    args = p.parse_args(argv)
    config = load_config(args.config, ["device=cpu"] + args.set)
    best = {n: float("inf") for n in args.workers}
    cpu = {n: (float("inf"), 0.0) for n in args.workers}
    loads = [os.getloadavg()[0]]
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.rounds):
            for n in args.workers:
                c0 = _cpu_seconds()
                t0 = time.perf_counter()
                generate(config, Path(tmp) / f"w{n}-r{r}.nc", workers=n, progress=False)
                best[n] = min(best[n], time.perf_counter() - t0)
                c1 = _cpu_seconds()
                cpu[n] = min(cpu[n], (c1[0] - c0[0], c1[1] - c0[1]))
                loads.append(os.getloadavg()[0])
    d = config.dns
    print(f"# {args.config} {' '.join(args.set)}: {d.trajectories} trajectories, DNS {d.resolution}^"
          f"{config.system.ndim}, dt {d.dt}; {os.cpu_count()} cores; load average "
          f"{min(loads):.1f}-{max(loads):.1f} during the runs; best of {args.rounds} interleaved rounds")
    print("| processes x threads | wall s | speed-up vs 1 | CPU s: this process | CPU s: workers |")
    print("|---|---:|---:|---:|---:|")
    for n in args.workers:
        print(f"| {n} x 1 | {best[n]:.1f} | {best[args.workers[0]] / best[n]:.2f} | {cpu[n][0]:.1f} | "
              f"{cpu[n][1]:.1f} |")


def _cpu_seconds() -> tuple[float, float]:
    """User + system CPU seconds of this process and of its finished child processes (the workers)."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime, children.ru_utime + children.ru_stime


if __name__ == "__main__":
    main()
