"""Batched, on-device augmentation of images together with their part masks and landmarks (kornia).

One kornia `AugmentationSequential` warps the image (bilinear), the mask (nearest) and the keypoints
with the same random affine and flip, so the three can never drift apart. What kornia does not know
about faces is done here: after a horizontal flip the subject's left eye is on the other side, so the
mask's l/r classes and the keypoints' flip pairs are exchanged (see `face_layout`).
"""

from __future__ import annotations

from collections.abc import Sequence

import kornia.augmentation as K
import torch
from torch import Tensor, nn

from ..errors import RepFusionError
from .augment import unit_pixels
from .face_layout import IGNORE_INDEX, PARSING_FLIP_SWAPS, WFLW_FLIP_PAIRS, flip_permutation


class JointAugment(nn.Module):
    """uint8 images + {"mask", "keypoints", ...} -> float images in [0, 1] + targets, augmented when training.

    Args:
        image_size (`int`): side S of the square images the batches carry (datasets resize to it).
        flip (`bool`, defaults to `True`): random horizontal flip with probability 1/2.
        scale (`tuple[float, float]`, defaults to `(0.75, 1.25)`): zoom range of the random affine.
        rotate (`float`, defaults to `30.0`): rotation drawn uniformly from [-rotate, rotate] degrees.
        translate (`float`, defaults to `0.0`): shift drawn from [-translate, translate] x S in x and y.
        flip_pairs: keypoint index pairs exchanged on a flip (WFLW's by default).
        label_swaps: mask class pairs exchanged on a flip (CelebAMask-HQ's l/r classes by default).

    Keypoints are (x, y) pixel coordinates with pixel centres at integers (WFLW and mmpose); the warps use
    `align_corners=True`, the convention under which kornia's keypoint transform and its image warp agree.
    """

    def __init__(self, image_size: int, flip: bool = True, scale: tuple[float, float] = (0.75, 1.25),
                 rotate: float = 30.0, translate: float = 0.0,
                 flip_pairs: Sequence[tuple[int, int]] = WFLW_FLIP_PAIRS,
                 label_swaps: Sequence[tuple[int, int]] = PARSING_FLIP_SWAPS) -> None:
        super().__init__()
        if not 0 < scale[0] <= scale[1]:
            raise RepFusionError(f"The augmentation scale range must be two positive numbers, low <= high, not "
                                 f"{scale}.")
        if rotate < 0 or not 0 <= translate < 1:
            raise RepFusionError(f"Augmentation rotate must be >= 0 and translate in [0, 1), not {rotate} and "
                                 f"{translate}.")
        self.image_size = image_size
        self.flip_pairs = tuple((int(a), int(b)) for a, b in flip_pairs)
        lut = torch.arange(256, dtype=torch.long)
        for a, b in label_swaps:
            lut[a], lut[b] = b, a
        self.register_buffer("label_lut", lut, persistent=False)
        ops: list[nn.Module] = []
        if scale != (1.0, 1.0) or rotate > 0 or translate > 0:
            ops.append(K.RandomAffine(degrees=float(rotate), translate=(translate, translate) if translate else None,
                                      scale=(float(scale[0]), float(scale[1])), align_corners=True, p=1.0))
        if flip:
            ops.append(K.RandomHorizontalFlip(p=0.5))
        self.augment = K.AugmentationSequential(*ops, data_keys=None) if ops else None

    def forward(self, images: Tensor, targets: dict[str, Tensor], train: bool) -> tuple[Tensor, dict[str, Tensor]]:
        """images uint8 [B,3,S,S] -> float [B,3,S,S] in [0,1]; targets follow (see the class docstring).

        train=False only changes dtypes ("mask" becomes int64). train=True adds "visible": float [B,K], 1 where
        a keypoint lies inside the image after augmentation (eval adds it too, so both modes carry the same keys).
        """
        if images.shape[-2:] != (self.image_size, self.image_size):
            raise RepFusionError(f"JointAugment expects {self.image_size}x{self.image_size} images but got "
                                 f"{tuple(images.shape[-2:])}; set data.image_size to the task's image size.")
        x = unit_pixels(images)
        out = dict(targets)
        mask = targets.get("mask")
        points = targets.get("keypoints")
        if train and self.augment is not None:
            inputs: list[Tensor] = [x]
            keys = ["input"]
            if mask is not None:
                # shift labels by one so the zeros kornia pads with mark "outside" (ignore 255 becomes 256)
                inputs.append(mask.long().add(1).float().unsqueeze(1))
                keys.append("mask")
            if points is not None:
                inputs.append(points.float())
                keys.append("keypoints")
            result = self.augment(*inputs, data_keys=keys)
            result = result if isinstance(result, (list, tuple)) else [result]
            x = result[0].clamp_(0, 1)
            flipped = self._flipped(len(x), x.device)
            i = 1
            if mask is not None:
                warped = result[i].squeeze(1).round().long() - 1
                warped[warped < 0] = IGNORE_INDEX
                warped[warped > IGNORE_INDEX] = IGNORE_INDEX
                lut = self.label_lut.to(warped.device)
                mask = torch.where(flipped.view(-1, 1, 1), lut[warped], warped)
                i += 1
            if points is not None:
                moved = result[i]
                perm = torch.tensor(flip_permutation(self.flip_pairs, moved.shape[1]), device=moved.device)
                points = torch.where(flipped.view(-1, 1, 1), moved[:, perm], moved)
        if mask is not None:
            out["mask"] = mask.long()
        if points is not None:
            out["keypoints"] = points.float()
            s = self.image_size - 1
            inside = (points >= 0).all(-1) & (points <= s).all(-1)
            out["visible"] = inside.float()
        return x, out

    def _flipped(self, batch: int, device: torch.device) -> Tensor:
        """Which images of the last call were mirrored: a reflection has a negative determinant."""
        matrix = self.augment.transform_matrix if self.augment is not None else None
        if matrix is None:
            return torch.zeros(batch, dtype=torch.bool, device=device)
        return torch.linalg.det(matrix[:, :2, :2].double()).to(device) < 0
