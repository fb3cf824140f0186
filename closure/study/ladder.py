"""The plain-solver ladder next to the study's coupled LES (``sweep.aposteriori`` with ``run.ladder``).

A closure's a-posteriori error means little without the plain solver at finer grids beside
it. ``plain_ladder(config, data, folder)`` runs every rung of ``run.ladder`` x
``run.ladder_starts`` (``closure.les.ladder.run_plain``: the plain pseudo-spectral solver at
``f n_les`` points, coarse-grained ``P G w`` onto the LES grid) from the same test trajectories
over the same ``run.time``, and scores it with the study's own metric
(``closure.study.run.field_errors``: ||field - filtered DNS|| / ||filtered DNS|| averaged over the
saved times, final-time correlation), so that its rows sit in the same table as the networks'
coupled LES. Each rung's LES file is kept in ``folder`` and reused by a later invocation
(resume); a file from other settings (other run section or dataset) is recomputed.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from closure.config import Config
from closure.data.dataset import open_dataset
from closure.les.coupled import les_config
from closure.les.ladder import ladder_models, parse_plain, run_plain
from closure.study.run import field_errors, reference_fields
from closure.study.data import StudyData


def _identity(config: Config, data: StudyData) -> str:
    return json.dumps({"run": config.run.model_dump(mode="json"), "data": data.path, "seed": config.seed,
                       "split": [config.data.validation_fraction, config.data.test_fraction]}, sort_keys=True)


def plain_ladder(config: Config, data: StudyData, folder: Path) -> dict[str, dict]:
    """``{model label: {resolution, factor, start, error, correlation, blowups}}`` for every ladder rung."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    ref = reference_fields(data, config)
    cfg = les_config(config, data.data_config)
    n_les = int(cfg.les.resolution)
    run_time = (ref.shape[1] - 1) * float(data.times[1] - data.times[0]) if data.times.size > 1 else config.run.time
    # the rungs integrate exactly the reference window (run.time rounded down to whole snapshots)
    cfg = cfg.model_copy(update={"run": cfg.run.model_copy(update={"time": run_time})})
    identity = _identity(cfg, data)
    rows: dict[str, dict] = {}
    for model in ladder_models(cfg, n_les):
        spec = parse_plain(model, n_les)
        path = folder / f"{spec.label.replace(':', '_')}.nc"
        if not (path.is_file() and _stored_identity(path) == identity):
            run_plain(cfg, model, data.path, path, show_progress=False, extra_attrs={"study_identity": identity})
        ds = open_dataset(path, chunks=False)
        try:
            field = np.asarray(ds[data.var].values, dtype=np.float64)
            blowups = int(np.sum(~np.all(np.isfinite(field.reshape(field.shape[0], -1)), axis=1)))
        finally:
            ds.close()
        rows[spec.label] = {"resolution": spec.resolution, "factor": spec.resolution / n_les, "start": spec.start,
                            **field_errors(field, ref), "blowups": blowups}
    return rows


def _stored_identity(path: Path) -> str:
    ds = open_dataset(path, chunks=False)
    try:
        return str(ds.attrs.get("study_identity", ""))
    finally:
        ds.close()
