"""Batched augmentation on the training device (kornia), applied after the batch is transferred."""

from __future__ import annotations

from dataclasses import dataclass

import kornia.augmentation as K
import torch
from torch import nn


def unit_pixels(images: torch.Tensor) -> torch.Tensor:
    """Images as float in [0, 1]: uint8 batches (how every dataset stores them) divided by 255, float ones kept."""
    return images.float().div_(255) if images.dtype == torch.uint8 else images.float()


@dataclass(frozen=True)
class Augment:
    """What a stage's training augmentation does (`BatchAugment` builds it): a random crop back to
    `image_size` after `crop_padding` zero padding (0: none) and, with `flip`, a random horizontal flip.

    Each task's builder makes it once from its config and hands it to the stage (`stage.Stage`), so no module
    takes the three settings loose; a cache's stored views (`distill.cache.StoredViews`) use its crop and flip."""

    image_size: int
    crop_padding: int = 4
    flip: bool = True


class BatchAugment(nn.Module):
    """uint8 batch -> float [0, 1]; when training, the random crop and horizontal flip that `augment` names."""

    def __init__(self, augment: Augment) -> None:
        super().__init__()
        size = augment.image_size
        ops: list[nn.Module] = []
        if augment.crop_padding > 0:
            ops.append(K.RandomCrop((size, size), padding=augment.crop_padding))
        if augment.flip:
            ops.append(K.RandomHorizontalFlip())
        self.augment = K.AugmentationSequential(*ops) if ops else nn.Identity()

    def forward(self, images: torch.Tensor, train: bool) -> torch.Tensor:
        x = unit_pixels(images)
        return self.augment(x) if train else x


class Normalize(nn.Module):
    """Per-network pixel normalisation: students take mean/std-normalised pixels, teachers [-1, 1]."""

    def __init__(self, mean: tuple[float, ...] = (0.5, 0.5, 0.5), std: tuple[float, ...] = (0.5, 0.5, 0.5)) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std
