"""`repfusion embed --student RUN --data.root FOLDER`: the pooled features of every image under a folder.

For the user's own downstream work (retrieval, clustering, a classifier in another library): one row per
image, in the order of `files.txt` (paths relative to the folder, found recursively, sorted). The images are
read as the run read its data (RGB, resized to the run's image size, normalised with its mean/std) unless
`--data.image_size` / `--data.mean` / `--data.std` say otherwise; eval mode (BatchNorm running statistics),
batched, no autograd. Everything is checked and computed before the first write, so bad input or a corrupt
image leaves the output folder as it was.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

from .errors import RepFusionError
from .flags import add_flag

FORMATS = ("safetensors", "npy")


def embed_files(root: Path, student: str, *, image_size: int | None = None, mean: list[float] | None = None,
                std: list[float] | None = None, batch_size: int = 64, device: str | None = None,
                progress: bool = True) -> tuple[list[Path], torch.Tensor, dict]:
    """(image files under `root`, their features [N, C] float32, what was used); nothing written."""
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
    bad = next((f for f in files if "\n" in str(f.relative_to(root))), None)
    if bad is not None:
        raise RepFusionError(f"{bad!s:.80} has a line break in its name, which files.txt cannot list; rename it.")
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
            "features": int(rows[0].shape[1]), "pooling": "mean over the feature layer's positions"}
    return files, torch.cat(rows), used


def write_embeddings(out: Path, root: Path, files: list[Path], features: torch.Tensor, used: dict,
                     fmt: str = "safetensors") -> Path:
    """features.safetensors (tensor `features`) or features.npy, files.txt and embed.json, each atomically."""
    from .io import atomic_write, save_tensors, write_json, write_text

    if fmt == "safetensors":
        path = save_tensors(out / "features.safetensors", {"features": features},
                            metadata={k: json.dumps(v) for k, v in used.items()})
    else:
        path = atomic_write(out / "features.npy", lambda tmp: _save_npy(tmp, features.numpy()))
    write_text(out / "files.txt", "".join(f"{f.relative_to(root).as_posix()}\n" for f in files))
    write_json(out / "embed.json", {**used, "root": str(root), "format": fmt, "file": path.name,
                                    "files": "files.txt"})
    return path


def _save_npy(tmp: str, array: np.ndarray) -> None:
    with open(tmp, "wb") as f:  # a file object: np.save on a name would add .npy to the temporary name
        np.save(f, array, allow_pickle=False)


def _floats3(text: str) -> list[float]:
    """--data.mean / --data.std: three numbers, as JSON ([0.5, 0.5, 0.5]) or comma-separated."""
    try:
        values = json.loads(text) if text.strip().startswith("[") else [float(v) for v in text.split(",")]
    except ValueError:
        values = None
    if not isinstance(values, list) or len(values) != 3 or not all(isinstance(v, (int, float)) for v in values):
        raise argparse.ArgumentTypeError(f"expected three numbers such as [0.5, 0.5, 0.5], not {text!r}")
    return [float(v) for v in values]


def run(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="repfusion embed", description="Pooled features of every image under a "
                                     "folder (recursively), with the file list, for your own downstream work.")
    parser.add_argument("--student", required=True, help="Distill run folder (or its student/), finetune run "
                        "folder (or its model/).")
    parser.add_argument("--data.root", dest="root", required=True, help="Folder of images (any nesting).")
    parser.add_argument("--data.image_size", dest="image_size", type=int, default=None,
                        help="Resize to this square size (default: the run's).")
    parser.add_argument("--data.mean", dest="mean", type=_floats3, default=None,
                        help="Pixel mean (default: the run's).")
    parser.add_argument("--data.std", dest="std", type=_floats3, default=None, help="Pixel std (default: the run's).")
    parser.add_argument("--data.batch_size", dest="batch_size", type=int, default=64)
    add_flag(parser, "--run-dir", "--out", dest="out", default="runs/embed",
             help="Output folder (default runs/embed).")
    parser.add_argument("--format", default="safetensors", choices=FORMATS)
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:1, ... (default: CUDA when present).")
    args = parser.parse_args(argv)
    from .io import check_writable_dir

    out, root = Path(args.out), Path(args.root)
    check_writable_dir(out, "--out")
    files, features, used = embed_files(root, args.student, image_size=args.image_size, mean=args.mean,
                                        std=args.std, batch_size=args.batch_size, device=args.device)
    path = write_embeddings(out, root, files, features, used, args.format)
    print(f"Wrote {path} ({features.shape[0]} x {features.shape[1]}) and {out / 'files.txt'}")
