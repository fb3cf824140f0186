"""Dataset generation speed versus batch size (trajectories integrated together).

For each config and batch size B, runs `closure.data.generation.simulate_batch` on B
trajectories for a reduced number of steps (the config's own dt, or for ``dns.dt: auto``
a fixed step near the initial state's CFL step; its grids, filter, sample interval) and
reports

- ms per batched DNS step, and per trajectory-step (= ms per step / B),
- the cost of B trajectories relative to B separate runs of one (batching gain),
- projected snapshots per second for the full config (spin-up included):
  B * samples / ((spinup_steps + (samples - 1) * sample_steps) * t_step + samples * t_snapshot).

Prints a table and writes it into docs/performance.md under "### Batching (one process)"
of "## Dataset generation" (only that part is replaced).

    python benchmarks/generate_speed.py [--configs quickstart kolmogorov2d] [--batches 1 4 16]
                                        [--threads 1] [--device cpu] [--no-write]
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import re
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from closure.config import load_config  # noqa: E402
from closure.data.generation import simulate_batch  # noqa: E402
from closure.data.system import dns_equation, dns_step_size, initial_state, trajectory_seeds  # noqa: E402

# steps timed per config (kept short for the large grid)
STEPS = {"quickstart": 200, "kolmogorov2d": 20}


def measure(config, batch: int, steps: int, device: str, repeats: int = 2) -> tuple[float, float]:
    """(seconds per batched step, seconds per batched snapshot extraction)."""
    d = config.dns
    samples = max(2, steps // d.sample_steps + 1)
    steps = (samples - 1) * d.sample_steps
    cfg = config.model_copy(update={"dns": d.model_copy(update={"spinup_time": 0.0, "samples": samples,
                                                                    "batch_size": batch}),
                                    "device": device})
    ids = list(range(batch))
    simulate_batch(cfg.model_copy(update={"dns": cfg.dns.model_copy(update={"samples": 2})}), ids)  # warm-up
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        simulate_batch(cfg, ids)
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t0)
    # snapshot cost: a run with no steps between two snapshots is not allowed; estimate from the
    # filter + sgs evaluation directly
    from closure.data.sgs import sgs_hat
    from closure.data.system import les_equation, make_filter

    seeds = trajectory_seeds(cfg, ids)
    dtype = torch.float32 if cfg.dtype == "float32" else torch.float64
    dns = dns_equation(cfg, dtype, device, seeds)
    les = les_equation(cfg, dtype, device, seeds)
    filt = make_filter(cfg)
    w_hat = dns.grid.to_spectral(initial_state(cfg, dns.grid, seeds).to(device=device, dtype=dtype))
    t0 = time.perf_counter()
    for _ in range(3):
        f, s = sgs_hat(w_hat, dns, les, filt)
        les.grid.to_physical(f).cpu(), les.grid.to_physical(s).cpu()
    t_snap = (time.perf_counter() - t0) / 3
    t_step = max(best - samples * t_snap, 1e-9) / steps
    return t_step, t_snap


def fixed_step(config):
    """``config``, with ``dns.dt: auto`` replaced by a fixed step near the CFL step of the
    random initial state (a step's cost does not depend on its size; the projection's step
    count is then an estimate)."""
    d = config.dns
    if not d.adaptive:
        return config
    seeds = trajectory_seeds(config, [0])
    eq = dns_equation(config, torch.float64, "cpu", seeds)
    h = dns_step_size(config, eq, eq.grid.to_spectral(initial_state(config, eq.grid, seeds)))
    dt = d.sample_interval / math.ceil(d.sample_interval / h - 1e-9)
    return config.model_copy(update={"dns": d.model_copy(update={"dt": dt})})


def run(names, batches, threads, device, rounds=3):
    """Best of ``rounds`` interleaved measurements per batch size (robust to a busy machine)."""
    torch.set_num_threads(threads)
    rows = []
    for name in names:
        config = fixed_step(load_config(ROOT / "configs" / f"{name}.yaml"))
        d = config.dns
        steps_per_traj = d.spinup_steps + (d.samples - 1) * d.sample_steps
        best = {b: (float("inf"), float("inf")) for b in batches}
        for _ in range(rounds):
            for b in batches:
                t_step, t_snap = measure(config, b, STEPS.get(name, 50), device, repeats=1)
                best[b] = (min(best[b][0], t_step), min(best[b][1], t_snap))
        base = best[1][0] if 1 in best else None
        for b in batches:
            t_step, t_snap = best[b]
            per_traj = t_step / b
            snaps = b * d.samples / (steps_per_traj * t_step + d.samples * t_snap)
            rows.append((name, f"{d.resolution}^2 -> {config.les.resolution}^2", b, t_step * 1e3, per_traj * 1e3,
                         f"{t_step / base:.1f}" if base else "-", f"{b * base / t_step:.1f}x" if base else "-",
                         snaps, d.trajectories * d.samples / snaps / 60))
            print(f"{name:13s} B={b:3d}  {t_step * 1e3:9.2f} ms/step  {per_traj * 1e3:8.3f} ms/traj-step  "
                  f"{snaps:9.2f} snapshots/s", flush=True)
    return rows


def table(rows, threads, device) -> str:
    head = ("| config | grids | batch B | ms / step | ms / traj-step | cost of B vs 1 | speed-up per traj | "
            "snapshots / s (full config) | full dataset (min) |\n"
            "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |\n")
    body = "".join(f"| {n} | {g} | {b} | {ts:.2f} | {pt:.3f} | {rel} | {gain} | {sn:.2f} | {full:.1f} |\n"
                   for n, g, b, ts, pt, rel, gain, sn, full in rows)
    return head + body


READING = """Reading: batching amortises the per-operation overhead (Python, dispatch, small
kernels), so on one CPU thread it pays only while a batch's fields stay in the caches: at
128^2, 4 trajectories cost ~2.4x one, but 16 cost ~13x (per-trajectory time rises again);
at 512^2 the step is compute- and memory-bound and B trajectories cost B times one or more.
So on the CPU, batching 16 trajectories does NOT cost well under 16x one (measured on a
machine shared with other jobs, which also share the caches); the CPU gains come from
processes (`closure generate --workers N`, one torch thread each, bitwise the same values),
and large batches are meant for a GPU, where a batch fills the device. Keep `dns.batch_size`
at 4-8 on the CPU. In-process generation runs torch with one intra-op thread by default: on a
machine whose cores are shared, torch's threaded FFTs were seen to slow down ~100x (e.g.
20 ms instead of 0.03 ms for a 32^2 transform pair).
"""


def write_section(text: str, path: Path):
    """Replace the "### Batching (one process)" part of "## Dataset generation" (appended if absent)."""
    heading = "### Batching (one process)"
    old = path.read_text() if path.exists() else "# Performance\n"
    pattern = re.compile(rf"^{re.escape(heading)}\n.*?(?=^## |^### |\Z)", re.S | re.M)
    section = f"{heading}\n\n{text.strip()}\n\n"
    new = pattern.sub(lambda m: section, old) if pattern.search(old) else old.rstrip() + "\n\n" + section
    path.write_text(new)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--configs", nargs="+", default=["quickstart", "kolmogorov2d"])
    ap.add_argument("--batches", nargs="+", type=int, default=[1, 4, 16])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args(argv)
    load_before = os.getloadavg()[0]
    rows = run(args.configs, args.batches, args.threads, args.device)
    load = max(load_before, os.getloadavg()[0])
    tab = table(rows, args.threads, args.device)
    print(tab)
    if not args.no_write:
        cpu = platform.processor() or platform.machine()
        text = (f"Measured with `python benchmarks/generate_speed.py` ({args.device}, {cpu}, "
                f"torch {torch.__version__}, {args.threads} intra-op thread(s), float32 as in the configs). "
                "`ms / step` is one ETDRK4 step of the whole batch; `cost of B vs 1` is that time over the "
                "time of one trajectory's step; `snapshots / s` projects the full config (spin-up included, "
                "B trajectories at a time, one process); `full dataset` is the projected time for all "
                "`dns.trajectories` in one process (divide by the number of dask workers). "
                f"Load average during the run: {load:.1f} on {os.cpu_count()} cores"
                f"{' (a busy machine: absolute times are pessimistic)' if load > (os.cpu_count() or 1) else ''}."
                "\n\n" + tab + "\n" + READING)
        write_section(text, ROOT / "docs" / "performance.md")
        print(f"wrote the 'Batching' part of {ROOT / 'docs' / 'performance.md'}")


if __name__ == "__main__":
    main()
