import pytest
import torch

from repfusion.distill.synthetic import train_policy_on_band
from repfusion.distill.timesteps import TimestepConfig, build_strategy
from repfusion.errors import RepFusionError

IMAGES = torch.zeros(512, 3, 16, 16)


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
    policy = build_strategy(TimestepConfig(entropy_weight=0.1, entropy_decay_epochs=100), 1000)
    assert [policy.entropy_weight(e) for e in (0, 50, 100, 150)] == pytest.approx([0.1, 0.05, 0.0, 0.0])


def test_reinforce_loss_matches_the_formula():
    policy = build_strategy(TimestepConfig(entropy_weight=0.1, entropy_decay_epochs=10), 1000)
    draw = policy.sample(IMAGES[:4], 0)
    reward = torch.tensor([-1.0, -2.0, -0.5, -3.0])
    loss, logs = policy.policy_loss(draw, reward, epoch=5)
    expected = -(draw.log_prob * reward).mean() - 0.05 * draw.entropy.mean()
    assert loss.item() == pytest.approx(expected.item())
    loss.backward()
    assert policy.policy.fc3.weight.grad is not None


def test_batch_mean_baseline_centres_the_reward():
    policy = build_strategy(TimestepConfig(baseline="batch_mean", entropy_weight=0.0), 1000)
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
