"""Filtered-DNS datasets: the netCDF schema (docs/conventions.md), writing, reading, validation.

A dataset holds, for ``trajectory`` independent runs and ``time`` snapshots,

    omega | u   the filtered field  P G w            (trajectory, time, [y,] x)
    sgs         the exact SGS term  P G R(w) - R_les(P G w)
    omega_dns | u_dns   the DNS field w (only with data.keep_dns), on (y_dns,) x_dns
    dns_steps   DNS time steps taken before each snapshot, since the previous one
                (the first: since the initial condition)  (trajectory, time); with
                ``dns.dt: auto`` they follow the flow's velocity (CFL)
    omega_coarse | u_coarse, sgs_coarse   (``les.formulation: correction`` only) the truncated
                field P w and its commutator P R(w) - R_les(P w): what the plain solver
                on the LES grid advances and what its learned correction must supply
                (`les_view` puts them in place of the field and ``sgs`` for training and
                the LES; the filtered field stays the scoring reference)
    omega_dns_t0 | u_dns_t0   the DNS field w at each trajectory's first snapshot
                (trajectory, [[z_dns,] y_dns,] x_dns; in 3D u_dns_t0, v_dns_t0, w_dns_t0),
                always stored: the initial state of the plain-solver resolution ladder
                (`closure.les.ladder`)

In 3D (``navier_stokes_3d``) the field is the filtered velocity, stored as the
variables ``u``, ``v``, ``w`` (its x, y, z components), the SGS term as ``sgs_u``,
``sgs_v``, ``sgs_w`` and the DNS copy as ``u_dns``, ``v_dns``, ``w_dns``, each on
``(trajectory, time, z, y, x)``. In memory (`open_dataset`, `build_dataset`) the
components are stacked into ``velocity``, ``sgs`` and ``velocity_dns`` with a
``component`` dimension after ``time`` (the solver's layout); `write` splits them
again (`split_components` / `stack_components`).

with coordinates ``trajectory`` (integer trajectory ids), ``time`` (model time
since the initial condition), ``x``/``y`` (LES grid points ``j * length / n_les``)
and ``x_dns``/``y_dns``. Global attributes record the physics, the filter, the
resolved config (YAML) and the provenance; the conventions are CF-1.8.
Files are zlib-compressed and chunked along ``trajectory`` and ``time`` so that
``open_dataset(path)`` reads them lazily with dask.

    ds = build_dataset(config, field, sgs, times, trajectory_ids)    # numpy arrays in
    write(ds, path)                       # atomic: temp file + rename (closure.storage)
    ds = open_dataset(path_or_paths)      # lazy (dask), validated
    config = dataset_config(ds)           # the stored Config
    split_trajectories(n, validation_fraction, test_fraction, seed)
"""

from __future__ import annotations

import datetime as _dt
import json
import os
from pathlib import Path
from typing import Iterable, Optional, Sequence, Union

import numpy as np
import xarray as xr

from closure import storage
from closure._version import __version__
from closure.config import config_from_yaml, config_to_yaml
from closure.equations import EQUATIONS, equation_spec
from closure.errors import ClosureError

__all__ = [
    "FIELD_NAMES", "field_name", "spatial_dims", "build_dataset", "write", "open_dataset", "validate",
    "dataset_config", "split_trajectories", "encoding_for", "REQUIRED_ATTRS", "global_attrs",
    "COMPONENTS", "field_dims", "component_variables", "split_components", "stack_components", "dns_start_name",
    "dns_start", "dataset_identity", "has_dns_start", "COARSE_SUFFIX", "formulation", "les_view",
]
COARSE_SUFFIX = "_coarse"

FIELD_NAMES = {name: spec.field for name, spec in EQUATIONS.items()}
# vector fields: the file variables of the components (x, y, z), in the solver's component order
COMPONENTS = {name: spec.variables for name, spec in EQUATIONS.items() if spec.components > 1}
REQUIRED_ATTRS = ("equation", "length", "viscosity", "drag", "forcing", "dns_resolution", "les_resolution",
                  "filter", "dt", "config", "closure_version", "created")
_LONG_NAMES = {
    "u": "filtered velocity P G u",
    "omega": "filtered vorticity P G omega",
    "u_dns": "DNS velocity u",
    "omega_dns": "DNS vorticity omega",
    "velocity": "filtered velocity P G u",
    "velocity_dns": "DNS velocity u",
    "u_dns_t0": "DNS velocity u at the trajectory's first snapshot",
    "omega_dns_t0": "DNS vorticity omega at the trajectory's first snapshot",
    "velocity_dns_t0": "DNS velocity u at the trajectory's first snapshot",
}
_SGS_LONG_NAME = {
    "u": "subgrid-scale tendency P G R(u) - R_les(P G u) of the filtered velocity",
    "omega": "subgrid-scale tendency P G R(omega) - R_les(P G omega) of the filtered vorticity",
    "velocity": "subgrid-scale tendency P G R(u) - R_les(P G u) of the filtered velocity",
}
# the solvers are nondimensional: every quantity is in model units (length unit = the box's unit,
# time unit = the model time); CF's "1" marks a dimensionless quantity
_UNITS = {"u": "1", "omega": "1", "velocity": "1", "sgs": "1"}
_CHUNK_BYTES = 4 * 2 ** 20


def field_name(equation: str) -> str:
    return equation_spec(equation).field


def dns_start_name(equation: str) -> str:
    """The variable holding the DNS field at each trajectory's first snapshot (``omega_dns_t0``/``u_dns_t0``)."""
    return FIELD_NAMES[equation] + "_dns_t0"


def spatial_dims(equation: str, dns: bool = False) -> tuple[str, ...]:
    """The grid dimensions: ``(x,)``, ``(y, x)`` or ``(z, y, x)`` (``*_dns`` on the DNS grid)."""
    dims = equation_spec(equation).dims
    return tuple(d + "_dns" for d in dims) if dns else dims


def field_dims(equation: str, dns: bool = False) -> tuple[str, ...]:
    """The in-memory dimensions of a snapshot: `spatial_dims`, after ``component`` for a vector field."""
    return (("component",) if equation in COMPONENTS else ()) + spatial_dims(equation, dns)


def component_variables(equation: str, variable: str) -> tuple[str, ...]:
    """The file variables of an in-memory vector variable (``velocity`` -> ``u, v, w``,
    ``sgs`` -> ``sgs_u, ...``, ``velocity_dns`` -> ``u_dns, ...``); ``(variable,)`` for a scalar field."""
    comps = COMPONENTS.get(equation)
    if comps is None:
        return (variable,)
    base = FIELD_NAMES[equation]
    if variable == base:
        return comps
    if variable.startswith(base + "_"):
        return tuple(c + variable[len(base):] for c in comps)
    return tuple(f"{variable}_{c}" for c in comps)


def split_components(ds: xr.Dataset) -> xr.Dataset:
    """The file layout: every variable with a ``component`` dimension becomes one variable per component."""
    equation = ds.attrs.get("equation")
    vector = [name for name, var in ds.data_vars.items() if "component" in var.dims]
    if not vector:
        return ds
    out = ds.drop_vars(vector + (["component"] if "component" in ds.coords else []))
    for name in vector:
        var = ds[name]
        for i, comp in enumerate(component_variables(equation, name)):
            attrs = dict(var.attrs)
            if "long_name" in attrs:
                attrs["long_name"] = f"{attrs['long_name']}, {'xyz'[i]} component"
            out[comp] = var.isel(component=i, drop=True).assign_attrs(attrs)
    return out


def stack_components(ds: xr.Dataset) -> xr.Dataset:
    """The in-memory layout: the component variables of a vector field stacked on ``component``
    (lazy with dask); datasets of scalar fields are returned unchanged."""
    equation = ds.attrs.get("equation")
    if equation not in COMPONENTS:
        return ds
    base = FIELD_NAMES[equation]
    out = ds
    for name in (base, "sgs", base + "_dns", dns_start_name(equation)):
        comps = component_variables(equation, name)
        if not all(c in out.data_vars for c in comps):
            continue
        attrs = dict(out[comps[0]].attrs)
        if "long_name" in attrs:
            attrs["long_name"] = attrs["long_name"].rsplit(", x component", 1)[0]
        stacked = xr.concat([out[c] for c in comps], dim="component").assign_attrs(attrs)
        space = [d for d in stacked.dims if d[0] in "xyz"]  # x, y, z (and *_dns): after the component axis
        stacked = stacked.transpose(*[d for d in stacked.dims if d != "component" and d not in space],
                                    "component", *space)
        out = out.drop_vars(list(comps)).assign({name: stacked})
    return out.assign_coords(component=("component", list(COMPONENTS[equation])))


def _coordinate(n: int, length: float) -> np.ndarray:
    return np.arange(n, dtype=np.float64) * (length / n)


def _version() -> str:
    return __version__


# --------------------------------------------------------------------------- building
def build_dataset(config, field: np.ndarray, sgs: np.ndarray, times: Sequence[float],
                  trajectory_ids: Sequence[int], dns_field: Optional[np.ndarray] = None,
                  created: Optional[str] = None, dns_start: Optional[np.ndarray] = None,
                  dns_steps: Optional[np.ndarray] = None, coarse: Optional[tuple] = None) -> xr.Dataset:
    """The contract's dataset from arrays ``(trajectory, time, *space)`` and a `Config`.

    ``dns_field``: the DNS fields of every snapshot (``keep_dns``); ``dns_start``: the DNS
    field at each trajectory's first snapshot ``(trajectory, *dns space)``; ``coarse``: the
    pair (truncated field ``P w``, its commutator) of the correction formulation.
    Values are cast to ``config.dtype``; coordinates are float64 physical positions.
    """
    s = config.system
    dtype = np.dtype(config.dtype)
    name = field_name(s.equation)
    dims = ("trajectory", "time") + field_dims(s.equation)
    n_les, n_dns = config.les.resolution, config.dns.resolution
    coords = {
        "trajectory": ("trajectory", np.asarray(trajectory_ids, dtype=np.int64),
                       {"long_name": "trajectory id (independent random initial condition)"}),
        "time": ("time", np.asarray(times, dtype=np.float64),
                 {"long_name": "model time since the initial condition", "units": "1", "axis": "T"}),
    }
    for d in reversed(spatial_dims(s.equation)):  # x first
        coords[d] = (d, _coordinate(n_les, s.length), {"long_name": f"{d} position (LES grid)", "units": "1",
                                                       "axis": d.upper()})
    if s.equation in COMPONENTS:
        coords["component"] = ("component", list(COMPONENTS[s.equation]),
                               {"long_name": "velocity component (x, y, z)"})
    data_vars = {
        name: (dims, np.asarray(field, dtype=dtype), {"long_name": _LONG_NAMES[name], "units": _UNITS[name]}),
        "sgs": (dims, np.asarray(sgs, dtype=dtype), {"long_name": _SGS_LONG_NAME[name], "units": _UNITS["sgs"]}),
    }
    if coarse is not None:
        data_vars[name + COARSE_SUFFIX] = (dims, np.asarray(coarse[0], dtype=dtype), {
            "long_name": f"truncated field P {name} (the plain solver's state on the LES grid)", "units": _UNITS[name]})
        data_vars["sgs" + COARSE_SUFFIX] = (dims, np.asarray(coarse[1], dtype=dtype), {
            "long_name": f"truncation commutator P R({name}) - R_les(P {name}) (the correction of the plain solver)",
            "units": _UNITS["sgs"]})
    if dns_field is not None or dns_start is not None:
        for axis in "xyz"[:s.ndim]:
            coords[f"{axis}_dns"] = (f"{axis}_dns", _coordinate(n_dns, s.length),
                                     {"long_name": f"{axis} position (DNS grid)", "units": "1"})
    if dns_field is not None:
        dns_dims = ("trajectory", "time") + field_dims(s.equation, dns=True)
        data_vars[name + "_dns"] = (dns_dims, np.asarray(dns_field, dtype=dtype),
                                    {"long_name": _LONG_NAMES[name + "_dns"], "units": _UNITS[name]})
    if dns_start is not None:
        start = dns_start_name(s.equation)
        data_vars[start] = (("trajectory",) + field_dims(s.equation, dns=True), np.asarray(dns_start, dtype=dtype),
                            {"long_name": _LONG_NAMES[start], "units": _UNITS[name],
                             "time": float(np.asarray(times, dtype=np.float64)[0])})
    if dns_steps is not None:  # (time,) shared by the batch, or (trajectory, time)
        steps = np.broadcast_to(np.asarray(dns_steps, dtype=np.int64), np.shape(field)[:2])
        data_vars["dns_steps"] = (("trajectory", "time"), steps.astype(np.int32), {
            "long_name": "DNS time steps taken before the snapshot, since the previous one "
                         "(the first: since the initial condition)", "units": "1"})
    attrs = global_attrs(config, created)
    return xr.Dataset(data_vars, coords=coords, attrs=attrs)


def global_attrs(config, created: Optional[str] = None) -> dict:
    """The contract's global attributes of a dataset generated from ``config``."""
    s = config.system
    n_les, n_dns = config.les.resolution, config.dns.resolution
    attrs = {
        "Conventions": "CF-1.8",
        "title": f"filtered DNS of {s.equation} with exact subgrid-scale terms",
        "source": f"closure {_version()} (pseudo-spectral DNS, {config.dns.integrator})",
        "equation": s.equation,
        "length": float(s.length),
        "viscosity": float(s.viscosity),
        "drag": float(s.drag),
        "forcing": json.dumps(s.forcing.model_dump(mode="json"), sort_keys=True),
        "dns_resolution": int(n_dns),
        "les_resolution": int(n_les),
        "filter": json.dumps(dict(config.les.filter.model_dump(mode="json"),
                                  filter_width=config.les.filter.width * s.length / n_les), sort_keys=True),
        "dt": "auto" if config.dns.adaptive else float(config.dns.dt),
        "config": config_to_yaml(config),
        "closure_version": _version(),
        "created": created or _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "sgs_definition": "sgs = P G R(w) - R_les(P G w); d(field)/dt = R_les(field) + sgs",
        "formulation": config.les.formulation,
    }
    return attrs


def encoding_for(ds: xr.Dataset, complevel: int = 4) -> dict:
    """zlib compression, chunks of one trajectory and as many times as fit ~4 MiB."""
    enc = {}
    for name, var in ds.data_vars.items():
        shape = var.shape
        space = int(np.prod(shape[2:])) if len(shape) > 2 else 1
        per_time = max(1, space * var.dtype.itemsize)
        nt = shape[1] if len(shape) > 1 else 1
        ct = int(max(1, min(nt, _CHUNK_BYTES // per_time)))
        enc[name] = {"zlib": True, "complevel": complevel, "shuffle": True,
                     "chunksizes": (1, ct) + tuple(shape[2:])}
    for name in ds.coords:
        enc[name] = {"_FillValue": None}
    return enc


# --------------------------------------------------------------------------- writing
def write(ds: xr.Dataset, path: Union[str, Path], complevel: int = 4) -> Path:
    """Write ``ds`` to ``path`` atomically (`closure.storage`: a temp file in the same folder, then a rename)."""
    ds = split_components(ds)
    encoding = encoding_for(ds, complevel)
    return storage.write_with(path, lambda tmp: ds.to_netcdf(tmp, engine="netcdf4", format="NETCDF4",
                                                             encoding=encoding))


# --------------------------------------------------------------------------- reading
def _open_one(path: Path, chunks) -> xr.Dataset:
    if not path.exists():
        raise ClosureError(f"{path}: dataset file not found")
    if path.is_dir():
        raise ClosureError(f"{path}: is a directory, expected a netCDF dataset file")
    try:
        return xr.open_dataset(path, engine="netcdf4", chunks=chunks)
    except (OSError, ValueError, RuntimeError) as exc:
        raise ClosureError(f"{path}: not a netCDF file ({exc.__class__.__name__})") from None


def validate(ds: xr.Dataset, source: str = "dataset") -> xr.Dataset:
    """Check the contract's schema; raise `ClosureError` naming the first problem."""
    equation = ds.attrs.get("equation")
    if equation not in FIELD_NAMES:
        if "sgs" not in ds.variables:
            raise ClosureError(f"{source}: not a closure dataset (missing variable 'sgs')")
        raise ClosureError(f"{source}: not a closure dataset (attribute 'equation' is {equation!r}, "
                           f"expected one of {sorted(FIELD_NAMES)})")
    name = FIELD_NAMES[equation]
    dims = ("trajectory", "time") + spatial_dims(equation)
    stacked = ("trajectory", "time") + field_dims(equation)
    for var in (name, "sgs"):
        if var in ds.data_vars and equation in COMPONENTS:  # the in-memory layout
            if tuple(ds[var].dims) != stacked:
                raise ClosureError(f"{source}: variable {var!r} has dimensions {tuple(ds[var].dims)}, expected {stacked}")
            continue
        for comp in component_variables(equation, var):
            if comp not in ds.data_vars:
                raise ClosureError(f"{source}: not a closure dataset (missing variable {comp!r})")
            if tuple(ds[comp].dims) != dims:
                raise ClosureError(f"{source}: variable {comp!r} has dimensions {tuple(ds[comp].dims)}, expected {dims}")
    for attr in REQUIRED_ATTRS:
        if attr not in ds.attrs:
            raise ClosureError(f"{source}: not a closure dataset (missing global attribute {attr!r})")
    for coord in dims[1:]:
        if coord not in ds.coords:
            raise ClosureError(f"{source}: not a closure dataset (missing coordinate {coord!r})")
    n_les = int(ds.attrs["les_resolution"])
    if ds.sizes["x"] != n_les:
        raise ClosureError(f"{source}: dimension x has {ds.sizes['x']} points but les_resolution is {n_les}")
    for dns_name in component_variables(equation, name + "_dns"):
        if dns_name in ds.data_vars:
            expect = ("trajectory", "time") + spatial_dims(equation, dns=True)
            if tuple(ds[dns_name].dims) != expect:
                raise ClosureError(f"{source}: variable {dns_name!r} has dimensions {tuple(ds[dns_name].dims)}, "
                                   f"expected {expect}")
    for start in component_variables(equation, dns_start_name(equation)):
        if start in ds.data_vars:
            expect = ("trajectory",) + spatial_dims(equation, dns=True)
            if tuple(ds[start].dims) != expect:
                raise ClosureError(f"{source}: variable {start!r} has dimensions {tuple(ds[start].dims)}, "
                                   f"expected {expect}")
    return ds


def formulation(ds: xr.Dataset) -> str:
    """``filtered`` or ``correction``: what the LES of this dataset advances (``les.formulation``)."""
    return str(ds.attrs.get("formulation", "filtered"))


def les_view(ds: xr.Dataset, source: str = "dataset") -> xr.Dataset:
    """The dataset as the closure and the LES see it: for the correction formulation the
    truncated field and its commutator (``omega_coarse``, ``sgs_coarse``) in place of the
    field and ``sgs`` (lazy, attributes kept); otherwise ``ds`` itself. Training, calibration
    and the LES's initial state read this view; the evaluation reads the filtered field."""
    if formulation(ds) != "correction":
        return ds
    name = FIELD_NAMES[ds.attrs["equation"]]
    pair = (name + COARSE_SUFFIX, "sgs" + COARSE_SUFFIX)
    missing = [v for v in pair if v not in ds.data_vars]
    if missing:
        raise ClosureError(f"{source}: a correction-formulation dataset without the variable {missing[0]!r}")
    view = ds.drop_vars([name, "sgs"]).rename({pair[0]: name, pair[1]: "sgs"})
    view.encoding = dict(ds.encoding)
    return view


def has_dns_start(ds: xr.Dataset) -> bool:
    """Whether a dataset (file or in-memory layout) holds the DNS state at the first snapshot."""
    equation = ds.attrs.get("equation", "navier_stokes_2d")
    if equation not in FIELD_NAMES:
        return False
    names = [dns_start_name(equation), FIELD_NAMES[equation] + "_dns"]
    return any(n in ds.data_vars or all(c in ds.data_vars for c in component_variables(equation, n)) for n in names)


def dns_start(ds: xr.Dataset, trajectories: Sequence[int], source: str = "dataset") -> np.ndarray:
    """The DNS fields at the first snapshot of the trajectories at positions ``trajectories``.

    From ``omega_dns_t0``/``u_dns_t0``, or from the ``*_dns`` copy of a ``keep_dns`` dataset;
    a dataset with neither (written before the variable existed) is a `ClosureError`.
    """
    equation = ds.attrs["equation"]
    start, full = dns_start_name(equation), FIELD_NAMES[equation] + "_dns"
    index = [int(i) for i in trajectories]
    if start in ds.data_vars:
        return np.asarray(ds[start].isel(trajectory=index).values)
    if full in ds.data_vars:
        return np.asarray(ds[full].isel(trajectory=index, time=0).values)
    raise ClosureError(f"{source}: no DNS state at the first snapshot (variable {start!r}); the plain-solver "
                       "ladder needs it: regenerate the dataset with this version of closure")


def open_dataset(path_or_paths: Union[str, Path, Iterable[Union[str, Path]]], chunks=None,
                 validate_schema: bool = True) -> xr.Dataset:
    """Open one dataset file, or several (concatenated along ``trajectory``), lazily and validated.

    ``chunks={}`` (the default) keeps the on-disk chunks, so variables are dask arrays;
    ``chunks=None`` is not used here (pass ``chunks=False`` to load eagerly into numpy).
    """
    if chunks is None:
        chunks = {}
    eager = chunks is False
    if isinstance(path_or_paths, (str, os.PathLike)):
        paths = [Path(path_or_paths)]
    else:
        paths = [Path(p) for p in path_or_paths]
    if not paths:
        raise ClosureError("open_dataset: no dataset files given")
    opened = [_open_one(p, None if eager else chunks) for p in paths]
    if validate_schema:
        try:
            for p, ds in zip(paths, opened):
                validate(ds, str(p))
        except ClosureError:
            for ds in opened:
                ds.close()
            raise
    if len(opened) == 1:
        return stack_components(opened[0].load() if eager else opened[0])
    equations = {ds.attrs.get("equation") for ds in opened}
    if len(equations) > 1:
        for ds in opened:
            ds.close()
        raise ClosureError(f"{paths[0]}: cannot combine datasets of different equations {sorted(map(str, equations))}")
    identities = [dataset_identity(ds) for ds in opened]
    for ds in opened:
        ds.close()
    try:
        ds = xr.open_mfdataset([str(p) for p in paths], engine="netcdf4", combine="nested",
                               concat_dim="trajectory", chunks=chunks if not eager else {},
                               data_vars="minimal", coords="minimal", compat="override",
                               combine_attrs="override", join="exact")
    except ValueError as exc:
        raise ClosureError(f"{paths[0]}: cannot combine datasets ({str(exc).splitlines()[0]})") from None
    ds.attrs["dataset_identity"] = _combined_identity(identities)
    return stack_components(ds.load() if eager else ds)


def _combined_identity(identities: Sequence[str]) -> str:
    import hashlib

    return hashlib.sha256("+".join(identities).encode()).hexdigest()[:16]


def dataset_identity(ds: xr.Dataset) -> str:
    """What a dataset is, as 16 hex digits: the hash of its generation key.

    Generation is deterministic, so two files with the same key hold the same values;
    the key (`closure.data.generation.generation_key`) is the ``generation_key`` attribute
    or, for files written without it, computed from the stored config. Several files
    opened together get the hash of their identities in order. Models, checkpoints and
    LES files record it, and their loaders compare it with the data they are given.
    """
    import hashlib

    stored = ds.attrs.get("dataset_identity")
    if stored:
        return str(stored)
    key = ds.attrs.get("generation_key")
    if not key:
        from closure.data.generation import generation_key

        key = generation_key(dataset_config(ds))
    return hashlib.sha256(str(key).encode()).hexdigest()[:16]


def dataset_config(ds: xr.Dataset):
    """The resolved `Config` stored in a dataset's ``config`` attribute."""
    text = ds.attrs.get("config")
    if text is None:
        raise ClosureError("dataset: missing global attribute 'config'")
    source = ds.encoding.get("source", "dataset")
    return config_from_yaml(text, f"{source} (stored config)")


# --------------------------------------------------------------------------- splits
def split_trajectories(n_trajectories: int, validation_fraction: float = 0.125, test_fraction: float = 0.25,
                       seed: int = 0) -> dict[str, list[int]]:
    """Deterministic, disjoint train / validation / test split of trajectory indices ``0..n-1``.

    The test set gets ``max(1, round(test_fraction * n))`` trajectories, the validation set
    ``round(validation_fraction * n)`` but at least 1 when ``validation_fraction > 0`` and
    ``n >= 3``; the training set keeps the rest (at least one). Which trajectories go where
    is a random permutation seeded by ``seed``; each list is sorted.
    """
    n = int(n_trajectories)
    if n < 2:
        raise ClosureError(f"dns.trajectories={n}: need at least 2 trajectories to split into train and test")
    if not (0 <= validation_fraction < 1 and 0 <= test_fraction < 1):
        raise ClosureError(f"data.validation_fraction={validation_fraction}, data.test_fraction={test_fraction}: "
                           "fractions must lie in [0, 1)")
    n_test = max(1, int(round(test_fraction * n)))
    n_val = int(round(validation_fraction * n))
    if validation_fraction > 0 and n >= 3:
        n_val = max(1, n_val)
    # the training set keeps at least one trajectory: shrink validation first, then test
    while n - n_test - n_val < 1:
        if n_val > (1 if validation_fraction > 0 and n >= 3 else 0):
            n_val -= 1
        elif n_test > 1:
            n_test -= 1
        else:
            n_val -= 1
    order = np.random.default_rng(np.random.SeedSequence([int(seed) % 2 ** 63, 0x5B117])).permutation(n)
    test = sorted(int(i) for i in order[:n_test])
    val = sorted(int(i) for i in order[n_test:n_test + n_val])
    train = sorted(int(i) for i in order[n_test + n_val:])
    return {"train": train, "validation": val, "test": test}
