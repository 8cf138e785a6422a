"""Every downstream task in one place: what it builds, what it monitors, what its batches must carry.

The tasks differ only in head, loss, metrics and the augmentation of their targets; the distilled
backbone, the finetune verb, checkpoints, EMA, DDP and the report are shared (`tasks.finetune`).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..registry import Registry

if TYPE_CHECKING:
    from ..data import ImageDataModule
    from ..stage import Stage
    from .finetune import FinetuneRun


@dataclass(frozen=True)
class TaskSpec:
    """`needs`: the target key every batch must carry (None: integer class labels). Each task's default network
    is its builder module's `DEFAULT_ARCH`, so a builder never reads the registry back."""

    name: str
    builder: str  # "module:function" inside repfusion.tasks, imported on use so the registry stays light
    monitor: str
    mode: str
    curves: tuple[str, ...]
    needs: str | None

    def build(self, cfg: FinetuneRun, datamodule: ImageDataModule, **options: Any) -> Stage:
        """options: what the task's builder also takes (classification: a built `student`)."""
        module, function = self.builder.split(":")
        build: Callable = getattr(importlib.import_module(f"{__package__}.{module}"), function)
        return build(cfg, datamodule, **options)


TASKS: Registry[TaskSpec] = Registry("task")
for _spec in (
    TaskSpec("classification", "classification:build_classification", "val/top1", "max",
             ("train/loss", "train/top1", "val/top1"), None),
    TaskSpec("segmentation", "segmentation:build_segmentation", "val/miou", "max", ("train/loss", "val/miou"), "mask"),
    TaskSpec("landmarks", "landmarks:build_landmarks", "val/nme", "min", ("train/loss", "val/nme"), "keypoints"),
):
    TASKS.register(_spec, name=_spec.name)
