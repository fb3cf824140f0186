"""Adaptive step sizes from the advective CFL number, landing exactly on given times.

`CFL` chooses the steps of `solvers.simulate` when it is passed as ``dt``. Between
two consecutive save times ``t_a < t_b`` the interval is cut into ``m`` equal steps

    h = (t_b - t_a) / m,   m the smallest entry of a ladder with  h <= dt_max
                           and  h * max_batch(sum_d max|u_d|) / dx <= cfl

so that the last step ends on ``t_b`` exactly (the time is set to ``t_b``, not
summed). The ladder ``m = 1, 2, 3, 4, 5, 6, 7, 8, 10, 11, 13, 16, 19, 23, 27, 32, ...``
(``round(2^(k/4))``: steps within ~19% of the largest stable one) keeps the set of
distinct steps small, so the stepper of each step (ETDRK4's coefficients depend on
it) is built once and cached by the equation. Every ``check_every`` steps the
CFL number of the current state is checked; where it exceeds ``cfl`` the step is
halved (the remaining steps doubled: the interval still ends on ``t_b``). The
whole batch shares the steps.

The advective limit of a pseudo-spectral step with the 2/3 rule: the largest
advective eigenvalue is ``k_max max|u| = (2 pi / 3) max|u| / dx``, and RK4 (and
the explicit part of ETDRK4) is stable for ``|lambda h| <~ 2.8``, i.e. a CFL
number ``h max|u| / dx <~ 1.3``; the default ``cfl = 0.5`` leaves a margin for
the growth of the velocity between checks and keeps the time error small.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

__all__ = ["CFL", "step_ladder"]

_MAX_STEPS_PER_INTERVAL = 2 ** 24


def step_ladder(minimum: float) -> int:
    """The smallest ladder entry ``round(2^(k/4)) >= minimum`` (``k = 0, 1, ...``)."""
    if not minimum > 1:
        return 1
    k = max(0, math.floor(4 * math.log2(minimum)) - 1)
    while round(2 ** (k / 4)) < minimum:
        k += 1
    return int(round(2 ** (k / 4)))


@dataclass(frozen=True)
class CFL:
    """Adaptive steps: CFL number ``cfl``, largest step ``max_dt``, a check every ``check_every`` steps."""

    cfl: float = 0.5
    max_dt: float = math.inf
    check_every: int = 4

    def __post_init__(self):
        if not (self.cfl > 0 and math.isfinite(self.cfl)):
            raise ValueError(f"cfl must be positive and finite, got {self.cfl}")
        if not self.max_dt > 0:
            raise ValueError(f"max_dt must be positive, got {self.max_dt}")
        if int(self.check_every) != self.check_every or self.check_every < 1:
            raise ValueError(f"check_every must be a positive integer, got {self.check_every}")

    def largest_step(self, equation, w_hat: torch.Tensor) -> float:
        """``min(max_dt, cfl dx / max speed)`` for the spectral state ``w_hat`` (inf speed -> nan)."""
        speed = float(equation.max_speed_hat(w_hat).max())
        if not math.isfinite(speed):
            return math.nan
        return min(self.max_dt, self.cfl * equation.grid.spacing / speed) if speed > 0 else self.max_dt

    def steps_for(self, length: float, largest: float) -> int:
        """Ladder number of equal steps for an interval of ``length`` with steps ``<= largest``."""
        if math.isinf(largest):
            return 1
        m = step_ladder(length / largest * (1 + 1e-12))
        if m > _MAX_STEPS_PER_INTERVAL:
            raise ValueError(f"adaptive step below {length / _MAX_STEPS_PER_INTERVAL:.3g}: the velocity is "
                             f"too large for cfl={self.cfl}")
        return m
