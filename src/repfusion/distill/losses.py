"""Feature-distillation losses (the paper's Hint, AT and RKD, plus cosine and L1), in a registry.

Each loss is a small module built from the student and teacher feature shapes (C, H, W), so any
misalignment is found at start-up, not mid-epoch. `forward(student_map, teacher_map)` returns the
weighted loss; `terms` holds the unweighted parts for logging. The teacher side is always detached.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import RepFusionError
from ..features import pooled
from ..registry import Registry

LOSSES: Registry[type[nn.Module]] = Registry("distillation loss")
Shape = Sequence[int]


def resize_to(feature: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """Bilinear up, area-pooled down: every position of a finer map contributes (and gets gradient).

    Plain bilinear shrinking reads 4 positions per output, so a 64x64 map brought to 8x8 would train 256
    of its 4,096 positions; antialiased resizing covers mixed cases (finer in one axis, coarser in the other).
    """
    size = tuple(size)
    height, width = feature.shape[-2:]
    if (height, width) == size:
        return feature
    if height >= size[0] and width >= size[1]:
        return F.adaptive_avg_pool2d(feature, size)
    if height <= size[0] and width <= size[1]:
        return F.interpolate(feature, size=size, mode="bilinear", align_corners=False)
    return F.interpolate(feature, size=size, mode="bilinear", align_corners=False, antialias=True)


def _require_maps(name: str, student: Shape, teacher: Shape) -> None:
    if len(student) != 3 or len(teacher) != 3:
        raise RepFusionError(
            f"The {name} loss needs spatial feature maps (C, H, W) but got student {tuple(student)} and "
            f"teacher {tuple(teacher)}; choose convolutional layers for both."
        )


def build_projector(kind: str, student_shape: Shape, teacher_shape: Shape, hidden: int | None = None) -> nn.Module:
    """What maps student channels to teacher channels before the distance; trained with the student and dropped
    with the loss after distillation (it is never part of the exported backbone).

    `linear`: a 1x1 convolution (the paper's hint adapter). `mlp`: 1x1 conv -> BatchNorm -> ReLU -> 1x1 conv
    with `hidden` channels (default 256, the variant measured on the digits), the regressor head of
    DreamTeacher / REPA's projector, so the backbone need not reproduce what is specific to the teacher.
    """
    spatial = len(student_shape) == 3
    c_in, c_out = student_shape[0], teacher_shape[0]
    if kind == "linear":
        return nn.Conv2d(c_in, c_out, 1) if spatial else nn.Linear(c_in, c_out)
    if kind == "mlp":
        width = int(hidden or 256)
        if spatial:
            return nn.Sequential(nn.Conv2d(c_in, width, 1), nn.BatchNorm2d(width), nn.ReLU(),
                                 nn.Conv2d(width, c_out, 1))
        return nn.Sequential(nn.Linear(c_in, width), nn.BatchNorm1d(width), nn.ReLU(), nn.Linear(width, c_out))
    raise RepFusionError(f"loss.options.projector must be 'linear' or 'mlp', not '{kind}'.")


class AdaptedLoss(nn.Module):
    """Shared by hint, cosine, L1 and cosine_smoothl1: a projector (`projector`: linear 1x1 conv, or mlp) maps
    student channels to teacher channels.

    mode `pooled` compares global-average-pooled vectors (classification pre-training); `dense` compares
    maps (before dense tasks) on the grid `grid` names: `teacher` (default) resizes the student map bilinearly
    to the teacher's H x W; `coarser` brings both to the coarser of the two grids (the finer one area-pooled),
    so a deep, coarse student stage is asked for the layout it can hold rather than detail it cannot.
    """

    default_weight = 1.0

    def __init__(self, student_shape: Shape, teacher_shape: Shape, mode: str = "pooled",
                 weight: float | None = None, grid: str = "teacher", projector: str = "linear",
                 hidden: int | None = None) -> None:
        super().__init__()
        if mode not in ("pooled", "dense"):
            raise RepFusionError(f"loss.mode must be 'pooled' or 'dense', not '{mode}'.")
        if grid not in ("teacher", "coarser"):
            raise RepFusionError(f"loss.grid must be 'teacher' or 'coarser', not '{grid}'.")
        if mode == "dense":
            _require_maps(type(self).__name__, student_shape, teacher_shape)
        self.mode = mode
        self.teacher_size = tuple(teacher_shape[1:])
        if grid == "coarser" and len(student_shape) == 3 and len(teacher_shape) == 3:
            self.teacher_size = min(tuple(student_shape[1:]), self.teacher_size, key=lambda hw: hw[0] * hw[1])
        self.weight = self.default_weight if weight is None else weight
        self.adapter = build_projector(projector, student_shape, teacher_shape, hidden)
        self.terms: dict[str, torch.Tensor] = {}

    def align(self, student: torch.Tensor, teacher: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        adapted = self.adapter(student)
        if self.mode == "pooled":
            return pooled(adapted), pooled(teacher.detach())
        teacher = teacher.detach()
        return resize_to(adapted, self.teacher_size), resize_to(teacher, self.teacher_size)

    def distance(self, student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
        loss = self.distance(*self.align(student, teacher))
        self.terms = {"distance": loss.detach()}
        return self.weight * loss


@LOSSES.register(name="hint")
class HintLoss(AdaptedLoss):
    """FitNets hint: MSE between adapted student and teacher features (weight 1)."""

    def distance(self, student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
        return F.mse_loss(student, teacher)


@LOSSES.register(name="cosine")
class CosineLoss(AdaptedLoss):
    """1 - cosine similarity of adapted and teacher features (per position in dense mode)."""

    def distance(self, student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
        return (1 - F.cosine_similarity(student, teacher, dim=1)).mean()


@LOSSES.register(name="l1")
class L1Loss(AdaptedLoss):
    """Mean absolute error between adapted and teacher features."""

    def distance(self, student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
        return F.l1_loss(student, teacher)


@LOSSES.register(name="cosine_smoothl1")
class CosineSmoothL1Loss(AdaptedLoss):
    """0.9 x (1 - cosine) + 0.1 x smooth-L1 (AM-RADIO's feature loss): the direction of the teacher feature
    matters most, its magnitude a little (per position in dense mode)."""

    def distance(self, student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
        cosine = (1 - F.cosine_similarity(student, teacher, dim=1)).mean()
        return 0.9 * cosine + 0.1 * F.smooth_l1_loss(student, teacher)


@LOSSES.register(name="at")
class AttentionTransferLoss(nn.Module):
    """Attention transfer (Zagoruyko & Komodakis): A = normalize(sum_c |F|^p) over H*W; MSE of the maps.

    The student map is resized to the teacher's H x W; no adapter is needed (channels are summed out).
    `mode='code'` uses the authors' code (mean over channels of F^p, loss = mean of squared differences);
    `'paper'` uses the sum over channels. Both L2-normalise, so they agree; weight 1000 as in the paper.
    """

    def __init__(self, student_shape: Shape, teacher_shape: Shape, p: float = 2.0, weight: float = 1000.0,
                 mode: str = "code") -> None:
        super().__init__()
        _require_maps("AT", student_shape, teacher_shape)
        self.p, self.weight, self.mode = p, weight, mode
        self.teacher_size = tuple(teacher_shape[1:])
        self.terms: dict[str, torch.Tensor] = {}

    def attention_map(self, feature: torch.Tensor) -> torch.Tensor:
        energy = feature.abs().pow(self.p)
        energy = energy.mean(1) if self.mode == "code" else energy.sum(1)
        return F.normalize(energy.flatten(1), dim=1)

    def forward(self, student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
        student = resize_to(student, self.teacher_size)
        loss = (self.attention_map(student) - self.attention_map(teacher.detach())).pow(2).mean()
        self.terms = {"attention": loss.detach()}
        return self.weight * loss


@LOSSES.register(name="rkd")
class RelationalLoss(nn.Module):
    """Relational KD (Park et al.) on pooled embeddings: distance term (25) + angle term (50).

    Distances are normalised by the mean positive entry; both terms use smooth-L1. A term whose weight
    is 0 is skipped. Channel counts need not match.
    """

    def __init__(self, student_shape: Shape, teacher_shape: Shape, distance_weight: float = 25.0,
                 angle_weight: float = 50.0) -> None:
        super().__init__()
        self.distance_weight, self.angle_weight = distance_weight, angle_weight
        self.terms: dict[str, torch.Tensor] = {}

    @staticmethod
    def pdist(embedding: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
        squared = embedding.pow(2).sum(1)
        prod = embedding @ embedding.t()
        dist = (squared.unsqueeze(1) + squared.unsqueeze(0) - 2 * prod).clamp(min=eps).sqrt()
        dist = dist.clone()
        dist[range(len(embedding)), range(len(embedding))] = 0
        return dist

    def distance_term(self, student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            t_d = self.pdist(teacher)
            t_d = t_d / t_d[t_d > 0].mean()
        s_d = self.pdist(student)
        s_d = s_d / s_d[s_d > 0].mean()
        return F.smooth_l1_loss(s_d, t_d)

    @staticmethod
    def angles(embedding: torch.Tensor) -> torch.Tensor:
        diff = F.normalize(embedding.unsqueeze(0) - embedding.unsqueeze(1), p=2, dim=2)
        return torch.bmm(diff, diff.transpose(1, 2)).flatten()

    def angle_term(self, student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            t_angle = self.angles(teacher)
        return F.smooth_l1_loss(self.angles(student), t_angle)

    def forward(self, student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
        s, t = pooled(student), pooled(teacher.detach())
        total = s.new_zeros(())
        self.terms = {}
        if self.distance_weight:
            d = self.distance_term(s, t)
            self.terms["distance"] = d.detach()
            total = total + self.distance_weight * d
        if self.angle_weight:
            a = self.angle_term(s, t)
            self.terms["angle"] = a.detach()
            total = total + self.angle_weight * a
        return total


def build_loss(name: str, student_shape: Shape, teacher_shape: Shape, **kwargs: object) -> nn.Module:
    """The named loss for these feature shapes; bad options raise naming them."""
    cls = LOSSES.get(name)
    for key, value in kwargs.items():
        if key.endswith("weight") and (isinstance(value, bool) or not isinstance(value, (int, float))):
            raise RepFusionError(f"loss.options.{key} must be a number, not {value!r}.")
    try:
        return cls(student_shape, teacher_shape, **kwargs)
    except TypeError as e:
        raise RepFusionError(f"Bad options {sorted(kwargs)} for loss '{name}' ({e}); see its docstring.") from None
