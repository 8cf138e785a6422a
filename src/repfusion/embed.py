"""`repfusion embed --student.source RUN --data.root FOLDER`: the pooled features of every image under a folder.

For the user's own downstream work (retrieval, clustering, a classifier in another library): one row per
image, in the order of `files.csv` (a real CSV, header `file[,label]`: paths relative to the folder, found
recursively, sorted; a label column where labels are known: `--data.labels` auto (class sub-folders, as
`pretrain` detects them), folders, none or a CSV of file,label rows, as the training verbs read them). The images are
read as the run read its data (RGB, resized to the run's image size, normalised with its mean/std) unless
`--data.image_size` / `--data.mean` / `--data.std` say otherwise; eval mode (BatchNorm running statistics),
batched, no autograd. Everything is checked and computed before the first write, so bad input or a corrupt
image leaves the output folder as it was.
"""

from __future__ import annotations

import csv
import io
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from .errors import RepFusionError
from .verbs import EmbedRun
SPLITS = ("train", "val", "test")  # a split folder's class sub-folders lie one level down


def file_labels(root: Path, files: list[Path], labels: str = "auto") -> list[str] | None:
    """Each file's label, or None where labels are not known (`labels` none, or auto on a folder that is not
    the class sub-folder layout). folders: the class folder, the first one under root (under root/train,
    root/val or root/test when the folder is split); a CSV: its label, "" for a file it does not name."""
    from .data.folder_labels import detect_labels, read_label_csv

    kind = detect_labels(root) if labels == "auto" else labels
    if kind == "none":
        return None
    names = [f.relative_to(root).as_posix() for f in files]
    if kind != "folders":
        path = Path(kind)
        if path.suffix.lower() != ".csv" or not path.is_file():
            raise RepFusionError(f"--data.labels must be auto, folders, none or an existing .csv file of file,label "
                                 f"rows, not '{labels}'.")
        table = read_label_csv(path, root)
        return [table.get(name, "") for name in names]
    split = (root / "train").is_dir()
    found = []
    for name in names:
        parts = name.split("/")
        parts = parts[1:] if split and parts[0] in SPLITS else parts
        if len(parts) < 2:
            if labels == "auto":  # not the class layout after all: no label column rather than a guess
                return None
            raise RepFusionError(f"{root / name} lies in no class sub-folder, so --data.labels folders cannot label "
                                 "it; move it into one, or give --data.labels none.")
        found.append(parts[0])
    return found


def embed_files(root: Path, student: str, *, image_size: int | None = None, mean: list[float] | None = None,
                std: list[float] | None = None, batch_size: int = 64, device: str | None = None,
                progress: bool = True, labels: str = "auto") -> tuple[list[Path], torch.Tensor, dict]:
    """(image files under `root`, their features [N, C] float32, what was used: `labels` holds each file's
    label, or None where none are known); nothing written."""
    from .data.augment import Normalize
    from .data.datasets import image_files, read_image
    from .run_backbone import PooledBackbone, load_run_backbone

    if not root.is_dir():
        raise RepFusionError(f"--data.root {root} is not a folder; give the folder of images to embed.")
    run = load_run_backbone(student)
    files = image_files(root)
    if not files:
        raise RepFusionError(f"--data.root {root} holds no images (searched recursively for .png, .jpg, ...); "
                             "point it at a folder of images.")
    size = image_size or run.image_size
    if size is None:
        raise RepFusionError(f"The run in {run.folder} does not record its image size; give --data.image_size.")
    if size < 1 or batch_size < 1:
        raise RepFusionError("--data.image_size and --data.batch_size must be positive whole numbers.")
    known = file_labels(root, files, labels)
    mean_, std_ = tuple(mean or run.mean), tuple(std or run.std)
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    model = PooledBackbone(run.backbone).eval().to(device)
    normalize = Normalize(mean_, std_).to(device)
    rows, start, last_note = [], time.monotonic(), 0.0
    with torch.inference_mode():
        for first in range(0, len(files), batch_size):
            batch = torch.stack([read_image(f, size) for f in files[first:first + batch_size]]).to(device)
            rows.append(model(normalize(batch.float() / 255)).float().cpu())
            done = min(first + batch_size, len(files))
            if progress and len(files) > batch_size and (time.monotonic() - last_note > 2 or done == len(files)):
                last_note = time.monotonic()
                print(f"embed: {done}/{len(files)} images ({last_note - start:.0f} s)", file=sys.stderr, flush=True)
    used = {"student": str(run.folder), "arch": run.backbone.config.arch, "width": float(run.backbone.config.width),
            "image_size": size, "mean": list(mean_), "std": list(std_), "images": len(files),
            "features": int(rows[0].shape[1]), "pooling": "mean over the feature layer's positions",
            "labels": known}
    return files, torch.cat(rows), used


def files_csv(root: Path, files: list[Path], labels: list[str] | None) -> str:
    """The CSV of the rows: header file[,label], one row per file in the order of the features (quoted
    where a name holds a comma, a quote or a line break, so csv.reader and pandas.read_csv read it back)."""
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(["file"] if labels is None else ["file", "label"])
    for i, f in enumerate(files):
        name = f.relative_to(root).as_posix()
        writer.writerow([name] if labels is None else [name, labels[i]])
    return text.getvalue()


def write_embeddings(out: Path, root: Path, files: list[Path], features: torch.Tensor, used: dict,
                     fmt: str = "safetensors") -> Path:
    """features.safetensors (tensor `features`) or features.npy, files.csv and embed.json, each atomically."""
    from .io import atomic_write, save_tensors, write_json, write_text

    labels = used.get("labels")
    facts = {k: v for k, v in used.items() if k != "labels"}
    facts["label_column"] = labels is not None
    if fmt == "safetensors":
        path = save_tensors(out / "features.safetensors", {"features": features},
                            metadata={k: json.dumps(v) for k, v in facts.items()})
    else:
        path = atomic_write(out / "features.npy", lambda tmp: _save_npy(tmp, features.numpy()))
    write_text(out / "files.csv", files_csv(root, files, labels))
    write_json(out / "embed.json", {**facts, "root": str(root), "format": fmt, "file": path.name,
                                    "files": "files.csv"})
    return path


def _save_npy(tmp: str, array: np.ndarray) -> None:
    with open(tmp, "wb") as f:  # a file object: np.save on a name would add .npy to the temporary name
        np.save(f, array, allow_pickle=False)


def run_embed(cfg: EmbedRun, out: Path, save: Callable[[Path], None]) -> Path:
    """`repfusion embed`: every check and every feature before the first write, then the files and config.yaml."""
    from .io import check_writable_dir

    root = Path(cfg.data.root)
    check_writable_dir(out)
    data = cfg.data
    files, features, used = embed_files(root, cfg.student.source, image_size=data.image_size,
                                        mean=None if data.mean is None else list(data.mean),
                                        std=None if data.std is None else list(data.std), batch_size=data.batch_size,
                                        device=cfg.device, labels=data.labels or "auto")
    path = write_embeddings(out, root, files, features, used, cfg.format)
    save(out / "config.yaml")
    labelled = " with labels" if used["labels"] is not None else ""
    print(f"Wrote {path} ({features.shape[0]} x {features.shape[1]}) and {out / 'files.csv'}{labelled}")
    return path
