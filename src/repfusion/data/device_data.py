"""Image datasets held as one uint8 tensor on the training device, batched there by indexing.

For CIFAR, digits and any other `TensorImageDataset` (also behind `Subset`s) the loader is replaced by
`DeviceBatches`: the images move to the device once, and a batch is one gather (`images[index]`) instead
of per-image `__getitem__` calls, a collate and a host-to-device copy. The order is the same sampler's
(`run.EpochSampler` when training), so batches, a resumed epoch and the numbers are those of the
DataLoader it replaces. Datasets read from files, and items with dict targets, keep the DataLoader.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import torch
from torch.utils.data import Dataset, Subset

from .datasets import TensorImageDataset


def tensor_source(dataset: Dataset) -> tuple[TensorImageDataset, torch.Tensor | None] | None:
    """The TensorImageDataset under `dataset` and the indices the Subsets select (None: all of it)."""
    index: torch.Tensor | None = None
    while isinstance(dataset, Subset):
        chosen = torch.as_tensor(list(dataset.indices), dtype=torch.long)
        index = chosen if index is None else chosen[index]
        dataset = dataset.dataset
    if type(dataset) is not TensorImageDataset:  # a subclass may change what an item is
        return None
    return dataset, index


class DeviceBatches:
    """(uint8 images, int64 labels) batches gathered on the device, in `sampler`'s order (else in order).

    `rows` maps the dataset's positions to rows of `images`/`labels` (a Subset's indices), so a split is
    never copied. `len()` is the batches of a whole epoch, as a DataLoader's; a resumed epoch yields fewer.
    """

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, rows: torch.Tensor | None, batch_size: int,
                 drop_last: bool, sampler: Iterable[int] | None = None) -> None:
        self.images, self.labels, self.rows = images, labels, rows
        # `order`, not `sampler`: Lightning would take an object with a sampler for a DataLoader
        self.batch_size, self.drop_last, self.order = batch_size, drop_last, sampler

    def __len__(self) -> int:
        n = len(self.labels) if self.rows is None else len(self.rows)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        device = self.labels.device
        n = len(self.labels) if self.rows is None else len(self.rows)
        if self.order is None:
            order = torch.arange(n, device=device)
        else:
            order = torch.as_tensor(list(iter(self.order)), dtype=torch.long).to(device)
        if self.rows is not None:
            order = self.rows[order]
        for start in range(0, len(order), self.batch_size):
            chunk = order[start:start + self.batch_size]
            if self.drop_last and len(chunk) < self.batch_size:
                return
            yield self.images[chunk], self.labels[chunk]


def device_batches(dataset: Dataset, device: torch.device, batch_size: int, drop_last: bool,
                   sampler: Iterable[int] | None, cache: dict[int, tuple[torch.Tensor, torch.Tensor]]
                   ) -> DeviceBatches | None:
    """Batches of `dataset` gathered on `device`, or None when it is not a tensor dataset.

    `cache` keeps one device copy per underlying dataset (the train, validation and test splits often share one).
    """
    found = tensor_source(dataset)
    if found is None:
        return None
    base, index = found
    key = id(base)
    if key not in cache or cache[key][0].device != device:
        cache[key] = (base.images.to(device), base.labels.to(device, torch.long))
    images, labels = cache[key]
    rows = None if index is None else index.to(device)
    return DeviceBatches(images, labels, rows, batch_size, drop_last, sampler)


def pool_images(dataset: torch.utils.data.Dataset) -> torch.Tensor:
    """Every image of a dataset as one uint8 tensor (N, C, H, W): x_u is drawn from these."""
    found = tensor_source(dataset)
    if found is not None:
        source, index = found
        return source.images if index is None else source.images[index]
    return torch.stack([dataset[i][0] for i in range(len(dataset))])  # type: ignore[arg-type]


def pool_labels(dataset: torch.utils.data.Dataset) -> torch.Tensor:
    """The dataset's labels in the order of `pool_images` (class-conditional teachers and the label reward read them)."""
    found = tensor_source(dataset)
    if found is not None:
        source, index = found
        return source.labels if index is None else source.labels[index]
    targets = [dataset[i][1] for i in range(len(dataset))]  # type: ignore[arg-type]
    if targets and isinstance(targets[0], dict):  # dense sources carry masks / keypoints, no class label
        return torch.zeros(len(targets), dtype=torch.long)
    return torch.as_tensor([int(y) for y in targets])
