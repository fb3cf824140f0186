"""The exact subgrid-scale (SGS) term (docs/conventions.md).

With the DNS tendency ``R(w) = L w + N(w) + f`` and the LES tendency
``R_les(v) = L v + N_les(v) + P G f`` (its own 2/3 dealiasing included),

    field = P G w
    sgs   = P G R(w) - R_les(P G w) = P G N(w) - N_les(P G w)

(L is diagonal and the forcing is filtered, so both commute with ``P G`` and
cancel), and exactly in continuous time ``d(field)/dt = R_les(field) + sgs``.
The closure a LES needs is ``c(field) ~ sgs``.
"""

from __future__ import annotations

import torch

from closure.data.filters import Filter

__all__ = ["coarse_grain", "sgs_hat", "filtered_field_and_sgs"]


def coarse_grain(state: torch.Tensor, dns, les, filter: Filter) -> torch.Tensor:
    """``P G w`` of a physical DNS state, physical on the LES grid."""
    return filter.coarse_grain(state, dns.grid, les.grid)


def sgs_hat(state_hat: torch.Tensor, dns, les, filter: Filter) -> tuple[torch.Tensor, torch.Tensor]:
    """``(P G w, sgs)`` in LES spectral space from a DNS spectral state."""
    field_hat = filter.coarse_grain_hat(state_hat, dns.grid, les.grid)
    nonlinear_filtered = filter.coarse_grain_hat(dns.nonlinear_hat(state_hat), dns.grid, les.grid)
    return field_hat, nonlinear_filtered - les.nonlinear_hat(field_hat)


def filtered_field_and_sgs(state: torch.Tensor, dns, les, filter: Filter) -> tuple[torch.Tensor, torch.Tensor]:
    """``(P G w, sgs)`` physical on the LES grid from a physical DNS state ``(batch, *dns_shape)``."""
    field_hat, s_hat = sgs_hat(dns.grid.to_spectral(state), dns, les, filter)
    return les.grid.to_physical(field_hat), les.grid.to_physical(s_hat)
