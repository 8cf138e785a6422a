"""Heatmap encoding and decoding of facial landmarks, and the face-alignment metrics (NME, FR, AUC).

Coordinates. Keypoints are (x, y) image pixels with pixel centres at integers (the dataset contract).
A heatmap of stride s covers s x s image pixels per cell, and cell j is centred on the image
coordinate (j + 0.5) * s - 0.5, the same pixel-centre rule as an image resize with
`align_corners=False`. Under this rule a horizontal flip of the image (x -> S - 1 - x) is exactly a
flip of the heatmap (u -> S/s - 1 - u), so flip testing needs no half-pixel shift (mmpose's
`shift_heatmap` fixes the bias of its x/s rule, which we do not have).

Targets are unnormalised Gaussians (peak 1) centred on the exact, non-integer heatmap position.
Decoding takes the arg-max and refines it either with DARK's Taylor step (Zhang et al., CVPR 2020:
Newton step on the log-heatmap, exact for a Gaussian, optionally after a Gaussian "modulation" blur)
or with the classic quarter-pixel shift towards the higher neighbour (SimpleBaseline/HRNet).

Metrics follow docs/datasets.md: NME per image = mean point error / distance of points 60 and 72 (outer
eye corners, from the ground truth); FR@0.1 and AUC@0.1 as PIPNet's `compute_fr_and_auc` (thresholds
0..0.1 in steps of 1e-4, fraction of images with NME <= threshold, Simpson's rule / 0.1). Values are
fractions (0.04 = the "4.0" of papers that print NME in %).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import kornia.filters
import numpy as np
import torch
from scipy.integrate import simpson
from torch import Tensor
from torchmetrics import Metric
from torchmetrics.utilities import dim_zero_cat

from ..data.face_layout import WFLW_ATTRIBUTES, WFLW_EYE_CORNERS, flip_permutation
from ..errors import RepFusionError

DECODERS = ("dark", "quarter")


def to_heatmap(points: Tensor, stride: float) -> Tensor:
    """Image pixel coordinates -> heatmap cell coordinates (see the module docstring)."""
    return (points + 0.5) / stride - 0.5


def to_image(points: Tensor, stride: float) -> Tensor:
    """Heatmap cell coordinates -> image pixel coordinates (inverse of `to_heatmap`)."""
    return (points + 0.5) * stride - 0.5


def gaussian_heatmaps(points: Tensor, size: tuple[int, int], sigma: float) -> Tensor:
    """Heatmap targets.

    Args:
        points (`Tensor` [B, K, 2]): (x, y) in heatmap cells (`to_heatmap`), not rounded.
        size (`tuple[int, int]`): heatmap (height, width).
        sigma (`float`): Gaussian standard deviation in heatmap cells (2 for 64x64 maps, as mmpose/HRNet).

    Returns: [B, K, H, W] float, exp(-d^2 / (2 sigma^2)) with d the distance to the point.
    """
    if sigma <= 0:
        raise RepFusionError(f"The heatmap sigma must be positive, not {sigma}.")
    height, width = size
    ys = torch.arange(height, dtype=points.dtype, device=points.device).view(1, 1, height, 1)
    xs = torch.arange(width, dtype=points.dtype, device=points.device).view(1, 1, 1, width)
    dx = xs - points[..., 0, None, None]
    dy = ys - points[..., 1, None, None]
    return torch.exp(-(dx * dx + dy * dy) / (2 * sigma * sigma))


def flip_heatmaps(heatmaps: Tensor, flip_pairs: Sequence[tuple[int, int]]) -> Tensor:
    """The heatmaps of the mirrored image: mirrored maps with every flip pair's channels exchanged."""
    perm = flip_permutation(tuple(flip_pairs), heatmaps.shape[1])
    return heatmaps.flip(-1)[:, perm]


def decode_heatmaps(heatmaps: Tensor, method: str = "dark", blur_sigma: float = 0.0) -> tuple[Tensor, Tensor]:
    """Sub-pixel keypoint positions from heatmaps.

    Args:
        heatmaps (`Tensor` [B, K, H, W]).
        method (`str`, defaults to `"dark"`): "dark" (Taylor step on the log-heatmap) or "quarter"
            (arg-max moved by 0.25 cell towards the higher neighbour in x and in y).
        blur_sigma (`float`, defaults to 0): DARK's modulation, a Gaussian blur of that sigma (cells)
            before the Taylor step, rescaled to the original maxima; 0 skips it.

    Returns: (points [B, K, 2] in heatmap cells, maxima [B, K], the peak values before refinement).
    """
    if method not in DECODERS:
        raise RepFusionError(f"Unknown heatmap decoder '{method}'; use one of {', '.join(DECODERS)}.")
    batch, k, height, width = heatmaps.shape
    flat = heatmaps.reshape(batch, k, -1)
    maxima, index = flat.max(-1)
    x, y = index % width, torch.div(index, width, rounding_mode="floor")
    points = torch.stack([x, y], -1).to(heatmaps.dtype)
    if method == "quarter":
        return points + 0.25 * _neighbour_sign(heatmaps, x, y), maxima
    maps = heatmaps
    if blur_sigma > 0:
        radius = max(1, min(math.ceil(3 * blur_sigma), min(height, width) - 1))  # reflect padding needs < side
        blurred = kornia.filters.gaussian_blur2d(heatmaps, (2 * radius + 1,) * 2, (blur_sigma, blur_sigma))
        peak = blurred.reshape(batch, k, -1).amax(-1).clamp_min(1e-12)
        maps = blurred * (maxima.clamp_min(0) / peak)[..., None, None]
    return points + _taylor_offset(maps.clamp_min(1e-10).log(), x, y), maxima


def _gather(maps: Tensor, x: Tensor, y: Tensor) -> Tensor:
    """maps[b, k, y[b, k], x[b, k]] on a map padded by one replicated cell (indices are shifted by 1)."""
    width = maps.shape[-1]
    return maps.flatten(2).gather(-1, (y * width + x).unsqueeze(-1)).squeeze(-1)


def _neighbours(maps: Tensor, x: Tensor, y: Tensor) -> dict[tuple[int, int], Tensor]:
    padded = torch.nn.functional.pad(maps, (1, 1, 1, 1), mode="replicate")
    return {(dx, dy): _gather(padded, x + 1 + dx, y + 1 + dy) for dx in (-1, 0, 1) for dy in (-1, 0, 1)}


def _neighbour_sign(heatmaps: Tensor, x: Tensor, y: Tensor) -> Tensor:
    n = _neighbours(heatmaps, x, y)  # at the border the replicated cell equals the peak: no shift
    return torch.stack([torch.sign(n[1, 0] - n[-1, 0]), torch.sign(n[0, 1] - n[0, -1])], -1)


def _taylor_offset(log_maps: Tensor, x: Tensor, y: Tensor) -> Tensor:
    """-H^-1 g of the log-heatmap at the arg-max (central differences); 0 where H is not negative definite."""
    n = _neighbours(log_maps, x, y)
    gx, gy = 0.5 * (n[1, 0] - n[-1, 0]), 0.5 * (n[0, 1] - n[0, -1])
    hxx = n[1, 0] - 2 * n[0, 0] + n[-1, 0]
    hyy = n[0, 1] - 2 * n[0, 0] + n[0, -1]
    hxy = 0.25 * (n[1, 1] - n[1, -1] - n[-1, 1] + n[-1, -1])
    det = hxx * hyy - hxy * hxy
    ok = (det > 1e-12) & (hxx < 0)
    safe = torch.where(ok, det, torch.ones_like(det))
    ox = -(hyy * gx - hxy * gy) / safe
    oy = -(hxx * gy - hxy * gx) / safe
    offset = torch.stack([ox, oy], -1) * ok.unsqueeze(-1)
    return offset.clamp(-1.0, 1.0)


def nme_per_image(pred: Tensor, target: Tensor, eye_corners: tuple[int, int] = WFLW_EYE_CORNERS) -> Tensor:
    """Mean point-to-point error of each image divided by its ground-truth outer-eye-corner distance.

    pred, target: [B, K, 2] in the same pixel units. Returns [B].
    """
    a, b = eye_corners
    if target.shape[1] <= max(a, b):
        raise RepFusionError(f"NME normalises by points {a} and {b} but the keypoints have only {target.shape[1]}; "
                             "use the 98-point WFLW layout or give this layout's eye corners.")
    norm = (target[:, a] - target[:, b]).norm(dim=-1)
    if (norm <= 0).any():
        raise RepFusionError(f"A face has its points {a} and {b} (outer eye corners) at the same place, so its NME "
                             "is undefined; fix or drop that annotation.")
    return (pred - target).norm(dim=-1).mean(-1) / norm


def failure_rate_and_auc(nmes: Tensor | np.ndarray, threshold: float = 0.1, step: float = 1e-4) -> tuple[float, float]:
    """FR@threshold = share of images with NME > threshold; AUC@threshold = the integral of the cumulative
    error distribution over [0, threshold] (Simpson's rule) / threshold (PIPNet `compute_fr_and_auc`)."""
    values = torch.as_tensor(nmes, dtype=torch.float64).cpu().numpy()
    if values.size == 0:
        raise RepFusionError("No images were evaluated, so FR and AUC are undefined; give a non-empty test split.")
    xs = np.linspace(0.0, threshold, int(round(threshold / step)) + 1)
    ys = (values[None, :] <= xs[:, None]).mean(axis=1)
    return float(1.0 - ys[-1]), float(simpson(ys, x=xs) / threshold)


class LandmarkMetrics(Metric):
    """NME, FR@0.1, AUC@0.1 and the NME of each WFLW attribute subset.

    Per-image NMEs (and attribute rows, when the data has them) are kept as `cat` states, so under DDP
    every rank's images enter FR, AUC and the subsets, not an average of per-rank numbers.
    `compute()` returns {"nme", "fr", "auc", "nme/<attribute>" for each attribute with at least one image}.
    """

    full_state_update = False
    higher_is_better = False
    is_differentiable = False

    def __init__(self, attribute_names: Sequence[str] = WFLW_ATTRIBUTES,
                 eye_corners: tuple[int, int] = WFLW_EYE_CORNERS, threshold: float = 0.1, **kwargs) -> None:
        super().__init__(**kwargs)
        self.attribute_names = tuple(attribute_names)
        self.eye_corners = tuple(eye_corners)
        self.threshold = threshold
        self.add_state("nmes", default=[], dist_reduce_fx="cat")
        self.add_state("attributes", default=[], dist_reduce_fx="cat")

    def update(self, pred: Tensor, target: Tensor, attributes: Tensor | None = None) -> None:
        """pred, target: [B, K, 2] pixels; attributes: [B, A] 0/1 (WFLW's six columns) or None."""
        self.nmes.append(nme_per_image(pred.float(), target.float(), self.eye_corners))
        if attributes is not None:
            if attributes.shape[-1] != len(self.attribute_names):
                raise RepFusionError(f"The data carries {attributes.shape[-1]} attributes per face but the metric "
                                     f"expects {len(self.attribute_names)} ({', '.join(self.attribute_names)}).")
            self.attributes.append(attributes.float())

    def compute(self) -> dict[str, Tensor]:
        nmes = dim_zero_cat(self.nmes)
        fr, auc = failure_rate_and_auc(nmes, self.threshold)
        out = {"nme": nmes.mean(), "fr": nmes.new_tensor(fr), "auc": nmes.new_tensor(auc)}
        rows = dim_zero_cat(self.attributes) if len(self.attributes) else None
        if rows is not None and len(rows) == len(nmes):
            for i, name in enumerate(self.attribute_names):
                chosen = rows[:, i] > 0
                if chosen.any():
                    out[f"nme/{name}"] = nmes[chosen].mean()
        return out
