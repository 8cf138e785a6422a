"""`pretrain --distill.cache_views`: the cached targets reach every distillation whose chosen input is clean,
none whose input is noised (a noised target changes every step), and the estimate counts the cheaper epochs."""

from __future__ import annotations

import pytest

from repfusion.data import DataConfig
from repfusion.errors import RepFusionError
from repfusion.pipeline import PretrainRun
from repfusion.pipeline.config import DistillBudget
from repfusion.pipeline.choice import Choice
from repfusion.pipeline.estimate import StepTimes, stage_seconds
from repfusion.pipeline.inspect import DataFacts
from repfusion.pipeline.run import distill_config

DATA = DataConfig(source="digits", image_size=16, label_fraction=0.1)


@pytest.mark.parametrize("mode, expected", [("clean", 2), ("noised", 0)])
def test_cache_views_reach_the_distillation_only_for_clean_input(mode, expected):
    cfg = PretrainRun(distill=DistillBudget(epochs=2, cache_views=2))
    choice = Choice(layer="up_blocks.0", mode=mode, t=0, score="", reason="")
    for init in ("pretrained", "random"):  # the random-teacher control gets the same recipe
        run = distill_config(cfg, DATA, "tiny-16", "resnet18_cifar", choice, init, seed=0, native=True)
        assert run.cache_views == expected


def test_the_estimate_counts_cached_epochs_as_cheaper():
    facts = DataFacts(layout="class sub-folders", labels="folders", train_images=3000, test_images=500, classes=10,
                      native_size=16, grayscale=True, image_size=16, size_reason="test")
    times = StepTimes(teacher_train=0.2, teacher_forward=0.5, student_train=0.1, student_forward=0.02, batch=128,
                      finetune_batch=32)

    def distil(views: int) -> float:
        cfg = PretrainRun(teacher=PretrainRun().teacher, distill=DistillBudget(epochs=20, cache_views=views))
        cfg.finetune.epochs, cfg.teacher.epochs = 5, 5
        return stage_seconds(cfg, facts, times, True, True, 270)[0]["distil"]

    assert distil(2) < distil(0) / 2  # the teacher forward is most of this step; two views fill once


def test_a_bad_cache_views_is_one_sentence():
    with pytest.raises(RepFusionError, match="distill.cache_views"):
        DistillBudget(cache_views=-1)
