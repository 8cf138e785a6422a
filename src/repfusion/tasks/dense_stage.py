"""What face parsing and landmarks share: a whole network, and targets augmented together with the images."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Protocol

from torch import nn

from ..data.augment import Augment, Normalize
from ..data.joint_augment import JointAugment
from ..errors import RepFusionError
from ..stage import Stage
from ..training import OptimConfig

if TYPE_CHECKING:
    from ..data import DataConfig


class AffineSection(Protocol):
    scale: Sequence[float]
    rotate: float
    translate: float


class DenseStage(Stage):
    """Batches arrive as (uint8 images, target dict); JointAugment moves masks and keypoints with the pixels.

    `augment` gives the image size and the flip; its `crop_padding` is not used: the random affine of
    `section` (scale, rotation, translation) is the dense tasks' spatial augmentation, and no crop is drawn.
    Subclasses name the target they need (`target_key`) and the sources that carry it (for the error).
    """

    target_key = ""
    target_sources = ""

    def __init__(self, network: nn.Module, optim: OptimConfig, augment: Augment, normalize: Normalize | None,
                 section: AffineSection, flip_pairs: Sequence[tuple[int, int]] = (),
                 label_swaps: Sequence[tuple[int, int]] = ()) -> None:
        # the base's image-only augment stays idle: JointAugment replaces it below
        super().__init__(Augment(augment.image_size, crop_padding=0, flip=False), optim)
        self.network = network
        self.normalize = normalize or Normalize()
        self.section = section
        self.augment = JointAugment(augment.image_size, flip=augment.flip,
                                    scale=tuple(section.scale),  # type: ignore[arg-type]
                                    rotate=section.rotate, translate=section.translate, flip_pairs=flip_pairs,
                                    label_swaps=label_swaps)

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        images, targets = batch
        if not isinstance(targets, dict) or self.target_key not in targets:
            raise RepFusionError(f"{type(self).__name__} batches must carry a '{self.target_key}' target; use a data "
                                 f"source with {self.target_sources}.")
        return self.augment(images, targets, train=self.trainer.training)


def dense_augment(data: DataConfig, image_size: int) -> Augment:
    """A dense task's `Augment` from its data config: `data.flip` as given, no crop (see `DenseStage`)."""
    return Augment(image_size, crop_padding=0, flip=data.flip)
