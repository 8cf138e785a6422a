"""Representation quality of a frozen student backbone, without fine-tuning noise.

A linear probe (logistic regression on standardised features) and a k-NN classifier (cosine
similarity, majority vote of the k nearest training images) on the spatially averaged output of the
student's feature layer. The same measure applies to a distilled student, a fine-tuned one and a
randomly initialised one, so `repfusion probe --student` shows whether distillation taught the backbone
anything before any label is spent on it.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from sklearn.neighbors import KNeighborsClassifier
from torch import nn
from torch.utils.data import DataLoader, Dataset

from ..data.augment import Normalize, unit_pixels
from ..errors import RepFusionError
from ..features import layer_output, pooled, resolve_modules
from ..run_folder import DEFAULT_MEAN_STD, run_normalization, student_export
from ..students import build_student, load_student
from .probe import linear_probe

RANDOM_PREFIX = "random"


def load_probe_student(source: str | Path, arch: str | None = None, width: float = 1.0,
                       in_channels: int = 3) -> tuple[nn.Module, tuple[tuple[float, ...], tuple[float, ...]] | None]:
    """The student named by `source` and the normalisation it was trained with (None when unknown).

    source: a distill run folder, its student/ folder, a finetune run folder or its model/ folder, or
    `random` / `random:ARCH` for a randomly initialised ARCH (default `arch`, else resnet18_cifar) at `width`.
    """
    text = str(source)
    if text == RANDOM_PREFIX or text.startswith(RANDOM_PREFIX + ":"):
        name = text.partition(":")[2] or arch or "resnet18_cifar"
        return build_student(name, width, num_classes=0, in_channels=in_channels), None
    folder = student_export(source)
    return load_student(folder), run_normalization(folder)


@torch.no_grad()
def student_features(model: nn.Module, dataset: Dataset, layer: str, normalize: nn.Module, batch_size: int = 256,
                     device: torch.device | str = "cpu") -> tuple[np.ndarray, np.ndarray]:
    """Pooled features of `layer` (eval mode: BatchNorm uses its running statistics) and the labels."""
    model.eval().to(device)
    normalize = normalize.to(device)
    feats, labels = [], []
    for images, y in DataLoader(dataset, batch_size=batch_size, shuffle=False):
        x = unit_pixels(images.to(device))
        feats.append(pooled(layer_output(model, layer, normalize(x))).float().cpu().numpy())
        labels.append(np.asarray(y))
    return np.concatenate(feats), np.concatenate(labels)


def knn_neighbours(train_labels: np.ndarray, test_labels: np.ndarray, k: int = 20) -> tuple[int | None, str]:
    """(the k a k-NN probe can use, why it is not `k`: "" when it is).

    A majority vote of k neighbours means something only where every class has at least k labelled training
    images; otherwise the vote is the class prior (a 20-NN on 21 images of 10 classes scores about chance).
    So k is lowered to the smallest per-class count; a class of the test labels with no training image, or a
    single class, leaves no k-NN at all (None).
    """
    classes, counts = np.unique(np.asarray(train_labels), return_counts=True)
    missing = np.setdiff1d(np.unique(np.asarray(test_labels)), classes)
    if len(classes) < 2:
        return None, f"no k-NN: the training images hold {len(classes)} class(es)"
    if len(missing):
        return None, f"no k-NN: class {missing[0]} has no labelled training image"
    smallest = int(counts.min())
    if smallest >= k:
        return k, ""
    return smallest, f"k lowered from {k} to {smallest}: the smallest class has {smallest} labelled training image(s)"


def knn_accuracy(train: tuple[np.ndarray, np.ndarray], test: tuple[np.ndarray, np.ndarray],
                 k: int = 20) -> float | None:
    """Majority vote of the k most cosine-similar training features, k as `knn_neighbours` allows (None: no
    k-NN, see there)."""
    used, _ = knn_neighbours(train[1], test[1], k)
    if used is None:
        return None
    knn = KNeighborsClassifier(n_neighbors=used, metric="cosine", algorithm="brute")
    knn.fit(*train)
    return float(knn.score(*test))


def knn_words(result: dict[str, Any]) -> str:
    """How a probe result's k-NN was fitted, for a report: "k = 20, cosine similarity, majority vote" and
    the note where k was lowered, or only the note where there is no k-NN."""
    if result.get("knn_k") is None:
        return result.get("knn_note", "none")
    note = f" ({result['knn_note']})" if result.get("knn_note") else ""
    return f"k = {result['knn_k']}{note}, cosine similarity, majority vote"


def knn_shown(value: float | None, scale: float = 1.0, digits: int = 4) -> str:
    """A k-NN accuracy for a report: '-' where there is none."""
    return "-" if value is None else f"{scale * value:.{digits}f}"


def probe_student(model_or_path: nn.Module | str | Path, train_set: Dataset, test_set: Dataset, *,
                  layer: str | None = None, mean: Sequence[float] | None = None, std: Sequence[float] | None = None,
                  arch: str | None = None, width: float = 1.0, k: int = 20, batch_size: int = 256,
                  max_iter: int = 2000, device: torch.device | str | None = None) -> dict[str, Any]:
    """Linear-probe and k-NN test accuracy of a frozen student backbone: {"linear_probe": acc, "knn": acc or
    None, "knn_k": the k used or None}, plus "knn_note" where k was lowered or no k-NN was fitted
    (`knn_neighbours`: k is at most the smallest per-class count of train_set).

    Args:
        model_or_path: a student module, or anything `load_probe_student` accepts (run folder, random:ARCH).
        train_set, test_set: datasets of (uint8 C x H x W image, label); the probes fit on train_set.
        layer (`str`, *optional*): the module whose output is pooled; defaults to the student's feature layer.
        mean, std (*optional*): pixel normalisation; defaults to the one the student's run used, else 0.5/0.5.
        arch, width: the architecture of a `random` student.
        k (`int`, *optional*, defaults to 20): neighbours of the k-NN classifier, lowered where a class has fewer.
        device (*optional*): where features are computed; a given module's own device, else CUDA when present.
    """
    if isinstance(model_or_path, nn.Module):  # probed where it lies, unless a device is given
        model, trained = model_or_path, None
        device = device or next(model.parameters()).device
    else:
        channels = int(train_set[0][0].shape[0])
        model, trained = load_probe_student(model_or_path, arch, width, channels)
        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    default_mean, default_std = trained or DEFAULT_MEAN_STD
    normalize = Normalize(tuple(mean or default_mean), tuple(std or default_std))
    layer = layer or getattr(model, "feature_layer", None)
    if layer is None:
        raise RepFusionError(f"{type(model).__name__} names no feature layer; pass the layer to probe.")
    resolve_modules(model, [layer], kind="student layer")
    was_training = model.training
    try:
        train = student_features(model, train_set, layer, normalize, batch_size, device)
        test = student_features(model, test_set, layer, normalize, batch_size, device)
    finally:
        model.train(was_training)
    used, note = knn_neighbours(train[1], test[1], k)
    result = {"linear_probe": linear_probe(train, test, max_iter), "knn": knn_accuracy(train, test, k), "knn_k": used}
    return {**result, "knn_note": note} if note else result


def run_student_probe(source: str, train_set: Dataset, test_set: Dataset, out: Path, **options) -> dict[str, Any]:
    """`repfusion probe --student`: probe, then write student_probe.json and student_probe.md to `out`."""
    from ..io import write_json, write_text

    data = options.pop("data_section", None)
    result = probe_student(source, train_set, test_set, **options)
    shown = {k: v for k, v in options.items() if k in ("layer", "mean", "std", "arch", "width", "k") and v is not None}
    if str(source).split(":")[0] != RANDOM_PREFIX:  # the exported student's own architecture, not the flags'
        from ..students import read_student_config

        saved = read_student_config(student_export(source))
        shown.update(arch=saved["arch"], width=saved["width"])
    write_json(out / "student_probe.json", {"student": str(source), **shown, "data": data,
                                            "train_images": len(train_set), "test_images": len(test_set), **result})
    write_text(out / "student_probe.md", "\n".join([
        f"# Student probe: {source}", "",
        f"Frozen backbone, spatially averaged feature-layer output; {len(train_set)} train / {len(test_set)} test "
        f"images. Linear probe: logistic regression on standardised features; k-NN: "
        f"{knn_words(result)}.", "",
        "| linear probe | k-NN |", "|---|---|", f"| {result['linear_probe']:.4f} | {knn_shown(result['knn'])} |", ""]))
    return result
