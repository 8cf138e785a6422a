"""One progress line across the pipeline's stages, with an estimate of the time left.

Each stage is planned in seconds, estimated up front from timed steps (`estimate.py`); the ratio of measured
to estimated time on the finished stages, resumed ones excluded, corrects the estimate of the rest. The up-front
estimate counts in that ratio as `PRIOR_S` seconds of finished work, so a short first stage of another kind (the
layer choice: 12 s against an estimated 35 on the CIFAR folder) does not rescale the hour of training after it
(it had said 16 min left of 48).

What each invocation spent is kept in the run folder (`TIMINGS_FILE`, rewritten atomically as each stage
starts and ends), so the cost of a resumed run (`timings`, `wall_s`) sums every invocation: a stage reused on
`--resume` adds nothing and keeps its earlier seconds. An invocation killed inside a stage is credited up to
its last write in the run folder (a lower bound: the work after it is redone, and counted, by the next).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..io import write_json
from ..run.progress_lines import clock

TIMINGS_FILE = "timings.json"  # every invocation's seconds per stage and wall time, beside pretrain.json
PRIOR_S = 300.0  # seconds of finished work the up-front estimate weighs in the measured rate


class StageProgress:
    """`record`: the run folder's `TIMINGS_FILE`, read on resume (earlier invocations) and kept up to date;
    `began`: when this invocation started (its wall time counts from there; default now)."""

    def __init__(self, plan: dict[str, float], log: Callable[[str], None] = print, record: Path | None = None,
                 began: float | None = None) -> None:
        self.plan, self.log, self.record = plan, log, record
        self.start = time.time() if began is None else began
        self.earlier = read_invocations(record, self.start) if record is not None else []
        self.now: dict[str, Any] = {"began": self.start, "wall_s": 0.0, "stages": {}, "running": None}
        self.timings: dict[str, float] = {}  # seconds per stage, every invocation summed (kept up to date)
        self._total()
        self._done_units = 0.0
        self._busy = 0.0

    def wall_s(self) -> float:
        """Wall time of every invocation, this one so far included."""
        return sum(float(inv["wall_s"]) for inv in self.earlier) + time.time() - self.start

    def invocations(self) -> list[dict[str, Any]]:
        """Each invocation's wall time and seconds per stage, oldest first, this one so far last."""
        return [{"wall_s": float(inv["wall_s"]), "stages": dict(inv["stages"])}
                for inv in [*self.earlier, {**self.now, "wall_s": time.time() - self.start}]]

    def _total(self) -> None:
        summed: dict[str, float] = {}
        for inv in [*self.earlier, self.now]:
            for name, seconds in inv["stages"].items():
                summed[name] = summed.get(name, 0.0) + float(seconds)
        order = [n for n in self.plan if n in summed] + [n for n in summed if n not in self.plan]
        self.timings.clear()
        self.timings.update({name: summed[name] for name in order})

    def _save(self) -> None:
        self.now["wall_s"] = time.time() - self.start
        if self.record is not None:
            write_json(self.record, {"invocations": [*self.earlier, self.now]})

    def left(self, after: str, including: bool = False) -> str:
        """The time left after stage `after` (from it on, `including` it)."""
        names = list(self.plan)
        rest = sum(self.plan[n] for n in names[names.index(after) + (0 if including else 1):])
        if self._done_units <= 0 or self._busy <= 0:  # nothing measured yet: the up-front estimate (seconds)
            return f"about {clock(rest)} left (estimate)"
        rate = (self._busy + PRIOR_S) / (self._done_units + PRIOR_S)  # the estimate's own weight: PRIOR_S
        return f"about {clock(rest * rate)} left"  # corrected by the measured rate

    def replan(self, plan: dict[str, float], after: str) -> None:
        """Take `plan`'s seconds for the stages after `after` (a new fact, such as the chosen teacher layer,
        changes their cost) and say the whole run's estimate again; finished stages keep theirs."""
        names = list(self.plan)
        later = names[names.index(after) + 1:]
        changed = {n: plan[n] for n in later if n in plan and abs(plan[n] - self.plan[n]) >= 0.5}
        if not changed:
            return
        self.plan = {n: changed.get(n, s) for n, s in self.plan.items()}
        self.log(f"   estimate now: {self.left(after)} ("
                 + ", ".join(f"{n} {clock(s)}" for n, s in self.plan.items() if n in later and s >= 0.5) + ")")

    def run(self, name: str, fn: Callable[[], Any], skipped: bool = False) -> Any:
        names = list(self.plan)
        number = names.index(name) + 1
        self.log(f"\n[pretrain {number}/{len(names)}, {clock(time.time() - self.start)} elapsed, "
                 f"{self.left(name, including=True)}] {name}")
        began = time.time()
        self.now["running"] = {"stage": name, "began": began}
        self._save()
        try:
            result = fn()
        finally:  # a stage that raises (an interrupt, an error) keeps the seconds it spent
            spent = time.time() - began
            stages = self.now["stages"]
            stages[name] = stages.get(name, 0.0) + (0.0 if skipped else spent)  # reused on --resume: adds 0
            self.now["running"] = None
            self._save()
            self._total()
        if not skipped and spent > 1.0:  # a stage reused on --resume says nothing about the rate
            self._done_units += self.plan[name]
            self._busy += spent
        self.log(f"[pretrain {number}/{len(names)} done in {clock(spent)}, {clock(time.time() - self.start)} "
                 f"elapsed, {self.left(name)}]")
        return result


def read_invocations(record: Path, began: float) -> list[dict[str, Any]]:
    """The invocations `record` holds (none when it is missing or unreadable). One killed inside a stage
    (its record still names the running stage) is credited up to the newest file in the run folder written
    before this invocation `began`; with nothing newer than the stage's start, it adds nothing."""
    try:
        found = json.loads(record.read_text())["invocations"]
        invocations = [{"began": float(inv["began"]), "wall_s": float(inv["wall_s"]), "running": inv.get("running"),
                        "stages": {str(k): float(v) for k, v in inv["stages"].items()}} for inv in found]
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return []
    for inv in invocations:
        running, inv["running"] = inv["running"], None
        if not isinstance(running, dict) or "stage" not in running:
            continue
        start = float(running.get("began", inv["began"]))
        last = last_write(record.parent, before=began)
        credit = max(0.0, last - start)
        inv["stages"][running["stage"]] = inv["stages"].get(running["stage"], 0.0) + credit
        inv["wall_s"] = max(inv["wall_s"], last - inv["began"], sum(inv["stages"].values()))
    return invocations


# top-level files every invocation rewrites before its first stage: they date the start of a later
# invocation (one killed before its first stage, say), not the work of a killed stage
STARTUP_FILES = frozenset({TIMINGS_FILE, "config.yaml", "pretrain.json", "budget.json", ".repfusion.lock"})


def last_write(folder: Path, before: float) -> float:
    """The newest modification time of a file under `folder` earlier than `before` (0 when none), the files
    written at every start (`STARTUP_FILES`) left out."""
    newest = 0.0
    for path in folder.rglob("*"):
        if path.parent == folder and path.name in STARTUP_FILES:
            continue
        try:
            mtime = path.stat().st_mtime
        except OSError:
            continue
        if mtime < before and path.is_file():
            newest = max(newest, mtime)
    return newest
