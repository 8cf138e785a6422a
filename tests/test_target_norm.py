import pytest
import torch

from repfusion.distill.target_norm import PerTimestepStandardizer, build_target_norm
from repfusion.errors import RepFusionError


def offset_features(t: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
    """A teacher-like feature: a large per-t offset shared by all images plus the image's own signal."""
    offset = torch.sin(t.float()[:, None] / 500.0 + torch.arange(4.0)) * 20
    return (offset + images)[:, :, None, None].expand(-1, -1, 3, 3).contiguous()


def test_removes_the_per_t_offset_and_keeps_the_image():
    torch.manual_seed(0)
    norm = PerTimestepStandardizer(4, 1000, bins=100)
    for _ in range(50):
        t = torch.randint(0, 1000, (128,))
        norm(offset_features(t, torch.randn(128, 4)), t)
    norm.eval()
    t = torch.randint(0, 1000, (2000,))
    images = torch.randn(2000, 4)
    raw = offset_features(t, images)[:, :, 0, 0]
    out = norm(offset_features(t, images), t)[:, :, 0, 0]
    # raw: the offset dominates; standardised: the image explains almost everything, at unit scale
    assert torch.corrcoef(torch.stack([raw[:, 0], images[:, 0]]))[0, 1] < 0.2
    assert torch.corrcoef(torch.stack([out[:, 0], images[:, 0]]))[0, 1] > 0.97
    assert out.mean().abs() < 0.1 and (out.std() - 1).abs() < 0.15


def test_first_visit_uses_exact_batch_statistics_and_running_average_is_cumulative():
    norm = PerTimestepStandardizer(2, 1000, bins=10)
    a, b = torch.randn(64, 2) * 3 + 1, torch.randn(64, 2) - 2
    t = torch.full((64,), 5)
    norm(a, t)
    assert torch.allclose(norm.mean[0], a.mean(0), atol=1e-5)
    assert torch.allclose(norm.var[0], a.var(0, unbiased=False), atol=1e-4)
    norm(b, t)
    both = torch.cat([a, b])
    assert torch.allclose(norm.mean[0], both.mean(0), atol=1e-5)
    assert torch.allclose(norm.var[0], both.var(0, unbiased=False), atol=1e-4)
    assert norm.seen[0] == 128 and norm.seen[1:].sum() == 0


def test_a_bin_seen_once_borrows_the_pooled_variance():
    norm = PerTimestepStandardizer(2, 1000, bins=10, prior_images=16)
    t = torch.cat([torch.full((63,), 5), torch.tensor([950])])
    x = torch.randn(64, 2)
    norm(x, t)
    norm.eval()
    out = norm(x, t)
    pooled_var = (63 * norm.var[0] + norm.var[9]) / 64  # bin 9's single image has zero variance of its own
    expected_var = (1 * norm.var[9] + 16 * pooled_var) / 17
    assert torch.isfinite(out).all() and out[-1].abs().max() < 1e-3  # its own mean
    assert torch.allclose(norm.bin_variance(torch.tensor([9]))[0], expected_var)


def test_pooled_statistics_give_the_pooled_target_unit_variance():
    maps = torch.randn(512, 3, 1, 1) * 0.1 + torch.randn(512, 3, 8, 8)  # weak image signal, strong spatial noise
    t = torch.zeros(512, dtype=torch.long)
    pooled_norm, dense_norm = (PerTimestepStandardizer(3, 1000, bins=1, pooled=p) for p in (True, False))
    for norm in (pooled_norm, dense_norm):
        norm(maps, t)  # statistics first; a batch is standardised by what came before it
        norm.eval()
    pooled, dense = pooled_norm(maps, t).mean((2, 3)), dense_norm(maps, t).mean((2, 3))
    assert (pooled.std(0) - 1).abs().max() < 0.05 and dense.std(0).max() < 0.3


def test_unseen_bin_borrows_nearest_seen_in_eval_and_state_round_trips():
    norm = PerTimestepStandardizer(3, 1000, bins=10)
    norm(torch.randn(16, 3) + 4, torch.full((16,), 150))
    norm.eval()
    x = torch.randn(4, 3)
    assert torch.allclose(norm(x, torch.full((4,), 950)), norm(x, torch.full((4,), 150)))
    other = PerTimestepStandardizer(3, 1000, bins=10)
    other.load_state_dict(norm.state_dict())
    other.eval()
    assert torch.equal(other(x, torch.full((4,), 150)), norm(x, torch.full((4,), 150)))


def test_dense_maps_keep_their_spatial_structure():
    norm = PerTimestepStandardizer(2, 1000, bins=4, pooled=False)
    maps = torch.randn(8, 2, 4, 4)
    norm(maps, torch.zeros(8, dtype=torch.long))
    out = norm(maps, torch.zeros(8, dtype=torch.long))
    assert out.shape == maps.shape
    ratio = (out - out.mean()) / (maps - maps.mean(dim=(0, 2, 3), keepdim=True))
    assert torch.allclose(ratio[:, 0], ratio[0, 0, 0, 0].expand(8, 4, 4), atol=1e-4)


def test_build_names_and_bad_values():
    assert build_target_norm("none", 4, 1000) is None
    assert isinstance(build_target_norm("per_t", 4, 1000, 20), PerTimestepStandardizer)
    with pytest.raises(RepFusionError, match="target_norm must be one of none, per_t"):
        build_target_norm("per-t", 4, 1000)
    with pytest.raises(RepFusionError, match="target_bins"):
        build_target_norm("per_t", 4, 1000, 0)


def test_non_finite_batches_are_skipped_and_an_untrained_standardiser_is_the_identity():
    norm = PerTimestepStandardizer(2, 1000, bins=4)
    x = torch.randn(8, 2) * 3
    norm.eval()
    assert torch.allclose(norm(x, torch.zeros(8, dtype=torch.long)), x, atol=1e-4)
    norm.train()
    norm(x, torch.zeros(8, dtype=torch.long))
    before = {k: v.clone() for k, v in norm.state_dict().items()}
    norm(torch.full((8, 2), float("nan")), torch.zeros(8, dtype=torch.long))
    assert all(torch.equal(before[k], v) for k, v in norm.state_dict().items())


def test_large_means_do_not_lose_the_variance():
    norm = PerTimestepStandardizer(1, 1000, bins=1)
    for _ in range(4):
        norm(torch.randn(256, 1) * 0.01 + 3000, torch.zeros(256, dtype=torch.long))
    assert 0.7e-4 < norm.var[0, 0] < 1.3e-4


def test_a_batch_is_standardised_by_the_statistics_from_before_it():
    """One image first visiting a bin must not be standardised by its own statistics (an all-zero target)."""
    norm = PerTimestepStandardizer(3, 1000, bins=10)
    first = torch.randn(32, 3) * 2 + 5
    norm(first, torch.full((32,), 5))  # bin 0 now has statistics
    mean, std = norm.mean[0].clone(), (norm.bin_variance(torch.tensor([0])) + norm.eps).sqrt()
    single = torch.tensor([[1.0, 9.0, -4.0]])
    out = norm(single, torch.tensor([950]))  # bin 9: never seen, borrows bin 0's statistics
    assert not torch.allclose(out, torch.zeros_like(out))
    assert torch.allclose(out, (single - mean) / std, atol=1e-5)
    assert norm.seen[9] == 1  # and only then folded in
    again = norm(torch.randn(8, 3), torch.full((8,), 5))
    assert again.shape == (8, 3)
