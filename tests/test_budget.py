"""`pretrain`'s budgets and up-front estimate: what fills the epochs left null, and the time it says first."""

from __future__ import annotations

import pytest

from repfusion.errors import RepFusionError
from repfusion.pipeline import PretrainRun, StudentChoice, TeacherChoice
from repfusion.pipeline.budget import BUDGETS, apply_budget, fit_to_time, parse_duration
from repfusion.pipeline.estimate import StepTimes, stage_seconds
from repfusion.pipeline.inspect import DataFacts


def facts(images: int = 3000) -> DataFacts:
    return DataFacts(layout="class sub-folders", labels="folders", train_images=images, test_images=500, classes=10,
                     native_size=28, grayscale=True, image_size=32, size_reason="test")


def test_the_auto_budget_on_a_cpu_is_smaller_than_on_a_gpu():
    cpu, said_cpu = apply_budget(PretrainRun(), on_gpu=False)
    gpu, said_gpu = apply_budget(PretrainRun(), on_gpu=True)
    assert (said_cpu.name, said_gpu.name) == ("cpu", "gpu") and "auto" in said_cpu.reason
    for section in ("teacher", "distill", "finetune"):
        assert getattr(cpu, section).epochs < getattr(gpu, section).epochs
    assert cpu.student.width < gpu.student.width
    times = StepTimes(teacher_train=0.2, teacher_forward=0.05, student_train=0.1, student_forward=0.02, batch=128,
                      finetune_batch=32)
    cpu_s = sum(stage_seconds(cpu, facts(), times, True, True, 270)[0].values())
    gpu_s = sum(stage_seconds(gpu, facts(), times, True, True, 270)[0].values())
    assert cpu_s < gpu_s / 3  # the same step times: the CPU budget takes a fraction of the work


def test_values_given_by_hand_are_kept_and_only_nulls_are_filled():
    cfg = PretrainRun(teacher=TeacherChoice(epochs=3), student=StudentChoice(width=0.5), budget="gpu")
    out, said = apply_budget(cfg, on_gpu=False)
    assert out.teacher.epochs == 3 and out.student.width == 0.5
    assert out.distill.epochs == BUDGETS["gpu"].distill_epochs and said.reason == "as asked"
    assert set(said.filled) == {"distill.epochs", "finetune.epochs"}


def test_an_external_student_keeps_its_own_width():
    out, said = apply_budget(PretrainRun(student=StudentChoice(arch="timm:resnet18")), on_gpu=False)
    assert out.student.width == 1.0  # timm / torchvision networks have no width multiplier


@pytest.mark.parametrize("text, seconds", [("30min", 1800), ("1h", 3600), ("1h30min", 5400), ("90s", 90),
                                           ("45", 2700), ("2 hours", 7200)])
def test_durations(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["soon", "30 parsecs", "10s", "-5min", "1h30"])
def test_bad_durations_are_one_sentence(text):
    with pytest.raises(RepFusionError, match="time"):
        parse_duration(text)


def test_a_time_target_scales_the_filled_epochs_to_fit():
    cfg, said = apply_budget(PretrainRun(time="20min"), on_gpu=False)
    times = StepTimes(teacher_train=0.2, teacher_forward=0.05, student_train=0.1, student_forward=0.02, batch=128,
                      finetune_batch=32)
    plan, per_epoch = stage_seconds(cfg, facts(), times, True, True, 270)
    fitted, said = fit_to_time(cfg, said, plan, per_epoch, 1200)
    after = sum(stage_seconds(fitted, facts(), times, True, True, 270)[0].values())
    assert after <= 1200 < sum(plan.values()) or sum(plan.values()) <= 1200
    assert after > 0.5 * 1200  # the time is used, not thrown away
    assert said.target_s == 1200 and fitted.teacher.epochs == said.filled["teacher.epochs"]


def test_a_time_target_too_short_for_one_epoch_is_refused():
    cfg, said = apply_budget(PretrainRun(time="1min"), on_gpu=False)
    times = StepTimes(teacher_train=2.0, teacher_forward=0.5, student_train=1.0, student_forward=0.2, batch=128,
                      finetune_batch=32)
    plan, per_epoch = stage_seconds(cfg, facts(30000), times, True, True, 2700)
    with pytest.raises(RepFusionError, match="too short"):
        fit_to_time(cfg, said, plan, per_epoch, 60)


@pytest.mark.parametrize("menu, runs", [(["plain"], 1), (None, 2)])  # null: the default menu, plain and LP-FT
def test_the_loop_cost_of_a_step_is_counted_once_for_every_optimiser_step(menu, runs):
    """step_overhead (the Trainer's own cost a step, from time_loop) adds exactly steps x overhead to each
    stage: the fine-tuning's many small steps are where it shows."""
    import dataclasses

    from repfusion.analysis.controls import steps_per_epoch
    from repfusion.pipeline.config import FinetuneBudget

    cfg, _ = apply_budget(PretrainRun(finetune=FinetuneBudget(protocols=menu)), on_gpu=False)
    base = StepTimes(teacher_train=0.2, teacher_forward=0.05, student_train=0.1, student_forward=0.02, batch=128,
                     finetune_batch=32)
    plan0, _ = stage_seconds(cfg, facts(), base, True, True, 270)
    plan1, _ = stage_seconds(cfg, facts(), dataclasses.replace(base, step_overhead=0.01), True, True, 270)
    n, val = 3000, round(3000 * cfg.data.val_fraction)
    distill_steps = steps_per_epoch(n - val, 128) * cfg.distill.epochs
    ft_steps = steps_per_epoch(270, 32) * (cfg.finetune.epochs + cfg.finetune.head_epochs)
    seeds = cfg.seeds
    assert plan1["teacher"] - plan0["teacher"] == pytest.approx(  # the teacher, too, trains without the val split
        0.01 * steps_per_epoch(n - val, 128) * cfg.teacher.epochs)
    assert plan1["distil"] - plan0["distil"] == pytest.approx(0.01 * 2 * seeds * distill_steps)
    # four arms a seed under each protocol, and equal-compute scratch's extra steps (one distillation's) in each
    assert plan1["fine-tune the arms"] - plan0["fine-tune the arms"] == pytest.approx(
        0.01 * seeds * runs * (4 * ft_steps + distill_steps))


def _times(**changed) -> StepTimes:
    import dataclasses

    base = StepTimes(teacher_train=0.2, teacher_forward=0.05, student_train=0.1, student_forward=0.02, batch=128,
                     finetune_batch=32)
    return dataclasses.replace(base, **changed)


def test_the_chosen_layer_replaces_the_mean_teacher_forward_in_the_distillation():
    """Up front the teacher forward is the candidates' mean; after the choice, the chosen layer's truncated time."""
    cfg, _ = apply_budget(PretrainRun(), on_gpu=False)
    cfg.distill.cache_views = 0  # the teacher runs every step: its time shows in full
    times = _times(teacher_forward=0.3, teacher_forward_at={"down_blocks.0": 0.1, "up_blocks.1": 0.5})
    assert times.at_layer("up_blocks.1").teacher_forward == 0.5
    assert times.at_layer("not_timed").teacher_forward == 0.3  # unknown: the estimate stays as it was
    shallow, deep = (stage_seconds(cfg, facts(), times.at_layer(layer), True, True, 270)[0]
                     for layer in ("down_blocks.0", "up_blocks.1"))
    assert shallow["distil"] < deep["distil"]
    assert shallow["teacher"] == deep["teacher"]  # a stage before the choice does not change


def test_reading_images_from_files_costs_every_image_of_every_epoch():
    """item_read (one file decoded) is paid for every image each epoch: the teacher's stage gains exactly
    epochs x images x item_read."""
    cfg, _ = apply_budget(PretrainRun(), on_gpu=False)
    base = stage_seconds(cfg, facts(), _times(), True, True, 270)[0]
    read = stage_seconds(cfg, facts(), _times(item_read=0.001), True, True, 270)[0]
    assert read["teacher"] - base["teacher"] == pytest.approx(0.001 * 3000 * cfg.teacher.epochs)
    assert all(read[stage] > base[stage] for stage in ("distil", "fine-tune the arms", "probe the frozen backbones"))


def test_a_fine_tuning_step_timed_at_its_own_batch_is_used_as_timed():
    cfg, _ = apply_budget(PretrainRun(), on_gpu=False)
    by_images = stage_seconds(cfg, facts(), _times(), True, True, 270)[0]  # 0.1 s at 128: 0.025 s at 32
    timed = stage_seconds(cfg, facts(), _times(finetune_train=0.05), True, True, 270)[0]
    assert timed["fine-tune the arms"] > by_images["fine-tune the arms"]
    assert timed["distil"] == by_images["distil"]


def test_a_re_plan_changes_only_the_stages_still_to_run_and_is_said():
    from repfusion.pipeline.progress import StageProgress

    said: list[str] = []
    first = {"teacher": 10.0, "choose": 5.0, "distil": 100.0, "report": 1.0}
    progress = StageProgress(first, log=said.append)
    progress.run("teacher", lambda: None)
    progress.replan({"teacher": 99.0, "choose": 99.0, "distil": 40.0, "report": 1.0}, after="choose")
    assert progress.plan == {"teacher": 10.0, "choose": 5.0, "distil": 40.0, "report": 1.0}
    assert first["distil"] == 100.0  # the up-front estimate (kept in results.json) is not rewritten
    assert "estimate now" in said[-1] and "distil 0:40" in said[-1]


def test_time_data_reads_real_items_and_nothing_for_in_memory_images(tmp_path):
    import time

    import torch

    from repfusion.data.augment import Augment
    from repfusion.data.datasets import TensorImageDataset
    from repfusion.pipeline.estimate import time_data

    class Slow(torch.utils.data.Dataset):
        def __len__(self) -> int:
            return 10

        def __getitem__(self, i):
            time.sleep(0.005)
            return torch.zeros(3, 8, 8, dtype=torch.uint8), 0

    read, augment = time_data(Slow(), Augment(8, crop_padding=2, flip=True), items=4)
    assert read >= 0.005 and augment > 0
    images = torch.zeros(6, 3, 8, 8, dtype=torch.uint8)
    in_memory = TensorImageDataset(images, torch.zeros(6, dtype=torch.long), ["a"])
    assert time_data(in_memory, Augment(8), items=4)[0] == 0.0


def test_the_clocked_short_run_separates_step_epoch_and_validation_costs():
    """time_finetune_loop reads a real run's clock: here a stand-in run whose steps, epoch boundaries and one
    validation take known sleeps (lower bounds only are asserted: sleeps never end early)."""
    import time
    from types import SimpleNamespace

    from repfusion.pipeline.estimate import (SHORT_EPOCHS, SHORT_PASSES, SHORT_STEPS, SHORT_VAL_EVERY,
                                             time_finetune_loop)

    def run(folder, callbacks):
        trainer = SimpleNamespace(current_epoch=0)
        time.sleep(0.2)  # the run's own start
        for epoch in range(SHORT_EPOCHS):
            trainer.current_epoch = epoch
            for i in range(SHORT_STEPS):
                for callback in callbacks:
                    callback.on_train_batch_start(trainer, None, None, i)
                time.sleep(0.01)
            time.sleep(0.05 + (0.15 if epoch + 1 == SHORT_VAL_EVERY else 0.0))
        time.sleep(0.15 * (SHORT_PASSES - 1))  # after fit: keep_better's two passes, the kept weights', the test

    costs = time_finetune_loop(run, _times(), eval_images=0)
    assert costs.step >= 0.01
    assert costs.epoch > 0.03 and costs.eval_pass > 0.1
    assert costs.run > 0.1  # the start, and the last epoch's end, are the run's own


def test_a_small_folder_gets_enough_distillation_steps():
    """60 steps left the digits folder's distilled student under its random initialisation; the budget raises
    the epochs it fills to MIN_DISTILL_STEPS steps, keeps a given count, and leaves a large folder alone."""
    from repfusion.analysis.controls import steps_per_epoch
    from repfusion.pipeline.budget import MAX_EPOCH_RAISE, MIN_DISTILL_STEPS
    from repfusion.pipeline.config import DistillBudget

    small, said = apply_budget(PretrainRun(), on_gpu=False, distill_epoch_steps=steps_per_epoch(1287, 128))
    assert small.distill.epochs * steps_per_epoch(1287, 128) >= MIN_DISTILL_STEPS
    assert (small.distill.epochs - 1) * steps_per_epoch(1287, 128) < MIN_DISTILL_STEPS
    assert said.filled["distill.epochs"] == small.distill.epochs and "240 steps" in said.reason
    large, said_large = apply_budget(PretrainRun(), on_gpu=False, distill_epoch_steps=steps_per_epoch(45_000, 128))
    assert large.distill.epochs == BUDGETS["cpu"].distill_epochs and "distillation" not in said_large.reason
    tiny, _ = apply_budget(PretrainRun(), on_gpu=False, distill_epoch_steps=steps_per_epoch(20, 128))
    assert tiny.distill.epochs == MAX_EPOCH_RAISE * BUDGETS["cpu"].distill_epochs  # one step an epoch: capped
    given, _ = apply_budget(PretrainRun(distill=DistillBudget(epochs=3)), on_gpu=False,
                            distill_epoch_steps=steps_per_epoch(1287, 128))
    assert given.distill.epochs == 3


def test_a_small_label_budget_gets_enough_fine_tuning_steps():
    """25 epochs of 8 steps left every arm short of converged on the digits folder and the CIFAR folder at 10 %
    labels (validation top-1 rose at 100 epochs); the budget raises the fine-tuning epochs it fills to
    MIN_FINETUNE_STEPS steps, at most MAX_FINETUNE_RAISE times, keeps a given count, and leaves many labels alone."""
    from repfusion.analysis.controls import steps_per_epoch
    from repfusion.pipeline.budget import MAX_FINETUNE_RAISE, MIN_FINETUNE_STEPS
    from repfusion.pipeline.config import FinetuneBudget

    cpu = BUDGETS["cpu"].finetune_epochs
    steps = steps_per_epoch(4500, 128)  # 35 steps: 25 epochs fall just short of the floor
    some, said = apply_budget(PretrainRun(), on_gpu=False, finetune_epoch_steps=steps)
    assert some.finetune.epochs * steps >= MIN_FINETUNE_STEPS > (some.finetune.epochs - 1) * steps
    assert said.filled["finetune.epochs"] == some.finetune.epochs > cpu and "fine-tuning" in said.reason
    digits, _ = apply_budget(PretrainRun(), on_gpu=False, finetune_epoch_steps=steps_per_epoch(143, 16))
    assert digits.finetune.epochs == MAX_FINETUNE_RAISE * cpu  # 8 steps an epoch: capped at what was measured
    many, said_many = apply_budget(PretrainRun(), on_gpu=False, finetune_epoch_steps=steps_per_epoch(45_000, 128))
    assert many.finetune.epochs == cpu and "fine-tuning" not in said_many.reason
    given, _ = apply_budget(PretrainRun(finetune=FinetuneBudget(epochs=3)), on_gpu=False,
                            finetune_epoch_steps=steps_per_epoch(143, 16))
    assert given.finetune.epochs == 3
    unknown, _ = apply_budget(PretrainRun(), on_gpu=False)
    assert unknown.finetune.epochs == cpu


def test_label_free_stages_are_costed_on_the_images_they_train_and_validate_on():
    """Every stage holds data.val_fraction out, labelled or not (ImageDataModule.setup): a label-free run's one
    distillation costs what each of a labelled run's does, and the teacher steps over the training images only."""
    from repfusion.analysis.controls import steps_per_epoch

    cfg, _ = apply_budget(PretrainRun(seeds=1), on_gpu=False)
    cfg.distill.cache_views = 0
    times = _times()
    label_free = stage_seconds(cfg, facts(), times, True, False, 0)[0]
    labelled = stage_seconds(cfg, facts(), times, True, True, 270)[0]
    assert labelled["distil"] == pytest.approx(2 * label_free["distil"])  # RepFusion and the random teacher
    assert label_free["teacher"] == labelled["teacher"]
    only_steps = StepTimes(teacher_train=1.0, teacher_forward=0.0, student_train=0.0, student_forward=0.0, batch=128,
                           finetune_batch=32)
    teacher_epoch = stage_seconds(cfg, facts(), only_steps, True, False, 0)[1]["teacher.epochs"]
    assert teacher_epoch == pytest.approx(steps_per_epoch(2700, 128))  # 3,000 images less the 10 % validation split


def test_a_short_first_stage_does_not_rescale_the_long_ones_after_it(monkeypatch):
    """The time left is the estimate corrected by the measured rate, with the estimate weighing PRIOR_S seconds:
    a 12 s stage planned at 35 leaves a 2,900 s rest near 2,900 (it had said a third); after a long stage that ran
    twice its estimate the rest is near doubled."""
    import repfusion.pipeline.progress as progress

    clock = {"now": 0.0}
    monkeypatch.setattr(progress.time, "time", lambda: clock["now"])
    said: list[str] = []
    plan = {"choose": 35.0, "distil": 1500.0, "fine-tune": 1400.0}
    stages = progress.StageProgress(plan, log=said.append)

    def takes(seconds):
        return lambda: clock.__setitem__("now", clock["now"] + seconds)

    stages.run("choose", takes(12.0))
    left = said[-1].split("about ")[1].split(" left")[0]
    minutes, seconds = map(int, left.split(":"))
    assert 0.9 * 2900 <= 60 * minutes + seconds <= 2900
    stages.run("distil", takes(3000.0))
    minutes, seconds = map(int, said[-1].split("about ")[1].split(" left")[0].split(":"))
    assert 1.7 * 1400 <= 60 * minutes + seconds <= 2 * 1400
