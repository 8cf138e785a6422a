"""scikit-learn's bundled 8x8 digits as small RGB images: real data that needs no download."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits

from .datasets import TensorImageDataset


def digits(train: bool, image_size: int = 16, test_fraction: float = 0.25) -> TensorImageDataset:
    """1,797 digits, upsampled bilinearly and repeated to 3 channels; a fixed stratified split."""
    bunch = load_digits()
    images = torch.as_tensor(bunch.images, dtype=torch.float32).unsqueeze(1) / 16.0
    images = F.interpolate(images, size=(image_size, image_size), mode="bilinear", align_corners=False)
    images = (images.clamp(0, 1) * 255).round().to(torch.uint8).repeat(1, 3, 1, 1)
    labels = torch.as_tensor(bunch.target, dtype=torch.long)
    generator = torch.Generator().manual_seed(0)
    test_mask = torch.zeros(len(labels), dtype=torch.bool)
    for c in range(10):
        idx = torch.nonzero(labels == c).flatten()
        idx = idx[torch.randperm(len(idx), generator=generator)]
        test_mask[idx[: round(len(idx) * test_fraction)]] = True
    keep = ~test_mask if train else test_mask
    return TensorImageDataset(images[keep], labels[keep], [str(i) for i in range(10)])
