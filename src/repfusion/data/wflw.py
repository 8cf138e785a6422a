"""WFLW facial landmarks: 98 points per face, cropped by the face box to a square.

Annotation lines (`list_98pt_rect_attr_{train,test}.txt`, see docs/datasets.md) hold 207 tokens:
x0 y0 ... x97 y97, the box x_min y_min x_max y_max, six 0/1 attributes (pose, expression, illumination,
make-up, occlusion, blur) and the image path under `WFLW_images/`. One line is one face, so an image listed
twice gives two items.

Crop: a square of side `margin x max(box width, box height)` centred on the box centre (HRNet's facial
landmark code uses 1.25 x the box), padded with black where it leaves the image, resized (antialiased) to
`image_size`. Coordinates follow WFLW and mmpose: pixel centres at integers, so the crop maps a point by
x' = (x - (cx - side / 2)) x S / side - 1/2, the same map the pixels go through.
"""

from __future__ import annotations

import math
from pathlib import Path, PurePosixPath

import numpy as np
import torch
from PIL import Image
from torch import Tensor
from torch.utils.data import Dataset

from ..errors import RepFusionError
from .datasets import IMAGE_ERRORS, image_error, inside, to_rgb
from .face_layout import WFLW_NUM_KEYPOINTS

TOKENS = 2 * WFLW_NUM_KEYPOINTS + 4 + 6 + 1  # 207
ANNOTATION = "list_98pt_rect_attr_{split}.txt"
EDGE = 0.5  # a landmark may sit up to half a pixel beyond the outermost pixel centres (the image's edge)


class WFLWDataset(Dataset):
    """Items are (uint8 [3,S,S] crop, {"keypoints": float32 [98,2] in crop pixels, "attributes": uint8 [6]})."""

    targets: tuple[str, ...] = ("keypoints", "attributes")
    num_keypoints: int = WFLW_NUM_KEYPOINTS

    def __init__(self, files: list[Path], points: Tensor, boxes: Tensor, attributes: Tensor, image_size: int,
                 margin: float) -> None:
        self.files, self.points, self.boxes, self.attributes = files, points, boxes, attributes
        self.image_size, self.margin = image_size, margin

    def __len__(self) -> int:
        return len(self.files)

    def crop_window(self, index: int) -> tuple[float, float, float]:
        """(left, top, side) of the square crop in source pixel-centre coordinates."""
        x0, y0, x1, y1 = self.boxes[index].tolist()
        side = self.margin * max(x1 - x0, y1 - y0, 1.0)
        return (x0 + x1) / 2 - side / 2, (y0 + y1) / 2 - side / 2, side

    def __getitem__(self, index: int) -> tuple[Tensor, dict[str, Tensor]]:
        left, top, side = self.crop_window(index)
        size = self.image_size
        path = self.files[index]
        try:
            with Image.open(path) as img:
                img = to_rgb(img)
                # PIL boxes are in corner coordinates (pixel i spans [i, i+1]): shift by half a pixel
                l, t = left + 0.5, top + 0.5
                L, T = math.floor(l), math.floor(t)
                R, B = math.ceil(l + side), math.ceil(t + side)
                patch = img.crop((L, T, R, B))  # zero-padded where the window leaves the image
                patch = patch.resize((size, size), Image.BILINEAR, box=(l - L, t - T, l - L + side, t - T + side))
                rgb = np.asarray(patch, dtype=np.uint8).copy()
        except IMAGE_ERRORS as e:
            raise image_error(path, e) from None
        scale = size / side
        points = self.points[index].clone()
        points[:, 0] = (points[:, 0] - left) * scale - 0.5
        points[:, 1] = (points[:, 1] - top) * scale - 0.5
        return (torch.from_numpy(rgb).permute(2, 0, 1).contiguous(),
                {"keypoints": points.float(), "attributes": self.attributes[index]})


def find_annotation(root: Path, split: str) -> Path:
    """The split's annotation file anywhere under root (the release nests it two folders deep)."""
    name = ANNOTATION.format(split=split)
    if (root / name).is_file():
        return root / name
    found = sorted(root.rglob(name))
    if not found:
        raise RepFusionError(f"No {name} under {root}; data.root must hold WFLW_annotations/ and WFLW_images/ as "
                             "the WFLW release unpacks them.")
    return found[0]


def parse_annotations(path: Path) -> tuple[list[str], Tensor, Tensor, Tensor, list[int]]:
    """(image paths, points [N,98,2], boxes [N,4], attributes [N,6], line numbers) from one annotation file."""
    names: list[str] = []
    numbers: list[int] = []
    rows: list[list[float]] = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        tokens = line.split()
        if not tokens:
            continue
        if len(tokens) != TOKENS:
            raise RepFusionError(f"{path} line {number} has {len(tokens)} tokens but a WFLW line has {TOKENS} (98 "
                                 "points, a box, 6 attributes, an image path); fix or remove that line.")
        try:
            rows.append([float(t) for t in tokens[:-1]])
        except ValueError:
            raise RepFusionError(f"{path} line {number} has a non-numeric value among its first {TOKENS - 1} tokens; "
                                 "fix or remove that line.") from None
        bad = [i for i, v in enumerate(rows[-1]) if not math.isfinite(v)]
        if bad:
            what = (f"landmark {bad[0] // 2}" if bad[0] < 196 else "the face box" if bad[0] < 200 else
                    f"attribute {bad[0] - 200}")
            raise RepFusionError(f"{path} line {number}: {what} is {tokens[bad[0]]}, not a finite number; fix or "
                                 "remove that line.")
        name = tokens[-1]
        if PurePosixPath(name).is_absolute() or ".." in PurePosixPath(name).parts:
            raise RepFusionError(f"{path} line {number} names the image '{name}', which would be read from outside "
                                 "WFLW_images/; a WFLW line names its image relative to that folder (e.g. "
                                 "0--Parade/0_Parade_marchingband_1_116.jpg), so fix or remove that line.")
        names.append(name)
        numbers.append(number)
    if not rows:
        raise RepFusionError(f"{path} holds no annotation lines; use the file from the WFLW release.")
    values = torch.tensor(rows, dtype=torch.float64)
    points = values[:, :196].view(-1, WFLW_NUM_KEYPOINTS, 2).float()
    return names, points, values[:, 196:200].float(), values[:, 200:206].round().to(torch.uint8), numbers


def wflw(root: str | Path, train: bool, image_size: int = 256, margin: float = 1.25) -> WFLWDataset:
    """The train or test faces of a WFLW folder, each cropped around its box (see the module docstring)."""
    root = Path(root)
    if not root.is_dir():
        raise RepFusionError(f"WFLW folder {root} does not exist; set data.root to the unpacked WFLW release.")
    annotation = find_annotation(root, "train" if train else "test")
    names, points, boxes, attributes, numbers = parse_annotations(annotation)
    image_root = root / "WFLW_images" if (root / "WFLW_images").is_dir() else root
    sizes: dict[str, tuple[int, int]] = {}
    files = []
    for i, name in enumerate(names):
        path = image_root / name
        if name not in sizes:
            if not inside(path, root):  # a symbolic link out of the dataset folder
                raise RepFusionError(f"Image {path} named in {annotation} line {numbers[i]} is a link to a file "
                                     f"outside {root}; repfusion reads only files inside data.root, so copy the "
                                     "image there.")
            try:
                with Image.open(path) as img:  # reads the header only
                    sizes[name] = img.size
            except FileNotFoundError:
                raise RepFusionError(f"Image {path} named in {annotation} does not exist; unpack WFLW_images/ "
                                     "beside WFLW_annotations/.") from None
            except IMAGE_ERRORS as e:
                raise image_error(path, e) from None
        width, height = sizes[name]
        x0, y0, x1, y1 = boxes[i].tolist()
        if not (x0 <= x1 and y0 <= y1 and -width <= x0 and x1 <= 2 * width and -height <= y0 and y1 <= 2 * height):
            raise RepFusionError(
                f"{annotation} line {numbers[i]}: the face box ({x0:g}, {y0:g}, {x1:g}, {y1:g}) is not a box "
                f"(x_min <= x_max, y_min <= y_max) within one image size of the {width}x{height} image {name}; "
                "fix the annotation.")
        p = points[i]
        outside = (p[:, 0] < -EDGE) | (p[:, 0] > width - 1 + EDGE) | (p[:, 1] < -EDGE) | (p[:, 1] > height - 1 + EDGE)
        if bool(outside.any()):
            k = int(outside.nonzero()[0])
            raise RepFusionError(
                f"{annotation} line {numbers[i]}: landmark {k} at ({p[k, 0]:.1f}, {p[k, 1]:.1f}) lies outside the "
                f"{width}x{height} image {name}; fix the annotation or the image.")
        files.append(path)
    return WFLWDataset(files, points, boxes, attributes, image_size, margin)
