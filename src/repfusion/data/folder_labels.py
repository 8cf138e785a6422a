"""Where a folder's labels come from: class sub-folders, a CSV of file,label rows, or none at all.

A user's folder is often unlabeled and nested any way (photos/2023/08/...), and labels, when there
are any, may live in a CSV beside it. `data.labels` names the source: `folders` (one sub-folder per
class, the ImageFolder layout), `none` (every image under the root, found recursively, one class) or
the path of a CSV file. A split-less folder's test hold-out is drawn per file from a hash of its
relative path, so the unlabeled view and a CSV's labelled view of one folder agree on which images are
test images, whichever subset each reads: nothing a label-free stage trains on is scored later.
"""

from __future__ import annotations

import csv
import hashlib
from pathlib import Path

from ..errors import RepFusionError
from .datasets import IMAGE_SUFFIXES, FileImageDataset, image_files, note_grayscale

LABEL_SOURCES = ("auto", "folders", "none")
CSV_FILE_HEADERS = {"file", "filename", "path", "image", "name"}


def labels_kind(labels: str | None, root: Path | None = None) -> str:
    """folders | none | csv, from the value of data.labels (None: class sub-folders, as before; auto: what
    `detect_labels` finds under root)."""
    if labels == "auto":
        return detect_labels(root) if root is not None else "folders"
    if labels in (None, "folders"):
        return "folders"
    if labels == "none":
        return "none"
    return "csv"


def detect_labels(root: Path) -> str:
    """folders when the images sit in two or more sub-folders and none loose beside them (the ImageFolder
    layout; inside root/train when the folder is split), else none: a nested photo archive is unlabeled."""
    folder = root / "train" if (root / "train").is_dir() else root
    if not folder.is_dir():
        return "none"
    entries = [p for p in sorted(folder.iterdir()) if not p.name.startswith(".")]
    loose = [p for p in entries if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES]
    classes = [p for p in entries if p.is_dir() and image_files(p, root)]
    return "folders" if len(classes) >= 2 and not loose else "none"


def check_labels_option(labels: str | None, source: str) -> None:
    """One sentence before anything is read or written."""
    kind = "folders" if labels == "auto" else labels_kind(labels)
    if labels not in (None, "folders", "auto") and source != "folder":
        raise RepFusionError(f"data.labels {labels} applies to data.source folder only, not '{source}'; drop it.")
    if kind == "csv":
        path = Path(str(labels))
        if path.suffix.lower() != ".csv":
            raise RepFusionError(f"data.labels must be folders, none or the path of a .csv file of file,label rows, "
                                 f"not '{labels}'.")
        if not path.is_file():
            raise RepFusionError(f"Label file {path} does not exist; give the CSV of file,label rows (paths relative "
                                 "to data.root) or data.labels none.")


def read_label_csv(path: Path, root: Path) -> dict[str, str]:
    """relative path -> label string; a header row (file,label) is skipped; paths are data, never opened
    outside the root."""
    try:
        with path.open(newline="", encoding="utf-8") as handle:
            rows = [row for row in csv.reader(handle) if row and any(cell.strip() for cell in row)]
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise RepFusionError(f"Label file {path} is not a readable CSV ({type(e).__name__}); write it as UTF-8 "
                             "file,label rows.") from None
    if rows and rows[0][0].strip().lower() in CSV_FILE_HEADERS:
        rows = rows[1:]
    found: dict[str, str] = {}
    for number, row in enumerate(rows, start=1):
        if len(row) < 2 or not row[0].strip() or not row[1].strip():
            raise RepFusionError(f"Label file {path}, row {number}, is not file,label ({','.join(row)!r}); give "
                                 "every row a relative image path and a label.")
        name = Path(row[0].strip())
        if name.is_absolute() or ".." in name.parts:
            raise RepFusionError(f"Label file {path}, row {number}, names {name}, outside data.root; give paths "
                                 f"relative to {root}.")
        found[name.as_posix()] = row[1].strip()
    if not found:
        raise RepFusionError(f"Label file {path} holds no file,label rows; add them or use data.labels none.")
    return found


def unlabeled_folder(folder: Path, image_size: int | None, within: Path) -> FileImageDataset:
    """Every image under `folder`, at any depth, as one class (label 0): the label-free view."""
    if not folder.is_dir():
        raise RepFusionError(f"Dataset folder {folder} does not exist; give a folder of images (any nesting).")
    files = image_files(folder, within)
    if not files:
        raise RepFusionError(f"Dataset folder {folder} holds no images (looked recursively for "
                             ".png/.jpg/.jpeg/.bmp/.gif/.webp/.tif); point data.root at your images.")
    note_grayscale(folder, files)
    return FileImageDataset(files, [0] * len(files), ["images"], image_size)


def csv_folder(folder: Path, labels_csv: Path, image_size: int | None, within: Path) -> FileImageDataset:
    """The images under `folder` that the CSV labels (paths relative to `within`, the data root)."""
    table = read_label_csv(labels_csv, within)
    on_disk = {f.relative_to(within).as_posix(): f for f in image_files(within, within)}
    missing = [name for name in table if name not in on_disk]
    if missing:
        raise RepFusionError(f"Label file {labels_csv} names {missing[0]} (and {len(missing) - 1} more), which is not "
                             f"an image under {within}; fix the path or drop the row.")
    classes = sorted(set(table.values()))
    index = {name: i for i, name in enumerate(classes)}
    chosen = [(on_disk[name], index[label]) for name, label in sorted(table.items())
              if _under(on_disk[name], folder)]
    if not chosen:
        raise RepFusionError(f"Label file {labels_csv} labels no image under {folder}; check its paths.")
    note_grayscale(folder, [f for f, _ in chosen])
    return FileImageDataset([f for f, _ in chosen], [y for _, y in chosen], classes, image_size)


def _under(path: Path, folder: Path) -> bool:
    try:
        path.relative_to(folder)
        return True
    except ValueError:
        return False


def file_holdout(files: list[Path], root: Path, fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """(kept, held out) indices: a file is held out when the hash of (seed, its path under root) falls in
    the first `fraction` of the range, whatever other files the dataset holds; at least one is held out."""
    def draw(path: Path) -> float:
        digest = hashlib.sha256(f"{seed}:{path.relative_to(root).as_posix()}".encode()).digest()
        return int.from_bytes(digest[:8], "big") / 2 ** 64

    values = [draw(f) for f in files]
    held = [i for i, v in enumerate(values) if v < fraction]
    if not held and files:
        held = [min(range(len(files)), key=values.__getitem__)]
    chosen = set(held)
    return [i for i in range(len(files)) if i not in chosen], held
