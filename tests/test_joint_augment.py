"""JointAugment: images, part masks and landmarks move together; flips swap the l/r classes and point pairs."""

from __future__ import annotations

import kornia.augmentation as K
import pytest
import torch

from repfusion.data.face_layout import (
    PARSING_CLASSES, PARSING_FLIP_SWAPS, WFLW_FLIP_PAIRS, WFLW_NUM_KEYPOINTS, flip_permutation,
)
from repfusion.data.joint_augment import JointAugment
from repfusion.errors import RepFusionError

S = 24


def _always_flip(aug: JointAugment) -> JointAugment:
    for module in aug.modules():
        if isinstance(module, K.RandomHorizontalFlip):
            module.p = 1.0
    return aug


def _asymmetric_batch(b: int = 6) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(3)
    images = torch.randint(0, 256, (b, 3, S, S), generator=g, dtype=torch.uint8)
    mask = torch.randint(0, len(PARSING_CLASSES), (b, S, S), generator=g, dtype=torch.uint8)
    mask[:, 0, 0] = 255
    points = torch.rand(b, WFLW_NUM_KEYPOINTS, 2, generator=g) * (S - 1)
    return images, {"mask": mask, "keypoints": points, "attributes": torch.ones(b, 6, dtype=torch.uint8)}


def test_face_layout_constants() -> None:
    assert PARSING_CLASSES[4:10] == ["l_eye", "r_eye", "l_brow", "r_brow", "l_ear", "r_ear"]
    assert len(PARSING_CLASSES) == 19 and PARSING_CLASSES[18] == "cloth"
    perm = flip_permutation(WFLW_FLIP_PAIRS, WFLW_NUM_KEYPOINTS)
    assert sorted(perm) == list(range(98)) and all(perm[perm[i]] == i for i in range(98))
    fixed = [i for i in range(98) if perm[i] == i]
    assert fixed == [16, 51, 52, 53, 54, 57, 79, 85, 90, 94]
    assert perm[60] == 72 and perm[96] == 97 and perm[0] == 32
    with pytest.raises(RepFusionError, match="outside the 5 keypoints"):
        flip_permutation(((0, 7),), 5)


def test_flip_swaps_classes_and_pairs() -> None:
    images, targets = _asymmetric_batch()
    aug = _always_flip(JointAugment(S, flip=True, scale=(1.0, 1.0), rotate=0.0))
    out, t = aug(images, targets, train=True)
    assert torch.allclose(out, images.flip(-1).float() / 255, atol=1e-5)
    lut = torch.arange(256)
    for a, b in PARSING_FLIP_SWAPS:
        lut[a], lut[b] = b, a
    assert torch.equal(t["mask"], lut[targets["mask"].long().flip(-1)])
    assert t["mask"][0, 0, -1] == 255  # ignore stays ignore, and moves with the pixel
    perm = flip_permutation(WFLW_FLIP_PAIRS, WFLW_NUM_KEYPOINTS)
    expected = targets["keypoints"][:, perm].clone()
    expected[..., 0] = (S - 1) - expected[..., 0]  # pixel centres at integers: x -> S-1-x
    assert torch.allclose(t["keypoints"], expected, atol=1e-4)
    assert torch.equal(t["attributes"], targets["attributes"])  # other keys pass through
    assert t["visible"].shape == (6, 98) and bool((t["visible"] == 1).all())


def test_flip_twice_is_identity() -> None:
    images, targets = _asymmetric_batch()
    aug = _always_flip(JointAugment(S, flip=True, scale=(1.0, 1.0), rotate=0.0))
    once, t1 = aug(images, targets, train=True)
    twice, t2 = aug((once * 255).round().to(torch.uint8), {"mask": t1["mask"].to(torch.uint8),
                                                           "keypoints": t1["keypoints"]}, train=True)
    assert torch.equal((twice * 255).round().to(torch.uint8), images)
    assert torch.equal(t2["mask"], targets["mask"].long())
    assert torch.allclose(t2["keypoints"], targets["keypoints"], atol=1e-4)


def test_random_flip_swaps_only_flipped_images() -> None:
    images, targets = _asymmetric_batch(16)
    aug = JointAugment(S, flip=True, scale=(1.0, 1.0), rotate=0.0)
    out, t = aug(images, targets, train=True)
    flipped = [bool(torch.allclose(out[i], images[i].flip(-1).float() / 255)) for i in range(16)]
    assert 0 < sum(flipped) < 16
    perm = flip_permutation(WFLW_FLIP_PAIRS, WFLW_NUM_KEYPOINTS)
    for i, f in enumerate(flipped):
        want = targets["keypoints"][i, perm] if f else targets["keypoints"][i]
        assert torch.allclose(t["keypoints"][i, :, 1], want[:, 1], atol=1e-4)


def test_keypoints_follow_the_image_under_an_affine() -> None:
    """Draw a dot at each keypoint, augment, and find the dot where the keypoint went."""
    torch.manual_seed(0)
    b, size = 12, 33
    g = torch.Generator().manual_seed(1)
    points = torch.randint(10, 23, (b, 1, 2), generator=g).float()
    images = torch.zeros(b, 3, size, size, dtype=torch.uint8)
    for i in range(b):
        x, y = points[i, 0].long()
        images[i, :, y - 1:y + 2, x - 1:x + 2] = 255  # a 3x3 dot centred on the pixel (x, y)
    aug = JointAugment(size, flip=True, scale=(0.8, 1.25), rotate=30.0, translate=0.1, flip_pairs=())
    out, t = aug(images, {"keypoints": points}, train=True)
    ys, xs = torch.meshgrid(torch.arange(size).float(), torch.arange(size).float(), indexing="ij")
    moved = 0
    for i in range(b):
        weight = out[i, 0]
        found = torch.stack([(weight * xs).sum(), (weight * ys).sum()]) / weight.sum()
        assert torch.allclose(found, t["keypoints"][i, 0], atol=0.3), (found, t["keypoints"][i, 0])
        moved += int((t["keypoints"][i, 0] - points[i, 0]).norm() > 1)
    assert moved >= b // 2  # the augmentation really moved the points


def test_mask_nearest_and_outside_is_ignore() -> None:
    torch.manual_seed(0)
    images, targets = _asymmetric_batch(8)
    targets["mask"][:, 0, 0] = 3
    targets["mask"][targets["mask"] == 255] = 3
    targets["mask"][targets["mask"] == 17] = 2  # class 17 is absent: nearest must never invent it
    aug = JointAugment(S, flip=True, scale=(0.75, 0.75), rotate=45.0)
    _, t = aug(images, targets, train=True)
    values = set(t["mask"].unique().tolist())
    assert 17 not in values and 255 in values and values <= set(range(19)) | {255}
    assert t["mask"].dtype == torch.int64
    assert bool((t["mask"][:, 0, 0] == 255).all())  # corners come from outside at 0.75 zoom and 45 degrees
    assert bool((t["mask"][:, S // 2, S // 2] != 255).all())
    outside = (t["keypoints"] < 0).any(-1) | (t["keypoints"] > S - 1).any(-1)
    assert torch.equal(t["visible"], (~outside).float())


def test_eval_leaves_targets_alone() -> None:
    images, targets = _asymmetric_batch()
    targets["keypoints"][0, 0] = torch.tensor([-2.0, 5.0])
    aug = JointAugment(S)
    out, t = aug(images, targets, train=False)
    assert torch.equal(out, images.float() / 255)
    assert torch.equal(t["mask"], targets["mask"].long()) and t["mask"].dtype == torch.int64
    assert torch.equal(t["keypoints"], targets["keypoints"])
    assert t["visible"][0, 0] == 0 and t["visible"][0, 1] == 1


def test_wrong_image_size_is_one_sentence() -> None:
    with pytest.raises(RepFusionError, match="expects 32x32 images"):
        JointAugment(32)(torch.zeros(1, 3, 24, 24, dtype=torch.uint8), {}, train=True)
