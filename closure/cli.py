"""The ``closure`` command line: argument parsing and error reporting only.

    closure generate CONFIG [-o DATASET.nc] [--scheduler ADDR | --workers N] [--overwrite] [--set KEY=VALUE ...]
    closure train    CONFIG --data DATASET.nc [-o RUN_DIR] [--resume] [--init RUN_DIR] [--overwrite] [--set ...]
    closure calibrate CONFIG --data DATASET.nc --model smagorinsky|leith|dynamic_smagorinsky [-o RUN_DIR] [--overwrite] [--set ...]
    closure les      CONFIG --model MODEL --data DATASET.nc -o LES.nc [--overwrite] [--set ...]
                     (MODEL: a run directory, a baseline, or the plain solver plain@N / plain@Fx[:filtered])
    closure evaluate --reference DATASET.nc LES.nc [LES.nc ...] -o REPORT_DIR [--cost-tolerance T]
    closure pipeline CONFIG [-o OUT_DIR] [--overwrite] [--set ...]
    closure sweep    CONFIG --data DATASET.nc -o SWEEP_DIR [--scheduler ADDR | --workers N] [--set ...]

Each command loads and validates its config, then calls one library function
(imported lazily). Errors the user can cause (`ClosureError`, missing or
unreadable files, invalid values) become one line ``closure: error: <message>``
on stderr and exit status 2; Ctrl-C exits with status 130 and SIGTERM with 143
(128 + the signal number), each after one line on stderr; temp files of
unfinished writes are removed on the way out (`closure.storage`).

Every command holds a lock on its output while it runs (a second command on the
same output fails at once, naming the first one's pid), refuses an output that
is one of its inputs, and refuses to replace an output made from another config
unless ``--overwrite`` is given (docs/reliability.md).
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import math
import os
import signal
import sys
from pathlib import Path
from typing import Optional, Sequence

from closure.errors import ClosureError
from closure.storage import output_lock

log = logging.getLogger("closure")


# --------------------------------------------------------------------------- helpers
def _load(args):
    from closure.config import load_config

    return load_config(args.config, args.set or [])


def _stem(path) -> str:
    return Path(path).stem


def _require_file(path, what: str) -> Path:
    p = Path(path)
    if not p.exists():
        raise ClosureError(f"{p}: {what} not found")
    if p.is_dir():
        raise ClosureError(f"{p}: is a directory, expected a {what}")
    return p


def _lock(output):
    """The output's lock (`closure.storage.output_lock`), taken by rank 0 only under torchrun."""
    if int(os.environ.get("RANK", "0") or 0) != 0:
        return contextlib.nullcontext(output)
    return output_lock(output)


def _refuse_inputs(output, *inputs, what="output"):
    from closure.storage import refuse_input_as_output

    refuse_input_as_output(output, [p for p in inputs if p is not None], what)


def _check_scale_out(args):
    if getattr(args, "scheduler", None) and getattr(args, "workers", None) is not None:
        raise ClosureError("give either --scheduler or --workers, not both")
    if getattr(args, "workers", None) is not None and args.workers < 1:
        raise ClosureError(f"--workers {args.workers}: must be at least 1")


# --------------------------------------------------------------------------- commands
def cmd_generate(args) -> int:
    _check_scale_out(args)
    config = _load(args)
    from closure.data.generation import default_output, generate
    from closure.pipeline import dataset_made_elsewise, refuse_replacing

    output = Path(args.output) if args.output else default_output(config)
    _refuse_inputs(output, args.config)
    kwargs = {"progress": False} if getattr(args, "quiet", False) else {}
    with _lock(output):
        refuse_replacing(output, dataset_made_elsewise(config, output), args.overwrite)
        path = generate(config, output, scheduler=args.scheduler, workers=args.workers,
                        threads=args.threads, **kwargs)
    print(path)
    return 0


def cmd_train(args) -> int:
    config = _load(args)
    data = _require_file(args.data, "dataset file")
    if args.init is not None and not Path(args.init).is_dir():
        raise ClosureError(f"{args.init}: --init run directory not found")
    run_dir = Path(args.output) if args.output else Path("runs") / _stem(args.config) / "train"
    _refuse_inputs(run_dir, data, args.init, args.config)
    from closure.pipeline import refuse_replacing, training_made_elsewise
    from closure.training.trainer import train

    with _lock(run_dir):
        if not args.resume:
            refuse_replacing(run_dir, training_made_elsewise(config, run_dir), args.overwrite)
        result = train(config, data, run_dir, resume=args.resume, init=args.init)
    print(result if result is not None else run_dir)
    return 0


def cmd_les(args) -> int:
    config = _load(args)
    data = _require_file(args.data, "dataset file")
    model = args.model
    if model.startswith("plain@"):
        from closure.les.ladder import run_plain

        _refuse_inputs(args.output, data, args.config)
        with _lock(args.output):
            result = run_plain(config, model, data, Path(args.output))
        print(result if result is not None else args.output)
        return 0
    from closure.les.baselines import BASELINES, is_baseline
    from closure.les.coupled import made_by, run_les

    if not is_baseline(model) and not Path(model).is_dir():
        raise ClosureError(f"--model {model}: neither a baseline ({', '.join(BASELINES)}, or a + sum), "
                           "a plain solver (plain@N, plain@Fx) nor a training run directory")
    output = Path(args.output)
    model_file = Path(model) / "model.pt" if not is_baseline(model) else None
    _refuse_inputs(output, data, model_file, args.config)

    with _lock(output):
        if output.exists() and not args.overwrite and not made_by(output, config, model, data):
            raise ClosureError(f"{output}: exists and was not run with this model, dataset and run settings; "
                               "give --overwrite to replace it, or choose another output")
        result = run_les(config, model, data, output)
    print(result if result is not None else args.output)
    return 0


def cmd_calibrate(args) -> int:
    config = _load(args)
    data = _require_file(args.data, "dataset file")
    run_dir = Path(args.output) if args.output else Path("runs") / _stem(args.config) / f"{args.model}_calibrated"
    _refuse_inputs(run_dir, data, args.config)
    from closure.config import config_to_yaml
    from closure.pipeline import refuse_replacing
    from closure.training.calibrate import calibrate

    with _lock(run_dir):
        stored = run_dir / "config.yaml"
        reason = None
        if run_dir.is_dir() and any(run_dir.iterdir()) and not (run_dir / "calibration.json").is_file():
            reason = "is not a calibration run directory"
        elif stored.is_file() and stored.read_text() != config_to_yaml(config):
            reason = "was calibrated with another config"
        refuse_replacing(run_dir, reason, args.overwrite)
        print(calibrate(config, data, args.model, run_dir))
    return 0


def cmd_evaluate(args) -> int:
    from closure.config import COST_TOLERANCE

    tolerance = COST_TOLERANCE if args.cost_tolerance is None else args.cost_tolerance
    if not (tolerance >= 0 and math.isfinite(tolerance)):
        raise ClosureError(f"--cost-tolerance {args.cost_tolerance}: must be a finite number >= 0")
    reference = _require_file(args.reference, "reference dataset file")
    runs = [_require_file(r, "LES file") for r in args.runs]
    _refuse_inputs(args.output, reference, *runs)
    from closure.evaluation.compare import evaluate

    with _lock(args.output):
        result = evaluate(reference, runs, Path(args.output), cost_tolerance=tolerance)
    if isinstance(result, dict):
        print(_metrics_table(result))
        _print_verdicts(result)
    print(Path(args.output) / "report.md")
    return 0


def _print_verdicts(metrics: dict) -> None:
    """One line per model: on the cost-accuracy front, or dominated by which runs."""
    from closure.evaluation.report import verdict_lines

    for line in verdict_lines(metrics):
        print(line)


def _metrics_table(metrics: dict) -> str:
    """The contract's scalar metrics per model, one line each (the series stay in metrics.json)."""
    keys = ("spectrum_error", "pdf_distance", "decorrelation_time", "blowups", "les_seconds_per_model_time")
    heads = ("spectrum_error", "pdf_distance", "decorrelation_time", "blowups", "s/model_time")
    lines = [f"{'model':<24}" + "".join(f"{k:>20}" for k in heads)]
    for name, m in metrics.items():
        if isinstance(m, dict) and all(k in m for k in keys[:4]):
            lines.append(f"{name:<24}" + "".join(_cell(m.get(k)) for k in keys))
    return "\n".join(lines)


def _cell(value) -> str:
    """A table cell: numbers to 4 digits, a missing value (None, NaN) as n/a."""
    if isinstance(value, (int, float)) and not isinstance(value, bool) and value == value:
        return f"{value:>20.4g}"
    return f"{'n/a':>20}"


def cmd_pipeline(args) -> int:
    config = _load(args)
    out_dir = Path(args.output) if args.output else Path("runs") / _stem(args.config)
    _refuse_inputs(out_dir, args.config)
    from closure.pipeline import pipeline

    with _lock(out_dir):
        result = pipeline(config, out_dir, config_path=Path(args.config), overwrite=args.overwrite)
    metrics_file = Path(result).parent / "metrics.json" if result is not None else None
    if metrics_file is not None and metrics_file.is_file():
        import json

        _print_verdicts(json.loads(metrics_file.read_text()))
    print(result if result is not None else out_dir)
    return 0


def cmd_sweep(args) -> int:
    _check_scale_out(args)
    config = _load(args)
    data = _require_file(args.data, "dataset file")
    _refuse_inputs(args.output, data, args.config)
    from closure.study.normalization import sweep

    with _lock(args.output):
        result = sweep(config, data, Path(args.output), scheduler=args.scheduler, workers=args.workers)
    print(result if result is not None else args.output)
    return 0


# --------------------------------------------------------------------------- parser
class _Parser(argparse.ArgumentParser):
    """argparse, with usage errors on one line and exit status 2."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    from closure._version import __version__

    parser = _Parser(prog="closure", description="Filtered-DNS datasets, neural SGS closures, coupled LES.")
    parser.add_argument("--version", action="version", version=f"closure {__version__}")
    parser.add_argument("-q", "--quiet", action="store_true", help="only warnings and errors on stderr")
    common = _Parser(add_help=False)
    common.add_argument("-q", "--quiet", action="store_true", default=argparse.SUPPRESS,
                        help="only warnings and errors on stderr")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True
    _add = sub.add_parser
    sub.add_parser = lambda *a, **k: _add(*a, parents=[common], **k)  # -q also after the command

    def with_config(p):
        p.add_argument("config", metavar="CONFIG", help="YAML experiment config")
        p.add_argument("--set", action="append", metavar="KEY=VALUE", default=[],
                       help="override one config key (value parsed as YAML); repeatable")

    def with_overwrite(p):
        p.add_argument("--overwrite", action="store_true",
                       help="replace an existing output made from another config")

    def with_scale_out(p):
        p.add_argument("--scheduler", metavar="ADDRESS", help="attach to a dask.distributed scheduler")
        p.add_argument("--workers", type=int, metavar="N", help="start a local dask cluster of N worker processes")

    p = sub.add_parser("generate", help="DNS ensemble -> filtered dataset with exact SGS terms")
    with_config(p)
    p.add_argument("-o", "--output", metavar="DATASET.nc", help="output file (default data/<config stem>.nc)")
    with_scale_out(p)
    with_overwrite(p)
    p.add_argument("--threads", type=int, metavar="T",
                   help="torch threads per process (default 1; by default one process per core)")
    p.set_defaults(func=cmd_generate)

    p = sub.add_parser("train", help="train a closure on a dataset")
    with_config(p)
    p.add_argument("--data", required=True, metavar="DATASET.nc")
    p.add_argument("-o", "--output", metavar="RUN_DIR", help="run directory (default runs/<config stem>/train)")
    p.add_argument("--resume", action="store_true", help="continue from the run directory's last checkpoint")
    p.add_argument("--init", metavar="RUN_DIR", help="initialise the weights from another run")
    with_overwrite(p)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("calibrate", help="fit a classical closure's constant a-posteriori on validation trajectories")
    with_config(p)
    p.add_argument("--data", required=True, metavar="DATASET.nc")
    p.add_argument("--model", required=True, choices=["smagorinsky", "leith", "dynamic_smagorinsky"])
    p.add_argument("-o", "--output", metavar="RUN_DIR",
                   help="run directory (default runs/<config stem>/<model>_calibrated)")
    with_overwrite(p)
    p.set_defaults(func=cmd_calibrate)

    p = sub.add_parser("les", help="run the coupled LES with a closure")
    with_config(p)
    p.add_argument("--model", required=True, metavar="MODEL",
                   help="training or calibration run directory, a classical closure (none, smagorinsky, "
                        "dynamic_smagorinsky, leith, dealias_residual, or a + sum; docs/baselines.md), or the plain "
                        "solver plain@N / plain@Fx (N grid points or F times the LES resolution; add :filtered to "
                        "start from the LES's filtered field instead of the DNS state)")
    p.add_argument("--data", required=True, metavar="DATASET.nc", help="filtered DNS (initial fields)")
    p.add_argument("-o", "--output", required=True, metavar="LES.nc")
    with_overwrite(p)
    p.set_defaults(func=cmd_les)

    p = sub.add_parser("evaluate", help="a-posteriori metrics and figures against the filtered DNS")
    p.add_argument("--reference", required=True, metavar="DATASET.nc")
    p.add_argument("runs", nargs="+", metavar="LES.nc")
    p.add_argument("-o", "--output", required=True, metavar="REPORT_DIR")
    p.add_argument("--cost-tolerance", type=float, default=None, metavar="T",
                   help="relative cost difference within which two runs are a cost tie in the front verdicts "
                        "(default 0.2; 0 = the plain Pareto verdict)")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("pipeline", help="generate -> train -> les -> evaluate")
    with_config(p)
    p.add_argument("-o", "--output", metavar="OUT_DIR", help="output folder (default runs/<config stem>)")
    with_overwrite(p)
    p.set_defaults(func=cmd_pipeline)

    p = sub.add_parser("sweep", help="the normalization study (gamma x width x seed)")
    with_config(p)
    p.add_argument("--data", required=True, metavar="DATASET.nc")
    p.add_argument("-o", "--output", required=True, metavar="SWEEP_DIR")
    with_scale_out(p)
    p.set_defaults(func=cmd_sweep)
    return parser


# --------------------------------------------------------------------------- errors
def _describe(exc: BaseException) -> str:
    """One line for an error the user can cause."""
    if isinstance(exc, ClosureError):
        text = str(exc)
    elif isinstance(exc, FileNotFoundError):
        text = f"{exc.filename}: file not found" if exc.filename else str(exc)
    elif isinstance(exc, IsADirectoryError):
        text = f"{exc.filename}: is a directory" if exc.filename else str(exc)
    elif isinstance(exc, PermissionError):
        text = f"{exc.filename}: permission denied" if exc.filename else str(exc)
    elif isinstance(exc, OSError):
        reason = exc.strerror or exc.__class__.__name__
        text = f"{exc.filename}: {reason}" if exc.filename else str(exc) or reason
    else:  # pydantic.ValidationError
        try:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first.get("loc", ()))
            text = f"{where}: {first.get('msg', exc)}" if where else str(first.get("msg", exc))
        except Exception:
            text = str(exc)
    return " ".join(text.split()) or exc.__class__.__name__


class _StderrHandler(logging.StreamHandler):
    """A handler writing to whatever ``sys.stderr`` is now (callers of `main` may swap it between calls)."""

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value):
        pass


def _setup_logging(quiet: bool):
    handler = _StderrHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(message)s", datefmt="%H:%M:%S"))
    root = logging.getLogger("closure")
    root.handlers[:] = [handler]
    root.setLevel(logging.WARNING if quiet else logging.INFO)
    root.propagate = False
    for noisy in ("distributed", "tornado", "bokeh"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised in the main thread so that it unwinds like Ctrl-C (temp files removed)."""


def _on_sigterm(signum, frame):
    raise Terminated()


def _handle_sigterm():
    """Turn SIGTERM into `Terminated` (only possible from the main thread); return the previous handler."""
    try:
        return signal.signal(signal.SIGTERM, _on_sigterm)
    except ValueError:  # not the main thread
        return None


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point of the ``closure`` console script; returns (and exits with) the status."""
    from pydantic import ValidationError

    parser = build_parser()
    args = parser.parse_args(argv)
    _setup_logging(getattr(args, "quiet", False))
    previous = _handle_sigterm()
    try:
        status = args.func(args) or 0
    except Terminated:
        print("closure: terminated (SIGTERM)", file=sys.stderr)
        status = 128 + signal.SIGTERM
    except KeyboardInterrupt:
        print("closure: interrupted", file=sys.stderr)
        status = 130
    except (ClosureError, OSError, ValidationError) as exc:
        print(f"closure: error: {_describe(exc)}", file=sys.stderr)
        status = 2
    except ModuleNotFoundError as exc:
        if exc.name and exc.name.startswith("closure."):
            print(f"closure: error: 'closure {args.command}' is not available in this installation "
                  f"(module {exc.name} is missing)", file=sys.stderr)
            status = 2
        else:
            raise
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
    sys.stdout.flush()
    return status


def run(argv: Optional[Sequence[str]] = None):
    sys.exit(main(argv))


if __name__ == "__main__":
    run()
