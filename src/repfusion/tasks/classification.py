"""Image classification: fine-tuning a distilled backbone, or the same network from scratch."""

from __future__ import annotations

from types import SimpleNamespace
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics import MetricCollection
from torchmetrics.classification import MulticlassAccuracy

from ..data import ImageDataModule
from ..data.augment import Normalize
from ..stage import Stage
from ..errors import RepFusionError
from ..students import build_student, check_given_student
from ..training import OptimConfig
from .backbone import HEAD_PREFIXES, init_backbone, resolve_architecture

if TYPE_CHECKING:
    from .finetune import FinetuneRun


def accuracy_metrics(num_classes: int, prefix: str) -> MetricCollection:
    return MetricCollection({
        "top1": MulticlassAccuracy(num_classes, top_k=1, average="micro"),
        "top5": MulticlassAccuracy(num_classes, top_k=min(5, num_classes), average="micro"),
    }, prefix=prefix)


class Classification(Stage):
    """Cross-entropy on the student's logits; top-1/top-5 from torchmetrics, reduced across ranks."""

    def __init__(self, model: nn.Module, num_classes: int, optim: OptimConfig, image_size: int,
                 normalize: Normalize | None = None, crop_padding: int = 4, flip: bool = True,
                 label_smoothing: float = 0.0) -> None:
        super().__init__(image_size, optim, crop_padding, flip)
        self.model = model
        self.normalize = normalize or Normalize()
        self.label_smoothing = label_smoothing
        self.train_metrics = accuracy_metrics(num_classes, "train/")
        self.val_metrics = accuracy_metrics(num_classes, "val/")
        self.test_metrics = accuracy_metrics(num_classes, "test/")

    def forward(self, images01: torch.Tensor) -> torch.Tensor:
        return self.model(self.normalize(images01))

    def trainable_parameters(self) -> list[dict]:
        """Two groups when optim.backbone_lr_scale != 1: the (distilled) backbone at lr x scale, the new head
        at lr, so fine-tuning can keep what distillation put in the backbone."""
        scale = self.optim.backbone_lr_scale
        if scale == 1.0:
            return [{"params": list(self.parameters())}]
        named = list(self.model.named_parameters())
        head = [p for n, p in named if n.startswith(HEAD_PREFIXES)]
        backbone = [p for n, p in named if not n.startswith(HEAD_PREFIXES)]
        return [{"params": backbone, "lr": self.optim.lr * scale}, {"params": head}]

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        images, labels = batch
        logits = self(images)
        loss = F.cross_entropy(logits, labels, label_smoothing=self.label_smoothing)
        self.train_metrics.update(logits.detach(), labels)
        self.log("train/loss", loss, prog_bar=True, on_step=False, on_epoch=True, sync_dist=True,
                 batch_size=len(images))
        self.log_dict(self.train_metrics, on_step=False, on_epoch=True)
        return loss

    def _evaluate(self, batch: tuple[torch.Tensor, torch.Tensor], metrics: MetricCollection, prefix: str) -> None:
        images, labels = batch
        logits = self(images)
        self.log(f"{prefix}loss", F.cross_entropy(logits, labels), sync_dist=True, batch_size=len(images))
        metrics.update(logits, labels)
        self.log_dict(metrics, prog_bar=True, on_step=False, on_epoch=True)

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        self._evaluate(batch, self.val_metrics, "val/")

    def test_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        self._evaluate(batch, self.test_metrics, "test/")


def given_classifier(student: nn.Module, init: str | None, num_classes: int, channels: int) -> nn.Module:
    """A student passed through the API, checked against the init's architecture, with a head for the classes."""
    check_given_student(student, channels)
    resolve_architecture(init, SimpleNamespace(arch=student.config["arch"], width=float(student.config["width"])))
    if student.config.get("num_classes") != num_classes:
        if not hasattr(student, "reset_head"):
            raise RepFusionError(f"The student has {student.config.get('num_classes')} classes but the data has "
                                 f"{num_classes}; build it with num_classes={num_classes}.")
        student.reset_head(num_classes)
    return student


def build_classification(cfg: FinetuneRun, datamodule: ImageDataModule,
                         student: nn.Module | None = None) -> Classification:
    """student: a built student (e.g. `ModuleStudent`) instead of `cfg.student`; `cfg.init` still loads into it."""
    channels, height, _ = datamodule.sample_shape()
    if student is None:
        arch, width = resolve_architecture(cfg.init, cfg.student, "resnet18_cifar")
        model = build_student(arch, width, num_classes=datamodule.num_classes, in_channels=channels)
    else:
        model = given_classifier(student, cfg.init, datamodule.num_classes, channels)
    init_backbone(model, cfg.init)
    return Classification(model, datamodule.num_classes, cfg.optim, height, Normalize(cfg.data.mean, cfg.data.std),
                          cfg.data.crop_padding, cfg.data.flip, cfg.label_smoothing)
