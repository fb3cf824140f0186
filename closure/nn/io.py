"""Build closure models from the ``model:`` config section; save and load them.

A saved model is one ``torch.save`` of a plain dict

    {"format": "closure.nn/1", "architecture": JSON string, "dtype": str,
     "state_dict": {...CPU tensors...}, "extra": {...}}

readable with ``torch.load(..., weights_only=True)``; the architecture
description rebuilds the module, the state_dict (normalization buffers
included) restores it.

``extra["made_for"]`` records what the model was trained for: ``equation``,
``les_resolution``, ``length``, ``field`` (the input variable) and ``dataset``
(the training data's `closure.data.dataset.dataset_identity`). Loaders compare
it with what they are about to do (`check_made_for`); a file without it (older
runs) has the same facts read from its stored config. Any problem reading a
model file (truncated, foreign, wrong architecture, a missing or misshapen
weight, an unknown dtype) is an `ArchitectureError` (a `ClosureError`) whose
one-line message names the file.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from closure.errors import ClosureError
from closure.storage import torch_save
from closure.nn.cnn import ConvClosure, MeanFieldCNN
from closure.nn.meanfield import ArchitectureError, MeanFieldMLP
from closure.nn.stencil import StencilClosure
from closure.nn.symmetry import GroupAveraged

FORMAT = "closure.nn/1"
MODEL_TYPES = {"mlp": StencilClosure, "cnn": ConvClosure}
CLASSES = {
    "MeanFieldMLP": MeanFieldMLP,
    "MeanFieldCNN": MeanFieldCNN,
    "StencilClosure": StencilClosure,
    "ConvClosure": ConvClosure,
}
OPTION_KEYS = ("bias", "output_bias", "output_init", "input_scaling")


def _get(cfg: Any, key: str, default: Any = None) -> Any:
    """cfg[key] for a mapping, cfg.key for an object (a pydantic section), else ``default``."""
    if isinstance(cfg, dict):
        value = cfg.get(key, default)
    else:
        value = getattr(cfg, key, default)
    return default if value is None else value


def build_model(
    model_cfg: Any,
    ndim: int,
    *,
    length: float | None = None,
    features: list[str] | None = None,
    symmetrize: bool | None = None,
    parity: int = -1,
    dtype: torch.dtype | None = None,
    device: torch.device | str | None = None,
) -> nn.Module:
    """The closure described by a ``model:`` section (dict or object with the same attributes).

    Keys: type (mlp = stencil MLP | cnn), stencil, hidden, gammas, activation,
    optional features (derived input channels), symmetry ("average" wraps the
    model in GroupAveraged; "none"/"augment" leave it bare) and the network
    options bias, output_bias, output_init, input_scaling. Keyword arguments
    override the section. Returns a module mapping state -> SGS tendency.
    """
    kind = str(_get(model_cfg, "type", "mlp"))
    if kind not in MODEL_TYPES:
        raise ArchitectureError(f"model.type={kind!r} is not supported (expected one of {', '.join(MODEL_TYPES)})")
    hidden = list(_get(model_cfg, "hidden", [256, 256]))
    kwargs = {
        "stencil": _get(model_cfg, "stencil", 5),
        "hidden": hidden,
        "gammas": _get(model_cfg, "gammas", [1.0] * len(hidden)),
        "activation": _get(model_cfg, "activation", "tanh"),
        "features": list(features if features is not None else _get(model_cfg, "features", [])),
        "length": float(length if length is not None else _get(model_cfg, "length", 2.0 * math.pi)),
    }
    kwargs.update({k: _get(model_cfg, k) for k in OPTION_KEYS if _get(model_cfg, k) is not None})
    model: nn.Module = MODEL_TYPES[kind](ndim, **kwargs)
    if symmetrize is None:
        symmetrize = _get(model_cfg, "symmetry", "none") == "average"
    if symmetrize:
        model = GroupAveraged(model, ndim, parity)
    return model.to(device=device, dtype=dtype)


def model_from_architecture(arch: dict) -> nn.Module:
    """Rebuild a module from the dict its ``architecture()`` returned."""
    name = arch.get("class")
    if name == "GroupAveraged":
        return GroupAveraged(model_from_architecture(arch["inner"]), **arch["kwargs"])
    if name not in CLASSES:
        raise ArchitectureError(f"unknown model class {name!r} in the saved architecture")
    return CLASSES[name](**arch["kwargs"])


_PLAIN = (str, int, float, bool, type(None), torch.Tensor)


def _check_loadable(value: Any, where: str = "extra") -> None:
    """Only types that torch.load(weights_only=True) reads back: containers of plain values and tensors."""
    if isinstance(value, dict):
        for k, v in value.items():
            if not isinstance(k, str):
                raise TypeError(f"{where}: keys must be strings, got {k!r}")
            _check_loadable(v, f"{where}.{k}")
    elif isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            _check_loadable(v, f"{where}[{i}]")
    elif not isinstance(value, _PLAIN):
        raise TypeError(f"{where}: {type(value).__name__} cannot be saved (use str, numbers, lists, dicts, tensors)")


def save_model(path: str | os.PathLike, model: nn.Module, extra: dict | None = None) -> Path:
    """Write ``model`` (architecture + state_dict) and ``extra`` to ``path`` atomically."""
    if not hasattr(model, "architecture"):
        raise TypeError(f"{type(model).__name__} has no architecture() description and cannot be saved")
    extra = dict(extra or {})
    _check_loadable(extra)
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    floats = [v.dtype for v in state.values() if v.is_floating_point()]
    payload = {
        "format": FORMAT,
        "architecture": json.dumps(model.architecture()),
        "dtype": str(floats[0]).removeprefix("torch.") if floats else "float32",
        "state_dict": state,
        "extra": extra,
    }
    return torch_save(payload, path)


def _read(path: Path, map_location) -> dict:
    if not path.is_file():
        raise ArchitectureError(f"model file {str(path)!r} does not exist")
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # a truncated or foreign file
        raise ArchitectureError(f"{str(path)!r} is not a readable closure model: {type(err).__name__}") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise ArchitectureError(f"{str(path)!r} is not a closure model file (format {FORMAT})")
    missing = [k for k in ("architecture", "dtype", "state_dict") if k not in payload]
    if missing:
        raise ArchitectureError(f"{str(path)!r}: damaged closure model file (missing {', '.join(missing)})")
    if not isinstance(payload.get("extra", {}), dict):
        raise ArchitectureError(f"{str(path)!r}: damaged closure model file (extra is not a mapping)")
    return payload


def _dtype(name, path: Path) -> torch.dtype:
    dtype = getattr(torch, name, None) if isinstance(name, str) else None
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise ArchitectureError(f"{str(path)!r}: unknown model dtype {str(name)[:40]!r}")
    return dtype


def load_model(path: str | os.PathLike, map_location: str | torch.device | None = "cpu", with_extra: bool = False,
               expect: dict | None = None):
    """Rebuild the model saved by ``save_model``; with ``with_extra`` return (model, extra).

    The model is in eval mode, in the dtype it was saved in, on ``map_location``.
    ``expect``: what the caller will use it for (keys of ``made_for``), checked first.
    """
    path = Path(path)
    payload = _read(path, map_location)
    extra = payload.get("extra", {})
    if expect:
        check_made_for(path, made_for(extra), expect)
    try:
        model = model_from_architecture(json.loads(payload["architecture"]))
    except ArchitectureError as err:
        raise ArchitectureError(f"{str(path)!r}: {err}") from None
    except Exception as err:  # malformed JSON, unknown or missing keyword arguments, bad values
        raise ArchitectureError(f"{str(path)!r}: the saved architecture cannot be built "
                                f"({type(err).__name__}: {_short(err)})") from None
    model = model.to(dtype=_dtype(payload["dtype"], path), device=map_location)
    try:
        model.load_state_dict(payload["state_dict"])
    except Exception as err:  # missing, unexpected or misshapen weights
        raise ArchitectureError(f"{str(path)!r}: the saved weights do not fit its architecture "
                                f"({_short(err)})") from None
    model.eval()
    return (model, extra) if with_extra else model


def _short(err: BaseException, limit: int = 160) -> str:
    text = " ".join(str(err).split())
    return text if len(text) <= limit else text[:limit] + "..."


MADE_FOR_KEYS = ("equation", "les_resolution", "length", "field", "dataset")


def made_for(extra: dict) -> dict:
    """What a saved model was trained for (``extra["made_for"]``, else read from its stored config)."""
    stored = extra.get("made_for")
    if isinstance(stored, dict):
        return {k: stored[k] for k in MADE_FOR_KEYS if k in stored}
    text = extra.get("config")
    if not isinstance(text, str):
        return {}
    try:
        from closure.config import config_from_yaml

        cfg = config_from_yaml(text)
    except Exception:
        return {}
    return {"equation": cfg.system.equation, "les_resolution": cfg.les.resolution, "length": cfg.system.length}


def check_made_for(path, stored: dict, expect: dict) -> None:
    """Raise `ArchitectureError` naming ``path`` and the first fact where ``stored`` and ``expect`` differ."""
    for key in MADE_FOR_KEYS:
        if key not in stored or key not in expect or expect[key] is None:
            continue
        a, b = stored[key], expect[key]
        try:
            same = math.isclose(float(a), float(b), rel_tol=1e-9) if key == "length" else a == b
        except (TypeError, ValueError):
            same = False
        if not same:
            raise ArchitectureError(f"{path}: the model was trained for {key}={str(a)[:60]!r}, "
                                    f"but this run has {key}={str(b)[:60]!r}")


def model_file(path: str | os.PathLike) -> Path:
    """``path/model.pt`` for a training run directory, else ``path``."""
    path = Path(path)
    return path / "model.pt" if path.is_dir() else path


def read_made_for(path: str | os.PathLike) -> dict:
    """``made_for`` of a model file or run directory, without building the model."""
    path = model_file(path)
    return made_for(_read(path, "cpu").get("extra", {}))


def load_closure(run_dir: str | os.PathLike, device=None, dtype: torch.dtype | None = None) -> nn.Module:
    """The trained closure of a training run directory (or a ``model.pt`` path), ready for an LES.

    Loaded with `load_model`, moved to ``device``/``dtype``, in eval mode, its
    parameters frozen (``requires_grad=False``).
    """
    path = Path(run_dir)
    file = model_file(path)
    if not file.is_file():
        raise ClosureError(f"{path}: no model.pt (expected a training run directory from `closure train`)")
    model = load_model(file).to(device=device, dtype=dtype).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model
