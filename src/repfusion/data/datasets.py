"""In-memory and on-disk image datasets; every item is (uint8 C x H x W tensor, int label)."""

from __future__ import annotations

import os
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


SIXTEEN_BIT_MODES = {"I;16", "I;16L", "I;16B", "I;16N", "I"}
# What a broken, truncated or hostile image file raises while PIL opens or decodes it.
IMAGE_ERRORS = (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError)


def image_error(path: Path, e: BaseException, kind: str = "Image") -> RepFusionError:
    """The one sentence for an image PIL cannot (or must not) decode."""
    if isinstance(e, Image.DecompressionBombError):
        return RepFusionError(f"{kind} file {path} is refused: its header claims more pixels than PIL's "
                              f"decompression-bomb limit ({str(e).split(',')[0]}), which no training image needs; "
                              "remove or replace it.")
    return RepFusionError(f"{kind} file {path} is corrupt or truncated ({e}); remove or replace it.")


def eight_bit(img: Image.Image) -> Image.Image:
    """16-bit grayscale (PNG, TIFF) scaled to 8 bits (v / 257, so 65535 is 255) instead of PIL's clipping."""
    if img.mode not in SIXTEEN_BIT_MODES:
        return img
    values = np.asarray(img).astype(np.float64)
    return Image.fromarray(np.clip(np.rint(values / 257.0), 0, 255).astype(np.uint8), mode="L")


def to_rgb(img: Image.Image) -> Image.Image:
    """Any PIL image as 8-bit RGB (grayscale in all three channels, 16-bit scaled, not clipped)."""
    return eight_bit(img).convert("RGB")


def read_image(path: Path, image_size: int | None) -> torch.Tensor:
    """Decode one file to uint8 RGB C x H x W; a corrupt file is a one-sentence error naming it."""
    try:
        with Image.open(path) as img:
            img = to_rgb(img)
            if image_size is not None and img.size != (image_size, image_size):
                img = img.resize((image_size, image_size), Image.BILINEAR)
            array = np.asarray(img, dtype=np.uint8).copy()
    except IMAGE_ERRORS as e:
        raise image_error(path, e) from None
    return torch.from_numpy(array).permute(2, 0, 1).contiguous()


class FileImageDataset(Dataset):
    """Images read from disk on access, resized to a common square size."""

    def __init__(self, files: list[Path], labels: list[int], classes: list[str], image_size: int | None) -> None:
        self.files, self.labels, self.classes, self.image_size = files, labels, classes, image_size

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return read_image(self.files[index], self.image_size), self.labels[index]


def inside(path: Path, root: Path) -> bool:
    """Whether `path`, every link on the way resolved, lies inside the (resolved) folder `root`."""
    try:
        path.resolve().relative_to(root.resolve())
        return True
    except (ValueError, OSError, RuntimeError):  # outside, or a link loop
        return False


_skipped_noted: set[str] = set()


def note_skipped_links(root: Path, skipped: list[Path]) -> None:
    """Say once per folder which symbolic links were not followed because they lead out of it."""
    if not skipped or str(root) in _skipped_noted:
        return
    _skipped_noted.add(str(root))
    first = skipped[0]
    try:
        target = f" -> {os.readlink(first)}"
    except OSError:
        target = ""
    print(f"note: skipped {len(skipped)} symbolic link(s) in {root} that lead outside it (first: {first}{target}); "
          "repfusion reads only files inside the dataset folder (links that stay inside it are followed).",
          file=sys.stderr)


def image_files(folder: Path, root: Path | None = None, skipped: list[Path] | None = None) -> list[Path]:
    """Every image file under `folder`, sorted; symbolic links (to files or folders) are followed only where
    they stay inside `root` (default `folder`); the others are skipped with one `note:` line (or appended to
    `skipped`, for the caller's note)."""
    folder, root = Path(folder), Path(root or folder)
    found: list[Path] = []
    own_note = skipped is None
    skipped = [] if skipped is None else skipped
    seen: set[str] = set()
    for directory, dirnames, filenames in os.walk(folder, followlinks=True):
        real = os.path.realpath(directory)
        if real in seen:  # a link back to a folder already read: no loop, no double count
            dirnames[:] = []
            continue
        seen.add(real)
        keep = []
        for name in sorted(dirnames):
            sub = Path(directory) / name
            if sub.is_symlink() and not inside(sub, root):
                skipped.append(sub)
            else:
                keep.append(name)
        dirnames[:] = keep
        for name in filenames:
            path = Path(directory) / name
            if path.suffix.lower() not in IMAGE_SUFFIXES:
                continue
            if path.is_symlink() and not inside(path, root):
                skipped.append(path)
            elif path.is_file():
                found.append(path)
    if own_note:
        note_skipped_links(root, sorted(skipped))
    return sorted(found)


def image_folder(root: str | Path, image_size: int | None = None, within: str | Path | None = None) -> FileImageDataset:
    """One sub-folder per class (the torchvision ImageFolder layout); labels follow sorted folder names.

    Symbolic links are followed only where they stay inside `within` (default `root`, the dataset folder).
    """
    root = Path(root)
    if not root.is_dir():
        raise RepFusionError(f"Dataset folder {root} does not exist; give a folder with one sub-folder per class.")
    within = Path(within or root)
    skipped = [p for p in sorted(root.iterdir()) if p.is_symlink() and not inside(p, within)]
    entries = [p for p in sorted(root.iterdir()) if p not in skipped]
    classes = sorted(d.name for d in entries if d.is_dir() and not d.name.startswith("."))
    loose = [p for p in entries if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()]
    skipped = [p for p in skipped if p.is_dir() or p.suffix.lower() in IMAGE_SUFFIXES]
    if loose and not classes:
        note_skipped_links(within, skipped)  # unlabeled images (e.g. CelebA-HQ-img/): one class, for label-free runs
        return FileImageDataset(loose, [0] * len(loose), ["images"], image_size)
    files, labels = [], []
    for index, name in enumerate(classes):
        found = image_files(root / name, within, skipped)
        files += found
        labels += [index] * len(found)
    note_skipped_links(within, sorted(skipped))
    if not files:
        raise RepFusionError(
            f"Dataset folder {root} holds no images in class sub-folders; put each class's images in root/<class>/."
        )
    note_grayscale(root, files)
    return FileImageDataset(files, labels, classes, image_size)


GRAY_MODES = {"1", "L", "LA", "F"} | SIXTEEN_BIT_MODES
_noted: set[str] = set()


def note_grayscale(root: Path, files: list[Path]) -> None:
    """Say once per folder that grayscale images are read as RGB (every image is; the first few are looked at)."""
    if str(root) in _noted:
        return
    for path in files[:: max(1, len(files) // 8)][:8]:
        try:
            with Image.open(path) as img:
                gray = img.mode in GRAY_MODES
        except IMAGE_ERRORS:
            continue  # a corrupt (or decompression-bomb) file is reported, in one sentence, when it is read
        if gray:
            _noted.add(str(root))
            print(f"note: the images in {root} are grayscale; they are read as RGB (the gray value in all three "
                  "channels, 16-bit values scaled to 8 bits), which is what a 3-channel teacher and student take.",
                  file=sys.stderr)
            return
