"""The one base class of every LightningModule here: on-device augmentation and the shared optimiser."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import lightning.pytorch as pl
import torch

from .data.augment import Augment, BatchAugment
from .ema import trainable_tensors
from .training import OptimConfig, configure_optimization


class Stage(pl.LightningModule):
    """Batches arrive as uint8; they become float [0, 1] (augmented when training) on the device.

    Every stage receives its augmentation as one built `Augment` (made once by the task's builder from its
    config) and the optimiser settings; dense stages replace the image-only `BatchAugment` by `JointAugment`."""

    def __init__(self, augment: Augment, optim: OptimConfig) -> None:
        super().__init__()
        self.optim = optim
        self.augment = BatchAugment(augment)

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        images, labels = batch
        return self.augment(images, train=self.trainer.training), labels

    def trainable_parameters(self) -> Iterable[torch.nn.Parameter]:
        return self.parameters()

    def ema_tensors(self) -> dict[str, torch.Tensor]:
        """What the EMA callback averages (state-dict name -> tensor): trainable parameters and BatchNorm
        statistics of the parts that train; a frozen teacher is left out, so it is never copied."""
        return trainable_tensors(self)

    def configure_optimizers(self) -> dict[str, Any]:
        return configure_optimization(self.trainable_parameters(), self.optim, max(1, self.trainer.max_epochs or 1))
