"""One LightningDataModule for every image-classification source the tool reads."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import lightning.pytorch as pl
import torch
from torch.utils.data import DataLoader, Dataset, Subset

from ..errors import RepFusionError, unknown_name_error
from ..section import Section, finite_number, whole_number
from .celebamask import celebamask
from .cifar import cifar
from .datasets import base_dataset, image_folder
from .device_data import DeviceBatches, device_batches
from .digits import digits
from .faces import faces
from .folder_labels import check_labels_option, csv_folder, file_holdout, labels_kind, unlabeled_folder
from .labels import check_label_budget, labelled_subset
from .tiny_imagenet import tiny_imagenet
from .wflw import wflw

SOURCES = ("digits", "cifar", "folder", "tiny-imagenet", "faces", "celebamask", "wflw")
DENSE_SOURCES = ("faces", "celebamask", "wflw")  # items are (image, {"mask" / "keypoints" / "attributes"})


@dataclass
class DataConfig(Section):
    """Where the images come from and how they are batched.

    source: digits (bundled with scikit-learn), cifar (original python pickles, CIFAR-10 or -100),
    folder (root/train/<class>/*, root/val/<class>/*, or root/<class>/* split by val_fraction),
    tiny-imagenet; and for the dense tasks: faces (generated face-like images with part masks and 98
    landmarks, faces_train / faces_test of them from faces_seed, image_size 64 unless set), celebamask
    (the CelebAMask-HQ release; official train / test split; image_size 448 unless set) and wflw (the WFLW
    release; each face cropped to a square of wflw_margin x its box, image_size 256 unless set).
    val_fraction (default 0.1) holds that share of the training images out for validation, best.ckpt and
    every model choice, so the test split is only reported; 0 validates on the test split (the paper's
    CIFAR protocol, which picks checkpoints on test: opt into it only to reproduce that).

    label_fraction (in (0, 1]) or labels_per_class: the label-scarce regime. Fine-tuning trains on a
    class-stratified subset of the training split left after the validation holdout, drawn with
    split_seed (each class keeps round(fraction x its count), at least one image; a smaller budget is a
    subset of a larger one; dense sources keep a seeded random round(fraction x n), nested the same way,
    and refuse labels_per_class). Only fine-tuning applies it (`ImageDataModule(..., labelled_only=True)`):
    the teacher and the distillation always read every training image, so one data section can be
    shared by every stage of an experiment; validation and test are never cut.

    Checked when built (`repfusion.section`): the label budget, batch size, hold-out, normalisation and the
    generated faces' counts.
    """

    KEY: ClassVar[str] = "data"

    source: str = "digits"
    root: str | None = None
    labels: str | None = None  # folder source: folders (class sub-folders) | none (every image, recursively) | a .csv
    image_size: int | None = None
    batch_size: int = 128
    num_workers: int = 0
    val_fraction: float = 0.1
    train_limit: int | None = None
    split_seed: int = 0
    crop_padding: int = 4
    flip: bool = True
    mean: tuple[float, float, float] = (0.5, 0.5, 0.5)
    std: tuple[float, float, float] = (0.5, 0.5, 0.5)
    label_fraction: float = 1.0
    labels_per_class: int | None = None
    label_seed: int | None = None  # seed of the labelled subset's draw (null: split_seed); splits stay put
    faces_train: int = 2000
    faces_test: int = 500
    faces_seed: int = 0
    wflw_margin: float = 1.25

    def __post_init__(self) -> None:
        name = self.KEY
        check_label_budget(self.label_fraction, self.labels_per_class)
        check_labels_option(self.labels, self.source)
        for key in ("faces_train", "faces_test"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise RepFusionError(f"{name}.{key} must be a positive whole number of generated faces, not {value}.")
        if isinstance(self.faces_seed, bool) or not isinstance(self.faces_seed, int) or self.faces_seed < 0:
            raise RepFusionError(f"{name}.faces_seed must be a whole number >= 0, not {self.faces_seed}.")
        if isinstance(self.wflw_margin, bool) or not 1.0 <= float(self.wflw_margin) <= 4.0:
            raise RepFusionError(f"{name}.wflw_margin must lie in [1, 4] (the crop side over the face box side; HRNet "
                                 f"uses 1.25), not {self.wflw_margin}.")
        if self.source in DENSE_SOURCES and self.labels_per_class is not None:
            raise RepFusionError(f"{name}.labels_per_class needs image classes, which source '{self.source}' does "
                                 "not have; use data.label_fraction for dense tasks.")
        if self.batch_size < 1:
            raise RepFusionError(f"{name}.batch_size must be at least 1, not {self.batch_size}.")
        if self.train_limit is not None and self.train_limit < 1:
            raise RepFusionError(f"{name}.train_limit must be at least 1 image (or null for all), not "
                                 f"{self.train_limit}.")
        if not 0 <= self.val_fraction < 1:
            raise RepFusionError(f"{name}.val_fraction must be in [0, 1) (0 validates on the test split), "
                                 f"not {self.val_fraction}.")
        if self.num_workers < 0:
            raise RepFusionError(f"{name}.num_workers must be 0 or more, not {self.num_workers}.")
        if self.image_size is not None and self.image_size < 1:
            raise RepFusionError(f"{name}.image_size must be at least 1 pixel (or null), not {self.image_size}.")
        if self.crop_padding < 0:
            raise RepFusionError(f"{name}.crop_padding must be 0 or more, not {self.crop_padding}.")
        for key in ("mean", "std"):
            values = getattr(self, key)
            if len(values) != 3 or not all(finite_number(v) for v in values):
                raise RepFusionError(f"{name}.{key} must be three finite numbers (one per RGB channel), not "
                                     f"{values}.")
        if any(v <= 0 for v in self.std):
            raise RepFusionError(f"{name}.std must be positive in every channel (pixels are divided by it), not "
                                 f"{list(self.std)}.")
        if not whole_number(self.split_seed) or self.split_seed < 0:
            raise RepFusionError(f"{name}.split_seed must be a whole number >= 0, not {self.split_seed}.")


def build_split(config: DataConfig, train: bool) -> Dataset:
    """The train or test split of the configured source."""
    if config.source not in SOURCES:
        raise unknown_name_error("data source", config.source, SOURCES)
    if config.source == "digits":
        return digits(train, image_size=config.image_size or 16)
    if config.source == "faces":
        return faces(train, config.faces_train if train else config.faces_test, config.image_size or 64,
                     config.faces_seed)
    if config.root is None:
        raise RepFusionError(f"data.root is required for source '{config.source}'; set it to the dataset folder.")
    if config.source == "cifar":
        return cifar(config.root, train)
    if config.source == "tiny-imagenet":
        return tiny_imagenet(config.root, train, config.image_size or 64)
    if config.source == "celebamask":
        return celebamask(config.root, "train" if train else "test", config.image_size or 448)
    if config.source == "wflw":
        return wflw(config.root, train, config.image_size or 256, config.wflw_margin)
    root = Path(config.root)
    split_dir = root / ("train" if train else "val")
    if not train and not split_dir.exists() and (root / "test").exists():
        split_dir = root / "test"
    folder = split_dir if (root / "train").is_dir() else root  # no split folders: a per-file test hold-out
    kind = labels_kind(config.labels, root)
    if kind == "none":
        return unlabeled_folder(folder, config.image_size or 32, within=root)
    if kind == "csv":
        return csv_folder(folder, Path(str(config.labels)), config.image_size or 32, within=root)
    return image_folder(folder, config.image_size or 32, within=root)


def _holdout(n: int, fraction: float, seed: int) -> tuple[list[int], list[int]]:
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).tolist()
    cut = max(1, round(n * fraction))
    return order[cut:], order[:cut]


SINGLE_FOLDER_TEST = 0.2  # share of a split-less folder held out as its test split


def single_folder(config: DataConfig) -> bool:
    """A `folder` source without train/ (and val/ or test/) sub-folders: its test split is a seeded hold-out."""
    return config.source == "folder" and not (Path(config.root or ".") / "train").is_dir()


def train_test_split(config: DataConfig) -> tuple[Dataset, Dataset]:
    """The training and test images of a source, as every verb sees them (before any validation hold-out).

    A folder without split sub-folders has no test split of its own: 20 % of its images, drawn with
    data.split_seed, are the test split and the rest the training split (from which data.val_fraction is
    then held out for validation), the same images
    for the training verbs and `repfusion probe`, so nothing is scored on the images it was fitted on.
    """
    full_train = build_split(config, train=True)
    if len(full_train) == 0:
        raise RepFusionError(f"The training split of data source '{config.source}' is empty; check data.root.")
    if single_folder(config):
        if len(full_train) < 2:
            raise RepFusionError(f"Dataset folder {config.root} holds one image, too few to hold any out for "
                                 "testing; add images or give train/ and val/ sub-folders.")
        # per file, from its path: the unlabeled and the labelled view of one folder agree on the test images
        train_idx, test_idx = file_holdout(full_train.files, Path(str(config.root)), SINGLE_FOLDER_TEST,
                                           config.split_seed)
        return Subset(full_train, train_idx), Subset(full_train, test_idx)
    return full_train, build_split(config, train=False)


class ImageDataModule(pl.LightningDataModule):
    """Train / val / test loaders; uint8 batches, augmented later on the device (see BatchAugment)."""

    def __init__(self, config: DataConfig, labelled_only: bool = False) -> None:
        """labelled_only: cut the training split to data.label_fraction / labels_per_class (fine-tuning)."""
        super().__init__()
        self.config = config
        self.labelled_only = labelled_only
        self.train_set: Dataset | None = None
        self.val_set: Dataset | None = None
        self.test_set: Dataset | None = None
        self._on_device: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}  # see device_data.device_batches

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:
            return
        cfg = self.config
        full_train, self.test_set = train_test_split(cfg)
        if cfg.val_fraction > 0 and len(full_train) > 1:
            train_idx, val_idx = _holdout(len(full_train), cfg.val_fraction, cfg.split_seed)
            self.train_set, self.val_set = Subset(full_train, train_idx), Subset(full_train, val_idx)
        else:
            self.train_set, self.val_set = full_train, self.test_set
        if self.labelled_only and (cfg.label_fraction < 1.0 or cfg.labels_per_class is not None):
            keep = labelled_subset(self.train_set, cfg.label_fraction, cfg.labels_per_class,
                                   cfg.split_seed if cfg.label_seed is None else cfg.label_seed)
            self.train_set = Subset(self.train_set, keep)
        if cfg.train_limit is not None:
            self.train_set = Subset(self.train_set, list(range(min(cfg.train_limit, len(self.train_set)))))

    @property
    def num_classes(self) -> int:
        self.setup()
        return len(base_dataset(self.test_set).classes)  # type: ignore[union-attr]

    def sample_shape(self) -> tuple[int, int, int]:
        self.setup()
        return tuple(self.train_set[0][0].shape)  # type: ignore[index]

    def _loader(self, dataset: Dataset | None, shuffle: bool) -> DataLoader | DeviceBatches:
        """Tensor datasets in a single-process run: batches gathered on the training device (device_data);
        everything else: a DataLoader (pinned memory when training on a GPU)."""
        sampler = None
        trainer = getattr(self, "trainer", None)
        if shuffle and (trainer is None or trainer.world_size == 1):
            # resumable order (see run.EpochSampler); multi-process runs keep Lightning's DistributedSampler
            from ..run import EpochSampler

            sampler = EpochSampler(len(dataset), self.config.batch_size, torch.initial_seed(),  # type: ignore[arg-type]
                                   lambda: getattr(self, "trainer", None))
        drop_last = shuffle and len(dataset) > self.config.batch_size  # type: ignore[arg-type]
        device = trainer.strategy.root_device if trainer is not None else None
        if device is not None and trainer.world_size == 1:
            batches = device_batches(dataset, device, self.config.batch_size, drop_last,  # type: ignore[arg-type]
                                     sampler, self._on_device)
            if batches is not None:
                return batches
        return DataLoader(
            dataset,  # type: ignore[arg-type]
            batch_size=self.config.batch_size,
            shuffle=shuffle if sampler is None else False,
            sampler=sampler,
            num_workers=self.config.num_workers,
            drop_last=drop_last,
            persistent_workers=self.config.num_workers > 0,
            pin_memory=device is not None and device.type == "cuda",
            generator=torch.Generator().manual_seed(torch.initial_seed()),  # never draws from the global stream
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_set, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_set, shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.test_set, shuffle=False)
