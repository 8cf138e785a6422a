"""The built parts a `Distillation` receives, one per side of its training step (built by `distill.run`).

    L = kd_weight * D(adapt(f_S(x)), f_T(x, t)) + CE(head(f_T(x, t)), y) + L_policy,   t ~ pi(t | x)

`TeacherTap` is f_T, `StudentTap` f_S, `Objective` D with its weight, `TimestepPolicy` pi with the head whose
loss is its reward; the augmentation (`data.augment.Augment`) and the optimiser settings complete the stage.
They are plain holders: `Distillation` registers their modules under its own names (`teacher`, `student`,
`distill_loss`, `timesteps`, `reward_head`, `normalize`, `target_norm`), so checkpoint keys do not depend on
how the parts are grouped.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from torch import nn

from ..data.augment import Normalize
from ..teachers import DiffusionTeacher
from .timesteps import TimestepStrategy


@dataclass
class TeacherTap:
    """f_T(x, t): the frozen teacher read at `layers` (one map, or several layers' pooled features fused) for
    [0, 1] images in `noise_mode`, standardised per t by `target_norm` (None: the raw feature, the paper's)."""

    teacher: DiffusionTeacher
    layers: str | Sequence[str]
    noise_mode: str = "clean"
    target_norm: nn.Module | None = None

    def __post_init__(self) -> None:
        self.layers = (self.layers,) if isinstance(self.layers, str) else tuple(self.layers)


@dataclass
class StudentTap:
    """f_S(x): the student's `layer` (read by a `FeatureTap`) on images normalised by `normalize`."""

    student: nn.Module
    layer: str
    normalize: Normalize = field(default_factory=Normalize)


@dataclass
class Objective:
    """D, the distillation loss with its adapter (or projector), and its weight in the total loss."""

    distill_loss: nn.Module
    kd_weight: float = 1.0


@dataclass
class TimestepPolicy:
    """pi(t | x) (fixed, uniform, decaying or reinforced) and the head whose per-image loss is its reward."""

    strategy: TimestepStrategy
    reward_head: nn.Module
