"""Face parsing: BiSeNetV1 on a distilled (or random) ResNet, cross-entropy with auxiliary heads, mIoU.

The network, loss and metrics are the only parts that differ from classification: the backbone init,
optimiser, EMA, checkpoints and report are shared (`tasks.backbone`, `stage.Stage`, `tasks.finetune`).
Batches are `(uint8 images [B,3,S,S], {"mask": uint8 [B,S,S], ...})` (the dense-task contract); images
and masks are augmented together on the device by `JointAugment`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, TYPE_CHECKING

import torch
import torch.nn.functional as F
from torchmetrics.classification import MulticlassJaccardIndex

from ..data.augment import Augment, Normalize
from ..data.datasets import base_dataset
from ..data.face_layout import IGNORE_INDEX, PARSING_CLASSES, PARSING_FLIP_SWAPS
from ..errors import RepFusionError
from ..section import Section
from ..training import OptimConfig
from .backbone import init_backbone, resolve_architecture
from .dense_stage import DenseStage, dense_augment
from .heads.bisenet import BiSeNetV1

if TYPE_CHECKING:
    from ..data import ImageDataModule
    from .finetune import FinetuneRun

DEFAULT_ARCH = "resnet18"  # the network when neither --init nor --student.arch names one


@dataclass
class SegmentationSection(Section):
    """BiSeNet's loss weights and the joint augmentation of images with their masks (flip: data.flip).

    aux_weight: weight of each of the two auxiliary cross-entropies (BiSeNet uses 1; 0 trains the main head only).
    scale / rotate / translate: the random affine of `JointAugment` (zoom range, degrees, fraction of the side).
    """

    KEY: ClassVar[str] = "segmentation"

    aux_weight: float = 1.0
    scale: tuple[float, float] = (0.75, 1.25)
    rotate: float = 15.0
    translate: float = 0.0

    def __post_init__(self) -> None:
        if not self.aux_weight >= 0:
            raise RepFusionError(f"{self.KEY}.aux_weight must be >= 0 (0 turns the auxiliary heads off), "
                                 f"not {self.aux_weight}.")


def segmentation_loss(logits: torch.Tensor, mask: torch.Tensor, aux_logits: Sequence[torch.Tensor] | None = None,
                      aux_weight: float = 1.0) -> torch.Tensor:
    """Cross-entropy over labelled pixels (255 ignored) plus `aux_weight` x each auxiliary head's.

    logits / aux_logits: [B, C, H, W]; mask: int64 [B, H, W]. A batch without one labelled pixel gives 0
    (cross-entropy's mean over no pixels would be NaN), still connected to the graph.
    """
    if not (mask != IGNORE_INDEX).any():
        return logits.sum() * 0.0
    loss = F.cross_entropy(logits, mask, ignore_index=IGNORE_INDEX)
    if aux_logits and aux_weight > 0:
        for aux in aux_logits:
            loss = loss + aux_weight * F.cross_entropy(aux, mask, ignore_index=IGNORE_INDEX)
    return loss


def miou_metric(num_classes: int) -> MulticlassJaccardIndex:
    """Mean IoU over the classes present in the prediction or the target (absent classes do not count)."""
    return MulticlassJaccardIndex(num_classes, average="macro", ignore_index=IGNORE_INDEX)


def per_class_iou_metric(num_classes: int) -> MulticlassJaccardIndex:
    """IoU of every class; NaN for a class absent from both prediction and target."""
    return MulticlassJaccardIndex(num_classes, average="none", ignore_index=IGNORE_INDEX, zero_division=float("nan"))


def parsing_palette(num_classes: int = 19) -> torch.Tensor:
    """A fixed colour per class, uint8 [num_classes, 3]: black background, then matplotlib's tab20 colours."""
    from matplotlib import colormaps

    colours = [(0.0, 0.0, 0.0)] + [colormaps["tab20"](i % 20)[:3] for i in range(num_classes - 1)]
    return (torch.tensor(colours) * 255).round().to(torch.uint8)


def overlay_masks(images01: torch.Tensor, labels: torch.Tensor, alpha: float = 0.5) -> torch.Tensor:
    """Images [B,3,H,W] in [0,1] blended with their label maps [B,H,W] coloured by `parsing_palette`.

    Background (0) and ignored pixels (255) keep the image; other classes are `alpha` colour over the image.
    """
    palette = parsing_palette(256).float() / 255
    colour = palette[labels.long()].permute(0, 3, 1, 2)
    keep = ((labels == 0) | (labels == IGNORE_INDEX)).unsqueeze(1)
    return torch.where(keep, images01, (1 - alpha) * images01 + alpha * colour)


def draw_parsing(images01: torch.Tensor, labels: torch.Tensor, class_names: Sequence[str], path: Path) -> Path:
    """One row per image: the image, then its predicted parts as a colour overlay; a legend names the colours."""
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    from ..io import save_figure

    images01, labels = images01.detach().float().cpu().clamp(0, 1), labels.detach().cpu()
    overlay = overlay_masks(images01, labels)
    rows = len(images01)
    fig, axes = plt.subplots(rows, 2, figsize=(4.4, 2.2 * rows), squeeze=False)
    for row in range(rows):
        for col, (picture, title) in enumerate(((images01[row], "image"), (overlay[row], "predicted parts"))):
            axes[row, col].imshow(picture.permute(1, 2, 0).numpy())
            axes[row, col].set_axis_off()
            if row == 0:
                axes[row, col].set_title(title, fontsize=9)
    palette = parsing_palette(len(class_names)).float().div(255).tolist()
    fig.legend(handles=[Patch(color=palette[i], label=name) for i, name in enumerate(class_names) if i > 0],
               loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize=7, frameon=False)
    fig.tight_layout()
    saved = save_figure(fig, path)
    plt.close(fig)
    return saved


class Segmentation(DenseStage):
    """BiSeNetV1 trained with cross-entropy (+ auxiliary heads); mIoU and per-class IoU from torchmetrics.

    Logs `train/loss`, `val/loss`, `val/miou`, `test/loss`, `test/miou` and `test/iou/<class>` (classes that
    never occur in the test set, predicted or true, are left out rather than logged as NaN).
    """

    target_key, target_sources = "mask", "part masks (faces, celebamask)"

    def __init__(self, network: BiSeNetV1, class_names: Sequence[str], optim: OptimConfig, augment: Augment,
                 normalize: Normalize | None = None, section: SegmentationSection | None = None) -> None:
        section = section or SegmentationSection()
        swaps = PARSING_FLIP_SWAPS if list(class_names) == PARSING_CLASSES else ()  # l/r swaps need the official order
        super().__init__(network, optim, augment, normalize, section, label_swaps=swaps)
        if len(class_names) != network.config.num_classes:
            raise RepFusionError(f"The dataset names {len(class_names)} classes but the network predicts "
                                 f"{network.config.num_classes}; build the network with num_classes={len(class_names)}.")
        self.class_names = list(class_names)
        num_classes = len(self.class_names)
        self.val_miou = miou_metric(num_classes)
        self.test_miou = miou_metric(num_classes)
        self.test_iou = per_class_iou_metric(num_classes)

    def forward(self, images01: torch.Tensor) -> torch.Tensor:
        """Logits [B, C, H, W] of the main head for images in [0, 1]."""
        return self.network(self.normalize(images01)).logits

    def training_step(self, batch: tuple[torch.Tensor, dict[str, torch.Tensor]], batch_idx: int) -> torch.Tensor:
        images, targets = batch
        out = self.network(self.normalize(images))
        loss = segmentation_loss(out.logits, targets["mask"], out.aux_logits, self.section.aux_weight)
        self.log("train/loss", loss, prog_bar=True, on_step=False, on_epoch=True, sync_dist=True,
                 batch_size=len(images))
        return loss

    def _evaluate(self, batch: tuple[torch.Tensor, dict[str, torch.Tensor]],
                  prefix: str) -> tuple[torch.Tensor, torch.Tensor]:
        """Logs the loss; returns the predicted label map and the true mask."""
        images, targets = batch
        logits = self(images)
        mask = targets["mask"]
        self.log(f"{prefix}loss", segmentation_loss(logits, mask), sync_dist=True, batch_size=len(images))
        return logits.argmax(1), mask

    def validation_step(self, batch: tuple[torch.Tensor, dict[str, torch.Tensor]], batch_idx: int) -> None:
        predicted, mask = self._evaluate(batch, "val/")
        self.val_miou.update(predicted, mask)
        self.log("val/miou", self.val_miou, prog_bar=True, on_step=False, on_epoch=True)

    def test_step(self, batch: tuple[torch.Tensor, dict[str, torch.Tensor]], batch_idx: int) -> None:
        predicted, mask = self._evaluate(batch, "test/")
        self.test_miou.update(predicted, mask)
        self.test_iou.update(predicted, mask)
        self.log("test/miou", self.test_miou, on_step=False, on_epoch=True)

    def on_test_epoch_end(self) -> None:
        for name, value in zip(self.class_names, self.test_iou.compute()):  # compute() reduces across ranks
            if not torch.isnan(value):
                self.log(f"test/iou/{name}", value)
        self.test_iou.reset()

    @torch.no_grad()
    def draw_predictions(self, images01: torch.Tensor, path: Path) -> None:
        """Predicted masks as a colour overlay beside each image (the run folder's predictions.png)."""
        was_training = self.network.training
        self.network.eval()
        labels = self(images01.to(self.device)).argmax(1)
        self.network.train(was_training)
        draw_parsing(images01, labels, self.class_names, Path(path))


def dataset_classes(datamodule: ImageDataModule) -> list[str]:
    """The part names of the datamodule's dataset (`classes`, the official 19 for face data)."""
    datamodule.setup()
    classes = getattr(base_dataset(datamodule.test_set), "classes", None)
    if not classes:
        raise RepFusionError(f"Data source '{datamodule.config.source}' names no mask classes; use a source with "
                             "part masks (faces, celebamask).")
    return list(classes)


def build_segmentation(cfg: FinetuneRun, datamodule: ImageDataModule) -> Segmentation:
    """BiSeNetV1 on `cfg.student`'s ResNet (or the init's), the backbone loaded strictly from `cfg.init`."""
    channels, height, _ = datamodule.sample_shape()
    arch, width = resolve_architecture(cfg.init, cfg.student, DEFAULT_ARCH)
    classes = dataset_classes(datamodule)
    network = BiSeNetV1(arch, width, num_classes=len(classes), in_channels=channels)
    init_backbone(network.backbone, cfg.init)
    section = getattr(cfg, "segmentation", None) or SegmentationSection()
    return Segmentation(network, classes, cfg.optim, dense_augment(cfg.data, height),
                        Normalize(cfg.data.mean, cfg.data.std), section)
