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

PRESET_SIZES = {"tiny-16": 16, "small-32": 32}  # what a teacher trained here takes


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
                "channels: " + ("grayscale, read as RGB" if self.grayscale else "RGB")]


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


def inspect_data(data: DataConfig, teacher_size: int | None) -> tuple[DataConfig, DataFacts]:
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
    facts = DataFacts(layout, kind, len(probe.train_set), len(probe.test_set), classes, native, gray, size, reason)
    return replace(resolved, image_size=size), facts


def unlabeled_view(data: DataConfig) -> DataConfig:
    """What the label-free stages read: every image (a CSV labels only some of them)."""
    return replace(data, labels="none") if data.source == "folder" and labels_kind(data.labels) == "csv" else data
