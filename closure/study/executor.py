"""Executing the study's runs: a result cache on disk (resumable) and a serial or dask executor.

Each finished run is written atomically to ``SWEEP_DIR/runs/NAME.json`` with a fingerprint of
everything its result depends on besides the ``Run`` itself (``settings_fingerprint``); a re-run
loads every matching file and recomputes the others. ``SerialExecutor`` runs tasks in this process,
``DaskExecutor`` on a dask.distributed cluster (a LocalCluster of single-threaded worker processes
or a running scheduler). Both call ``on_done(run, result)`` as runs finish; it may return new runs
(the learning-rate tuning unlocks the study's runs that way).
"""

from __future__ import annotations

import hashlib
import json
import time as _time
from dataclasses import asdict
from pathlib import Path
from typing import Callable, Optional

from closure.config import Config
from closure.data.parallelism import dask_client
from closure import storage
from closure.study.grid import RESULT_FORMAT, Run, depth_of
from closure.study.run import task

def settings_fingerprint(config: Config, data: Path, created: str) -> str:
    """A hash of everything a run's result depends on besides the Run itself."""
    sw = config.sweep
    keys = {
        "data": str(data), "created": created, "seed": config.seed, "dtype": config.dtype,
        "split": [config.data.validation_fraction, config.data.test_fraction],
        "model": [config.model.stencil, list(config.model.features), config.model.activation],
        "depth": depth_of(config), "batch_size": sw.batch_size,
        **({} if sw.output_bias else {"output_bias": False}),  # absent when default: older results stay valid
        **({} if sw.train_points is None else {"train_points": sw.train_points}),
        "points": [sw.test_points, sw.validation_points, sw.probe_points, sw.ood_scale],
        "curve_points": sw.curve_points, "common_random_numbers": sw.common_random_numbers,
        "mup_base_width": int(sw.mup_base_width or min(sw.widths)),
        "aposteriori": config.run.model_dump(mode="json") if sw.aposteriori else None,
        "format": RESULT_FORMAT,
    }
    return hashlib.sha256(json.dumps(keys, sort_keys=True).encode()).hexdigest()[:16]


def load_result(path: Path, run: Run, fingerprint: str) -> Optional[dict]:
    if not path.is_file():
        return None
    try:
        stored = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if stored.get("fingerprint") != fingerprint or stored.get("run") != asdict(run):
        return None
    return stored


def save_result(runs_dir: Path, run: Run, fingerprint: str, result: dict) -> dict:
    stored = {"format": RESULT_FORMAT, "fingerprint": fingerprint, "run": asdict(run), "name": run.name,
              "finished": _time.time(), **result}
    text = json.dumps(stored, allow_nan=True)
    storage.write_text(runs_dir / f"{run.name}.json", text)
    return stored


class SerialExecutor:
    """Runs tasks in this process (``workers=0``): the same interface as the dask loop."""

    def __init__(self, config_yaml, data, key):
        self.args = (config_yaml, data, key)

    def run(self, runs: list[Run], on_done: Callable[[Run, dict], list[Run]], bar) -> None:
        queue = list(runs)
        while queue:
            run = queue.pop(0)
            queue.extend(on_done(run, task(*self.args, asdict(run))))
            bar.update(1)


class DaskExecutor:
    def __init__(self, config_yaml, data, key, scheduler, workers):
        self.args = (config_yaml, data, key)
        self.client, self.cluster = dask_client(scheduler, workers)

    def run(self, runs: list[Run], on_done, bar) -> None:
        from distributed import as_completed

        by_key = {}

        def submit(run):
            fut = self.client.submit(task, *self.args, asdict(run), pure=False)
            by_key[fut.key] = run
            return fut

        futures = [submit(r) for r in runs]
        pending = as_completed(futures)
        try:
            for fut in pending:
                run = by_key.pop(fut.key)
                for new in on_done(run, fut.result()):
                    pending.add(submit(new))
                bar.update(1)
        except BaseException:
            for f in futures:
                f.cancel()
            raise

    def close(self):
        self.client.close()
        if self.cluster is not None:
            self.cluster.close()

