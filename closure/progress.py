"""Progress reporting: a bar with rate and ETA on a terminal, quiet log lines otherwise.

    with progress(total=steps, desc="generate", unit="step") as bar:
        ...
        bar.update(k)
        bar.set_postfix(loss=0.1)
"""

from __future__ import annotations

import logging
import sys
import time
from contextlib import contextmanager

log = logging.getLogger("closure")

__all__ = ["progress", "log", "is_terminal"]


def is_terminal() -> bool:
    return sys.stderr.isatty()


class _LogBar:
    """tqdm's interface, printing a line at most every ``interval`` seconds."""

    def __init__(self, total, desc, unit, interval=10.0):
        self.total, self.desc, self.unit, self.interval = total, desc, unit, interval
        self.n, self.start, self.last, self.postfix = 0, time.time(), time.time(), ""

    def update(self, k=1):
        self.n += k
        if self.interval == float("inf"):  # silenced (enabled=False)
            return
        now = time.time()
        if now - self.last >= self.interval or (self.total and self.n >= self.total):
            self.last = now
            rate = self.n / max(now - self.start, 1e-9)
            eta = (self.total - self.n) / rate if self.total and rate > 0 else 0.0
            total = f"/{self.total:.6g}" if self.total else ""
            print(f"[{self.desc}] {self.n:.6g}{total} {self.unit} ({rate:.3g} {self.unit}/s, eta {eta:.0f}s){self.postfix}",
                  file=sys.stderr, flush=True)

    def set_postfix(self, **kwargs):
        self.postfix = " " + " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in kwargs.items())

    def close(self):
        pass


@contextmanager
def progress(total=None, desc="", unit="it", enabled=None):
    """A tqdm bar on a terminal, log lines otherwise; ``enabled=False`` silences both."""
    if enabled is False:
        bar = _LogBar(total, desc, unit, interval=float("inf"))
    elif enabled or is_terminal():
        from tqdm.auto import tqdm

        bar = tqdm(total=total, desc=desc, unit=unit, dynamic_ncols=True, leave=False)
    else:
        bar = _LogBar(total, desc, unit)
    try:
        yield bar
    finally:
        bar.close()
