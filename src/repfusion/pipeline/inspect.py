"""What the pipeline reads off the user's data before anything trains: layout, labels, size, channels.

Each choice is printed with where it came from, so a user sees that a folder of 28 px grayscale digits
became 32 px RGB for a 32 px teacher, and which images count as labelled.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass, replace
from pathlib import Path

from PIL import Image

from ..data import DataConfig, ImageDataModule
from ..data.datamodule import SINGLE_FOLDER_TEST, single_folder
from ..data.datasets import GRAY_MODES, IMAGE_ERRORS, base_dataset
from ..data.folder_labels import labels_kind

PRESET_SIZES = {"tiny-16": 16, "small-32": 32, "medium-32": 32}  # what a teacher trained here takes


@dataclass
class DataFacts:
    layout: str
    labels: str  # folders | none | csv
    train_images: int
    test_images: int
    classes: int
    native_size: int | None
    grayscale: bool
    image_size: int
    size_reason: str
    flip: bool = True
    mirror_accuracy: float | None = None

    @property
    def labelled(self) -> bool:
        return self.labels != "none" and self.classes >= 2

    def lines(self) -> list[str]:
        kind = {"folders": f"{self.classes} classes from the sub-folders", "csv": f"{self.classes} classes from the CSV",
                "none": "none (label-free: distillation only)"}[self.labels]
        if self.labels != "none" and self.classes < 2:
            kind = "one class only (nothing to fine-tune against: label-free)"
        return [f"layout: {self.layout}", f"images: {self.train_images} training, {self.test_images} test",
                f"labels: {kind}", f"image size: {self.image_size} px ({self.size_reason})",
                "channels: " + ("grayscale, read as RGB" if self.grayscale else "RGB"), self.flip_line()]

    def flip_line(self) -> str:
        if self.mirror_accuracy is None:
            return f"horizontal flips: {'on' if self.flip else 'off'} (as configured)"
        seen = f"a linear classifier tells images from their mirrors {100 * self.mirror_accuracy:.0f} % of the time"
        if self.flip:
            return f"horizontal flips: on ({seen}: mirrored images look like the data)"
        return (f"horizontal flips: off ({seen}: a mirror makes images the data does not hold, as with digits or "
                "text; pass --auto_flip false to keep them)")


def native_size(files: list[Path], samples: int = 64) -> tuple[int | None, bool]:
    """Median shorter side of a spread of files (headers only) and whether they are grayscale."""
    sides, gray = [], []
    for path in files[:: max(1, len(files) // samples)][:samples]:
        try:
            with Image.open(path) as img:
                sides.append(min(img.size))
                gray.append(img.mode in GRAY_MODES)
        except IMAGE_ERRORS:
            continue  # reported in one sentence when the file is read
    if not sides:
        return None, False
    return int(statistics.median(sides)), sum(gray) > len(gray) / 2


def choose_size(data: DataConfig, native: int | None, teacher_size: int | None) -> tuple[int, str]:
    if data.image_size is not None:
        return data.image_size, "data.image_size"
    if teacher_size is not None:
        return teacher_size, f"the teacher's native size; the images are {native or '?'} px"
    if native is not None and native <= 16:
        return 16, f"the images are {native} px; the tiny-16 teacher trained here takes 16"
    return 32, (f"the images are {native or '?'} px; a teacher trained on 2 CPU-sized presets takes at most 32: "
                "give --teacher.source for a larger one")


def inspect_data(data: DataConfig, teacher_size: int | None, auto_flip: bool = True) -> tuple[DataConfig, DataFacts]:
    """The data section every stage reads (labels and image size resolved) and the facts to print."""
    root = Path(data.root) if data.root else None
    kind = labels_kind(data.labels, root) if data.source == "folder" else "folders"
    resolved = replace(data, labels=str(data.labels) if kind == "csv" else kind) if data.source == "folder" else data
    probe = ImageDataModule(replace(resolved, val_fraction=0.0))
    probe.setup()
    files = list(getattr(base_dataset(probe.train_set), "files", []))
    if files:
        native, gray = native_size(files)
    else:  # an in-memory source at its own default size
        native, gray = int(probe.train_set[0][0].shape[-1]), False
    size, reason = choose_size(data, native, teacher_size)
    if data.source != "folder":
        layout = f"data.source {data.source}"
    elif single_folder(data):
        layout = f"one folder, {100 * SINGLE_FOLDER_TEST:g} % of its images held out per file as the test split"
    else:
        layout = "train/ and val/ (or test/) sub-folders"
    classes = len(base_dataset(probe.test_set).classes)
    facts = DataFacts(layout, kind, len(probe.train_set), len(probe.test_set), classes, native, gray, size, reason,
                      flip=data.flip)
    if data.flip and auto_flip:
        facts.mirror_accuracy = mirror_accuracy(probe.train_set)
        facts.flip = facts.mirror_accuracy <= MIRROR_LIMIT
    return replace(resolved, image_size=size, flip=facts.flip), facts


def mirror_accuracy(dataset, limit: int = 1000, seed: int = 0) -> float:
    """How well a linear classifier on 8x8 gray thumbnails tells images from their mirror images (held out).

    Near 50 % the mirror of an image looks like another image of the set (photos: flips are a fair
    augmentation); far above it mirroring makes something the data does not hold (digits, text)."""
    import numpy as np
    import torch
    from sklearn.linear_model import LogisticRegression

    order = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(seed))[:limit].tolist()
    images = torch.stack([dataset[i][0] for i in order]).float().mean(1, keepdim=True)
    thumbs = torch.nn.functional.adaptive_avg_pool2d(images, 8)
    pairs = torch.cat([thumbs, thumbs.flip(-1)]).flatten(1).numpy()
    pairs = (pairs - pairs.mean(1, keepdims=True)) / (pairs.std(1, keepdims=True) + 1e-6)
    target = np.r_[np.zeros(len(order)), np.ones(len(order))]
    folds = np.r_[np.arange(len(order)), np.arange(len(order))] % 2  # an image and its mirror in one fold
    scores = [LogisticRegression(max_iter=500).fit(pairs[folds != k], target[folds != k])
              .score(pairs[folds == k], target[folds == k]) for k in (0, 1)]
    return float(np.mean(scores))


MIRROR_LIMIT = 0.75  # above this, flips leave the data's distribution


def unlabeled_view(data: DataConfig) -> DataConfig:
    """What the label-free stages read: every image (a CSV labels only some of them)."""
    return replace(data, labels="none") if data.source == "folder" and labels_kind(data.labels) == "csv" else data
