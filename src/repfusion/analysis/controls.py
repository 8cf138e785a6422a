"""The control arms every RepFusion comparison carries (../shared/docs/evidence.md), as small helpers.

- equal-compute scratch: scratch fine-tuned for as many optimiser steps as distillation + fine-tuning,
  so extra training is not mistaken for transferred knowledge;
- random teacher: the same recipe from a teacher of the same architecture with seeded, untrained
  weights (`teacher.init: random`), what distillation gives without the teacher's knowledge;
- `paired`: the list of seed-paired differences (points, 95 % interval) that results files carry.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path

from .stats import paired_difference

RANDOM_SUFFIX = "-random"  # an arm named X-random is arm X distilled from a random-weight teacher


def steps_per_epoch(images: int, batch_size: int) -> int:
    """Optimiser steps of one epoch as the data module batches it (the last partial batch dropped)."""
    return images // batch_size if images > batch_size else 1


def equal_compute_epochs(distill_steps: int, images: int, batch_size: int, finetune_epochs: int) -> int:
    """Fine-tuning epochs whose steps match distillation + `finetune_epochs` of fine-tuning (rounded up)."""
    if distill_steps < 0 or finetune_epochs < 1:
        raise ValueError(f"need distill_steps >= 0 and finetune_epochs >= 1, not {distill_steps}, {finetune_epochs}")
    return finetune_epochs + math.ceil(distill_steps / steps_per_epoch(images, batch_size))


def labelled_images(data) -> int:
    """How many training images fine-tuning on `data` (a DataConfig) sees, after the hold-out and label cut."""
    from ..data import ImageDataModule

    images = ImageDataModule(data, labelled_only=True)
    images.setup()
    return len(images.train_set)  # type: ignore[arg-type]


def distill_steps(run_dir: Path) -> int:
    """The optimiser steps a finished distillation took (recorded at export)."""
    record = Path(run_dir) / "student" / "distillation.json"
    return int(json.loads(record.read_text())["steps"])


def paired_entry(a: str, b: str, a_values: Sequence[float], b_values: Sequence[float], metric: str,
                 fraction: float | None = None) -> dict:
    """One row of a results file's `paired` list: mean and 95 % interval of a - b, in points."""
    d = paired_difference(a_values, b_values)
    return {"fraction": fraction, "a": a, "b": b, "metric": metric, "mean": 100 * d.mean, "low": 100 * d.low,
            "high": 100 * d.high, "n": d.n}


def format_entry(entry: dict) -> str:
    return f"{entry['mean']:+.2f} [{entry['low']:+.2f}, {entry['high']:+.2f}]"
