"""Named fine-tuning protocols, so a comparison can try several and keep, per seed and arm, the one the
validation split prefers (issue 23: each applied identically to every arm, the test split never choosing).

- plain: every weight trains from the first step at the run's learning rate.
- lpft: LP-FT (Kumar et al., ICLR 2022): the head starts as the frozen backbone's logistic-regression probe on the
  labelled images, then everything trains at `lpft_lr`, lower than plain's. At plain's rate the fitted head's
  gradients undid what distillation put in: on the CIFAR subset LP-FT at 0.1 scored below the probe it started
  from, at 0.03 (chosen on validation) it kept it (benchmarks/results/lpft_10pct.md).
- lp: the linear probe kept: the head starts as the probe and only it trains (BatchNorm statistics recomputed on
  the labelled images); the bound on what fine-tuning can keep of the backbone.
- joint: the teacher in the loop, the init's distillation term kept in the loss with weight `joint_weight`.
  A scratch run has no teacher, so joint is plain for it (`effective` says so and the run is not repeated).

`pretrain` and the demo run `DEFAULT_MENU` when no menu is given and both can run (`default_menu`): on the CIFAR
subset, plain and LP-FT kept per seed and arm on validation put the trained teacher's student 3.8 (10 % labels) and
3.2 (1 %) test points above the random teacher's, against 2.8 and 1.3 for plain alone (lpft_10pct.md, lpft_1pct.md).

A protocol is a change to a fine-tune's config (`apply`), nothing else: the loop, data and augmentation are the
same for every protocol, so the only difference between two runs of one arm and seed is the protocol.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from ..errors import RepFusionError
from ..section import finite_number

if TYPE_CHECKING:
    from .finetune import FinetuneRun

PROTOCOLS = ("plain", "lpft", "lp", "joint")
DEFAULT_MENU = ("plain", "lpft")
LPFT_LR = 0.03  # chosen on the CIFAR subset's validation split over 0.01 and plain's 0.1 (pilot_lpft03.md)


@dataclass(frozen=True)
class ProtocolSettings:
    """What the protocols other than plain need: LP-FT's rate once everything trains, the joint weight."""

    lpft_lr: float = LPFT_LR
    joint_weight: float = 1.0

    def __post_init__(self) -> None:
        if not (finite_number(self.lpft_lr) and self.lpft_lr > 0):
            raise RepFusionError(f"lpft_lr must be a positive learning rate (e.g. {LPFT_LR}), not {self.lpft_lr}.")
        if not (finite_number(self.joint_weight) and self.joint_weight > 0):
            raise RepFusionError(f"joint_weight must be a positive number (e.g. 1.0), not {self.joint_weight}.")


def check_protocols(names: list[str] | tuple[str, ...], key: str = "protocols") -> tuple[str, ...]:
    """The menu as given, each name known and none twice; one sentence otherwise."""
    if isinstance(names, str) or not isinstance(names, (list, tuple)) or not names:
        raise RepFusionError(f"{key} must be a list of one or more of {', '.join(PROTOCOLS)} (e.g. [plain, lpft]), "
                             f"not {names!r}.")
    unknown = [n for n in names if n not in PROTOCOLS]
    if unknown:
        raise RepFusionError(f"{key}: unknown protocol {unknown[0]!r}; choose among {', '.join(PROTOCOLS)}.")
    if len(set(names)) != len(names):
        raise RepFusionError(f"{key} names a protocol twice ({list(names)}); give each once.")
    return tuple(names)


def default_menu(probe_head: bool, validation: bool) -> tuple[str, ...]:
    """The menu when none is given: `DEFAULT_MENU` where it can run, a network with a linear head to fit the probe
    into (`probe_head`) and a validation split to choose on (`validation`); plain alone otherwise, never a refusal."""
    return DEFAULT_MENU if probe_head and validation else ("plain",)


def effective(name: str, has_teacher: bool) -> str:
    """The protocol a run really gets: without a teacher (scratch) the teacher in the loop is plain."""
    return "plain" if name == "joint" and not has_teacher else name


def apply(run: FinetuneRun, name: str, settings: ProtocolSettings = ProtocolSettings()) -> FinetuneRun:
    """`run` under protocol `name` (plain: unchanged). The run should be plain to begin with (no head-only phase,
    a random head, no teacher in the loop), so a protocol is the one difference between two runs."""
    name = effective(name, run.init is not None)
    if name == "lpft":
        return replace(run, head_init="probe", optim=replace(run.optim, lr=settings.lpft_lr))
    if name == "lp":
        return replace(run, head_init="probe", head_epochs=max(1, run.trainer.max_epochs or 1))
    if name == "joint":
        return replace(run, teacher_in_loop=replace(run.teacher_in_loop, weight=settings.joint_weight))
    if name != "plain":
        raise RepFusionError(f"unknown fine-tuning protocol {name!r}; choose among {', '.join(PROTOCOLS)}.")
    return run


def chosen(scores: dict[str, float], higher_is_better: bool = True) -> str:
    """The protocol with the best validation score; a tie goes to the one named first in the menu."""
    order = list(scores)
    sign = 1.0 if higher_is_better else -1.0
    return max(order, key=lambda name: (sign * scores[name], -order.index(name)))


__all__ = ["DEFAULT_MENU", "LPFT_LR", "PROTOCOLS", "ProtocolSettings", "apply", "check_protocols", "chosen",
           "default_menu", "effective"]
