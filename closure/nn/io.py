"""Build closure models from the ``model:`` config section; save and load them.

A saved model is one ``torch.save`` of a plain dict

    {"format": "closure.nn/1", "architecture": JSON string, "dtype": str,
     "state_dict": {...CPU tensors...}, "extra": {...}}

readable with ``torch.load(..., weights_only=True)``; the architecture
description rebuilds the module, the state_dict (normalization buffers
included) restores it.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

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


def load_model(path: str | os.PathLike, map_location: str | torch.device | None = "cpu", with_extra: bool = False):
    """Rebuild the model saved by ``save_model``; with ``with_extra`` return (model, extra).

    The model is in eval mode, in the dtype it was saved in, on ``map_location``.
    """
    path = Path(path)
    if not path.is_file():
        raise ArchitectureError(f"model file {str(path)!r} does not exist")
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # a truncated or foreign file
        raise ArchitectureError(f"{str(path)!r} is not a readable closure model: {type(err).__name__}") from err
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise ArchitectureError(f"{str(path)!r} is not a closure model file (format {FORMAT})")
    model = model_from_architecture(json.loads(payload["architecture"]))
    model = model.to(dtype=getattr(torch, payload["dtype"]), device=map_location)
    model.load_state_dict(payload["state_dict"])
    model.eval()
    return (model, payload["extra"]) if with_extra else model
