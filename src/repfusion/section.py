"""Config sections that check their own values when they are built.

A section (`OptimConfig`, `TrainerConfig`, `DataConfig`, `TimestepConfig`, the distillation `LossSection`) is a
plain dataclass whose `__post_init__` refuses a value that no type can express (a range, one of Lightning's
names) with one sentence (`RepFusionError`). Every way a section comes to be built checks it the same way, once,
before anything is loaded or written: jsonargparse building it from flags and `--config` files (it calls the
dataclass, and a `RepFusionError` from `__post_init__` passes through `config.parse_config` unchanged), a saved
config read back, `dataclasses.replace`, and the Python API; so no runner checks a section again.

Messages name the value as the user types it: `KEY` is the section's key in every run schema (`optim`,
`trainer`, `data`, `timesteps`, `loss`), so a message reads `optim.lr must be ...` for the flag `--optim.lr`. A
run schema therefore keeps each section under its `KEY` (tests/test_section_checks.py walks the schemas), which
keeps the messages right with no layer that rewrites them. A check that joins two sections (a task against the
data it needs, a head-only phase against the task) is the run schema's own: its `__post_init__`, beside the
fields of both sections (e.g. `tasks.finetune.FinetuneRun`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar


@dataclass
class Section:
    """Base of a config section dataclass: `KEY` names it in messages (see the module docstring).

    A dataclass itself, with no fields: jsonargparse reads a dataclass as plain data (flags and YAML keys) only
    when every class it derives from is one; any other base would make it a `class_path` type, which
    `config.py` refuses.
    """

    KEY: ClassVar[str]


def finite_number(value: Any) -> bool:
    """An int or float (not a bool) that is neither NaN nor infinite."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def whole_number(value: Any) -> bool:
    """An int that is not a bool (YAML's true would otherwise pass as 1)."""
    return isinstance(value, int) and not isinstance(value, bool)
