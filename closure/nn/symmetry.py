"""Symmetries of periodic closures: the reflection group in 1D, the square's D4 in 2D.

A group element is a pair (k, reflect): first the reflection x -> -x (if
``reflect``), then k quarter turns (2D only). Reflections are about the
origin, grid index j -> -j mod n, so the grid maps onto itself. A field with
parity p transforms as

    (g . f)(x) = p^[g reflects] f(g^-1 x)

- 2D vorticity omega and its SGS term are pseudo-scalars (p = -1): a rotation
  moves them, a reflection also flips their sign.
- 1D Burgers velocity u and its SGS term are vectors (p = -1): u(x) -> -u(-x).

Exact SGS maps are equivariant: sgs(g . field) = g . sgs(field). Two uses:
data augmentation (``augment``, ``random_transform``) and exact equivariance
by group averaging (``GroupAveraged``): model_G(x) = 1/|G| sum_g g^-1 . model(g . x).
"""

from __future__ import annotations

import torch
from torch import nn

from closure.nn.meanfield import ArchitectureError

Element = tuple[int, bool]


def group_elements(ndim: int) -> list[Element]:
    """The elements (k, reflect): 2 in 1D ({e, reflection}), 8 in 2D (D4)."""
    if ndim == 1:
        return [(0, False), (0, True)]
    if ndim == 2:
        return [(k, s) for s in (False, True) for k in range(4)]
    raise ArchitectureError(f"ndim={ndim!r}: symmetry groups exist for 1D and 2D fields")


def reflect_x(f: torch.Tensor) -> torch.Tensor:
    """f(x) -> f(-x) on the last axis: index j -> -j mod n."""
    return torch.roll(torch.flip(f, dims=(-1,)), shifts=1, dims=-1)


def rotate(f: torch.Tensor, k: int = 1) -> torch.Tensor:
    """k quarter turns of a (..., n, n) field about the origin: one turn is f(x, y) -> f(-y, x)."""
    if k % 4 and f.shape[-1] != f.shape[-2]:
        raise ValueError(f"rotations need a square grid, got {tuple(f.shape[-2:])}")
    for _ in range(k % 4):
        f = reflect_x(f).transpose(-1, -2)
    return f


def _sign(element: Element, parity: int) -> int:
    return parity if element[1] else 1


def transform(f: torch.Tensor, element: Element, parity: int = -1) -> torch.Tensor:
    """g . f for g = (k, reflect): reflect (with the parity's sign), then rotate k times."""
    k, reflect = element
    out = reflect_x(f) if reflect else f
    out = rotate(out, k) if k % 4 else out
    return out * _sign(element, parity)


def inverse_transform(f: torch.Tensor, element: Element, parity: int = -1) -> torch.Tensor:
    """g^-1 . f: undo the rotations, then the reflection (an involution)."""
    k, reflect = element
    out = rotate(f, -k % 4) if k % 4 else f
    out = reflect_x(out) if reflect else out
    return out * _sign(element, parity)


def augment(field: torch.Tensor, sgs: torch.Tensor, parity: int = -1) -> tuple[torch.Tensor, torch.Tensor]:
    """All group images of (field, sgs) pairs, concatenated along the batch (element-major).

    field, sgs: (batch, n) or (batch, ny, nx); returns (|G| batch, ...) each.
    """
    elements = group_elements(field.dim() - 1)
    fields = torch.cat([transform(field, g, parity) for g in elements])
    sgss = torch.cat([transform(sgs, g, parity) for g in elements])
    return fields, sgss


def random_transform(
    field: torch.Tensor, sgs: torch.Tensor, parity: int = -1, generator: torch.Generator | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Each (field, sgs) sample moved by its own random group element (same element for the pair)."""
    elements = group_elements(field.dim() - 1)
    choice = torch.randint(len(elements), (field.shape[0],), generator=generator).to(field.device)
    new_field, new_sgs = field.clone(), sgs.clone()
    for i, g in enumerate(elements):
        mask = choice == i
        if bool(mask.any()):
            new_field[mask] = transform(field[mask], g, parity)
            new_sgs[mask] = transform(sgs[mask], g, parity)
    return new_field, new_sgs


class GroupAveraged(nn.Module):
    """Exactly equivariant closure: model_G(x) = 1/|G| sum_g g^-1 . model(g . x).

    All |G| transformed copies go through ``model`` as one batch. Input and
    output share ``parity`` (-1 for vorticity/velocity and their SGS terms).
    """

    def __init__(self, model: nn.Module, ndim: int, parity: int = -1):
        super().__init__()
        if parity not in (-1, 1):
            raise ArchitectureError(f"parity={parity!r} must be +1 (scalar) or -1 (pseudo-scalar / vector)")
        self.model, self.ndim, self.parity = model, int(ndim), int(parity)
        self.elements = group_elements(self.ndim)

    @property
    def cuda_graph_safe(self) -> bool:
        """Capturable in a CUDA graph when the wrapped model is (the group maps are tensor ops)."""
        return bool(getattr(self.model, "cuda_graph_safe", False))

    def forward(self, state: torch.Tensor) -> torch.Tensor:
        batch = state.shape[0]
        copies = torch.cat([transform(state, g, self.parity) for g in self.elements])
        outputs = self.model(copies).split(batch)
        back = [inverse_transform(y, g, self.parity) for y, g in zip(outputs, self.elements)]
        return torch.stack(back).mean(dim=0)

    def fit_normalization(self, field: torch.Tensor, sgs: torch.Tensor) -> None:
        """Fit the wrapped model's normalization on the group-augmented data."""
        self.model.fit_normalization(*augment(field, sgs, self.parity))

    def architecture(self) -> dict:
        return {
            "class": "GroupAveraged",
            "kwargs": {"ndim": self.ndim, "parity": self.parity},
            "inner": self.model.architecture(),
        }
