"""Page faults and CPU time of a fresh process's first generation runs, by malloc setting.

    python benchmarks/allocator_faults.py [--config configs/quickstart.yaml] [--set dns.spinup_time=2.0 ...]

Runs, for each setting, a fresh Python process that generates one part
(`closure.data.generation._write_part`: trajectories 0..7, the config's steps, filter, SGS
terms, part file) twice, in a worker thread as a dask worker does (``--main-thread``: in the
main thread), and prints each run's user and system CPU seconds and minor page faults. The
settings: glibc's defaults (thresholds that rise as large blocks are freed), dask's
worker environment ``MALLOC_TRIM_THRESHOLD_=65536`` (which freezes the mmap threshold at
128 KiB), and `closure.data.parallelism.keep_freed_memory` (mmap 32 MiB, trim 1 GiB).
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SETTINGS = {"glibc default": ({}, False), "dask worker env (trim 64 KiB)": ({"MALLOC_TRIM_THRESHOLD_": "65536"}, False),
            "keep_freed_memory": ({}, True)}


def child(args):
    sys.path.insert(0, str(ROOT))
    import torch

    from closure.config import load_config
    from closure.data.generation import _write_part
    from closure.data.parallelism import keep_freed_memory

    torch.set_num_threads(1)
    if args.keep:
        keep_freed_memory()
    config = load_config(args.config, ["device=cpu", *args.set])
    ids = list(range(min(8, config.dns.trajectories)))
    out = []

    def runs():
        with tempfile.TemporaryDirectory() as tmp:
            for r in range(2):
                a = resource.getrusage(resource.RUSAGE_SELF)
                _write_part(config, ids, Path(tmp) / f"part{r}.nc")
                b = resource.getrusage(resource.RUSAGE_SELF)
                out.append(f"run {r + 1}: user {b.ru_utime - a.ru_utime:.2f} s, system {b.ru_stime - a.ru_stime:.2f} s, "
                           f"{b.ru_minflt - a.ru_minflt} minor faults")

    if args.main_thread:
        runs()
    else:
        worker = threading.Thread(target=runs)
        worker.start()
        worker.join()
    print("; ".join(out), flush=True)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", default=str(ROOT / "configs" / "quickstart.yaml"))
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--main-thread", action="store_true")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--keep", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        return child(args)
    print(f"# {args.config} {' '.join(args.set)}: trajectories 0-7 in one part, in "
          f"{'the main' if args.main_thread else 'a worker'} thread of a fresh process; load average "
          f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    for name, (environ, keep) in SETTINGS.items():
        env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
        cmd = [sys.executable, __file__, "--child", "--config", args.config,
               *[f"--set={s}" for s in args.set], *(["--main-thread"] if args.main_thread else []),
               *(["--keep"] if keep else [])]
        result = subprocess.run(cmd, env={**env, **environ}, capture_output=True, text=True, check=True)
        print(f"- {name}: {result.stdout.strip()}")


if __name__ == "__main__":
    main()
