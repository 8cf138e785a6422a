from __future__ import annotations

import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from repfusion.teachers import default_scheduler, unet_from_preset

if os.environ.get("PYTEST_XDIST_WORKER"):  # one intra-op thread per worker: two workers share two cores
    torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


@pytest.fixture(scope="session")
def tiny_teacher_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A teacher folder exactly as save_pretrained writes it (stands in for a hub checkpoint)."""
    folder = tmp_path_factory.mktemp("teacher")
    torch.manual_seed(0)
    unet_from_preset("tiny-16").save_pretrained(folder)
    default_scheduler().save_pretrained(folder)
    return folder


def write_cifar_batch(path: Path, images: np.ndarray, labels: list[int], bytes_keys: bool = True) -> None:
    """Write a batch in the original CIFAR python format: N x 3072 uint8, R then G then B planes."""
    data = images.transpose(0, 3, 1, 2).reshape(len(images), -1)  # NHWC -> N x (3*32*32), plane-major
    batch = {"batch_label": "fixture", "labels": labels, "data": data}
    if bytes_keys:
        batch = {k.encode(): v for k, v in batch.items()}
    path.write_bytes(pickle.dumps(batch, protocol=2))


@pytest.fixture
def cifar_dir(tmp_path: Path) -> Path:
    root = tmp_path / "cifar-10-batches-py"
    root.mkdir()
    rng = np.random.default_rng(0)
    for i, name in enumerate(["data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4", "data_batch_5",
                              "test_batch"]):
        images = rng.integers(0, 256, size=(6, 32, 32, 3), dtype=np.uint8)
        write_cifar_batch(root / name, images, [int(x) for x in rng.integers(0, 10, 6)], bytes_keys=i % 2 == 0)
    meta = {b"label_names": [n.encode() for n in ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog",
                                                   "horse", "ship", "truck"]]}
    (root / "batches.meta").write_bytes(pickle.dumps(meta, protocol=2))
    return root
