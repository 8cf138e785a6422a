"""Dense data: generated faces, the CelebAMask-HQ and WFLW readers (fixtures in the real formats), and wiring."""

from __future__ import annotations

from pathlib import Path

import kornia.augmentation as K
import numpy as np
import pytest
import torch
from PIL import Image

from repfusion.data import DataConfig, ImageDataModule, build_split
from repfusion.data.celebamask import celebamask, split_of
from repfusion.data.face_layout import PARSING_CLASSES
from repfusion.data.faces import faces, save_face_samples
from repfusion.data.joint_augment import JointAugment
from repfusion.data.labels import random_subset
from repfusion.data.wflw import wflw
from repfusion.errors import RepFusionError

L = {name: i for i, name in enumerate(PARSING_CLASSES)}


# ----------------------------------------------------------------------------------------------- generated faces
def test_faces_are_seeded_nested_and_typed() -> None:
    a, b = faces(True, 70, 32), faces(True, 70, 32)
    assert torch.equal(a.images, b.images) and torch.equal(a.masks, b.masks)
    small = faces(True, 10, 32)
    assert torch.equal(small.images, a.images[:10]) and torch.equal(small.keypoints, a.keypoints[:10])
    assert not torch.equal(faces(False, 10, 32).images, small.images)
    assert not torch.equal(faces(True, 10, 32, seed=1).images, small.images)
    image, target = a[3]
    assert image.shape == (3, 32, 32) and image.dtype == torch.uint8
    assert target["mask"].shape == (32, 32) and target["mask"].dtype == torch.uint8
    assert target["keypoints"].shape == (98, 2) and target["keypoints"].dtype == torch.float32
    assert target["attributes"].shape == (6,) and set(a.attributes.unique().tolist()) <= {0, 1}
    assert a.classes == PARSING_CLASSES and a.num_keypoints == 98 and a.targets == ("mask", "keypoints", "attributes")
    assert int(a.masks.max()) <= 18 and not torch.isnan(a.keypoints).any()


def test_faces_vary_and_carry_every_part() -> None:
    d = faces(True, 256, 64)
    present = set(d.masks.unique().tolist())
    assert present == set(range(19))  # glasses, hats, earrings and necklaces all occur
    assert 0.1 < float(d.attributes.float().mean()) < 0.6
    occluded = d.attributes[:, 4].bool()
    accessory = ((d.masks == L["eye_g"]) | (d.masks == L["hat"])).flatten(1).any(1)
    assert torch.equal(occluded, accessory)
    assert float(d.images.float().std(0).mean()) > 30  # not one template repeated


def _centroid_x(masks: torch.Tensor, label: int) -> torch.Tensor:
    on = (masks == label).float()
    return (on * torch.arange(masks.shape[-1]).float()).sum((1, 2)) / on.sum((1, 2)).clamp(min=1)


def _label_at(masks: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
    xy = points.round().long().clamp(0, masks.shape[-1] - 1)
    return masks[torch.arange(len(masks)), xy[:, 1], xy[:, 0]]


def _check_layout(masks: torch.Tensor, points: torch.Tensor) -> None:
    """l_* parts and points 60-67 / 96 on the image's left; every landmark group on its own part."""
    assert bool((_centroid_x(masks, L["l_eye"]) < _centroid_x(masks, L["r_eye"])).all())
    assert bool((_centroid_x(masks, L["l_brow"]) < _centroid_x(masks, L["r_brow"])).all())
    assert bool((points[:, 60:68, 0].mean(1) < points[:, 68:76, 0].mean(1)).all())
    assert bool((points[:, 0, 0] < points[:, 32, 0]).all())
    assert bool((_label_at(masks, points[:, 96]) == L["l_eye"]).all())
    assert bool((_label_at(masks, points[:, 97]) == L["r_eye"]).all())
    assert bool((_label_at(masks, points[:, 54]) == L["nose"]).all())
    mouth = _label_at(masks, (points[:, 79] + points[:, 85]) / 2)
    assert bool(torch.isin(mouth, torch.tensor([L["mouth"], L["u_lip"], L["l_lip"]])).all())
    for label, group in ((L["l_eye"], slice(60, 68)), (L["r_eye"], slice(68, 76))):
        gap = (_centroid_x(masks, label) - points[:, group, 0].mean(1)).abs()
        assert float(gap.max()) < 1.0


def test_faces_landmarks_sit_on_their_parts_and_survive_a_flip() -> None:
    d = faces(True, 48, 128)
    _check_layout(d.masks.long(), d.keypoints)
    aug = JointAugment(128, flip=True, scale=(1.0, 1.0), rotate=0.0)
    for module in aug.modules():
        if isinstance(module, K.RandomHorizontalFlip):
            module.p = 1.0
    _, flipped = aug(d.images, {"mask": d.masks, "keypoints": d.keypoints}, train=True)
    _check_layout(flipped["mask"], flipped["keypoints"])  # a mirrored face is laid out like a generated one


def test_faces_bad_sizes_and_sample_grid(tmp_path: Path) -> None:
    with pytest.raises(RepFusionError, match="positive whole number"):
        faces(True, 0)
    with pytest.raises(RepFusionError, match="image_size >= 16"):
        faces(True, 4, image_size=8)
    path = save_face_samples(faces(True, 4, 32), tmp_path / "grid.png", count=4)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# ------------------------------------------------------------------------------------------------ CelebAMask-HQ
def _png(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def _celebamask_root(tmp_path: Path, masks_for_all: bool = True) -> Path:
    root = tmp_path / "CelebAMask-HQ"
    (root / "CelebA-HQ-img").mkdir(parents=True)
    rows = ["idx orig_idx orig_file", "0 5 000006.jpg", "1 170000 170001.jpg", "2 190000 190001.jpg",
            "3 7 000008.jpg"]
    (root / "CelebA-HQ-to-CelebA-mapping.txt").write_text("\n".join(rows) + "\n")
    for k in range(4):  # 16x16 images, 8x8 masks: images go to the mask size first
        Image.new("RGB", (16, 16), (40 * k, 100, 200)).save(root / "CelebA-HQ-img" / f"{k}.jpg")
    anno = root / "CelebAMask-HQ-mask-anno" / "0"
    full = np.full((8, 8), 255, np.uint8)
    block = np.zeros((8, 8), np.uint8)
    block[2:5, 2:5] = 255
    hair = np.zeros((8, 8), np.uint8)
    hair[:3, :] = 255
    _png(anno / "00000_skin.png", full)
    _png(anno / "00000_l_eye.png", block)  # overlaps skin (later wins) and hair (hair is later still)
    _png(anno / "00000_hair.png", hair)
    # no 00000_nose.png, hat, ...: absent parts are simply absent files
    for k in (1, 2) + ((3,) if masks_for_all else ()):
        _png(anno / f"{k:05d}_skin.png", full)
    return root


def test_celebamask_merges_parts_in_the_official_order(tmp_path: Path) -> None:
    root = _celebamask_root(tmp_path)
    train = celebamask(root, "train", image_size=8)
    assert len(train) == 2 and train.classes == PARSING_CLASSES and train.targets == ("mask",)
    image, target = train[0]
    expected = np.full((8, 8), L["skin"], np.uint8)
    expected[2:5, 2:5] = L["l_eye"]
    expected[:3, :] = L["hair"]
    assert np.array_equal(target["mask"].numpy(), expected)
    assert image.shape == (3, 8, 8) and image.dtype == torch.uint8
    big_image, big = celebamask(root, "train", image_size=16)[0]
    assert big_image.shape == (3, 16, 16)
    assert np.array_equal(big["mask"].numpy(), np.kron(expected, np.ones((2, 2), np.uint8)))  # nearest
    assert len(celebamask(root, "val", 8)) == 1 and len(celebamask(root, "test", 8)) == 1
    assert (split_of(162770), split_of(162771), split_of(182637), split_of(182638)) == ("train", "val", "val", "test")


def test_celebamask_mask_folder_must_match_the_images(tmp_path: Path) -> None:
    root = _celebamask_root(tmp_path, masks_for_all=False)
    with pytest.raises(RepFusionError, match=r"does not match the images: no part masks for 3\.jpg"):
        celebamask(root, "train", 8)
    with pytest.raises(RepFusionError, match="CelebAMask-HQ-mask-anno"):
        celebamask(tmp_path / "nowhere", "train", 8)


# ------------------------------------------------------------------------------------------------------- WFLW
def _wflw_line(points: np.ndarray, box: tuple[float, ...], attrs: tuple[int, ...], name: str) -> str:
    values = [f"{v:.3f}" for v in points.reshape(-1)] + [f"{v:.1f}" for v in box] + [str(a) for a in attrs]
    return " ".join(values + [name])


def _wflw_root(tmp_path: Path, extra: str | None = None) -> Path:
    root = tmp_path / "WFLW"
    folder = root / "WFLW_images" / "0--Parade"
    folder.mkdir(parents=True)
    pixels = np.zeros((80, 100, 3), np.uint8)  # 100 wide, 80 high
    pixels[40:42, 30:32] = 255  # a 2x2 dot centred on (30.5, 40.5)
    Image.fromarray(pixels).save(folder / "a.png")
    points = np.full((98, 2), 50.0)
    points[0] = (30.5, 40.5)
    lines = [_wflw_line(points, (20, 30, 60, 70), (1, 0, 0, 0, 1, 0), "0--Parade/a.png"),
             _wflw_line(points, (10, 10, 90, 70), (0, 0, 0, 0, 0, 0), "0--Parade/a.png")]  # one image, two faces
    if extra is not None:
        lines.append(extra)
    notes = root / "WFLW_annotations" / "list_98pt_rect_attr_train_test"
    notes.mkdir(parents=True)
    (notes / "list_98pt_rect_attr_train.txt").write_text("\n".join(lines) + "\n")
    return root


def test_wflw_crops_by_the_box_and_keeps_faces_listed_twice(tmp_path: Path) -> None:
    data = wflw(_wflw_root(tmp_path), train=True, image_size=25, margin=1.25)
    assert len(data) == 2 and data.num_keypoints == 98 and data.targets == ("keypoints", "attributes")
    image, target = data[0]
    # box 40x40 centred on (40, 50) -> 50x50 window from (15, 25), scale 25/50: x' = (x - 15) / 2 - 1/2
    assert torch.allclose(target["keypoints"][0], torch.tensor([7.25, 7.25]))
    assert torch.allclose(target["keypoints"][1], torch.tensor([17.0, 12.0]))
    assert target["attributes"].tolist() == [1, 0, 0, 0, 1, 0]
    weight = image[0].float()
    ys, xs = torch.meshgrid(torch.arange(25).float(), torch.arange(25).float(), indexing="ij")
    found = torch.stack([(weight * xs).sum(), (weight * ys).sum()]) / weight.sum()
    assert torch.allclose(found, target["keypoints"][0], atol=0.15)  # the pixels went where the point went
    second_image, second = data[1]
    assert second_image.shape == (3, 25, 25) and not torch.equal(second["keypoints"], target["keypoints"])
    assert second_image[:, 0, 12].sum() == 0  # the 100x100 window leaves the 80-high image: black padding


def test_wflw_bad_lines_are_one_sentence(tmp_path: Path) -> None:
    root = _wflw_root(tmp_path / "a", extra="1.0 2.0 0--Parade/a.png")
    with pytest.raises(RepFusionError, match=r"list_98pt_rect_attr_train\.txt line 3 has 3 tokens"):
        wflw(root, train=True)
    points = np.full((98, 2), 50.0)
    points[5] = (130.0, 20.0)
    root = _wflw_root(tmp_path / "b", extra=_wflw_line(points, (0, 0, 50, 50), (0,) * 6, "0--Parade/a.png"))
    with pytest.raises(RepFusionError, match=r"line 3: landmark 5 at \(130\.0, 20\.0\) lies outside the 100x80"):
        wflw(root, train=True)
    with pytest.raises(RepFusionError, match="No list_98pt_rect_attr_test.txt"):
        wflw(root, train=False)


# ---------------------------------------------------------------------------------------------------- wiring
def test_datamodule_serves_dense_batches_and_label_budgets() -> None:
    cfg = DataConfig(source="faces", faces_train=40, faces_test=12, image_size=32, batch_size=8)
    dm = ImageDataModule(cfg)
    assert dm.num_classes == 19 and dm.sample_shape() == (3, 32, 32)
    images, targets = next(iter(dm.train_dataloader()))
    assert images.shape == (8, 3, 32, 32) and targets["mask"].shape == (8, 32, 32)
    assert targets["keypoints"].shape == (8, 98, 2) and targets["attributes"].shape == (8, 6)
    # val_fraction 0: the label budget is a share of all 40 training faces (no validation hold-out first)
    half = ImageDataModule(DataConfig(source="faces", faces_train=40, faces_test=12, image_size=32,
                                      label_fraction=0.5, val_fraction=0.0), labelled_only=True)
    quarter = ImageDataModule(DataConfig(source="faces", faces_train=40, faces_test=12, image_size=32,
                                         label_fraction=0.25, val_fraction=0.0), labelled_only=True)
    half.setup(), quarter.setup()
    assert len(half.train_set) == 20 and len(quarter.train_set) == 10
    assert set(quarter.train_set.indices) <= set(half.train_set.indices)
    assert random_subset(40, 0.5, seed=1) != random_subset(40, 0.5, seed=0)
    with pytest.raises(RepFusionError, match="labels_per_class needs image classes"):
        DataConfig(source="faces", labels_per_class=5)


@pytest.mark.parametrize("field, value, message", [
    ("faces_train", 0, "faces_train must be a positive"), ("faces_test", 2.5, "faces_test must be a positive"),
    ("faces_seed", -1, "faces_seed must be a whole number"), ("wflw_margin", 0.5, r"wflw_margin must lie in \[1, 4\]"),
])
def test_data_config_range_checks(field: str, value: object, message: str) -> None:
    with pytest.raises(RepFusionError, match=message):
        DataConfig(source="faces", **{field: value})


def test_build_split_reads_the_real_layouts(tmp_path: Path) -> None:
    masks = build_split(DataConfig(source="celebamask", root=str(_celebamask_root(tmp_path)), image_size=8), True)
    assert len(masks) == 2 and masks[0][1]["mask"].shape == (8, 8)
    points = build_split(DataConfig(source="wflw", root=str(_wflw_root(tmp_path)), image_size=32,
                                    wflw_margin=2.0), True)
    assert len(points) == 2 and points[0][0].shape == (3, 32, 32) and points.margin == 2.0
    with pytest.raises(RepFusionError, match="data.root is required"):
        build_split(DataConfig(source="wflw"), True)
