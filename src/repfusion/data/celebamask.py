"""CelebAMask-HQ face parsing: images plus per-part binary masks merged into one 19-class label map.

Layout (switchablenorms/CelebAMask-HQ, see docs/datasets.md):
`CelebA-HQ-img/{k}.jpg`, `CelebAMask-HQ-mask-anno/{k // 2000}/{k:05d}_{part}.png` (a part's file is absent
when the part is absent) and `CelebA-HQ-to-CelebA-mapping.txt` (`idx orig_idx orig_file` rows). Parts are
merged in the official order (`face_layout.PARSING_CLASSES`), a later label overwriting an earlier one, as
`face_parsing/g_mask.py` does; the split follows `g_partition.py` (by the CelebA index: val if
162771 <= x < 182638, test if x >= 182638, else train). Only images present in `CelebA-HQ-img/` are read,
so a subset of the release works as long as its masks are there too.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor
from torch.utils.data import Dataset

from ..errors import RepFusionError
from .datasets import IMAGE_ERRORS, eight_bit, image_error, inside, note_skipped_links, to_rgb
from .face_layout import PARSING_CLASSES

IMAGE_DIR, MASK_DIR, MAPPING = "CelebA-HQ-img", "CelebAMask-HQ-mask-anno", "CelebA-HQ-to-CelebA-mapping.txt"
SPLITS = ("train", "val", "test")
VAL_START, TEST_START = 162771, 182638
_MASK_NAME = re.compile(r"^([0-9]+)_([a-z_]+)\.png$")  # ASCII digits: \d would admit '²', which int() refuses


def _number(text: str) -> bool:
    """A whole number in ASCII digits (str.isdigit also admits '²' and other digits int() cannot read)."""
    return text.isascii() and text.isdigit()


def split_of(celeba_index: int) -> str:
    """The official split of an image from its original CelebA index (column 2 of the mapping file)."""
    if celeba_index >= TEST_START:
        return "test"
    return "val" if celeba_index >= VAL_START else "train"


class CelebAMaskDataset(Dataset):
    """Items are (uint8 [3,S,S] image, {"mask": uint8 [S,S] in the official 19-class order})."""

    targets: tuple[str, ...] = ("mask",)

    def __init__(self, images: list[Path], masks: list[dict[str, Path]], image_size: int) -> None:
        self.images, self.masks, self.image_size = images, masks, image_size
        self.classes: list[str] = list(PARSING_CLASSES)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[Tensor, dict[str, Tensor]]:
        label = merge_part_masks(self.masks[index])
        size = self.image_size
        mask = Image.fromarray(label).resize((size, size), Image.NEAREST) if label.shape != (size, size) else label
        path = self.images[index]
        try:
            with Image.open(path) as img:
                img = to_rgb(img)
                if img.size != label.shape[::-1]:  # to the mask's size first, as the masks were drawn on it
                    img = img.resize(label.shape[::-1], Image.BILINEAR)
                if img.size != (size, size):
                    img = img.resize((size, size), Image.BILINEAR)
                rgb = np.asarray(img, dtype=np.uint8).copy()
        except IMAGE_ERRORS as e:
            raise image_error(path, e) from None
        return (torch.from_numpy(rgb).permute(2, 0, 1).contiguous(),
                {"mask": torch.from_numpy(np.asarray(mask, dtype=np.uint8).copy())})


def merge_part_masks(parts: dict[str, Path]) -> np.ndarray:
    """One uint8 label map from a face's binary part masks, in the official order (later overwrites earlier)."""
    label: np.ndarray | None = None
    for k, name in enumerate(PARSING_CLASSES):
        path = parts.get(name)
        if path is None:
            continue
        try:
            with Image.open(path) as m:
                on = np.asarray(eight_bit(m).convert("L")) > 127
        except IMAGE_ERRORS as e:
            raise image_error(path, e, kind="Mask") from None
        if label is None:
            label = np.zeros(on.shape, dtype=np.uint8)
        elif on.shape != label.shape:
            raise RepFusionError(f"Mask file {path} is {on.shape[1]}x{on.shape[0]} but the other parts of this face "
                                 f"are {label.shape[1]}x{label.shape[0]}; every part mask of a face must have one "
                                 "size.")
        label[on] = k
    assert label is not None  # the reader only lists faces with at least one part file
    return label


def read_mapping(path: Path) -> dict[int, int]:
    """CelebA-HQ index -> original CelebA index from `CelebA-HQ-to-CelebA-mapping.txt` (header line skipped)."""
    if not path.is_file():
        raise RepFusionError(f"The CelebAMask-HQ mapping file {path} is missing; it ships with the dataset and "
                             "defines the official split.")
    mapping: dict[int, int] = {}
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        tokens = line.split()
        if not tokens or (number == 1 and not _number(tokens[0])):
            continue
        if len(tokens) < 2 or not _number(tokens[0]) or not _number(tokens[1]):
            raise RepFusionError(f"{path} line {number} should read 'idx orig_idx orig_file' but reads {line!r}; "
                                 "restore the file from the CelebAMask-HQ release.")
        mapping[int(tokens[0])] = int(tokens[1])
    return mapping


def _mask_index(folder: Path) -> dict[int, dict[str, Path]]:
    """Every `{k:05d}_{part}.png` under the mask folder (its numbered sub-folders), by image index."""
    found: dict[int, dict[str, Path]] = {}
    known = set(PARSING_CLASSES)
    for directory, _, files in os.walk(folder):
        for name in files:
            m = _MASK_NAME.match(name)
            if m and m.group(2) in known and (not (Path(directory) / name).is_symlink()
                                              or inside(Path(directory) / name, folder.parent)):
                found.setdefault(int(m.group(1)), {})[m.group(2)] = Path(directory) / name
    return found


def celebamask(root: str | Path, split: str = "train", image_size: int = 448) -> CelebAMaskDataset:
    """The images of one official split that are present under `root/CelebA-HQ-img`, with their masks."""
    if split not in SPLITS:
        raise RepFusionError(f"CelebAMask-HQ split must be one of {', '.join(SPLITS)}, not '{split}'.")
    root = Path(root)
    image_dir, mask_dir = root / IMAGE_DIR, root / MASK_DIR
    for folder in (image_dir, mask_dir):
        if not folder.is_dir():
            raise RepFusionError(f"{folder} does not exist; data.root must hold CelebA-HQ-img/ and "
                                 "CelebAMask-HQ-mask-anno/ as the CelebAMask-HQ release unpacks them.")
    mapping = read_mapping(root / MAPPING)
    links_out = [p for p in sorted(image_dir.iterdir()) if p.is_symlink() and not inside(p, root)]
    note_skipped_links(root, links_out)
    present = {int(p.stem): p for p in image_dir.iterdir()
               if _number(p.stem) and p.is_file() and p not in links_out}  # other names: not CelebA-HQ images
    unmapped = sorted(set(present) - set(mapping))
    if unmapped:
        raise RepFusionError(f"Image {present[unmapped[0]].name} (and {len(unmapped) - 1} others) has no row in "
                             f"{MAPPING}, so its split is unknown; use the mapping file of the same release.")
    masks = _mask_index(mask_dir)
    chosen = sorted(k for k in present if split_of(mapping[k]) == split)
    missing = [k for k in chosen if k not in masks]
    if missing:
        raise RepFusionError(
            f"The mask folder {mask_dir} does not match the images: no part masks for {present[missing[0]].name} "
            f"(and {len(missing) - 1} others of the {split} split); point data.root at a folder whose "
            f"{MASK_DIR}/ was unpacked from the same release as {IMAGE_DIR}/.")
    return CelebAMaskDataset([present[k] for k in chosen], [masks[k] for k in chosen], image_size)
