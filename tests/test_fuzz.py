"""Property-based: whatever the config or ``--set`` value, a command runs or exits 2 with one line.

Hypothesis generates configs (the tiny experiment with one or two keys replaced by values
of the wrong type, non-finite, huge or tiny numbers, odd strings, unknown keys) and
``--set`` texts (arbitrary YAML-ish strings), picks a command and calls
`closure.cli.main` in-process. The expensive work behind each command (the DNS, the
training loop, the LES time loop, the sweep) is replaced by a stub that raises `Ran`:
reaching it means every check before it passed, i.e. the command "runs". The property:
either `Ran`, or exit status 2 with ``closure: error: ...`` as the last of at most three
stderr lines, never a traceback or another exception.

The default run tries a bounded number of examples (a few seconds); ``-m slow`` many more.
"""

from __future__ import annotations

import contextlib
import io
import string
import tempfile
from pathlib import Path

import pytest
import yaml

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from closure.cli import main  # noqa: E402
from closure.config import Config  # noqa: E402
from conftest import tiny_config_dict  # noqa: E402


class Ran(Exception):
    """The command got past every check to its expensive work."""


def _stop(*args, **kwargs):
    raise Ran


STUBS = [("closure.data.generation", "_run_in_process"), ("closure.data.generation", "_run_dask"),
         ("closure.training.trainer", "_train"), ("closure.training.unroll", "train_aposteriori"),
         ("closure.les.coupled", "integrate"), ("closure.study.normalization", "sweep"),
         ("closure.training.calibrate", "calibrate")]


def _leaves(d: dict, prefix: str = "") -> list[str]:
    out = []
    for k, v in d.items():
        out += _leaves(v, f"{prefix}{k}.") if isinstance(v, dict) else [prefix + k]
    return out


KEYS = sorted(set(_leaves(Config().model_dump(mode="json")) + _leaves(tiny_config_dict())))
ODD = ["", " ", "~", "null", ".inf", "-.inf", ".nan", "1e308", "1.0e-308", "-0", "0x1F", "0o17", "1_000",
       "[]", "{}", "[1, 2]", "{a: 1}", "yes", "no", "&a [*a]", "*x", "'", '"', "][", "9" * 5000,
       "2001-01-01", "!!python/object/apply:os.system [echo]", "!!binary aGVsbG8=", "é", "\t", "a: b: c",
       "- - - -", "<<: {a: 1}", "1e400", "-1e400"]

numbers = st.one_of(st.integers(min_value=-2 ** 80, max_value=2 ** 80),
                    st.floats(allow_nan=True, allow_infinity=True),
                    st.sampled_from([0, -1, 1, 2 ** 31, 2 ** 63, 1e-300, 1e300, -0.0, 0.5]))
values = st.recursive(
    st.one_of(numbers, st.booleans(), st.none(), st.text(max_size=12), st.sampled_from(ODD)),
    lambda inner: st.one_of(st.lists(inner, max_size=3),
                            st.dictionaries(st.text(string.ascii_lowercase, min_size=1, max_size=6), inner,
                                            max_size=2)),
    max_leaves=6)
keys = st.one_of(st.sampled_from(KEYS), st.text(string.ascii_lowercase + "._", min_size=1, max_size=12),
                 st.sampled_from(KEYS).map(lambda k: k + ".extra"), st.sampled_from(["", ".", "a..b", "seed."]))
set_texts = st.one_of(
    st.tuples(st.sampled_from(KEYS), st.one_of(st.sampled_from(ODD), st.text(max_size=16),
                                               numbers.map(repr))).map("=".join),
    st.text(max_size=24))
COMMANDS = ["generate", "train", "calibrate", "les", "pipeline", "sweep"]
commands = st.sampled_from(COMMANDS)


def _set_path(raw: dict, key: str, value) -> None:
    parts = key.split(".")
    node = raw
    for part in parts[:-1]:
        child = node.get(part)
        if not isinstance(child, dict):
            child = node[part] = {}
        node = child
    node[parts[-1]] = value


def _argv(command: str, cfg: Path, folder: Path, data: Path) -> list[str]:
    out = folder / "out"
    return {
        "generate": ["generate", str(cfg), "-o", str(out / "d.nc")],
        "train": ["train", str(cfg), "--data", str(data), "-o", str(out / "run")],
        "calibrate": ["calibrate", str(cfg), "--data", str(data), "--model", "smagorinsky", "-o", str(out / "cal")],
        "les": ["les", str(cfg), "--model", "smagorinsky", "--data", str(data), "-o", str(out / "l.nc")],
        "pipeline": ["pipeline", str(cfg), "-o", str(out)],
        "sweep": ["sweep", str(cfg), "--data", str(data), "-o", str(out / "sweep")],
    }[command]


def _check(argv: list[str]) -> None:
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            status = main(["-q"] + argv)
        except Ran:
            return
        except SystemExit as exc:  # argparse
            status = exc.code
    text = err.getvalue()
    lines = [ln for ln in text.splitlines() if ln.strip()]
    assert "Traceback" not in text, text[-2000:]
    if status == 0:
        return
    assert status == 2, (status, text[-2000:])
    assert 1 <= len(lines) <= 3 and lines[-1].startswith("closure"), text[-2000:]
    assert all(len(ln) < 400 for ln in lines), [len(ln) for ln in lines]


@pytest.fixture
def stubbed(monkeypatch):
    import importlib

    for module, name in STUBS:
        monkeypatch.setattr(importlib.import_module(module), name, _stop)


def _run_config(data: Path, command: str, changes: list, sets: list[str]) -> None:
    raw = tiny_config_dict()
    raw["dns"].update(trajectories=2, batch_size=2, samples=2)
    for key, value in changes:
        _set_path(raw, key, value)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        cfg = folder / "c.yaml"
        try:
            cfg.write_text(yaml.safe_dump(raw, allow_unicode=True))
        except (yaml.YAMLError, UnicodeEncodeError):  # not representable: write it as text instead
            cfg.write_text(repr(raw), errors="replace")
        argv = _argv(command, cfg, folder, data)
        for s in sets:
            argv += ["--set", s]
        _check(argv)


CONFIG_CASE = dict(command=commands, changes=st.lists(st.tuples(keys, values), min_size=1, max_size=2),
                   sets=st.lists(set_texts, max_size=2))
FAST = settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck), database=None,
                derandomize=True)
SLOW = settings(max_examples=600, deadline=None, suppress_health_check=list(HealthCheck), database=None)


@FAST
@given(**CONFIG_CASE)
def test_fuzzed_configs_run_or_fail_in_one_line(stubbed, tiny_dataset, command, changes, sets):
    _run_config(tiny_dataset, command, changes, sets)


@pytest.mark.slow
@SLOW
@given(**CONFIG_CASE)
def test_fuzzed_configs_many(stubbed, tiny_dataset, command, changes, sets):
    _run_config(tiny_dataset, command, changes, sets)


@FAST
@given(text=st.one_of(st.text(max_size=200), st.binary(max_size=200).map(lambda b: b.decode("latin-1"))),
       raw=st.booleans())
def test_fuzzed_config_text(stubbed, tiny_dataset, text, raw):
    """Arbitrary file contents (text or bytes) as the config."""
    with tempfile.TemporaryDirectory() as tmp:
        cfg = Path(tmp) / "c.yaml"
        if raw:
            cfg.write_bytes(text.encode("latin-1", errors="replace"))
        else:
            cfg.write_text(text, encoding="utf-8", errors="replace")
        _check(["generate", str(cfg), "-o", str(Path(tmp) / "d.nc")])


def test_the_stubs_are_reached(stubbed, tiny_dataset, tmp_path):
    """Without changes every command reaches its stub: the property is not vacuous."""
    cfg = tmp_path / "c.yaml"
    raw = tiny_config_dict()
    cfg.write_text(yaml.safe_dump(raw))
    for command in COMMANDS:
        with pytest.raises(Ran):
            main(["-q"] + _argv(command, cfg, tmp_path, tiny_dataset))
