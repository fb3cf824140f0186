"""Peak memory of a-posteriori (unrolled) gradients vs unroll length, with and without checkpointing.

Each measurement runs in a fresh subprocess: peak resident memory
(``ru_maxrss``) after the backward pass minus the resident memory just before
the forward pass, for a 2D Kolmogorov LES with a stencil-MLP closure.

    .venv/bin/python benchmarks/unroll_memory.py [--n 128] [--batch 2] [--steps 4 32] [--write]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

CHILD = r"""
import json, resource, sys, torch, solvers
from closure.training.unroll import rollout
from closure.nn import build_model
n, batch, steps, ck = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
ck = None if ck == "none" else int(ck)
torch.manual_seed(0)
eq = solvers.NavierStokes2D(n, viscosity=1e-3, drag=0.1, forcing=solvers.Kolmogorov(4, 1.0), dtype=torch.float64)
model = build_model({"type": "mlp", "stencil": 3, "hidden": [32], "gammas": [1.0]}, 2).double()
w0 = solvers.random_vorticity(eq.grid, seeds=list(range(batch)), peak_wavenumber=4)
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
traj = rollout(eq, model, w0, 1e-3, steps, steps, checkpoint_every=ck)
traj[:, -1].pow(2).mean().backward()
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"peak_mib": (after - before) / 1024}))
"""


def measure(n: int, batch: int, steps: int, checkpoint_every) -> float:
    # large blocks straight from mmap, so that freed memory leaves the resident set and
    # ru_maxrss measures the live peak rather than glibc's retained heap
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536")
    out = subprocess.run([sys.executable, "-c", CHILD, str(n), str(batch), str(steps), str(checkpoint_every)],
                         check=True, capture_output=True, text=True, env=env)
    return json.loads(out.stdout.strip().splitlines()[-1])["peak_mib"]


def table(n: int, batch: int, steps: list[int]) -> tuple[str, dict]:
    rows, results = [], {}
    for mode in ("1", "none"):
        for k in steps:
            mib = measure(n, batch, k, mode)
            results[(mode, k)] = mib
            label = "per step" if mode == "1" else "off"
            rows.append(f"| {label} | {k} | {mib:.1f} |")
    header = [f"Unrolled-gradient peak memory, NavierStokes2D {n}^2 float64, batch {batch}, stencil-MLP closure",
              "", "| checkpointing | K (steps) | peak extra MiB |", "| --- | --- | --- |"]
    return "\n".join(header + rows), results


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=64)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--steps", type=int, nargs="+", default=[4, 32])
    parser.add_argument("--write", action="store_true", help="write the table into docs/performance.md")
    args = parser.parse_args()
    text, res = table(args.n, args.batch, args.steps)
    k0, k1 = args.steps[0], args.steps[-1]
    ratio_ck = res[("1", k1)] / max(res[("1", k0)], 1e-9)
    ratio_plain = res[("none", k1)] / max(res[("none", k0)], 1e-9)
    text += f"\n\nK={k1} / K={k0}: {ratio_ck:.2f}x with checkpointing, {ratio_plain:.2f}x without.\n"
    text += f"\nCommand: `.venv/bin/python benchmarks/unroll_memory.py --n {args.n} --batch {args.batch} --steps {' '.join(map(str, args.steps))}`\n"
    print(text)
    if args.write:
        path = Path(__file__).resolve().parents[1] / "docs" / "performance.md"
        write_section(path, "## A-posteriori training memory", text)


def write_section(path: Path, heading: str, body: str):
    """Replace (or append) one ``## heading`` section of a markdown file."""
    old = path.read_text() if path.exists() else "# Performance\n"
    lines = old.splitlines()
    start = next((i for i, line in enumerate(lines) if line.strip() == heading), None)
    new = [heading, "", body.strip(), ""]
    if start is None:
        lines += [""] + new
    else:
        end = next((j for j in range(start + 1, len(lines)) if lines[j].startswith("## ")), len(lines))
        lines[start:end] = new
    path.write_text("\n".join(lines).rstrip() + "\n")


if __name__ == "__main__":
    main()
