"""Heads that score the teacher's feature at the sampled t; their per-image loss is the policy's -reward.

`label`: the paper's task head (3-layer MLP, hidden width = teacher width) with cross-entropy.
`infonce`: a label-free reward for unlabeled data: projections of the teacher feature at t and of the
(detached) student feature must identify each other within the batch.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..registry import Registry
from ..features import pooled

REWARDS: Registry[type[nn.Module]] = Registry("reward")


@dataclass
class RewardOutput:
    per_image_loss: torch.Tensor  # (B,), trains the head; -loss.detach() is the reward
    correct: torch.Tensor | None = None  # (B,) bool, for the logged task-head accuracy


def mlp(width_in: int, hidden: int, width_out: int) -> nn.Sequential:
    """The paper's 3-layer head, behind a parameter-free BatchNorm: DPM activations can be tiny or huge
    (a linear probe needs standardised inputs too), and an unscaled head learns too slowly to give the
    policy a reward signal."""
    return nn.Sequential(nn.BatchNorm1d(width_in, affine=False), nn.Linear(width_in, hidden), nn.ReLU(inplace=True),
                         nn.Linear(hidden, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, width_out))


@REWARDS.register(name="label")
class TaskHeadReward(nn.Module):
    def __init__(self, teacher_channels: int, student_channels: int, num_classes: int) -> None:
        super().__init__()
        self.head = mlp(teacher_channels, teacher_channels, num_classes)

    def forward(self, teacher_feature: torch.Tensor, student_feature: torch.Tensor,
                labels: torch.Tensor) -> RewardOutput:
        logits = self.head(pooled(teacher_feature.detach()).float())
        return RewardOutput(F.cross_entropy(logits, labels, reduction="none"), logits.argmax(-1) == labels)


@REWARDS.register(name="infonce")
class InfoNCEReward(nn.Module):
    def __init__(self, teacher_channels: int, student_channels: int, num_classes: int, dim: int = 128,
                 temperature: float = 0.1) -> None:
        super().__init__()
        self.teacher_proj = mlp(teacher_channels, teacher_channels, dim)
        self.student_proj = mlp(student_channels, student_channels, dim)
        self.temperature = temperature

    def forward(self, teacher_feature: torch.Tensor, student_feature: torch.Tensor,
                labels: torch.Tensor) -> RewardOutput:
        t = F.normalize(self.teacher_proj(pooled(teacher_feature.detach()).float()), dim=1)
        s = F.normalize(self.student_proj(pooled(student_feature.detach()).float()), dim=1)
        logits = t @ s.t() / self.temperature
        targets = torch.arange(len(t), device=t.device)
        return RewardOutput(F.cross_entropy(logits, targets, reduction="none"), logits.argmax(-1) == targets)


@REWARDS.register(name="none")
class NoReward(nn.Module):
    """For label-free pre-training with a fixed or uniform t (the paper's CelebA-HQ run): nothing to score."""

    def __init__(self, teacher_channels: int, student_channels: int, num_classes: int) -> None:
        super().__init__()

    def forward(self, teacher_feature: torch.Tensor, student_feature: torch.Tensor,
                labels: torch.Tensor) -> RewardOutput:
        return RewardOutput(teacher_feature.new_zeros(len(teacher_feature)))


def build_reward(name: str, teacher_channels: int, student_channels: int, num_classes: int) -> nn.Module:
    return REWARDS.get(name)(teacher_channels, student_channels, num_classes)
