"""closure: filters, exact SGS terms, datasets, mean-field networks, training,
coupled LES and a-posteriori evaluation, on top of the `solvers` package.

Commands (`closure generate | train | les | evaluate | pipeline | sweep`) live in
`closure.cli`; the heavier modules (`closure.data.dataset`, `closure.training.trainer`,
`closure.les.coupled`, `closure.evaluation.compare`, `closure.study.normalization`) are imported on use.
"""

from closure._version import __version__
from closure.les.baselines import DynamicSmagorinsky, Leith, NoClosure, Smagorinsky, Sum, make_closure
from closure.config import Config, load_config
from closure.errors import ClosureError
from closure.data.filters import Filter
from closure.nn import MeanFieldMLP, MeanFieldCNN, StencilClosure, param_groups, build_model, save_model, load_model
from closure.data.sgs import filtered_field_and_sgs

__all__ = [
    "__version__", "ClosureError", "Config", "load_config", "Filter", "filtered_field_and_sgs",
    "MeanFieldMLP", "MeanFieldCNN", "StencilClosure", "param_groups", "build_model", "save_model", "load_model",
    "NoClosure", "Smagorinsky", "DynamicSmagorinsky", "Leith", "Sum", "make_closure",
]
