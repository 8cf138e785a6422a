"""The label-scarce regime: a stratified, seeded subset of the training split for fine-tuning.

Pre-training pays where labels are scarce and unlabelled images are plentiful, so fine-tuning can be
restricted to `data.label_fraction` of each class (or `data.labels_per_class` images of each class)
while the teacher and the distillation keep every training image.
"""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import Dataset, Subset

from ..errors import RepFusionError
from .datasets import dataset_targets


def check_label_budget(label_fraction: float, labels_per_class: int | None) -> None:
    """One-sentence errors for values outside the documented ranges."""
    if isinstance(label_fraction, bool) or not 0.0 < float(label_fraction) <= 1.0:
        raise RepFusionError(f"data.label_fraction must lie in (0, 1] (1 keeps every label), not {label_fraction}.")
    if labels_per_class is not None:
        if isinstance(labels_per_class, bool) or int(labels_per_class) != labels_per_class or labels_per_class < 1:
            raise RepFusionError(
                f"data.labels_per_class must be a positive whole number (or null), not {labels_per_class}.")
        if label_fraction < 1.0:
            raise RepFusionError("Set data.label_fraction or data.labels_per_class, not both; leave the other at "
                                 "its default.")


def dataset_labels(dataset: Dataset) -> np.ndarray:
    """Every item's label without decoding images where the dataset keeps its labels (Subset chains too)."""
    if isinstance(dataset, Subset):
        return dataset_labels(dataset.dataset)[np.asarray(dataset.indices, dtype=np.int64)]
    labels = getattr(dataset, "labels", None)
    if labels is not None:
        return labels.numpy() if isinstance(labels, torch.Tensor) else np.asarray(labels)
    return np.asarray([int(dataset[i][1]) for i in range(len(dataset))])  # type: ignore[arg-type]


def stratified_subset(labels: np.ndarray, label_fraction: float = 1.0, labels_per_class: int | None = None,
                      seed: int = 0) -> list[int]:
    """Indices of a class-stratified subset, sorted: round(fraction x n_c) of each class (at least one), or
    min(labels_per_class, n_c).

    Each class is shuffled once with `seed` and its first k images are kept, so for one seed a smaller
    budget is a subset of a larger one (10 % of the labels lie inside the 50 %).
    """
    check_label_budget(label_fraction, labels_per_class)
    generator = torch.Generator().manual_seed(seed)
    chosen: list[int] = []
    for c in np.unique(labels):
        members = np.flatnonzero(labels == c)
        order = members[torch.randperm(len(members), generator=generator).numpy()]
        k = min(len(members), labels_per_class) if labels_per_class is not None else \
            max(1, round(len(members) * label_fraction))
        chosen += order[:k].tolist()
    return sorted(chosen)


def random_subset(n: int, label_fraction: float, seed: int = 0) -> list[int]:
    """Indices of a seeded random subset of round(fraction x n) items (at least one), sorted: the budget for
    dense targets (masks, landmarks), which have no class to stratify by.

    One permutation per seed, cut at k, so a smaller fraction is a subset of a larger one.
    """
    check_label_budget(label_fraction, None)
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    return sorted(order[: max(1, round(n * label_fraction))].tolist())


def is_dense(dataset: Dataset) -> bool:
    """Whether items carry a target dict (masks, keypoints) rather than an int label (Subset chains too)."""
    return bool(dataset_targets(dataset))


def labelled_subset(dataset: Dataset, label_fraction: float = 1.0, labels_per_class: int | None = None,
                    seed: int = 0) -> list[int]:
    """The fine-tuning budget: class-stratified for labelled images, a seeded random subset for dense targets."""
    if is_dense(dataset):
        if labels_per_class is not None:
            raise RepFusionError("data.labels_per_class needs image classes, which masks and landmarks do not have; "
                                 "use data.label_fraction for dense tasks.")
        return random_subset(len(dataset), label_fraction, seed)  # type: ignore[arg-type]
    return stratified_subset(dataset_labels(dataset), label_fraction, labels_per_class, seed)
