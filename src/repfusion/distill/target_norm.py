"""Timestep-aware distillation targets: the teacher feature standardised per t-bin (our improvement).

In clean mode t reaches the UNet only through its time embedding, which shifts every image's feature
by the same per-t offset; on the CIFAR-subset teacher that offset carries 79 % of the pooled feature's
variance over t in {0, 50, ..., 700} (benchmarks/results/cifar_probe/shared_teacher/probe.md). A student that never sees t cannot regress it, so its capacity goes into
an average offset instead of the images. Subtracting a running per-channel mean and dividing by a
running per-channel standard deviation of the teacher feature at each t-bin removes the offset and
equalises the scale across t, so the hint, the task head and RKD's relations all see image content.

The teacher is frozen, so the statistics are stationary: they are a running average that starts as an
exact cumulative mean and keeps forgetting at least at the rate `min_momentum` once a bin has seen
1 / min_momentum images (the policy may move t inside a bin). They live in buffers, so they are
kept in checkpoints, averaged across DDP ranks (one all-reduce per step) and dropped at export with the
rest of the distillation scaffolding. `target_norm: none` is the paper's raw target.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn

from ..errors import RepFusionError

TARGET_NORMS = ("none", "per_t")


class PerTimestepStandardizer(nn.Module):
    """(B, C, H, W) or (B, C) teacher features at per-image t -> per-t-bin, per-channel standardised.

    With `pooled` statistics (for pooled losses: hint, RKD) the scale is the across-image standard
    deviation of the spatially averaged feature, so the target the loss sees has unit variance; with
    dense statistics (dense hint, AT) it is the standard deviation over images and positions. A bin's
    variance is shrunk towards the within-bin variance pooled over all bins while it has seen few
    images (`prior_images` pseudo-images), so a bin first visited by one image does not divide by zero.

    Args:
        channels (`int`): teacher feature channels.
        num_timesteps (`int`): the teacher's T.
        bins (`int`, *optional*, defaults to 20): equal-width t-bins with their own statistics.
        pooled (`bool`, *optional*, defaults to True): statistics of the spatially averaged feature.
        min_momentum (`float`, *optional*, defaults to 1e-3): the running average's floor.
        prior_images (`float`, *optional*, defaults to 16): weight of the pooled variance in a bin's.
    """

    def __init__(self, channels: int, num_timesteps: int, bins: int = 20, pooled: bool = True,
                 min_momentum: float = 1e-3, prior_images: float = 16.0, eps: float = 1e-5) -> None:
        super().__init__()
        if not 1 <= bins <= num_timesteps:
            raise RepFusionError(f"target_bins must lie in [1, {num_timesteps}], not {bins}.")
        self.num_timesteps, self.bins, self.pooled = num_timesteps, bins, pooled
        self.min_momentum, self.prior_images, self.eps = min_momentum, prior_images, eps
        self.register_buffer("mean", torch.zeros(bins, channels))
        self.register_buffer("var", torch.ones(bins, channels))
        self.register_buffer("seen", torch.zeros(bins))

    def bin_of(self, t: torch.Tensor) -> torch.Tensor:
        return (t.long() * self.bins // self.num_timesteps).clamp(0, self.bins - 1)

    @torch.no_grad()
    def update(self, feature: torch.Tensor, bins: torch.Tensor) -> None:
        """Fold one batch's per-bin first and second moments into the running statistics."""
        flat = feature.float().flatten(2) if feature.dim() > 2 else feature.float().unsqueeze(-1)
        if self.pooled:
            flat = flat.mean(-1, keepdim=True)
        positions, channels = flat.shape[-1], flat.shape[1]
        # moments about the bin's current mean (the same on every rank): no cancellation for large means
        shifted = flat - self.mean[bins].unsqueeze(-1)
        per_image = torch.cat([shifted.sum(-1), shifted.pow(2).sum(-1),
                               torch.full((len(flat), 1), float(positions), device=flat.device)], 1)
        sums = torch.zeros(self.bins, 2 * channels + 1, device=flat.device)
        sums.index_add_(0, bins, per_image)
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            dist.all_reduce(sums)
        finite = torch.isfinite(sums).all()  # one bad batch must not poison every later target (no host sync)
        sums = torch.where(finite, sums, torch.zeros_like(sums))
        count = sums[:, -1:]
        batch_shift = sums[:, :channels] / count.clamp(min=1)
        batch_var = (sums[:, channels:2 * channels] / count.clamp(min=1) - batch_shift.pow(2)).clamp(min=0)
        batch_mean = self.mean + batch_shift
        images = count / positions
        momentum = (images / (self.seen[:, None] + images).clamp(min=1e-12)).clamp(min=self.min_momentum)
        momentum = torch.where(count > 0, momentum, torch.zeros_like(momentum))
        # Law of total variance: the merged variance includes the shift between the old and new means.
        new_mean = self.mean + momentum * (batch_mean - self.mean)
        new_var = (1 - momentum) * (self.var + (self.mean - new_mean).pow(2)) + momentum * (
            batch_var + (batch_mean - new_mean).pow(2))
        self.mean.copy_(new_mean)
        self.var.copy_(new_var)  # a first visit has momentum 1: the batch's own statistics
        self.seen.add_(images.squeeze(1))

    def nearest_seen(self, bins: torch.Tensor) -> torch.Tensor:
        """Bins never observed (a greedy validation t, say) borrow the nearest observed bin's mean."""
        seen = torch.nonzero(self.seen > 0).flatten()
        if len(seen) == 0 or bool((self.seen[bins] > 0).all()):
            return bins
        return seen[(bins[:, None] - seen[None, :]).abs().argmin(1)]

    def bin_variance(self, bins: torch.Tensor) -> torch.Tensor:
        """A bin's variance, shrunk towards the pooled within-bin variance while the bin has seen few images."""
        total = self.seen.sum()
        pooled_var = torch.where(total > 0, (self.seen[:, None] * self.var).sum(0) / total.clamp(min=1e-12),
                                 torch.ones_like(self.var[0]))  # nothing seen yet: the identity
        n = self.seen[bins][:, None]
        return (n * self.var[bins] + self.prior_images * pooled_var) / (n + self.prior_images)

    def forward(self, feature: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """Standardise with the statistics from before this batch, then (training) fold the batch in.

        Standardising a batch by statistics that already hold it would give a bin's first visitor a target
        made of its own mean (all zeros for a single image); unseen bins borrow the nearest seen bin's.
        """
        bins = self.bin_of(t.to(feature.device))
        known = self.nearest_seen(bins)
        shape = (len(feature), -1) + (1,) * (feature.dim() - 2)
        mean = self.mean[known].view(shape).clone()
        std = (self.bin_variance(known) + self.eps).sqrt().view(shape)
        standardised = ((feature.float() - mean) / std).to(feature.dtype)
        if self.training:
            self.update(feature, bins)
        return standardised


def build_target_norm(name: str, channels: int, num_timesteps: int, bins: int = 20,
                      pooled: bool = True) -> nn.Module | None:
    """`per_t` (ours) or `none` (the paper's raw teacher feature)."""
    if name not in TARGET_NORMS:
        raise RepFusionError(f"target_norm must be one of {', '.join(TARGET_NORMS)}, not '{name}'.")
    return PerTimestepStandardizer(channels, num_timesteps, bins, pooled) if name == "per_t" else None
