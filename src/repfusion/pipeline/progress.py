"""One progress line across the pipeline's stages, with an estimate of the time left.

Each stage is planned in seconds, estimated up front from timed steps (`estimate.py`); the ratio of measured
to estimated time on the finished stages, resumed ones excluded, corrects the estimate of the rest.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any


def clock(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}" if seconds >= 3600 else \
        f"{seconds // 60}:{seconds % 60:02d}"


class StageProgress:
    def __init__(self, plan: dict[str, float], log: Callable[[str], None] = print) -> None:
        self.plan, self.log = plan, log
        self.start = time.time()
        self.timings: dict[str, float] = {}
        self._done_units = 0.0
        self._busy = 0.0

    def left(self, after: str, including: bool = False) -> str:
        """The time left after stage `after` (from it on, `including` it)."""
        names = list(self.plan)
        rest = sum(self.plan[n] for n in names[names.index(after) + (0 if including else 1):])
        if self._done_units <= 0 or self._busy <= 0:  # nothing measured yet: the up-front estimate (seconds)
            return f"about {clock(rest)} left (estimate)"
        return f"about {clock(rest * self._busy / self._done_units)} left"  # corrected by the measured rate

    def run(self, name: str, fn: Callable[[], Any], skipped: bool = False) -> Any:
        names = list(self.plan)
        number = names.index(name) + 1
        self.log(f"\n[pretrain {number}/{len(names)}, {clock(time.time() - self.start)} elapsed, "
                 f"{self.left(name, including=True)}] {name}")
        began = time.time()
        result = fn()
        spent = time.time() - began
        self.timings[name] = spent
        if not skipped and spent > 1.0:  # a stage reused on --resume says nothing about the rate
            self._done_units += self.plan[name]
            self._busy += spent
        self.log(f"[pretrain {number}/{len(names)} done in {clock(spent)}, {clock(time.time() - self.start)} "
                 f"elapsed, {self.left(name)}]")
        return result
