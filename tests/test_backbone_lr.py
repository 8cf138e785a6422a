"""optim.backbone_lr_scale: a distilled backbone fine-tuned at lr x scale, its new head at lr."""

from __future__ import annotations

import pytest

from repfusion.data.augment import Augment
from repfusion.errors import RepFusionError
from repfusion.students import build_student
from repfusion.tasks.classification import Classification
from repfusion.training import OptimConfig, build_optimizer


def groups(scale: float) -> list[dict]:
    model = build_student("resnet18_cifar", 0.125, num_classes=10)
    module = Classification(model, 10, OptimConfig(lr=0.1, backbone_lr_scale=scale), Augment(16))
    return build_optimizer(module.trainable_parameters(), module.optim).param_groups, model


def test_the_head_keeps_the_learning_rate_and_the_backbone_takes_the_scaled_one():
    (backbone, head), model = groups(0.1)
    assert backbone["lr"] == pytest.approx(0.01) and head["lr"] == pytest.approx(0.1)
    head_ids = {id(p) for p in model.fc.parameters()}
    assert {id(p) for p in head["params"]} == head_ids
    assert len(backbone["params"]) + len(head["params"]) == len(list(model.parameters()))
    (single,), _ = groups(1.0)
    assert single["lr"] == pytest.approx(0.1) and len(single["params"]) == len(list(model.parameters()))


def test_a_scale_outside_its_range_is_one_sentence():
    with pytest.raises(RepFusionError, match="backbone_lr_scale"):
        OptimConfig(backbone_lr_scale=-1.0)  # the section checks itself when built
