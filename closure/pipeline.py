"""The whole experiment in one call: generate -> train -> les -> evaluate.

    pipeline(config, out_dir, config_path=None) -> Path      # the report's report.md

Layout of ``out_dir``::

    config.yaml          the resolved config of the last pipeline run
    dataset.nc           closure.data.generation.generate(config, ...)
    train/               closure.training.trainer.train(config, dataset, ...)  (only if run.models needs it;
                         with train.seeds: N > 1, one folder train/seed-S per training seed S)
    calibrate/<model>_calibrated/   closure.training.calibrate.calibrate(config, dataset, model, ...)
                         for every model in calibrate.models (classical constants fitted on the
                         validation trajectories; run as the LES model ``<model>_calibrated``)
    les/<model>.nc       closure.les.coupled.run_les(config, model, dataset, ...) for every model in run.models
    report/              closure.evaluation.compare.evaluate(dataset, les files, ...)

    les/plain@N[_filtered].nc   closure.les.ladder.run_plain for every rung of run.ladder x run.ladder_starts

``run.models`` holds baseline names (``none``, ``smagorinsky``,
``dynamic_smagorinsky``, ``leith``, ``dealias_residual`` or ``+`` sums), ``learned``
(the model trained in ``train/``) or paths of other training or calibration run
directories; ``calibrate.models`` adds the calibrated classical closures.

Resuming: a stage whose outputs exist and were made from the same config (the
sections that determine them) and from the current inputs is skipped, so an
interrupted or extended pipeline (another model in ``run.models``, a longer
``run.time``) redoes only what changed. The dataset is checked with its
stored config (`closure.data.generation.generation_key`; generation itself resumes finished parts), the
training run with its ``config.yaml`` and the LES files with a
``pipeline_key`` attribute (run section, device, dtype, the dataset's key and
the model file's size and modification time). The evaluation is always redone
(it takes seconds).

An interrupted training resumes from its ``train/checkpoint.pt`` when that was
written with the same config from the same dataset. A dataset or a trained
model in ``out_dir`` made from another config is not replaced unless
``overwrite=True`` (``closure pipeline --overwrite``): the run stops with an
error naming the file and the first differing key.
"""

from __future__ import annotations

import json
import logging
import time as _time
from pathlib import Path
from typing import Optional, Union

import yaml

from closure.les.baselines import is_baseline
from closure.config import Config, config_to_dict, config_to_yaml, first_difference
from closure import storage
from closure.errors import ClosureError

log = logging.getLogger("closure.pipeline")

__all__ = ["pipeline", "dataset_is_current", "training_is_current", "les_key", "dataset_made_elsewise",
           "training_made_elsewise", "refuse_replacing", "training_runs"]

TRAIN_SECTIONS = ("seed", "dtype", "system", "initial", "dns", "les", "data", "model", "train")
CALIBRATE_SECTIONS = ("seed", "dtype", "system", "initial", "dns", "les", "data", "train", "run", "calibrate")


def _say(message: str, *args) -> None:
    log.info(message, *args)


def dataset_is_current(config: Config, path: Path) -> bool:
    """True if ``path`` is a complete dataset generated from the same values of ``config``.

    With the plain-solver ladder on (``run.ladder``), a dataset written before the DNS state
    at the first snapshot was stored (``omega_dns_t0``) is not current either.
    """
    if not path.is_file():
        return False
    from closure.data.generation import generation_key
    import xarray as xr

    from closure.data.dataset import dataset_config, has_dns_start
    from closure.les.ladder import ladder_models

    try:
        with xr.open_dataset(path, engine="netcdf4") as ds:
            key = ds.attrs.get("generation_key")
            if key is None:  # the stored config determines the key just as well
                key = generation_key(dataset_config(ds))
            has_start = has_dns_start(ds)
    except (OSError, ValueError, RuntimeError, ClosureError, KeyError):
        return False
    if ladder_models(config, config.les.resolution) and not has_start:
        return False
    return key == generation_key(config)


def _relevant(d: dict, sections) -> dict:
    return {k: d.get(k) for k in sections}


def dataset_made_elsewise(config: Config, path: Path) -> Optional[str]:
    """Why the existing file ``path`` is not the dataset of ``config`` (None if absent or the same)."""
    if not path.exists() or dataset_is_current(config, path):
        return None
    import xarray as xr

    from closure.data.dataset import dataset_config

    try:
        with xr.open_dataset(path, engine="netcdf4") as ds:
            stored = config_to_dict(dataset_config(ds))
    except (OSError, ValueError, RuntimeError, ClosureError):
        return "it is not a readable closure dataset"
    keep = ("seed", "dtype", "system", "initial", "dns", "les", "data")
    key = first_difference(_relevant(stored, keep), _relevant(config_to_dict(config), keep))
    return f"it was generated from another config ({key} differs)"


def training_made_elsewise(config: Config, run_dir: Path) -> Optional[str]:
    """Why the training run in ``run_dir`` is not one of ``config`` (None if there is none or the same)."""
    stored_file = run_dir / "config.yaml"
    if not ((run_dir / "model.pt").exists() or (run_dir / "checkpoint.pt").exists()) or not stored_file.is_file():
        return None
    try:
        old = yaml.safe_load(stored_file.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError):
        return f"its {stored_file.name} is not readable"
    if not isinstance(old, dict):
        return f"its {stored_file.name} is not a config"
    new = config_to_dict(config)
    if _relevant(old, TRAIN_SECTIONS) != _relevant(new, TRAIN_SECTIONS):
        key = first_difference(_relevant(old, TRAIN_SECTIONS), _relevant(new, TRAIN_SECTIONS))
        return f"it was trained with another config ({key} differs)"
    return None


def refuse_replacing(path: Path, reason: Optional[str], overwrite: bool) -> None:
    """Raise `ClosureError` if ``path`` would replace an output made differently (unless ``overwrite``)."""
    if reason is not None and not overwrite:
        raise ClosureError(f"{path}: exists and {reason}; give --overwrite to replace it, or choose another output")


def training_is_current(config: Config, run_dir: Path, dataset: Path) -> bool:
    """True if ``run_dir`` holds a finished model trained with the same config on the current dataset."""
    model, stored = run_dir / "model.pt", run_dir / "config.yaml"
    if not (model.is_file() and stored.is_file() and (run_dir / "splits.json").is_file()):
        return False
    try:
        old = yaml.safe_load(stored.read_text())
    except yaml.YAMLError:
        return False
    if not isinstance(old, dict):
        return False
    new = config_to_dict(config)
    if _relevant(old, TRAIN_SECTIONS) != _relevant(new, TRAIN_SECTIONS):
        return False
    return _trained_on(model, dataset)


def _trained_on(model: Path, dataset: Path) -> bool:
    """The model's recorded dataset identity is the dataset's (older models: not older than the dataset)."""
    from closure.data.dataset import dataset_identity, open_dataset
    from closure.nn.io import read_made_for

    try:
        stored = read_made_for(model).get("dataset")
    except ClosureError:
        return False
    if stored is None:
        return model.stat().st_mtime >= dataset.stat().st_mtime
    with open_dataset(dataset) as ds:
        return stored == dataset_identity(ds)


def _checkpoint_resumable(config: Config, run_dir: Path, dataset: Path) -> bool:
    """True if ``run_dir/checkpoint.pt`` was written by a training of this config on this dataset."""
    import torch

    from closure.data.dataset import dataset_identity, open_dataset

    path = run_dir / "checkpoint.pt"
    if not path.is_file():
        return False
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # a damaged checkpoint: train afresh
        return False
    if not isinstance(checkpoint, dict) or checkpoint.get("config") != config_to_yaml(config):
        return False
    with open_dataset(dataset) as ds:
        return checkpoint.get("dataset") == dataset_identity(ds)


def calibration_is_current(config: Config, run_dir: Path, dataset: Path) -> bool:
    """True if ``run_dir`` holds a calibration made with the same config on the current dataset."""
    from closure.les.baselines import CALIBRATION_FILE

    record, stored = run_dir / CALIBRATION_FILE, run_dir / "config.yaml"
    if not (record.is_file() and stored.is_file()):
        return False
    try:
        old = yaml.safe_load(stored.read_text())
    except yaml.YAMLError:
        return False
    if not isinstance(old, dict) or not isinstance(old.get("run"), dict):
        return False
    new = config_to_dict(config)
    for d in (old, new):  # of the run section, the LES step and the default constants matter
        d["run"] = {k: d["run"].get(k) for k in ("dt", "integrator", "smagorinsky_cs", "leith_cl")}
    if _relevant(old, CALIBRATE_SECTIONS) != _relevant(new, CALIBRATE_SECTIONS):
        return False
    return record.stat().st_mtime >= dataset.stat().st_mtime


def _file_stamp(path: Path) -> dict:
    st = path.stat()
    return {"size": st.st_size, "mtime": round(st.st_mtime, 3)}


def les_key(config: Config, model: str, dataset: Path, model_dir: Optional[Path]) -> str:
    """What an LES file depends on, as a JSON string (stored in its ``pipeline_key`` attribute)."""
    from closure.data.generation import generation_key

    d = config_to_dict(config)
    key = {"run": d["run"], "device": d["device"], "dtype": d["dtype"], "data": d["data"], "model": model,
           "dataset": generation_key(config), "dataset_file": _file_stamp(dataset)}
    if model_dir is not None:
        from closure.les.baselines import CALIBRATION_FILE

        model_file = model_dir / "model.pt"
        key["model_file"] = _file_stamp(model_file if model_file.is_file() else model_dir / CALIBRATION_FILE)
    key["run"] = {k: v for k, v in key["run"].items() if k != "models"}
    return json.dumps(key, sort_keys=True)


def _run_unless_current(kind: str, model: str, output: Path, key: str, run) -> Path:
    """Run one LES or ladder stage into ``output`` (under its lock) unless it is up to date."""
    if _les_is_current(output, key):
        _say("pipeline: %s %s is up to date, skipping", kind, output)
    else:
        _say("pipeline: [3/4] %s %s -> %s", kind.lower(), model, output)
        with storage.output_lock(output):
            run()
    return output


def _les_is_current(path: Path, key: str) -> bool:
    if not path.is_file():
        return False
    import xarray as xr

    try:
        with xr.open_dataset(path, engine="netcdf4") as ds:
            return ds.attrs.get("pipeline_key") == key
    except (OSError, ValueError, RuntimeError):
        return False


def training_runs(config: Config, out_dir: Path) -> list:
    """``(config, run directory, LES name, training seed)`` of each model ``learned`` stands for.

    One model (``train.seeds: 1``): ``train/``, named ``learned``. Several: ``train/seed-S/``,
    named ``learned-sS``, for the training seeds ``S = train.seed (or seed) + i``; each run's
    config has its own ``train.seed`` (and ``train.seeds: 1``), so that it is the complete
    description of that run.
    """
    n = config.train.seeds
    if n == 1:
        return [(config, out_dir / "train", "learned", config.training_seed)]
    runs = []
    for i in range(n):
        seed = config.training_seed + i
        seed_config = config.model_copy(update={"train": config.train.model_copy(update={"seed": seed, "seeds": 1})})
        runs.append((seed_config, out_dir / "train" / f"seed-{seed}", f"learned-s{seed}", seed))
    return runs


def _model_file_name(model: str) -> str:
    name = Path(model).name if not is_baseline(model) and model != "learned" else model
    return name.replace("+", "_plus_").replace(":", "_") + ".nc"


def pipeline(config: Config, out_dir: Union[str, Path], config_path: Optional[Union[str, Path]] = None,
             overwrite: bool = False) -> Path:
    """Run generate -> train -> les -> evaluate into ``out_dir`` (resuming); return ``report/report.md``.

    ``overwrite``: replace a dataset or trained model of ``out_dir`` made from another config
    (else that is an error).
    """
    from closure.evaluation.compare import evaluate
    from closure.data.generation import generate
    from closure.les.coupled import run_les
    from closure.les.ladder import ladder_models, run_plain

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    models = list(config.run.models)
    if not models:
        raise ClosureError("run.models is empty: name at least one model (e.g. none, smagorinsky, learned)")
    for m in models:
        if m != "learned" and not is_baseline(m) and not Path(m).is_dir():
            raise ClosureError(f"run.models: {m!r} is neither a baseline, 'learned' nor a training run directory")
    dataset = out_dir / "dataset.nc"
    refuse_replacing(dataset, dataset_made_elsewise(config, dataset), overwrite)  # before anything is written
    if "learned" in models:
        for seed_config, run_dir, _, _ in training_runs(config, out_dir):
            refuse_replacing(run_dir, training_made_elsewise(seed_config, run_dir), overwrite)
    storage.write_text(out_dir / "config.yaml", config_to_yaml(config))
    timings = {}
    start_all = _time.perf_counter()
    source = f" ({config_path})" if config_path else ""

    # ------------------------------------------------------------------ 1. generate
    start = _time.perf_counter()
    if dataset_is_current(config, dataset):
        _say("pipeline%s: dataset %s is up to date, skipping generation", source, dataset)
    else:
        _say("pipeline%s: [1/4] generate -> %s", source, dataset)
        with storage.output_lock(dataset):
            generate(config, dataset)
    timings["generate"] = _time.perf_counter() - start

    # ------------------------------------------------------------------ 2. train
    start = _time.perf_counter()
    trained = training_runs(config, out_dir) if "learned" in models else []
    for seed_config, run_dir, _, _ in trained:
        if training_is_current(seed_config, run_dir, dataset):
            _say("pipeline: trained model %s is up to date, skipping training", run_dir / "model.pt")
        else:
            from closure.training.trainer import train

            with storage.output_lock(run_dir):
                resume = _checkpoint_resumable(seed_config, run_dir, dataset)
                if resume:
                    _say("pipeline: [2/4] train -> %s (resuming from its checkpoint)", run_dir)
                else:
                    _say("pipeline: [2/4] train -> %s", run_dir)
                    for stale in ("model.pt", "checkpoint.pt"):
                        (run_dir / stale).unlink(missing_ok=True)
                (run_dir / "model.pt").unlink(missing_ok=True)
                train(seed_config, dataset, run_dir, resume=resume)
    timings["train"] = _time.perf_counter() - start

    # ------------------------------------------------------------------ 2b. calibrate
    start = _time.perf_counter()
    for m in config.calibrate.models:
        cal_dir = out_dir / "calibrate" / f"{m}_calibrated"
        if calibration_is_current(config, cal_dir, dataset):
            _say("pipeline: calibration %s is up to date, skipping", cal_dir)
        else:
            from closure.training.calibrate import calibrate

            _say("pipeline: [2/4] calibrate %s -> %s", m, cal_dir)
            calibrate(config, dataset, m, cal_dir)
        models.append(str(cal_dir))
    timings["calibrate"] = _time.perf_counter() - start

    # ------------------------------------------------------------------ 3. les
    les_dir = out_dir / "les"
    outputs = []
    start = _time.perf_counter()
    jobs = []  # (name, model argument, model dir, extra attributes, label of a trained model)
    for m in models:
        if m == "learned":
            for _, run_dir, name, seed in trained:
                group = {"seed_group": "learned", "train_seed": seed} if len(trained) > 1 else {}
                jobs.append((name, str(run_dir), run_dir, group, name))
        else:
            jobs.append((m, m, Path(m) if not is_baseline(m) else None, {}, None))
    for m, model_arg, model_dir, group, name in jobs:
        output = les_dir / _model_file_name(m)
        key = les_key(config, m, dataset, model_dir)
        outputs.append(_run_unless_current("LES", m, output, key, lambda: run_les(
            config, model_arg, dataset, output, name=name, extra_attrs=dict(group, pipeline_key=key))))
    timings["les"] = _time.perf_counter() - start

    # ------------------------------------------------------------------ 3b. the plain-solver ladder
    start = _time.perf_counter()
    for m in ladder_models(config, config.les.resolution):
        output = les_dir / _model_file_name(m)
        key = les_key(config, m, dataset, None)
        outputs.append(_run_unless_current("ladder", m, output, key, lambda: run_plain(
            config, m, dataset, output, extra_attrs={"pipeline_key": key})))
    timings["ladder"] = _time.perf_counter() - start

    # ------------------------------------------------------------------ 4. evaluate
    start = _time.perf_counter()
    report_dir = out_dir / "report"
    _say("pipeline: [4/4] evaluate -> %s", report_dir)
    with storage.output_lock(report_dir):
        metrics = evaluate(dataset, outputs, report_dir, cost_tolerance=config.run.cost_tolerance)
    timings["evaluate"] = _time.perf_counter() - start
    timings["total"] = _time.perf_counter() - start_all
    storage.write_json(out_dir / "timings.json", {k: round(v, 3) for k, v in timings.items()}, indent=1)
    for name, r in metrics.items():
        sim = r.get("similarity") or {}
        _say("pipeline: %-22s spectrum_error=%.4g pdf_distance=%.4g decorrelation_time=%.4g blowups=%d "
             "s/model time=%.3g similarity(spectrum)=%s", name, _nan(r["spectrum_error"]), _nan(r["pdf_distance"]),
             _nan(r["decorrelation_time"]), r["blowups"], _nan(r.get("les_seconds_per_model_time")),
             sim.get("spectrum_error"))
    _say("pipeline: done in %.1f s (%s)", timings["total"],
         ", ".join(f"{k} {v:.1f} s" for k, v in timings.items() if k != "total"))
    return report_dir / "report.md"


def _nan(v):
    return float("nan") if v is None else v
