import math
import pytest
import torch

from repfusion.distill.synthetic import train_policy_on_band
from repfusion.distill.timesteps import TimestepConfig, build_strategy
from repfusion.errors import RepFusionError

IMAGES = torch.zeros(512, 3, 16, 16)
PAPER = dict(policy_bins=1000, advantage="raw", policy_warmup_epochs=0.0, entropy_floor=0.0, head_uniform_t=False)  # the paper's policy options


def test_fixed_and_uniform():
    assert build_strategy(TimestepConfig("fixed", t=7), 1000).sample(IMAGES, 0).t.unique().tolist() == [7]
    t = build_strategy(TimestepConfig("uniform", t_max=100), 1000).sample(IMAGES, 0).t
    assert 0 <= t.min() and t.max() < 100 and len(t.unique()) > 50
    with pytest.raises(RepFusionError):
        build_strategy(TimestepConfig("fixed", t=1000), 1000)
    with pytest.raises(RepFusionError, match="closest valid names: uniform"):
        build_strategy(TimestepConfig("unifrom"), 1000)


def test_decay_lowers_t_max_linearly():
    decay = build_strategy(TimestepConfig("decay", t_max=1000, t_max_end=50, decay_epochs=100), 1000)
    assert [decay.t_max(e) for e in (0, 50, 100, 150)] == [1000, 525, 50, 50]
    assert decay.sample(IMAGES, 100).t.max() < 50


def test_entropy_weight_decays_to_zero():
    policy = build_strategy(TimestepConfig(entropy_weight=0.1, entropy_decay_epochs=100, **PAPER), 1000)
    assert [policy.entropy_weight(e) for e in (0, 50, 100, 150)] == pytest.approx([0.1, 0.05, 0.0, 0.0])


def test_reinforce_loss_matches_the_formula():
    policy = build_strategy(TimestepConfig(entropy_weight=0.1, entropy_decay_epochs=10, **PAPER), 1000)
    draw = policy.sample(IMAGES[:4], 0)
    reward = torch.tensor([-1.0, -2.0, -0.5, -3.0])
    loss, logs = policy.policy_loss(draw, reward, epoch=5)
    expected = -(draw.log_prob * reward).mean() - 0.05 * draw.entropy.mean()
    assert loss.item() == pytest.approx(expected.item())
    loss.backward()
    assert policy.policy.fc3.weight.grad is not None


def test_batch_mean_baseline_centres_the_reward():
    policy = build_strategy(TimestepConfig(baseline="batch_mean", entropy_weight=0.0, **PAPER), 1000)
    draw = policy.sample(IMAGES[:4], 0)
    reward = torch.tensor([-1.0, -2.0, -0.5, -3.0])
    loss, _ = policy.policy_loss(draw, reward, 0)
    assert loss.item() == pytest.approx(-(draw.log_prob * (reward - reward.mean())).mean().item())


@pytest.mark.parametrize("baseline", ["batch_mean", "ema"])
def test_policy_moves_into_the_informative_band(baseline):
    """Synthetic teacher: features carry the label only for 100 <= t < 200 (10 % of the timesteps)."""
    trace = train_policy_on_band(baseline=baseline, lr=0.03, steps=300, seed=0)
    assert trace[0] == pytest.approx(0.1, abs=0.03)
    assert trace[-1] > 0.8


def test_coarse_bins_draw_t_inside_the_chosen_bin():
    policy = build_strategy(TimestepConfig(policy_bins=20, policy_warmup_epochs=0.0), 1000)
    draw = policy.sample(torch.zeros(4096, 3, 16, 16), 0)
    assert len(draw.t.unique()) > 500 and 0 <= draw.t.min() and draw.t.max() < 1000
    # log pi is the bin's: every t of one bin has the same log-probability under a constant input
    bins = draw.t // 50
    same_bin = bins == bins[0]
    assert torch.allclose(draw.log_prob[same_bin], draw.log_prob[0].expand(int(same_bin.sum())))
    assert policy.greedy(torch.zeros(2, 3, 16, 16), 0).remainder(50).tolist() == [25, 25]
    t_probs = policy.t_distribution(draw.probs[:1])
    assert t_probs.shape == (1, 1000) and torch.isclose(t_probs.sum(), torch.tensor(1.0))
    with pytest.raises(RepFusionError, match="must divide 1000"):
        build_strategy(TimestepConfig(policy_bins=30), 1000)


def test_normalized_advantage_and_warmup():
    policy = build_strategy(TimestepConfig(advantage="normalized", policy_warmup_epochs=1.0, entropy_weight=0.0),
                            1000)
    draw = policy.sample(torch.randn(8, 3, 32, 32), 0)
    reward = torch.linspace(-5, -1, 8)
    during, _ = policy.policy_loss(draw, reward, 0.5)
    assert during.item() == 0.0
    during.backward()  # pi stays in the graph (DDP needs every parameter used) but gets no gradient
    assert policy.policy.fc3.weight.grad.abs().max() == 0
    after, _ = policy.policy_loss(draw, reward, 1.5)
    scaled, _ = policy.policy_loss(draw, reward * 100 + 7, 1.5)  # invariant to the reward's scale and shift
    assert torch.isclose(after, scaled, atol=1e-5)
    with pytest.raises(RepFusionError, match="advantage"):
        build_strategy(TimestepConfig(advantage="whitened"), 1000)


def test_improved_policy_finds_the_band_with_the_papers_entropy_weight():
    """Our options (20 bins, normalised advantage) find the informative band at entropy weight 0.1,
    where the paper's 1000-way plain REINFORCE stays uniform (benchmarks/policy_baseline.py)."""
    trace = train_policy_on_band("none", lr=0.01, steps=150, seed=1, entropy_weight=0.1, policy_bins=20,
                                 advantage="normalized")
    assert trace[0] < 0.2 and trace[-1] > 0.8


def test_entropy_weight_decays_from_the_end_of_the_warm_up_to_its_floor():
    policy = build_strategy(TimestepConfig(entropy_weight=0.1, entropy_decay_epochs=4, policy_warmup_epochs=1.0,
                                           entropy_floor=0.02), 1000)
    assert [policy.entropy_weight(e) for e in (0, 1, 3, 5, 9)] == pytest.approx([0.1, 0.1, 0.05, 0.02, 0.02])


def test_a_reward_with_no_signal_leaves_the_policy_near_uniform():
    """Rewards that do not depend on t give REINFORCE nothing to follow: with our defaults (normalised
    advantage, entropy floor) the policy must stay spread over the bins instead of drifting onto one."""
    torch.manual_seed(0)
    policy = build_strategy(TimestepConfig(entropy_weight=0.1, entropy_decay_epochs=1, policy_warmup_epochs=0.0), 1000)
    optimizer = torch.optim.SGD(policy.parameters(), lr=0.05, momentum=0.9)
    for step in range(300):
        x = torch.randn(32, 3, 32, 32)
        draw = policy.sample(x, step / 30)
        loss, _ = policy.policy_loss(draw, torch.randn(32), step / 30)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    probs = policy.distribution(torch.randn(256, 3, 32, 32)).probs.mean(0)
    entropy = -(probs * probs.log()).sum()
    assert entropy > 0.9 * math.log(20) and probs.max() < 0.15
