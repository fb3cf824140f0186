"""Experiment configuration: one pydantic model per YAML section.

A config is the complete description of an experiment: it is validated here
(unknown keys are errors), resolved (defaults filled in) and stored inside every
output file. The keys: docs/conventions.md.

    load_config(path, overrides=["train.lr=0.5", ...]) -> Config
    config_to_yaml(config) -> str      # the resolved config, as stored in outputs

Every problem is raised as `ClosureError` with a one-line message naming the
file, the key and the value (values echoed in at most ~100 characters).

Hardening: every number must be finite (no ``.inf``/``.nan``) and in range
(counts and sizes below 2^31, resolutions at most 32768, seeds in [0, 2^63),
at most 2^31 time steps per run); a config file must be UTF-8 text holding one
YAML mapping (an empty file is an error, ``{}`` means all defaults) without
duplicate keys.
"""

from __future__ import annotations

import math
import reprlib
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal, Optional, Sequence, Union

import torch
import yaml
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, model_validator

import solvers
from closure.equations import EQUATION_NAMES, equation_spec
from closure.errors import ClosureError

MAX_COUNT = 2 ** 31 - 1  # counts, sizes and steps (fit a 32-bit index)
MAX_RESOLUTION = 32768
PositiveFloat = Annotated[float, Field(gt=0)]
NonNegativeFloat = Annotated[float, Field(ge=0)]
# the default relative cost tolerance of the front verdicts (RunConfig.cost_tolerance)
COST_TOLERANCE = 0.2
PositiveInt = Annotated[int, Field(gt=0, le=MAX_COUNT)]
Resolution = Annotated[int, Field(gt=0, le=MAX_RESOLUTION)]
Seed = Annotated[int, Field(ge=0, lt=2 ** 63)]


def _check_steps(key: str, value: float, dt_key: str, dt: float) -> None:
    steps = value / dt
    if not math.isfinite(steps) or steps > MAX_COUNT:
        raise ValueError(f"{key}={value:g} is {steps:.3g} steps of {dt_key}={dt:g}: more than {MAX_COUNT}")


class Section(BaseModel):
    """Base of every section: unknown keys are errors, numbers are finite, assignment is validated."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)


# --------------------------------------------------------------------------- system
# Each forcing section builds its solver forcing: ``build(seeds)`` (seeds: one per
# trajectory, used by random forcings only, marked ``per_trajectory``); ``check_resolution(n)``
# raises ValueError when an n-point grid does not resolve it.
class NoForcing(Section):
    type: Literal["none"] = "none"
    per_trajectory: ClassVar[bool] = False  # a random forcing drawn per trajectory (needs seeds)

    def check_resolution(self, n: int) -> None:
        return None

    def build(self, seeds: Optional[Sequence[int]] = None) -> None:
        return None


class _SingleWavenumberForcing(Section):
    """A steady forcing at one wavenumber ``k`` of amplitude ``A`` (the solver's class is ``solver``)."""

    type: str
    per_trajectory: ClassVar[bool] = False
    solver: ClassVar[type] = solvers.Forcing
    wavenumber: PositiveInt = 4
    amplitude: float = 1.0

    def check_resolution(self, n: int) -> None:
        if self.wavenumber >= n // 2:
            raise ValueError(f"system.forcing.wavenumber={self.wavenumber} is not resolved by les.resolution={n}")

    def build(self, seeds: Optional[Sequence[int]] = None) -> solvers.Forcing:
        return self.solver(wavenumber=self.wavenumber, amplitude=self.amplitude)


class KolmogorovForcing(_SingleWavenumberForcing):
    """Velocity forcing (A sin(k y), 0): vorticity forcing -A k cos(k y) (Kochkov et al. 2021)."""

    type: Literal["kolmogorov"] = "kolmogorov"
    solver: ClassVar[type] = solvers.Kolmogorov


class GuanForcing(_SingleWavenumberForcing):
    """Vorticity forcing -A k_f (cos k_f x + cos k_f y) (Guan et al. 2022, py2d)."""

    type: Literal["guan"] = "guan"
    solver: ClassVar[type] = solvers.Guan


class StochasticBurgersForcing(Section):
    """Subel et al. (2021): random amplitudes and phases of modes 1..modes, redrawn every `interval`."""

    type: Literal["stochastic"] = "stochastic"
    per_trajectory: ClassVar[bool] = True
    amplitude: float = math.sqrt(2.0) * 1e-2
    modes: PositiveInt = 3
    interval: PositiveFloat = 0.2

    def check_resolution(self, n: int) -> None:
        if self.modes >= n // 2:
            raise ValueError(f"system.forcing.modes={self.modes} does not fit les.resolution={n}")

    def build(self, seeds: Optional[Sequence[int]] = None) -> solvers.StochasticBurgers:
        if seeds is None:
            raise ValueError("the stochastic forcing needs one seed per trajectory")
        return solvers.StochasticBurgers(seeds, amplitude=self.amplitude, interval=self.interval, modes=self.modes)


class LinearForcingConfig(Section):
    """3D: f = A u on the modes 0 < |m| <= wavenumber (Lundgren 2003; Rosales & Meneveau 2005).

    ``coefficient`` is A (1/time); ``wavenumber`` the band's radius in mode numbers
    (null: every non-mean mode, Lundgren's physical-space forcing).
    """

    type: Literal["linear"] = "linear"
    per_trajectory: ClassVar[bool] = False
    coefficient: PositiveFloat = 0.1
    wavenumber: Optional[PositiveFloat] = 2.0

    def check_resolution(self, n: int) -> None:
        if self.wavenumber is None or self.wavenumber >= n // 2:
            raise ValueError(f"system.forcing.wavenumber={self.wavenumber}: the linear forcing's band must lie "
                             f"inside the LES grid (below {n // 2}) so that it commutes with the filter")

    def build(self, seeds: Optional[Sequence[int]] = None) -> solvers.LinearForcing:
        return solvers.LinearForcing(self.coefficient, max_wavenumber=self.wavenumber)


class BandForcingConfig(Section):
    """3D: a steady solenoidal forcing on the shell low <= |m| <= high with random phases, rms `amplitude`."""

    type: Literal["band"] = "band"
    per_trajectory: ClassVar[bool] = False
    low: PositiveFloat = 1.0
    high: PositiveFloat = 2.0
    amplitude: float = 1.0
    seed: int = 0

    def check_resolution(self, n: int) -> None:
        if self.high >= n // 3:
            raise ValueError(f"system.forcing.high={self.high:g} is not resolved by the 2/3-dealiased "
                             f"les.resolution={n} (needs high < {n // 3})")

    def build(self, seeds: Optional[Sequence[int]] = None) -> solvers.BandForcing:
        return solvers.BandForcing(self.low, self.high, amplitude=self.amplitude, seed=self.seed)


Forcing = Annotated[
    Union[NoForcing, KolmogorovForcing, GuanForcing, StochasticBurgersForcing, LinearForcingConfig,
          BandForcingConfig],
    Field(discriminator="type"),
]


class SystemConfig(Section):
    equation: Literal[EQUATION_NAMES] = "navier_stokes_2d"  # closure.equations.EQUATIONS
    length: PositiveFloat = 2 * math.pi
    viscosity: PositiveFloat = 1.0e-3
    drag: NonNegativeFloat = 0.0
    forcing: Forcing = Field(default_factory=NoForcing)

    @model_validator(mode="after")
    def _forcing_fits_equation(self) -> "SystemConfig":
        kind, allowed = self.forcing.type, self.spec.forcings
        if kind not in allowed:
            raise ValueError(f"forcing type {kind!r} is not a {self.spec.ndim}D forcing; {self.equation} takes "
                             f"{', '.join(repr(a) for a in allowed)}")
        return self

    @property
    def spec(self):
        """The `closure.equations.EquationSpec` of ``equation``."""
        return equation_spec(self.equation)

    @property
    def ndim(self) -> int:
        return self.spec.ndim


# --------------------------------------------------------------------------- initial
class InitialConfig(Section):
    """Random initial fields with a prescribed spectrum, seeded per trajectory.

    2D: E(k) ~ k^4 exp(-(k/k_p)^2) normalised to `energy`; 1D: random modes 1..peak_wavenumber
    (a flat band) normalised to `energy`; 3D: a solenoidal field with E(k) ~ k^4 exp(-2 (k/k_p)^2)
    normalised to `energy`, or the Taylor-Green vortex (``type: taylor_green``).
    """

    peak_wavenumber: PositiveFloat = 10.0
    energy: PositiveFloat = 0.5
    # 3D only: "random" (solenoidal, E(k) ~ k^4 exp(-2 (k/k_p)^2)) or "taylor_green"
    # (the Taylor-Green vortex of amplitude sqrt(8 energy), the same for every trajectory)
    type: Literal["random", "taylor_green"] = "random"


# --------------------------------------------------------------------------- dns / les
class DNSConfig(Section):
    """The DNS ensemble. ``dt: auto`` chooses the steps from the velocity (`solvers.CFL`:
    CFL number ``cfl``, steps at most ``max_dt``), landing exactly on the sample times;
    a number is a fixed step that must divide ``spinup_time`` and ``sample_interval``."""

    resolution: Resolution = 512
    dt: Union[PositiveFloat, Literal["auto"]] = 1.0e-3
    cfl: PositiveFloat = 0.5                 # dt: auto only
    max_dt: Optional[PositiveFloat] = None   # dt: auto only (None: the sample interval)
    spinup_time: NonNegativeFloat = 20.0
    sample_interval: PositiveFloat = 0.1
    samples: PositiveInt = 100
    trajectories: PositiveInt = 8
    integrator: Literal["etdrk4", "cnrk4"] = "etdrk4"
    batch_size: PositiveInt = 8  # trajectories integrated together (one dask task each)

    @model_validator(mode="after")
    def _times_are_multiples_of_dt(self) -> "DNSConfig":
        if self.adaptive:
            return self
        for key in ("spinup_time", "sample_interval"):
            value = getattr(self, key)
            _check_steps(f"dns.{key}", value, "dns.dt", self.dt)
            steps = value / self.dt
            if abs(steps - round(steps)) > 1e-6 * max(1.0, steps):
                raise ValueError(f"dns.{key}={value} is not a whole multiple of dns.dt={self.dt}")
        _check_steps("dns.spinup_time + samples x sample_interval",
                     self.spinup_time + self.samples * self.sample_interval, "dns.dt", self.dt)
        return self

    @property
    def adaptive(self) -> bool:
        return self.dt == "auto"

    @property
    def spinup_steps(self) -> int:
        """Steps of the spin-up (fixed ``dt`` only)."""
        return int(round(self.spinup_time / self._fixed_dt()))

    @property
    def sample_steps(self) -> int:
        """Steps between snapshots (fixed ``dt`` only)."""
        return int(round(self.sample_interval / self._fixed_dt()))

    def _fixed_dt(self) -> float:
        if self.adaptive:
            raise ClosureError("dns.dt is auto: the steps are chosen during the run")
        return float(self.dt)

    def sample_times(self) -> list[float]:
        """Model times of the snapshots: ``spinup_time + j sample_interval``, j < samples."""
        return [self.spinup_time + j * self.sample_interval for j in range(self.samples)]


class FilterConfig(Section):
    type: Literal["spectral", "gaussian", "box"] = "spectral"
    width: PositiveFloat = 2.0  # in LES grid spacings (gaussian, box)


class LESConfig(Section):
    """The LES grid, its filter and what the LES advances (``formulation``).

    ``filtered``: the LES advances the filtered field ``P G w`` and the closure supplies the
    exact SGS term of the filter. ``correction``: the LES is the plain solver on the LES grid
    (the truncated field ``P w``, the unfiltered forcing ``P f``) plus a learned correction
    (the truncation's commutator ``P N(w) - N_les(P w)``); its output is filtered by ``G`` for
    scoring against the filtered DNS (docs/conventions.md, "Formulations").
    """

    resolution: Resolution = 64
    filter: FilterConfig = Field(default_factory=FilterConfig)
    formulation: Literal["filtered", "correction"] = "filtered"


class DataConfig(Section):
    keep_dns: bool = False
    validation_fraction: Annotated[float, Field(ge=0, lt=1)] = 0.125
    test_fraction: Annotated[float, Field(ge=0, lt=1)] = 0.25


# --------------------------------------------------------------------------- model / train
class ModelConfig(Section):
    type: Literal["mlp", "cnn"] = "mlp"
    stencil: PositiveInt = 5
    hidden: list[PositiveInt] = Field(default_factory=lambda: [256, 256])
    gammas: list[Annotated[float, Field(ge=0.5, le=1.0)]] = Field(default_factory=lambda: [1.0, 1.0])
    activation: Literal["tanh", "sigmoid", "gelu", "silu", "softplus"] = "tanh"
    features: list[str] = Field(default_factory=list)  # optional derived input features
    symmetry: Literal["none", "augment", "average"] = "none"

    @model_validator(mode="after")
    def _gammas_match_hidden(self) -> "ModelConfig":
        if len(self.gammas) != len(self.hidden):
            raise ValueError(
                f"model.gammas has {len(self.gammas)} entries but model.hidden has {len(self.hidden)} layers"
            )
        if self.stencil % 2 == 0:
            raise ValueError(f"model.stencil={self.stencil} must be odd (a patch centred on the point)")
        return self


class TrainConfig(Section):
    mode: Literal["apriori", "aposteriori"] = "apriori"
    # the seed of the weights' initialization and of the sample order (None: the top-level seed);
    # the data and the train/validation/test split stay with the top-level seed
    seed: Optional[int] = None
    seeds: PositiveInt = 1  # models the pipeline trains, with training seeds seed, seed + 1, ...
    optimizer: Literal["sgd", "adam"] = "sgd"
    lr: PositiveFloat = 1.0
    epochs: PositiveInt = 20
    batch_size: PositiveInt = 1024
    schedule: Literal["constant", "cosine", "step"] = "cosine"
    grad_clip: Optional[PositiveFloat] = 10.0
    patience: Optional[PositiveInt] = None  # early stopping on validation loss
    samples_per_epoch: Optional[PositiveInt] = None  # stencil points per epoch (None: every point)
    weight_decay: NonNegativeFloat = 0.0
    bf16: bool = False
    # a-posteriori fine-tuning after the a-priori fit (train.mode: apriori): epochs through the solver
    # with the unroll settings below (0: a-priori only) at the rate finetune_lr (None: train.lr); the
    # a-priori model is kept in <run>/apriori and wins if its unrolled validation loss is lower
    finetune_epochs: Annotated[int, Field(ge=0)] = 0
    finetune_lr: Optional[PositiveFloat] = None
    # a-posteriori (solver-in-the-loop) training
    unroll_steps: PositiveInt = 8          # first unroll length (LES steps); doubles every epoch
    unroll_max_steps: PositiveInt = 32     # longest unroll (LES steps)
    unroll_batch: PositiveInt = 4          # windows per optimizer step
    windows_per_epoch: PositiveInt = 32
    spectral_loss: NonNegativeFloat = 0.0  # weight of the log-spectrum term
    checkpoint_every: PositiveInt = 1      # epochs between training checkpoints
    gradient_checkpoint: PositiveInt = 1   # LES steps per recomputed group in unrolled gradients


class RunConfig(Section):
    """The coupled LES. ``dt: auto`` chooses the steps from the LES velocity (`solvers.CFL`,
    CFL number ``cfl``) landing exactly on the dataset's snapshot times (the coupled LES and
    the ladder; the training unrolls, the calibration and the study's LES need a number)."""

    time: PositiveFloat = 50.0
    dt: Union[PositiveFloat, Literal["auto"]] = 1.0e-2
    cfl: PositiveFloat = 0.5                 # dt: auto only
    models: list[str] = Field(default_factory=lambda: ["none", "smagorinsky", "learned"])
    integrator: Literal["etdrk4", "cnrk4"] = "etdrk4"
    # the closure at every integrator stage (true) or once per step, held over the stages (false:
    # 1/4 of the closure's cost with ETDRK4; the closure term becomes first order in time)
    closure_per_stage: bool = True
    # torch.compile the learned closure's network in the coupled LES (eager if compiling fails)
    compile: bool = False
    smagorinsky_cs: PositiveFloat = 0.17
    leith_cl: PositiveFloat = 0.2
    # the plain-solver resolution ladder (closure/les/ladder.py): factors of les.resolution ([] = off)
    ladder: list[PositiveFloat] = Field(default_factory=lambda: [1.0, 1.5, 2.0, 3.0])
    ladder_starts: list[Literal["dns", "filtered"]] = Field(default_factory=lambda: ["dns", "filtered"])
    # the rungs' step rule (closure/les/ladder.py): null = run.dt x les.resolution / n (the LES's step at
    # the same CFL number); a number C = per rung the largest step dividing the sample interval whose CFL
    # number max(sum_d |u_d|) dt / dx on the rung's initial fields is at most C (docs/results.md: C chosen
    # on validation trajectories as the largest value at which every rung keeps its accuracy)
    ladder_cfl: Optional[PositiveFloat] = None
    # the front verdicts' relative cost tolerance (closure/evaluation/front.py): a run at least as good
    # on every metric whose wall time is within a factor 1 + cost_tolerance of a model's, above or
    # below, is a cost tie (reruns on a shared 2-core machine moved costs by ~20%); 0 = plain Pareto
    cost_tolerance: NonNegativeFloat = COST_TOLERANCE

    @model_validator(mode="after")
    def _steps_in_range(self) -> "RunConfig":
        if not self.adaptive:
            _check_steps("run.time", self.time, "run.dt", self.dt)
        return self

    @property
    def adaptive(self) -> bool:
        return self.dt == "auto"

    def fixed_dt(self, use: str) -> float:
        """The fixed ``run.dt``; `ClosureError` naming ``use`` for ``run.dt: auto``."""
        if self.adaptive:
            raise ClosureError(f"run.dt: auto is for the coupled LES and the ladder; {use} takes whole numbers "
                               "of fixed steps between snapshots: give run.dt a number")
        return float(self.dt)


class CalibrateConfig(Section):
    """Classical constants fitted a-posteriori (`closure calibrate`, docs/baselines.md).

    ``models``: the classical closures the pipeline calibrates (reported as
    ``<model>_calibrated`` next to the defaults); ``iterations`` Adam steps of rate
    ``lr`` on the log of the constant, on the unrolled loss of windows of
    ``unroll_steps`` LES steps, ``windows_per_trajectory`` per validation trajectory.
    """

    models: list[Literal["smagorinsky", "leith", "dynamic_smagorinsky"]] = Field(default_factory=list)
    iterations: PositiveInt = 20
    lr: PositiveFloat = 0.1
    unroll_steps: PositiveInt = 32
    windows_per_trajectory: PositiveInt = 2


class SweepConfig(Section):
    """The normalization study (`closure sweep`, closure/study/).

    Every run trains a stencil MLP with ``depth`` hidden layers, all of width N, by plain
    constant-rate SGD with the per-layer rates of docs/normalization.md. ``vary: outer``
    sweeps gamma_L over ``gammas`` with the inner gammas held at ``fixed_gamma``; ``vary:
    inner`` sweeps the inner gammas (all equal) with gamma_L at ``fixed_gamma``.
    """

    gammas: list[Annotated[float, Field(ge=0.5, le=1.0)]] = Field(
        default_factory=lambda: [0.5, 0.625, 0.75, 0.875, 1.0]
    )
    widths: list[PositiveInt] = Field(default_factory=lambda: [64, 128, 256, 512, 1024])
    seeds: PositiveInt = 5
    vary: list[Literal["outer", "inner"]] = Field(default_factory=lambda: ["outer", "inner"])
    time: Optional[PositiveFloat] = None  # training time t = k / N_L (theory units); else train.epochs
    tune_lr: bool = False
    # optional refinements of the grid (the defaults reproduce the plain gamma grid)
    fixed_gamma: Annotated[float, Field(ge=0.5, le=1.0)] = 1.0  # gamma of the layers not varied
    gammas_inner: Optional[list[Annotated[float, Field(ge=0.5, le=1.0)]]] = None  # vary inner over these (None: gammas)
    depth: Optional[PositiveInt] = None  # hidden layers (None: len(model.hidden))
    lr: Optional[PositiveFloat] = None  # base SGD rate alpha (None: train.lr)
    batch_size: PositiveInt = 16  # points per SGD step (the theory's SGD is batch 1); >= train_points: full batch
    # a fixed random subset of the training points (patches gathered once): a finite training set on which
    # long, converged runs are affordable; None draws every batch from all training points
    train_points: Optional[PositiveInt] = None
    tune_factors: list[PositiveFloat] = Field(default_factory=lambda: [0.1, 0.3, 1.0, 3.0, 10.0])  # x lr
    tune_width: Optional[PositiveInt] = None  # width of the tuning runs (None: the median width)
    test_points: PositiveInt = 16384  # fixed test-split points for the test error
    validation_points: PositiveInt = 8192  # fixed validation points (learning-rate tuning)
    probe_points: PositiveInt = 512  # fixed test inputs on which the across-seed output variance is taken
    aposteriori: bool = False  # also run a short coupled LES (run.time) per run and score it
    output_bias: bool = True  # train an output bias b_C (outside the theory; False: the papers' network)
    # --- the rate-transfer study (study: transfer), budgets, curves, seeds
    study: Literal["gamma", "transfer"] = "gamma"  # gamma x width x seed, or optimal base rate vs width
    # transfer: meanfield (all gamma 1), ntk (all 1/2), mixed (inner 1/2, outer 1), gamma:OUTER/INNER,
    # standard (one rate, PyTorch's default init), mup (Tensor Programs V, Table 3)
    parametrizations: list[str] = Field(default_factory=lambda: ["meanfield", "ntk", "mixed", "standard", "mup"])
    optimizers: list[Literal["sgd", "adam"]] = Field(default_factory=lambda: ["sgd"])  # transfer; gamma study: one
    steps: Optional[PositiveInt] = None  # fixed steps per run (overrides time and train.epochs)
    lr_centers: dict[str, PositiveFloat] = Field(default_factory=dict)  # transfer: grid centre per "PARAM/OPT" or "OPT"
    lr_ratio: Annotated[float, Field(gt=1.0)] = 4.0  # transfer: ratio of neighbouring rates of the grid
    lr_points: PositiveInt = 3  # transfer: rates of the first grid per cell (centred on the centre)
    bracket_steps: Annotated[int, Field(ge=0)] = 4  # transfer: grid extensions per side until the optimum is bracketed
    curve_points: Annotated[int, Field(ge=0)] = 0  # validation MSE recorded at this many times during training
    common_random_numbers: bool = False  # True: init from (seed, width) and batches from seed, shared by all gammas
    ood_scale: PositiveFloat = 3.0  # probe inputs outside the data: i.i.d. N(0, ood_scale^2) in normalized units
    mup_base_width: Optional[PositiveInt] = None  # mup: the width where it equals standard (None: smallest width)

    @model_validator(mode="after")
    def _consistent(self) -> "SweepConfig":
        if not self.gammas or not self.widths or not self.vary:
            raise ValueError("sweep.gammas, sweep.widths and sweep.vary must not be empty")
        for name in self.parametrizations:
            if name in ("meanfield", "ntk", "mixed", "standard", "mup"):
                continue
            parts = name[len("gamma:"):].split("/") if name.startswith("gamma:") else []
            try:
                ok = len(parts) == 2 and all(0.5 <= float(p) <= 1.0 for p in parts)
            except ValueError:
                ok = False
            if not ok:
                raise ValueError(f"sweep.parametrizations: {name!r} (expected meanfield, ntk, mixed, standard, "
                                 "mup or gamma:OUTER/INNER with gammas in [0.5, 1])")
        if self.probe_points > self.test_points:
            raise ValueError(f"sweep.probe_points={self.probe_points} exceeds sweep.test_points={self.test_points}")
        return self


# --------------------------------------------------------------------------- root
class Config(Section):
    seed: Seed = 0
    device: str = "auto"
    dtype: Literal["float32", "float64"] = "float32"
    system: SystemConfig = Field(default_factory=SystemConfig)
    initial: InitialConfig = Field(default_factory=InitialConfig)
    dns: DNSConfig = Field(default_factory=DNSConfig)
    les: LESConfig = Field(default_factory=LESConfig)
    data: DataConfig = Field(default_factory=DataConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    run: RunConfig = Field(default_factory=RunConfig)
    calibrate: CalibrateConfig = Field(default_factory=CalibrateConfig)
    sweep: SweepConfig = Field(default_factory=SweepConfig)
    # the file this config was loaded from (not a key; set by load_config, used for default output names)
    _source: Optional[str] = PrivateAttr(default=None)

    @property
    def source(self) -> Optional[str]:
        return self._source

    @property
    def training_seed(self) -> int:
        """The seed of a training run's initialization and sample order (``train.seed``, else ``seed``)."""
        return self.seed if self.train.seed is None else self.train.seed

    @model_validator(mode="after")
    def _consistent(self) -> "Config":
        if not (self.device in ("auto", "cpu", "cuda") or (self.device.startswith("cuda:") and self.device[5:].isdigit())):
            raise ValueError(f"device={self.device!r} must be auto, cpu, cuda or cuda:N")
        n_dns, n_les = self.dns.resolution, self.les.resolution
        if n_les >= n_dns:
            raise ValueError(f"les.resolution={n_les} must be below dns.resolution={n_dns}")
        if n_dns % n_les != 0:
            raise ValueError(f"les.resolution={n_les} must divide dns.resolution={n_dns}")
        if n_les % 2 or n_dns % 2:
            raise ValueError("dns.resolution and les.resolution must be even")
        if self.les.formulation == "correction" and self.system.ndim > 2:
            raise ValueError("les.formulation=correction supports burgers_1d and navier_stokes_2d only")
        if self.dns.adaptive and self.system.forcing.type == "stochastic":
            raise ValueError("dns.dt: auto needs a steady forcing (the stochastic forcing switches on a "
                             "fixed step's multiples); give dns.dt a number")
        return self


# --------------------------------------------------------------------------- loading
def _format_error(err: ValidationError, source: str) -> str:
    first = err.errors()[0]
    where = ".".join(str(p) for p in first["loc"] if not (isinstance(p, str) and p in _UNION_TAGS))
    msg = first["msg"]
    if first["type"] == "extra_forbidden":
        msg = "unknown key"
    elif msg.startswith("Value error, "):
        msg = msg[len("Value error, "):]
    value = first.get("input")
    quiet = isinstance(value, dict) or first["type"] in ("extra_forbidden", "missing")
    shown = "" if quiet else f" (got {echo(value)})"
    prefix = f"{source}: " if source else ""
    return f"{prefix}{echo_text(where, 100) + ': ' if where else ''}{echo_text(msg, 300)}{shown}"


_REPR = reprlib.Repr()
_REPR.maxlevel, _REPR.maxlist, _REPR.maxdict, _REPR.maxstring, _REPR.maxother = 2, 4, 4, 60, 60


def echo_text(text: str, limit: int = 100) -> str:
    """``text`` on one line, cut to ``limit`` characters."""
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[:limit - 3] + "..."


def echo(value: Any, limit: int = 100) -> str:
    """A user's value as it appears in an error message: repr, bounded in time and length (YAML aliases)."""
    return echo_text(_REPR.repr(value), limit)


_UNION_TAGS = {"none", "kolmogorov", "guan", "stochastic", "linear", "band"}


def parse_override(text: str) -> tuple[list[str], Any]:
    """Split `a.b=value` into (['a', 'b'], value parsed as YAML)."""
    shown = echo(text)
    if "=" not in text:
        raise ClosureError(f"--set {shown}: expected KEY=VALUE, e.g. train.lr=0.5")
    key, raw = text.split("=", 1)
    if not key or any(not part for part in key.split(".")):
        raise ClosureError(f"--set {shown}: malformed key {echo(key)}")
    try:
        value = _safe_load(raw) if raw != "" else None
    except ClosureError as exc:
        raise ClosureError(f"--set {shown}: {exc}") from None
    except (yaml.YAMLError, ValueError, RecursionError) as exc:
        raise ClosureError(f"--set {shown}: value is not valid YAML ({exc.__class__.__name__})") from None
    return key.split("."), value


def apply_overrides(raw: dict, overrides: list[str]) -> dict:
    """Apply `--set` overrides to a raw config mapping (in place) and return it."""
    for text in overrides or []:
        path, value = parse_override(text)
        node = raw
        for part in path[:-1]:
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            if not isinstance(child, dict):
                raise ClosureError(f"--set {echo(text)}: {echo(part)} is not a section")
            node = child
        node[path[-1]] = value
    return raw


def config_from_dict(raw: dict, source: str = "") -> Config:
    """Validate a raw mapping into a `Config`."""
    if not isinstance(raw, dict):
        raise ClosureError(f"{source or 'config'}: the top level must be a mapping of sections")
    try:
        return Config.model_validate(raw)
    except ValidationError as err:
        raise ClosureError(_format_error(err, source)) from None


class _UniqueKeyLoader(yaml.SafeLoader):
    """yaml.SafeLoader that refuses a mapping with the same key twice (PyYAML keeps the last silently)."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=True)
            try:
                duplicate = key in seen
                seen.add(key)
            except TypeError:  # an unhashable key: the base class reports it
                continue
            if duplicate:
                raise ClosureError(f"duplicate key {echo(key, 60)} at line {key_node.start_mark.line + 1}")
        return super().construct_mapping(node, deep=deep)


def _safe_load(text: str):
    """``yaml.safe_load`` with duplicate keys refused (`ClosureError`): the safe loader's
    single document, built by its subclass that checks keys."""
    loader = _UniqueKeyLoader(text)
    try:
        return loader.get_single_data()
    finally:
        loader.dispose()


def _read_text(path: Path) -> str:
    try:
        data = path.read_bytes()
    except IsADirectoryError:
        raise ClosureError(f"{path}: is a directory, expected a YAML config file") from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ClosureError(f"{path}: not a text file (invalid UTF-8 at byte {exc.start})") from None


def load_config(path: str | Path, overrides: Optional[list[str]] = None) -> Config:
    """Read, override and validate a YAML config file."""
    path = Path(path)
    if not path.exists():
        raise ClosureError(f"{path}: config file not found")
    text = _read_text(path)
    try:
        raw = _safe_load(text)
    except ClosureError as exc:
        raise ClosureError(f"{path}: {exc}") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise ClosureError(f"{path}: not valid YAML{where}") from None
    except RecursionError:
        raise ClosureError(f"{path}: YAML nested too deeply") from None
    except ValueError as exc:  # e.g. an integer of more than 4300 digits
        raise ClosureError(f"{path}: not valid YAML ({echo_text(exc, 80)})") from None
    if raw is None:
        raise ClosureError(f"{path}: the config file is empty (write `{{}}` for the default experiment)")
    if not isinstance(raw, dict):
        raise ClosureError(f"{path}: the top level must be a mapping of sections")
    config = config_from_dict(apply_overrides(raw, overrides or []), str(path))
    config._source = str(path)
    return config


def first_difference(a, b, prefix: str = "") -> str:
    """The dotted key of the first difference between two config mappings (``config`` if none is nested)."""
    if isinstance(a, dict) and isinstance(b, dict):
        for key in list(a) + [k for k in b if k not in a]:
            if a.get(key) != b.get(key):
                return first_difference(a.get(key), b.get(key), f"{prefix}{key}.")
    return prefix.rstrip(".") or "config"


def config_to_dict(config: Config) -> dict:
    return config.model_dump(mode="json")


def config_to_yaml(config: Config) -> str:
    """The resolved config as YAML (stored in every output)."""
    return yaml.safe_dump(config_to_dict(config), sort_keys=False)


def config_from_yaml(text: str, source: str = "stored config") -> Config:
    try:
        raw = _safe_load(text)
    except ClosureError as exc:
        raise ClosureError(f"{source}: {exc}") from None
    except (yaml.YAMLError, ValueError, RecursionError):
        raise ClosureError(f"{source}: not valid YAML") from None
    return config_from_dict(raw, source)


def resolve_device(name: str):
    """`auto` -> cuda if available else cpu; otherwise the named device (checked)."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ClosureError(f"device={name!r} requested but no CUDA device is available")
    return torch.device(name)


def resolve_dtype(name: str):
    return {"float32": torch.float32, "float64": torch.float64}[name]
