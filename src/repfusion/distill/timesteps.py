"""How the teacher's timestep is chosen per image: fixed, uniform, decaying T_max, or a learned policy.

Every strategy maps a batch of (student-normalised) images and the training progress in epochs to a
`TimestepDraw`; only the reinforced policy has a loss (REINFORCE + entropy bonus).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import RepFusionError
from ..registry import Registry
from ..section import Section, finite_number

class NonFiniteError(RepFusionError):
    """A NaN/inf inside the model; the training step adds where it happened."""


STRATEGIES: Registry[type[nn.Module]] = Registry("timestep strategy")


@dataclass
class TimestepDraw:
    t: torch.Tensor  # (B,) long
    log_prob: torch.Tensor | None = None  # (B,) log pi(t | x), with grad
    entropy: torch.Tensor | None = None  # (B,) H(pi(. | x))
    probs: torch.Tensor | None = None  # (B, policy_bins) pi(. | x), detached


@dataclass
class TimestepConfig(Section):
    """strategy: fixed | uniform | decay | reinforced.

    fixed uses `t`; uniform draws below `t_max`; decay lowers T_max linearly from `t_max` to `t_max_end`
    over `decay_epochs`; reinforced learns pi(t | x) with the entropy weight going linearly from
    `entropy_weight` to 0 over `entropy_decay_epochs`, and `baseline` none (the paper), batch_mean or ema.
    `policy_lr_scale` multiplies the policy's learning rate (1 = the paper's single optimiser); short
    schedules, with a few hundred steps instead of the paper's 78k, need a larger one for pi to move.

    Our options for a policy that learns in hundreds of steps (the defaults; the paper is
    `policy_bins: 1000, advantage: raw, policy_warmup_epochs: 0`, as in the configs named after its rows):
    `policy_bins` coarse t-bins (1000 = one per t; with B bins pi picks a bin and t is uniform inside it,
    so each logit sees 1000/B times more gradient), `advantage` raw (the paper) or normalized (reward
    minus the batch mean, over the batch std: unit-scale advantages, so the entropy weight means the
    same at any reward scale), and `policy_warmup_epochs` during which t is drawn from pi but pi is not
    updated, so the task head behind the reward is better than chance before it steers the policy.
    The entropy weight decays from the end of the warm-up and never below `entropy_floor`, and with
    `head_uniform_t` the reward head also trains on one uniformly drawn t per image, so bins the policy
    rarely picks are not scored by an unfitted head (which would feed the policy's own choice back to it).
    The paper: `entropy_floor: 0, head_uniform_t: false`.

    Checked when built (`repfusion.section`): the weights, rates and durations a sign error would silently
    invert; the strategy's name and t against the teacher's schedule are checked by `build_strategy`.
    """

    KEY: ClassVar[str] = "timesteps"

    strategy: str = "reinforced"
    t: int = 0
    t_max: int | None = None
    t_max_end: int = 50
    decay_epochs: float = 100.0
    entropy_weight: float = 0.1
    entropy_decay_epochs: float = 100.0
    baseline: str = "none"
    baseline_momentum: float = 0.9
    policy_arch: str = "lenet"
    policy_lr_scale: float = 1.0
    policy_bins: int = 20
    advantage: str = "normalized"
    policy_warmup_epochs: float = 1.0
    entropy_floor: float = 0.02
    head_uniform_t: bool = True

    def __post_init__(self) -> None:
        name = self.KEY
        for key, what in (("entropy_weight", ">= 0"), ("decay_epochs", "> 0"), ("entropy_decay_epochs", "> 0"),
                          ("policy_lr_scale", "> 0"), ("policy_warmup_epochs", ">= 0"), ("entropy_floor", ">= 0")):
            value = getattr(self, key)
            if not finite_number(value) or value < 0 or (what == "> 0" and value == 0):
                raise RepFusionError(f"{name}.{key} must be a number {what}, not {value}.")
        if not finite_number(self.baseline_momentum) or not 0 <= self.baseline_momentum < 1:
            raise RepFusionError(f"{name}.baseline_momentum must be in [0, 1), not {self.baseline_momentum}.")


class TimestepStrategy(nn.Module):
    def __init__(self, cfg: TimestepConfig, num_timesteps: int) -> None:
        super().__init__()
        self.cfg, self.num_timesteps = cfg, num_timesteps

    def sample(self, images: torch.Tensor, epoch: float) -> TimestepDraw:
        raise NotImplementedError

    def greedy(self, images: torch.Tensor, epoch: float) -> torch.Tensor:
        """A deterministic choice for validation."""
        return self.sample(images, epoch).t

    def policy_loss(self, draw: TimestepDraw, reward: torch.Tensor, epoch: float) -> tuple[torch.Tensor, dict]:
        return reward.new_zeros(()), {}


@STRATEGIES.register(name="fixed")
class FixedTimestep(TimestepStrategy):
    def __init__(self, cfg: TimestepConfig, num_timesteps: int) -> None:
        super().__init__(cfg, num_timesteps)
        if not 0 <= cfg.t < num_timesteps:
            raise RepFusionError(f"timesteps.t must lie in [0, {num_timesteps}), not {cfg.t}.")

    def sample(self, images: torch.Tensor, epoch: float) -> TimestepDraw:
        return TimestepDraw(torch.full((images.shape[0],), self.cfg.t, dtype=torch.long, device=images.device))


@STRATEGIES.register(name="uniform")
class UniformTimestep(TimestepStrategy):
    def t_max(self, epoch: float) -> int:
        return min(self.cfg.t_max or self.num_timesteps, self.num_timesteps)

    def sample(self, images: torch.Tensor, epoch: float) -> TimestepDraw:
        high = max(1, self.t_max(epoch))
        return TimestepDraw(torch.randint(0, high, (images.shape[0],), device=images.device))

    def greedy(self, images: torch.Tensor, epoch: float) -> torch.Tensor:
        return torch.full((images.shape[0],), self.t_max(epoch) // 2, dtype=torch.long, device=images.device)


@STRATEGIES.register(name="decay")
class DecayingTimestep(UniformTimestep):
    """The reference's option: T_max falls linearly (1000 -> 50 by epoch 100), then stays."""

    def __init__(self, cfg: TimestepConfig, num_timesteps: int) -> None:
        super().__init__(cfg, num_timesteps)
        if not 1 <= cfg.t_max_end <= num_timesteps:  # else t would index past the schedule mid-training
            raise RepFusionError(f"timesteps.t_max_end must lie in [1, {num_timesteps}] (the teacher's diffusion "
                                 f"steps), not {cfg.t_max_end}.")

    def t_max(self, epoch: float) -> int:
        start = min(self.cfg.t_max or self.num_timesteps, self.num_timesteps)
        frac = min(1.0, epoch / max(self.cfg.decay_epochs, 1e-9))
        return int(round(start + (self.cfg.t_max_end - start) * frac))


class LeNetPolicy(nn.Module):
    """The paper's 32x32 policy: conv5x5 3->6, pool, conv5x5 6->16, pool, fc 400-120-84-T.

    Other input sizes are resized to 32x32 first, so the same network serves every dataset.
    """

    def __init__(self, num_timesteps: int, in_channels: int = 3) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 6, 5)
        self.conv2 = nn.Conv2d(6, 16, 5)
        self.fc1, self.fc2, self.fc3 = nn.Linear(400, 120), nn.Linear(120, 84), nn.Linear(84, num_timesteps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-2:] != (32, 32):
            x = F.interpolate(x, size=(32, 32), mode="bilinear", align_corners=False)
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        return self.fc3(F.relu(self.fc2(F.relu(self.fc1(x.flatten(1))))))


@STRATEGIES.register(name="reinforced")
class ReinforcedTimestep(TimestepStrategy):
    """pi(t | x) = softmax(policy(x)); loss = -mean(log pi(t|x) (r - b)) - lambda(epoch) mean H(pi(.|x))."""

    def __init__(self, cfg: TimestepConfig, num_timesteps: int) -> None:
        super().__init__(cfg, num_timesteps)
        if cfg.policy_arch != "lenet":
            raise RepFusionError(f"timesteps.policy_arch must be 'lenet', not '{cfg.policy_arch}'.")
        if cfg.baseline not in ("none", "batch_mean", "ema"):
            raise RepFusionError(f"timesteps.baseline must be none, batch_mean or ema, not '{cfg.baseline}'.")
        if cfg.advantage not in ("raw", "normalized"):
            raise RepFusionError(f"timesteps.advantage must be raw or normalized, not '{cfg.advantage}'.")
        if not 1 <= cfg.policy_bins <= num_timesteps or num_timesteps % cfg.policy_bins:
            raise RepFusionError(f"timesteps.policy_bins must divide {num_timesteps} (e.g. 10, 20, 50, 1000), "
                                 f"not {cfg.policy_bins}.")
        self.bin_width = num_timesteps // cfg.policy_bins
        self.policy = LeNetPolicy(cfg.policy_bins)
        self.register_buffer("reward_average", torch.zeros(()))
        self.register_buffer("reward_seen", torch.zeros((), dtype=torch.bool))

    def distribution(self, images: torch.Tensor) -> torch.distributions.Categorical:
        """pi(. | x) without a host sync: non-finite logits give NaN log-probabilities, hence a NaN loss,
        which the trainer's NaN guard reports with its step (validating them here would sync every step)."""
        logits = self.policy(images).float()
        return torch.distributions.Categorical(logits=logits, validate_args=False)

    def sample(self, images: torch.Tensor, epoch: float) -> TimestepDraw:
        dist = self.distribution(images)
        probs = dist.probs
        usable = torch.isfinite(probs).all(-1, keepdim=True)  # sample from uniform where pi is NaN; no sync
        b = torch.multinomial(torch.where(usable, probs, torch.ones_like(probs)), 1, True).squeeze(-1)
        t = b * self.bin_width + torch.randint_like(b, self.bin_width) if self.bin_width > 1 else b
        return TimestepDraw(t, dist.log_prob(b), dist.entropy(), dist.probs.detach())

    def greedy(self, images: torch.Tensor, epoch: float) -> torch.Tensor:
        return self.distribution(images).probs.argmax(-1) * self.bin_width + self.bin_width // 2

    def t_distribution(self, probs: torch.Tensor) -> torch.Tensor:
        """(B, bins) bin probabilities -> (B, T) probabilities of each t (uniform inside a bin)."""
        return probs.repeat_interleave(self.bin_width, dim=-1) / self.bin_width

    def entropy_weight(self, epoch: float) -> float:
        """Decays from the end of the warm-up (when pi starts learning) down to `entropy_floor`, not to 0:
        a policy whose reward has little signal must not collapse to one bin by drift alone."""
        frac = min(1.0, max(0.0, epoch - self.cfg.policy_warmup_epochs) / max(self.cfg.entropy_decay_epochs, 1e-9))
        return max(self.cfg.entropy_floor, self.cfg.entropy_weight * (1 - frac))

    def baseline(self, reward: torch.Tensor) -> torch.Tensor:
        if self.cfg.baseline == "batch_mean":
            return reward.mean()
        if self.cfg.baseline == "ema":
            value = torch.where(self.reward_seen, self.reward_average, reward.mean())
            with torch.no_grad():
                m = self.cfg.baseline_momentum
                self.reward_average.copy_(m * value + (1 - m) * reward.mean())
                self.reward_seen.fill_(True)
            return value
        return reward.new_zeros(())

    def policy_loss(self, draw: TimestepDraw, reward: torch.Tensor, epoch: float) -> tuple[torch.Tensor, dict]:
        assert draw.log_prob is not None and draw.entropy is not None
        if epoch < self.cfg.policy_warmup_epochs:  # a zero that keeps pi in the graph, as DDP requires
            zero = (draw.log_prob * 0).mean()
            return zero, {"reinforce": zero.detach(), "entropy": draw.entropy.mean().detach(),
                          "entropy_weight": torch.tensor(0.0)}
        if self.cfg.advantage == "normalized":  # its own baseline: the batch mean (per rank under DDP)
            centred = reward - reward.mean()
            advantage = (centred / (centred.std() + 1e-6)).detach() if len(reward) > 1 else centred.detach()
        else:
            advantage = (reward - self.baseline(reward)).detach()
        reinforce = -(draw.log_prob * advantage).mean()
        weight = self.entropy_weight(epoch)
        entropy = draw.entropy.mean()
        return reinforce - weight * entropy, {"reinforce": reinforce.detach(), "entropy": entropy.detach(),
                                              "entropy_weight": torch.tensor(weight)}


def build_strategy(cfg: TimestepConfig, num_timesteps: int) -> TimestepStrategy:
    return STRATEGIES.get(cfg.strategy)(cfg, num_timesteps)
