"""A synthetic teacher whose feature carries the label only for t in one band: a check that the
reinforced policy finds the informative timesteps (used by the tests and benchmarks/policy_baseline.py).
"""

from __future__ import annotations

import torch

from .rewards import build_reward
from .timesteps import TimestepConfig, build_strategy


def band_mass(policy, band: tuple[int, int], samples: int = 256) -> float:
    with torch.no_grad():
        probs = policy.t_distribution(policy.distribution(torch.randn(samples, 3, 32, 32)).probs).mean(0)
    return probs[band[0]:band[1]].sum().item()


def train_policy_on_band(baseline: str = "none", lr: float = 0.01, steps: int = 300, seed: int = 0,
                         band: tuple[int, int] = (100, 200), batch: int = 64, width: int = 16,
                         entropy_weight: float = 0.01, **options: object) -> list[float]:
    """Train policy + task head with REINFORCE; return the policy's mass inside `band` every 50 steps.

    `options` are further `TimestepConfig` fields (policy_bins, advantage, policy_warmup_epochs), with the
    run's progress counted in epochs from 0 to 1; the policy is the paper's unless they say otherwise.
    """
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    paper = dict(policy_bins=1000, advantage="raw", policy_warmup_epochs=0.0, entropy_floor=0.0, head_uniform_t=False)
    policy = build_strategy(TimestepConfig(entropy_weight=entropy_weight, entropy_decay_epochs=1, baseline=baseline,
                                           **{**paper, **options}), 1000)
    head = build_reward("label", width, 8, 10)
    optimizer = torch.optim.SGD([*policy.parameters(), *head.parameters()], lr=lr, momentum=0.9)
    embeddings = torch.randn(10, width, generator=generator) * 3
    trace = [band_mass(policy, band)]
    for step in range(steps):
        x = torch.randn(batch, 3, 32, 32, generator=generator)
        y = torch.randint(0, 10, (batch,), generator=generator)
        draw = policy.sample(x, step / steps)
        informative = ((draw.t >= band[0]) & (draw.t < band[1])).float()[:, None]
        noise = torch.randn(batch, width, generator=generator) * 3
        feature = informative * embeddings[y] + (1 - informative) * noise
        scored = head(feature[:, :, None, None], None, y)
        policy_loss, _ = policy.policy_loss(draw, -scored.per_image_loss.detach(), step / steps)
        optimizer.zero_grad()
        (scored.per_image_loss.mean() + policy_loss).backward()
        optimizer.step()
        if (step + 1) % 50 == 0:
            trace.append(band_mass(policy, band))
    return trace
