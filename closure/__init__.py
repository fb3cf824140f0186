"""closure: filters, exact SGS terms, datasets, mean-field networks, training,
coupled LES and a-posteriori evaluation, on top of the `solvers` package."""

from closure._version import __version__
from closure.errors import ClosureError
from closure.nn import MeanFieldMLP, MeanFieldCNN, StencilClosure, param_groups, build_model, save_model, load_model
