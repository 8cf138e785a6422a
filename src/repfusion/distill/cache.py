"""Teacher targets computed once per image and stored augmentation, instead of once per step.

With a fixed t and clean input the truncated teacher is a fixed function of the image, so its output for
an image changes between epochs only through the augmentation. A random crop and a flip do not commute
with a convolutional UNet (padding, odd strides, attention), so shifting or flipping a cached map would
be an approximation. Instead each image gets `views` stored augmentations drawn once with a seed
(view 0: the image itself; view 1: its mirror image when flips are on; the rest: a seeded random crop
with padding and a seeded flip), and the teacher runs once on each. Every step then reads the target
of the view it trains on, which is exactly what the teacher would have computed (tests hold it to 1e-6).

The cost is memory: N x views x the target's size, kept on the training device in the teacher's dtype.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from ..data.augment import unit_pixels


class StoredViews:
    """`views` fixed augmentations per image: a crop offset (dy, dx) into the zero-padded image and a flip.

    Args:
        count (`int`): images.
        views (`int`): stored augmentations per image (>= 1).
        padding (`int`): the random crop's padding (0: no crop).
        flip (`bool`): whether views may be mirrored.
        seed (`int`): draws the random views; the same seed gives the same views on every machine.
    """

    def __init__(self, count: int, views: int, padding: int, flip: bool, seed: int) -> None:
        if views < 1:
            raise ValueError(f"views must be at least 1, not {views}")
        g = torch.Generator().manual_seed(seed)
        offsets = torch.randint(0, 2 * padding + 1, (count, views, 2), generator=g)
        flips = torch.randint(0, 2, (count, views), generator=g).bool() if flip else torch.zeros(count, views,
                                                                                                    dtype=torch.bool)
        offsets[:, 0] = padding  # view 0: the image as it is
        flips[:, 0] = False
        if views > 1 and flip:  # view 1: its mirror image
            offsets[:, 1] = padding
            flips[:, 1] = True
        self.views, self.padding = views, padding
        self.offsets, self.flips = offsets, flips

    def apply(self, images01: torch.Tensor, index: torch.Tensor, view: torch.Tensor) -> torch.Tensor:
        """The stored views `view` (B,) of the images `index` (B,), given as float [0, 1] (B, C, H, W)."""
        index, view = index.cpu(), view.cpu()
        out = images01
        if self.padding > 0:
            height, width = images01.shape[-2:]
            padded = F.pad(images01, [self.padding] * 4)  # zeros, as kornia's RandomCrop pads
            dy, dx = self.offsets[index, view].unbind(-1)
            rows = (dy[:, None] + torch.arange(height)[None]).to(images01.device)  # (B, H)
            cols = (dx[:, None] + torch.arange(width)[None]).to(images01.device)  # (B, W)
            batch = torch.arange(len(images01), device=images01.device)[:, None, None]
            out = padded.permute(0, 2, 3, 1)[batch, rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2)
        flip = self.flips[index, view].to(images01.device)
        if bool(flip.any()):
            out = torch.where(flip[:, None, None, None], out.flip(-1), out)
        return out.contiguous()


class CachedTargets:
    """The teacher's target for every (image, stored view), computed once in chunks with no gradient.

    Args:
        images (`torch.Tensor`): every image of the pool, uint8 or float [0, 1], (N, C, H, W), on the device.
        views (`StoredViews`): the stored augmentations.
        target (`Callable`): (float [0, 1] images (B, C, H, W), their pool indices (B,)) -> the teacher's target.
        chunk (`int`): images per teacher call while filling the cache.
    """

    def __init__(self, images: torch.Tensor, views: StoredViews,
                 target: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
                 chunk: int = 256) -> None:
        self.images, self.views = images, views
        count = len(images)
        rows = []
        with torch.no_grad():
            for view in range(views.views):
                per_view = []
                for start in range(0, count, chunk):
                    index = torch.arange(start, min(count, start + chunk))
                    per_view.append(target(self.view_images(index, torch.full_like(index, view)), index))
                rows.append(torch.cat(per_view))
        self.targets = torch.stack(rows, dim=1)  # (N, views, ...)

    def view_images(self, index: torch.Tensor, view: torch.Tensor) -> torch.Tensor:
        """Float [0, 1] images of the stored views."""
        images = self.images[index.to(self.images.device)]
        return self.views.apply(unit_pixels(images), index, view)

    def __len__(self) -> int:
        return len(self.images)

    def batch(self, index: torch.Tensor, view: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(images of the views, their cached targets)."""
        device = self.targets.device
        return self.view_images(index, view), self.targets[index.to(device), view.to(device)]

    def draw(self, size: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """A random batch of (image index, view) pairs, from a generator the caller seeds (resumable)."""
        index = torch.randint(0, len(self), (size,), generator=generator)
        view = torch.randint(0, self.views.views, (size,), generator=generator)
        return index, view
