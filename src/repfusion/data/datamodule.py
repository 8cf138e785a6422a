"""One LightningDataModule for every image-classification source the tool reads."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import lightning.pytorch as pl
import torch
from torch.utils.data import DataLoader, Dataset, Subset

from ..errors import RepFusionError, unknown_name_error
from .cifar import cifar
from .datasets import image_folder
from .digits import digits
from .labels import check_label_budget, dataset_labels, stratified_subset
from .tiny_imagenet import tiny_imagenet

SOURCES = ("digits", "cifar", "folder", "tiny-imagenet")


@dataclass
class DataConfig:
    """Where the images come from and how they are batched.

    source: digits (bundled with scikit-learn), cifar (original python pickles, CIFAR-10 or -100),
    folder (root/train/<class>/*, root/val/<class>/*, or root/<class>/* split by val_fraction),
    tiny-imagenet. val_fraction > 0 holds that share of the training images out for validation and
    model choices; 0 validates on the test split (the paper's CIFAR protocol).

    label_fraction (in (0, 1]) or labels_per_class: the label-scarce regime. Fine-tuning trains on a
    class-stratified subset of the training split left after the validation holdout, drawn with
    split_seed (each class keeps round(fraction x its count), at least one image; a smaller budget is a
    subset of a larger one). Only fine-tuning applies it (`ImageDataModule(..., labelled_only=True)`):
    the teacher and the distillation always read every training image, so one data section can be
    shared by every stage of an experiment; validation and test are never cut.
    """

    source: str = "digits"
    root: str | None = None
    image_size: int | None = None
    batch_size: int = 128
    num_workers: int = 0
    val_fraction: float = 0.0
    train_limit: int | None = None
    split_seed: int = 0
    crop_padding: int = 4
    flip: bool = True
    mean: tuple[float, float, float] = (0.5, 0.5, 0.5)
    std: tuple[float, float, float] = (0.5, 0.5, 0.5)
    label_fraction: float = 1.0
    labels_per_class: int | None = None

    def __post_init__(self) -> None:
        check_label_budget(self.label_fraction, self.labels_per_class)


def build_split(config: DataConfig, train: bool) -> Dataset:
    """The train or test split of the configured source."""
    if config.source not in SOURCES:
        raise unknown_name_error("data source", config.source, SOURCES)
    if config.source == "digits":
        return digits(train, image_size=config.image_size or 16)
    if config.root is None:
        raise RepFusionError(f"data.root is required for source '{config.source}'; set it to the dataset folder.")
    if config.source == "cifar":
        return cifar(config.root, train)
    if config.source == "tiny-imagenet":
        return tiny_imagenet(config.root, train, config.image_size or 64)
    root = Path(config.root)
    split_dir = root / ("train" if train else "val")
    if not train and not split_dir.exists() and (root / "test").exists():
        split_dir = root / "test"
    if (root / "train").is_dir():
        return image_folder(split_dir, config.image_size or 32)
    return image_folder(root, config.image_size or 32)  # no split folders: val_fraction carves one out


def _holdout(n: int, fraction: float, seed: int) -> tuple[list[int], list[int]]:
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).tolist()
    cut = max(1, round(n * fraction))
    return order[cut:], order[:cut]


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

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:
            return
        cfg = self.config
        full_train = build_split(cfg, train=True)
        if len(full_train) == 0:
            raise RepFusionError(f"The training split of data source '{cfg.source}' is empty; check data.root.")
        single_folder = cfg.source == "folder" and not (Path(cfg.root or ".") / "train").is_dir()
        if single_folder:
            fraction = cfg.val_fraction or 0.2
            train_idx, test_idx = _holdout(len(full_train), fraction, cfg.split_seed)
            self.test_set = Subset(full_train, test_idx)
            full_train = Subset(full_train, train_idx)
        else:
            self.test_set = build_split(cfg, train=False)
        if cfg.val_fraction > 0 and not single_folder:
            train_idx, val_idx = _holdout(len(full_train), cfg.val_fraction, cfg.split_seed)
            self.train_set, self.val_set = Subset(full_train, train_idx), Subset(full_train, val_idx)
        else:
            self.train_set, self.val_set = full_train, self.test_set
        if self.labelled_only and (cfg.label_fraction < 1.0 or cfg.labels_per_class is not None):
            keep = stratified_subset(dataset_labels(self.train_set), cfg.label_fraction, cfg.labels_per_class,
                                     cfg.split_seed)
            self.train_set = Subset(self.train_set, keep)
        if cfg.train_limit is not None:
            self.train_set = Subset(self.train_set, list(range(min(cfg.train_limit, len(self.train_set)))))

    @property
    def num_classes(self) -> int:
        self.setup()
        base = self.test_set
        while isinstance(base, Subset):
            base = base.dataset
        return len(base.classes)  # type: ignore[union-attr]

    def sample_shape(self) -> tuple[int, int, int]:
        self.setup()
        return tuple(self.train_set[0][0].shape)  # type: ignore[index]

    def _loader(self, dataset: Dataset | None, shuffle: bool) -> DataLoader:
        sampler = None
        trainer = getattr(self, "trainer", None)
        if shuffle and (trainer is None or trainer.world_size == 1):
            # resumable order (see runstate.EpochSampler); multi-process runs keep Lightning's DistributedSampler
            from ..runstate import EpochSampler

            sampler = EpochSampler(len(dataset), self.config.batch_size, torch.initial_seed(),  # type: ignore[arg-type]
                                   lambda: getattr(self, "trainer", None))
        return DataLoader(
            dataset,  # type: ignore[arg-type]
            batch_size=self.config.batch_size,
            shuffle=shuffle if sampler is None else False,
            sampler=sampler,
            num_workers=self.config.num_workers,
            drop_last=shuffle and len(dataset) > self.config.batch_size,  # type: ignore[arg-type]
            persistent_workers=self.config.num_workers > 0,
            generator=torch.Generator().manual_seed(torch.initial_seed()),  # never draws from the global stream
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_set, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_set, shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.test_set, shuffle=False)
