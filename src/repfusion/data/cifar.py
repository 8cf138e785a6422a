"""Reader for the original CIFAR-10/100 "python version" pickles (torchvision's format)."""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import RepFusionError
from .datasets import TensorImageDataset

CIFAR10_TRAIN = [f"data_batch_{i}" for i in range(1, 6)]


def _str_keys(d: dict) -> dict[str, Any]:
    """`encoding='bytes'` gives bytes keys, `'latin1'` str keys: accept both."""
    return {(k.decode("latin1") if isinstance(k, bytes) else k): v for k, v in d.items()}


def _names(values: list) -> list[str]:
    return [v.decode("latin1") if isinstance(v, bytes) else str(v) for v in values]


# The only globals a real CIFAR batch refers to: numpy's array reconstruction (numpy 1 and 2 module names,
# protocols 2-5) and `_codecs.encode`, which protocol-2 pickles written by Python 3 use for bytes.
ALLOWED_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.numeric", "_frombuffer"), ("numpy._core.numeric", "_frombuffer"),
    ("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode"),
}


class RefusedPickle(Exception):
    """A pickle asked for a global outside ALLOWED_GLOBALS; it was not imported."""


class DataOnlyUnpickler(pickle.Unpickler):
    """Unpickles dicts, lists, strings, bytes, numbers and numpy arrays; refuses any other global before it is
    imported, so a crafted file cannot run code."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in ALLOWED_GLOBALS:
            raise RefusedPickle(f"{module}.{name}")
        if module == "_codecs":
            import codecs

            return codecs.encode
        if name in ("ndarray", "dtype"):
            return getattr(np, name)
        try:
            from numpy._core import multiarray, numeric  # numpy >= 2
        except ImportError:  # pragma: no cover - numpy 1
            from numpy.core import multiarray, numeric  # type: ignore[no-redef]
        return getattr(multiarray if name == "_reconstruct" else numeric, name)


def load_pickle(path: Path) -> dict[str, Any]:
    try:
        with open(path, "rb") as f:
            obj = DataOnlyUnpickler(f, encoding="bytes").load()
    except FileNotFoundError:
        raise RepFusionError(f"CIFAR file {path} is missing; point data.root at a cifar-10-batches-py folder.") from None
    except RefusedPickle as e:
        raise RepFusionError(
            f"{path} asks to load '{e}', which a CIFAR batch never holds (only dicts, lists, bytes and numpy "
            "arrays); repfusion refused it without running it: download the 'python version' archive again."
        ) from None
    except Exception as e:
        raise RepFusionError(
            f"{path} is not a CIFAR python-format batch ({type(e).__name__}); download the 'python version' archive."
        ) from None
    if not isinstance(obj, dict):
        raise RepFusionError(f"{path} is not a CIFAR python-format batch (no dict inside); use the 'python version'.")
    return _str_keys(obj)


def find_cifar_root(root: str | Path) -> Path:
    """Accept the batches folder itself or a folder that contains cifar-10-batches-py / cifar-100-python."""
    root = Path(root)
    for candidate in (root, root / "cifar-10-batches-py", root / "cifar-100-python"):
        if (candidate / "data_batch_1").exists() or (candidate / "train").exists() and (candidate / "meta").exists():
            return candidate
    if not root.exists():
        raise RepFusionError(f"Dataset folder {root} does not exist; point data.root at cifar-10-batches-py.")
    raise RepFusionError(
        f"No CIFAR batches (data_batch_1 ... or train/meta) in {root}; point data.root at cifar-10-batches-py."
    )


def read_batches(files: list[Path]) -> tuple[torch.Tensor, torch.Tensor]:
    images, labels = [], []
    for path in files:
        batch = load_pickle(path)
        label_key = "labels" if "labels" in batch else "fine_labels"
        if "data" not in batch or label_key not in batch:
            raise RepFusionError(f"{path} lacks 'data' or 'labels'; it is not a CIFAR python-format batch.")
        data = np.asarray(batch["data"], dtype=np.uint8)
        if data.ndim != 2 or data.shape[1] != 3072 or len(data) != len(batch[label_key]):
            raise RepFusionError(
                f"{path} holds data of shape {data.shape}, not N x 3072 with one label per row; it is not CIFAR."
            )
        images.append(torch.from_numpy(data.reshape(-1, 3, 32, 32).copy()))
        labels.append(torch.as_tensor(batch[label_key], dtype=torch.long))
    return torch.cat(images), torch.cat(labels)


def cifar(root: str | Path, train: bool) -> TensorImageDataset:
    """CIFAR-10 (data_batch_1..5 / test_batch) or CIFAR-100 (train / test) from the original files."""
    folder = find_cifar_root(root)
    if (folder / "data_batch_1").exists():
        files = [folder / n for n in CIFAR10_TRAIN if (folder / n).exists()] if train else [folder / "test_batch"]
        meta_file, names_key = folder / "batches.meta", "label_names"
    else:
        files = [folder / ("train" if train else "test")]
        meta_file, names_key = folder / "meta", "fine_label_names"
    images, labels = read_batches(files)
    meta = load_pickle(meta_file) if meta_file.exists() else {}
    classes = _names(meta.get(names_key, [])) or [str(i) for i in range(int(labels.max()) + 1)]
    return TensorImageDataset(images, labels, classes)
