"""Where one run of the normalization study (``closure sweep``) spends its time, per step and width.

    .venv/bin/python benchmarks/sweep_run_cost.py CONFIG DATASET.nc [--widths 64 128 256 512] [--steps 300]
        [--set KEY=VALUE ...]

One run of ``closure.study.run.train_run`` (the study's loop) is timed whole, then its step is
timed in parts with the same network, rates and batches: drawing the batch (rows of the fixed
training subset ``sweep.train_points``, or gathered stencil patches), forward, backward (with
``zero_grad``), optimizer step (with the ``loss.item()`` the loop reads), and one validation
evaluation (``sweep.validation_points`` points; a run makes ``sweep.curve_points`` + 1 of them).
Also: the optimizer with ``foreach=True`` (PyTorch's multi-tensor step) against its default
for-loop on CPU, and whether the two give bitwise equal weights. Process CPU time, one torch
thread (as the study's dask workers run), so the numbers do not depend on other jobs' load.
"""

from __future__ import annotations

import argparse
import math
import time

import torch

from closure.config import load_config
from closure.study.data import StudyData
from closure.study.grid import Run
from closure.study.run import _validation_mse, build_trainable, train_run, training_batch

CASES = [("sgd", "gamma", 30.0), ("adam", "gamma", 0.005), ("adam", "mup", 0.004)]


def optimizer(run: Run, groups, foreach: bool = False):
    return (torch.optim.SGD if run.optimizer == "sgd" else torch.optim.Adam)(groups, lr=run.lr, foreach=foreach)


def parts(data: StudyData, run: Run, config, steps: int, foreach: bool = False) -> tuple[dict, list]:
    """Per-step CPU milliseconds of batch / forward / backward / step, and the trained parameters."""
    _, net, groups = build_trainable(data, run, config)
    opt = optimizer(run, groups, foreach)
    gen = torch.Generator().manual_seed(0)
    total = dict.fromkeys(("batch", "forward", "backward", "step"), 0.0)
    for _ in range(steps):
        t0 = time.process_time()
        x, y = training_batch(data, config.sweep.batch_size, gen)
        t1 = time.process_time()
        loss = 0.5 * (net(x).squeeze(-1) - y).pow(2).mean()
        t2 = time.process_time()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        t3 = time.process_time()
        opt.step()
        loss.item()
        t4 = time.process_time()
        for key, dt in zip(total, (t1 - t0, t2 - t1, t3 - t2, t4 - t3)):
            total[key] += dt
    return {k: 1e3 * v / steps for k, v in total.items()}, [p.detach().clone() for p in net.parameters()]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("config")
    parser.add_argument("dataset")
    parser.add_argument("--widths", type=int, nargs="+", default=[64, 128, 256, 512])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--set", action="append", default=[], dest="overrides", metavar="KEY=VALUE")
    args = parser.parse_args()
    torch.set_num_threads(1)
    config = load_config(args.config, args.overrides)
    config = config.model_copy(update={"sweep": config.sweep.model_copy(update={"curve_points": 0})})
    t = time.process_time()
    data = StudyData(args.dataset, config)
    print(f"data loaded in {time.process_time() - t:.2f} s CPU (once per worker); batch {config.sweep.batch_size}, "
          f"train_points {config.sweep.train_points}, {config.dtype}, {args.steps} steps, CPU ms per step\n")
    print("| optimizer | parametrization | N | whole run / step | batch | forward | backward | step | "
          "one validation eval | step, foreach | foreach bitwise equal |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    nan = math.nan
    for opt, param, lr in CASES:
        for width in args.widths:
            gammas = (1.0, 1.0) if param == "gamma" else (nan, nan)
            run = Run("transfer", *gammas, width, 0, lr, args.steps, param=param, optimizer=opt)
            train_run(data, run, config)  # warm-up: first calls allocate
            t = time.process_time()
            train_run(data, run, config)
            whole = 1e3 * (time.process_time() - t) / args.steps
            ms, weights = parts(data, run, config, args.steps)
            ms_fe, weights_fe = parts(data, run, config, args.steps, foreach=True)
            _, net, _ = build_trainable(data, run, config)
            t = time.process_time()
            for _ in range(5):
                _validation_mse(net, data)
            val = 1e3 * (time.process_time() - t) / 5
            same = all(torch.equal(a, b) for a, b in zip(weights, weights_fe))
            print(f"| {opt} | {param} | {width} | {whole:.3f} | {ms['batch']:.3f} | {ms['forward']:.3f} | "
                  f"{ms['backward']:.3f} | {ms['step']:.3f} | {val:.2f} | {ms_fe['step']:.3f} | {same} |", flush=True)


if __name__ == "__main__":
    main()
