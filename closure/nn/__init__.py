"""Mean-field-normalized networks for closures (docs/normalization.md).

MeanFieldMLP / MeanFieldCNN: networks with the N^(-gamma) normalization;
param_groups: their per-layer SGD/Adam rates; StencilClosure / ConvClosure:
closures ``model(state) -> sgs`` with stored input/output normalization;
symmetry helpers; build_model / save_model / load_model.
"""

from closure.nn.cnn import ConvClosure, MeanFieldCNN
from closure.nn.features import DERIVED_FEATURES, FieldClosure
from closure.nn.io import build_model, load_closure, load_model, model_from_architecture, save_model
from closure.nn.meanfield import ACTIVATIONS, ArchitectureError, MeanFieldMLP, MeanFieldNet
from closure.nn.rates import adam_rates, layer_rates, param_groups, sgd_rates
from closure.nn.stencil import StencilClosure, stencil_patches
from closure.nn.symmetry import (
    GroupAveraged,
    augment,
    group_elements,
    inverse_transform,
    random_transform,
    reflect_x,
    rotate,
    transform,
)

__all__ = [
    "ACTIVATIONS",
    "ArchitectureError",
    "ConvClosure",
    "DERIVED_FEATURES",
    "FieldClosure",
    "GroupAveraged",
    "MeanFieldCNN",
    "MeanFieldMLP",
    "MeanFieldNet",
    "StencilClosure",
    "adam_rates",
    "augment",
    "build_model",
    "group_elements",
    "inverse_transform",
    "layer_rates",
    "load_closure",
    "load_model",
    "model_from_architecture",
    "param_groups",
    "random_transform",
    "reflect_x",
    "rotate",
    "save_model",
    "sgd_rates",
    "stencil_patches",
    "transform",
]
