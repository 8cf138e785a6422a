import math

import pytest
import torch
import torch.nn.functional as F

from repfusion.distill.losses import LOSSES, AttentionTransferLoss, RelationalLoss, build_loss
from repfusion.errors import RepFusionError


def identity_adapter(loss):
    with torch.no_grad():
        loss.adapter.weight.copy_(torch.eye(2).view(2, 2, 1, 1))
        loss.adapter.bias.zero_()
    return loss


def constant_map(values, size=2):
    return torch.tensor(values, dtype=torch.float32).view(1, -1, 1, 1).expand(1, len(values), size, size)


def test_registry_has_the_paper_losses_and_rejects_unknown():
    assert {"hint", "at", "rkd", "cosine", "l1"} <= set(LOSSES.names())
    with pytest.raises(RepFusionError, match="closest valid names: hint"):
        build_loss("hnit", (2, 2, 2), (2, 2, 2))


def test_hint_pooled_by_hand():
    loss = identity_adapter(build_loss("hint", (2, 2, 2), (2, 2, 2)))
    value = loss(constant_map([1.0, 3.0]), constant_map([2.0, 0.0]))
    assert value.item() == pytest.approx(((1 - 2) ** 2 + (3 - 0) ** 2) / 2)
    assert loss.weight == 1.0


def test_hint_dense_resizes_student_to_teacher():
    loss = identity_adapter(build_loss("hint", (2, 2, 2), (2, 4, 4), mode="dense"))
    value = loss(constant_map([1.0, 3.0], 2), constant_map([2.0, 0.0], 4))
    assert value.item() == pytest.approx(5.0)


def test_cosine_and_l1_by_hand():
    cos = identity_adapter(build_loss("cosine", (2, 1, 1), (2, 1, 1)))
    assert cos(constant_map([1.0, 0.0], 1), constant_map([0.0, 2.0], 1)).item() == pytest.approx(1.0)
    l1 = identity_adapter(build_loss("l1", (2, 1, 1), (2, 1, 1)))
    assert l1(constant_map([1.0, 0.0], 1), constant_map([0.0, 2.0], 1)).item() == pytest.approx(1.5)


def test_attention_transfer_by_hand():
    loss = build_loss("at", (1, 2, 2), (5, 2, 2))
    s = torch.tensor([[1.0, 0.0], [0.0, 0.0]]).view(1, 1, 2, 2)
    t = torch.zeros(1, 5, 2, 2)
    t[0, :, 1, 1] = 3.0
    # A_s = [1, 0, 0, 0], A_t = [0, 0, 0, 1]; mean squared difference 2/4; weight 1000
    assert loss(s, t).item() == pytest.approx(1000 * 0.5)
    assert loss.weight == 1000


def test_attention_paper_and_code_modes_agree():
    s, t = torch.randn(3, 4, 4, 4), torch.randn(3, 6, 2, 2)
    code = AttentionTransferLoss((4, 4, 4), (6, 2, 2), mode="code")
    paper = AttentionTransferLoss((4, 4, 4), (6, 2, 2), mode="paper")
    assert code(s, t).item() == pytest.approx(paper(s, t).item(), rel=1e-5)


def test_at_needs_spatial_maps():
    with pytest.raises(RepFusionError, match="spatial feature maps"):
        build_loss("at", (8,), (4, 2, 2))


def test_rkd_distance_term_by_hand():
    loss = RelationalLoss((2,), (2,), distance_weight=1.0, angle_weight=0.0)
    s = torch.tensor([[0.0, 0.0], [3.0, 4.0], [0.0, 4.0]])  # distances 5, 4, 3; mean 4
    t = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0]])  # distances 1, 1, sqrt 2; mean (2 + sqrt 2) / 3
    mean_t = (2 + math.sqrt(2)) / 3
    pairs = [(5 / 4, 1 / mean_t), (4 / 4, 1 / mean_t), (3 / 4, math.sqrt(2) / mean_t)]
    expected = sum(2 * F.smooth_l1_loss(torch.tensor(a), torch.tensor(b)).item() for a, b in pairs) / 9
    assert loss(s, t).item() == pytest.approx(expected, rel=1e-5)
    assert set(loss.terms) == {"distance"}


def test_rkd_is_invariant_to_scale_and_rotation():
    loss = build_loss("rkd", (2,), (2,))
    assert (loss.distance_weight, loss.angle_weight) == (25.0, 50.0)
    s = torch.randn(6, 2)
    rot = torch.tensor([[0.0, -1.0], [1.0, 0.0]])
    assert loss(s, 3 * s @ rot).item() == pytest.approx(0.0, abs=1e-6)


@pytest.mark.parametrize("name", ["hint", "at", "rkd", "cosine", "l1"])
def test_a_few_gradient_steps_lower_each_loss(name):
    torch.manual_seed(0)
    student = torch.nn.Conv2d(3, 4, 1)
    loss = build_loss(name, (4, 4, 4), (6, 2, 2))
    x, teacher = torch.randn(8, 3, 4, 4), torch.randn(8, 6, 2, 2)
    opt = torch.optim.Adam(list(student.parameters()) + list(loss.parameters()), lr=0.05)
    first = loss(student(x), teacher).item()
    for _ in range(30):
        opt.zero_grad()
        value = loss(student(x), teacher)
        value.backward()
        opt.step()
    assert value.item() < first
    assert not teacher.requires_grad


def test_dense_hint_on_the_coarser_grid_pools_the_teacher_to_the_student_map():
    """grid=coarser: the 16x16 teacher map is area-pooled to the student's 4x4, not the student upsampled."""
    torch.manual_seed(0)
    student, teacher = torch.randn(2, 8, 4, 4), torch.randn(2, 16, 16, 16)
    coarser = build_loss("hint", (8, 4, 4), (16, 16, 16), mode="dense", grid="coarser")
    expected = F.mse_loss(coarser.adapter(student), F.avg_pool2d(teacher, 4))
    assert torch.allclose(coarser(student, teacher), expected)
    upsampled = build_loss("hint", (8, 4, 4), (16, 16, 16), mode="dense")  # the paper's direction, the default
    adapted = F.interpolate(upsampled.adapter(student), size=(16, 16), mode="bilinear", align_corners=False)
    assert torch.allclose(upsampled(student, teacher), F.mse_loss(adapted, teacher))
    with pytest.raises(RepFusionError, match="loss.grid must be 'teacher' or 'coarser'"):
        build_loss("hint", (8, 4, 4), (16, 16, 16), mode="dense", grid="finer")


@pytest.mark.parametrize("grid", ["teacher", "coarser"])
def test_a_finer_student_map_is_area_pooled_so_every_position_gets_gradient(grid):
    """A 64x64 student map (HRNetV2-W18) against an 8x8 teacher: bilinear shrinking would train 256 of 4,096
    positions; area pooling trains all of them, with the mean of each 8x8 cell as the compared value."""
    student = torch.randn(2, 6, 64, 64, requires_grad=True)
    teacher = torch.randn(2, 4, 8, 8)
    loss = build_loss("hint", (6, 64, 64), (4, 8, 8), mode="dense", grid=grid)
    loss(student, teacher).backward()
    assert bool((student.grad.abs().sum((0, 1)) > 0).all())
    expected = F.mse_loss(F.avg_pool2d(loss.adapter(student), 8), teacher)
    assert torch.allclose(loss(student, teacher), expected, atol=1e-6)


def test_a_loss_weight_that_is_not_a_number_is_one_sentence():
    with pytest.raises(RepFusionError, match="loss.options.weight must be a number, not 'x'"):
        build_loss("hint", (8,), (16,), weight="x")
