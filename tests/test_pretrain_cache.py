"""`pretrain --distill.cache_views`: the cached targets reach every distillation whose chosen input is clean,
none whose input is noised (a noised target changes every step), the estimate counts the cheaper epochs, and a
null count (the default) caches where the images and their targets fit in memory."""

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


def test_a_null_count_caches_what_fits_and_says_why_not_otherwise():
    from repfusion.pipeline.budget import AUTO_CACHE_VIEWS, CACHE_LIMIT_BYTES, auto_cache_views

    views, why = auto_cache_views("clean", 1287, 3 * 16 * 16, 4 * 64 * 4 * 4)  # the digits folder: a few MB
    assert views == AUTO_CACHE_VIEWS and "cache_views 0" in why
    noised, why_noised = auto_cache_views("noised", 1287, 3 * 16 * 16, 4 * 64 * 4 * 4)
    assert noised == 0 and "noised" in why_noised
    per_image = CACHE_LIMIT_BYTES // 1000  # a large folder at a deep layer: over the limit
    big, why_big = auto_cache_views("clean", 1000, 0, per_image)
    assert big == 0 and "GB" in why_big and "cache_views N" in why_big


def test_a_null_count_is_resolved_for_the_chosen_layer_and_reaches_both_teachers():
    """with_cache sizes one target through the truncated teacher; the resolved count is what the distillations
    get, and a count given by hand is kept as given."""
    from repfusion.pipeline.run import load_teacher, with_cache

    cfg = PretrainRun(distill=DistillBudget(epochs=2))
    assert cfg.distill.cache_views is None
    teacher = load_teacher(cfg, "tiny-16", init="random")
    choice = Choice(layer="up_blocks.0", mode="clean", t=0, score="", reason="")
    resolved = with_cache(cfg, choice, teacher, 1287, 16)
    assert resolved.distill.cache_views == 2
    for init in ("pretrained", "random"):
        assert distill_config(resolved, DATA, "tiny-16", "resnet18_cifar", choice, init, 0, True).cache_views == 2
    noised = with_cache(cfg, Choice(layer="up_blocks.0", mode="noised", t=100, score="", reason=""), teacher, 1287, 16)
    assert noised.distill.cache_views == 0
    given = PretrainRun(distill=DistillBudget(epochs=2, cache_views=0))
    assert with_cache(given, choice, teacher, 1287, 16).distill.cache_views == 0


def test_a_resumed_run_keeps_the_cache_it_started_with(tmp_path):
    """A run saved before the cache became the default (cache_views 0) resumes uncached; one saved with the null
    default stays null (decided again, the same way, after the choice); a count given now is kept."""
    import json

    from repfusion.pipeline.run import settings, with_saved_cache

    old = settings(PretrainRun(distill=DistillBudget(cache_views=0)))
    (tmp_path / "old.json").write_text(json.dumps(old))
    (tmp_path / "new.json").write_text(json.dumps(settings(PretrainRun())))
    assert with_saved_cache(PretrainRun(), tmp_path / "old.json").distill.cache_views == 0
    assert with_saved_cache(PretrainRun(), tmp_path / "new.json").distill.cache_views is None
    assert with_saved_cache(PretrainRun(distill=DistillBudget(cache_views=3)), tmp_path / "old.json"
                            ).distill.cache_views == 3
    assert with_saved_cache(PretrainRun(), None).distill.cache_views is None  # a fresh run


def test_the_report_says_how_the_teacher_targets_were_made():
    from repfusion.pipeline.report import cached

    two = PretrainRun(distill=DistillBudget(cache_views=2))
    assert "2 views" in cached(two, {"mode": "clean"})
    assert cached(two, {"mode": "noised"}) == "the teacher run on every step"  # distill_config caches clean only
    assert cached(PretrainRun(distill=DistillBudget(cache_views=0)), {"mode": "clean"}) == "the teacher run on every step"



def linear_distil(every_step_epoch: float, cached_epoch: float, fill: float, run: float = 3.0):
    """A distillation stage's estimate: run + epochs x (an epoch's seconds), the cache's fill once; a null count
    (decided after the choice) is estimated cached, as stage_seconds does for clean candidates."""
    def distil_s(cfg: PretrainRun) -> float:
        views = cfg.distill.cache_views
        return run + (fill + cfg.distill.epochs * cached_epoch if views != 0 else cfg.distill.epochs * every_step_epoch)
    return distil_s


def filled(epochs: int, **changes):
    from repfusion.pipeline.budget import BudgetChoice

    return BudgetChoice(name="cpu", reason="auto: no GPU, a CPU", filled={"distill.epochs": epochs}, **changes)


@pytest.mark.parametrize("views", [None, 2])
def test_the_time_the_cache_saves_is_given_back_as_distillation_epochs(views):
    """24 epochs of 10 s with the teacher every step = 240 s; cached epochs of 5 s after a 30 s fill: 42 epochs
    fit (30 + 42 x 5 = 240); the budget records them with the epochs it had, and says why."""
    from repfusion.pipeline.budget import raise_for_cache

    cfg = PretrainRun(distill=DistillBudget(epochs=24, cache_views=views))
    out, budget = raise_for_cache(cfg, filled(24), linear_distil(10.0, 5.0, 30.0))
    assert out.distill.epochs == 42 and budget.filled["distill.epochs"] == 42 and budget.uncached_epochs == 24
    assert "distillation 42 epochs, not 24" in budget.reason
    assert linear_distil(10.0, 5.0, 30.0)(out) <= linear_distil(10.0, 5.0, 30.0)(
        PretrainRun(distill=DistillBudget(epochs=24, cache_views=0)))  # no longer than the teacher every step


def test_the_raise_is_capped_and_only_where_the_budget_filled_cached_epochs():
    from dataclasses import replace

    from repfusion.pipeline.budget import MAX_CACHE_RAISE, raise_for_cache

    cached = PretrainRun(distill=DistillBudget(epochs=6, cache_views=2))
    capped, _ = raise_for_cache(cached, filled(6), linear_distil(100.0, 1.0, 0.0))
    assert capped.distill.epochs == MAX_CACHE_RAISE * 6
    untouched = [
        (cached, filled(6, target_s=600.0)),  # a time target sizes the epochs with the cache already counted
        (cached, replace(filled(6), filled={})),  # the user gave the epochs
        (PretrainRun(distill=DistillBudget(epochs=6, cache_views=0)), filled(6)),  # the teacher every step
    ]
    for cfg, budget in untouched:
        out, kept = raise_for_cache(cfg, budget, linear_distil(10.0, 5.0, 30.0))
        assert out.distill.epochs == 6 and kept == budget
    slow, kept = raise_for_cache(cached, filled(6), linear_distil(10.0, 9.0, 30.0))  # the fill eats the saving
    assert slow.distill.epochs == 6 and kept.uncached_epochs is None


def test_epochs_raised_for_a_cache_the_chosen_input_does_not_get_go_back():
    """Raised up front (clean candidates, cache assumed); the choice's input is not cached (views 0): the budget's
    epochs again, said; cached: kept. A resumed run (its budget.json) undoes the same way."""
    from repfusion.pipeline.budget import BudgetChoice, budget_record, raise_for_cache, undo_cache_raise

    cfg, budget = raise_for_cache(PretrainRun(distill=DistillBudget(epochs=24)), filled(24),
                                  linear_distil(10.0, 5.0, 30.0))
    kept, same, why = undo_cache_raise(cfg, budget, 2)
    assert kept.distill.epochs == 42 and same == budget and why is None
    back, undone, why = undo_cache_raise(cfg, budget, 0)
    assert back.distill.epochs == 24 and undone.filled["distill.epochs"] == 24 and undone.uncached_epochs is None
    assert "24 epochs after all" in why and why in undone.reason
    resumed = BudgetChoice(**budget_record(budget))
    assert resumed == budget and undo_cache_raise(cfg, resumed, 0)[0].distill.epochs == 24
    old = {k: v for k, v in budget_record(filled(24)).items() if k != "uncached_epochs"}  # saved before the raise
    assert undo_cache_raise(PretrainRun(distill=DistillBudget(epochs=24)), BudgetChoice(**old), 0)[2] is None


def test_the_estimate_after_the_choice_counts_the_cache_for_a_clean_choice_among_noised_candidates():
    """With noised candidates the up-front estimate cannot count the cache; once clean input is chosen (the
    candidate modes narrowed to it, as run_pretrain does) the cached epochs are counted cheaper."""
    from dataclasses import replace

    facts = DataFacts(layout="class sub-folders", labels="folders", train_images=3000, test_images=500, classes=10,
                      native_size=16, grayscale=True, image_size=16, size_reason="test")
    times = StepTimes(teacher_train=0.2, teacher_forward=0.5, student_train=0.1, student_forward=0.02, batch=128,
                      finetune_batch=32)
    cfg = PretrainRun(distill=DistillBudget(epochs=20, cache_views=2))
    cfg.finetune.epochs, cfg.teacher.epochs = 5, 5
    both = replace(cfg, choice=replace(cfg.choice, modes=["clean", "noised"]))
    clean = replace(cfg, choice=replace(cfg.choice, modes=["clean"]))
    assert stage_seconds(clean, facts, times, True, True, 270)[0]["distil"] < stage_seconds(
        both, facts, times, True, True, 270)[0]["distil"] / 2

