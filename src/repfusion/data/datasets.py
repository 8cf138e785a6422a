"""In-memory and on-disk image datasets; every item is (uint8 C x H x W tensor, int label)."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset, Subset

from ..errors import RepFusionError

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"}


@dataclass
class TensorImageDataset(Dataset):
    """Images already decoded into one uint8 tensor (CIFAR, digits)."""

    images: torch.Tensor  # (N, C, H, W) uint8
    labels: torch.Tensor  # (N,) int64
    classes: list[str]

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return self.images[index], int(self.labels[index])


def base_dataset(dataset: Dataset) -> Dataset:
    """The dataset under any chain of Subsets (splits, label budgets, limits): where `classes` and `targets` live."""
    while isinstance(dataset, Subset):
        dataset = dataset.dataset
    return dataset


def dataset_targets(dataset: Dataset) -> tuple[str, ...]:
    """The dense targets its items carry ("mask", "keypoints", "attributes"); () for integer class labels."""
    targets = getattr(base_dataset(dataset), "targets", ())
    return targets if isinstance(targets, tuple) else ()  # a torchvision-style `targets` list holds labels


def read_image(path: Path, image_size: int | None) -> torch.Tensor:
    """Decode one file to uint8 RGB C x H x W; a corrupt file is a one-sentence error naming it."""
    try:
        with Image.open(path) as img:
            img = img.convert("RGB")
            if image_size is not None and img.size != (image_size, image_size):
                img = img.resize((image_size, image_size), Image.BILINEAR)
            array = np.asarray(img, dtype=np.uint8).copy()
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise RepFusionError(f"Image file {path} is corrupt or truncated ({e}); remove or replace it.") from None
    return torch.from_numpy(array).permute(2, 0, 1).contiguous()


class FileImageDataset(Dataset):
    """Images read from disk on access, resized to a common square size."""

    def __init__(self, files: list[Path], labels: list[int], classes: list[str], image_size: int | None) -> None:
        self.files, self.labels, self.classes, self.image_size = files, labels, classes, image_size

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return read_image(self.files[index], self.image_size), self.labels[index]


def image_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())


def image_folder(root: str | Path, image_size: int | None = None) -> FileImageDataset:
    """One sub-folder per class (the torchvision ImageFolder layout); labels follow sorted folder names."""
    root = Path(root)
    if not root.is_dir():
        raise RepFusionError(f"Dataset folder {root} does not exist; give a folder with one sub-folder per class.")
    classes = sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    loose = [p for p in sorted(root.iterdir()) if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()]
    if loose and not classes:  # unlabeled images (e.g. CelebA-HQ-img/): one class, for label-free runs
        return FileImageDataset(loose, [0] * len(loose), ["images"], image_size)
    files, labels = [], []
    for index, name in enumerate(classes):
        found = image_files(root / name)
        files += found
        labels += [index] * len(found)
    if not files:
        raise RepFusionError(
            f"Dataset folder {root} holds no images in class sub-folders; put each class's images in root/<class>/."
        )
    note_grayscale(root, files)
    return FileImageDataset(files, labels, classes, image_size)


GRAY_MODES = {"1", "L", "LA", "I", "I;16", "F"}
_noted: set[str] = set()


def note_grayscale(root: Path, files: list[Path]) -> None:
    """Say once per folder that grayscale images are read as RGB (every image is; the first few are looked at)."""
    if str(root) in _noted:
        return
    for path in files[:: max(1, len(files) // 8)][:8]:
        try:
            with Image.open(path) as img:
                gray = img.mode in GRAY_MODES
        except (UnidentifiedImageError, OSError):
            continue  # a corrupt file is reported when it is read
        if gray:
            _noted.add(str(root))
            print(f"note: the images in {root} are grayscale; they are read as RGB (the gray value in all three "
                  "channels), which is what a 3-channel teacher and student take.", file=sys.stderr)
            return
