"""What face parsing and landmarks share: a whole network, and targets augmented together with the images."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

from torch import nn

from ..data.augment import Normalize
from ..data.joint_augment import JointAugment
from ..errors import RepFusionError
from ..stage import Stage
from ..training import OptimConfig


class AffineSection(Protocol):
    scale: Sequence[float]
    rotate: float
    translate: float


class DenseStage(Stage):
    """Batches arrive as (uint8 images, target dict); JointAugment moves masks and keypoints with the pixels.

    Subclasses name the target they need (`target_key`) and the sources that carry it (for the error).
    """

    target_key = ""
    target_sources = ""

    def __init__(self, network: nn.Module, optim: OptimConfig, image_size: int, normalize: Normalize | None,
                 flip: bool, section: AffineSection, flip_pairs: Sequence[tuple[int, int]] = (),
                 label_swaps: Sequence[tuple[int, int]] = ()) -> None:
        super().__init__(image_size, optim, crop_padding=0, flip=False)  # the base's image-only augment stays idle
        self.network = network
        self.normalize = normalize or Normalize()
        self.section = section
        self.augment = JointAugment(image_size, flip=flip, scale=tuple(section.scale),  # type: ignore[arg-type]
                                    rotate=section.rotate, translate=section.translate, flip_pairs=flip_pairs,
                                    label_swaps=label_swaps)

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        images, targets = batch
        if not isinstance(targets, dict) or self.target_key not in targets:
            raise RepFusionError(f"{type(self).__name__} batches must carry a '{self.target_key}' target; use a data "
                                 f"source with {self.target_sources}.")
        return self.augment(images, targets, train=self.trainer.training)
