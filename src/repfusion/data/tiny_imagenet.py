"""Reader for Tiny-ImageNet-200 (wnids.txt order gives label indices)."""

from __future__ import annotations

from pathlib import Path

from ..errors import RepFusionError
from .datasets import FileImageDataset, image_files, inside


def tiny_imagenet(root: str | Path, train: bool, image_size: int | None = 64) -> FileImageDataset:
    root = Path(root)
    wnids_file = root / "wnids.txt"
    if not wnids_file.exists():
        raise RepFusionError(f"{root} has no wnids.txt; point data.root at the tiny-imagenet-200 folder.")
    wnids = [line.strip() for line in wnids_file.read_text().splitlines() if line.strip()]
    index = {w: i for i, w in enumerate(wnids)}
    files, labels = [], []
    if train:
        for wnid in wnids:
            found = image_files(root / "train" / wnid / "images", root)
            files += found
            labels += [index[wnid]] * len(found)
    else:
        annotations = root / "val" / "val_annotations.txt"
        if not annotations.exists():
            raise RepFusionError(f"{annotations} is missing; Tiny-ImageNet's val split needs it.")
        for line in annotations.read_text().splitlines():
            parts = line.split("\t")
            if len(parts) >= 2 and parts[1] in index:
                path = root / "val" / "images" / parts[0]
                if Path(parts[0]).is_absolute() or ".." in Path(parts[0]).parts or not inside(path, root):
                    raise RepFusionError(f"{annotations} names the image '{parts[0]}', which lies outside {root}; "
                                         "val_annotations.txt names files in val/images/, so fix that line.")
                files.append(path)
                labels.append(index[parts[1]])
    if not files:
        raise RepFusionError(f"No {'train' if train else 'val'} images found under {root}; check the folder layout.")
    return FileImageDataset(files, labels, wnids, image_size)
