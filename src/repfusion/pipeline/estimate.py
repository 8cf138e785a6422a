"""The whole run's time before its first stage, from a few timed steps of each stage's model on this machine.

Each stage's seconds are (optimiser steps it will take) x (seconds one such step took here, on the device the
trainer will use, at the stage's batch size and the data's image size): the teacher's diffusion step, the
distillation step (teacher forward without grad + student forward and backward), the fine-tuning step, and
no-grad forwards for the layer choice, the probes and every validation and test pass. On top of the steps, each
training run and each epoch has a cost of its own (the Trainer's start, its hooks, the epoch's checkpoint and
metrics rows, the plots): `time_loop` measures both with a real Trainer from `build_trainer` on a one-weight
model, which is what dominates a fine-tuning on a few dozen labels (one step an epoch). The teacher forward is
timed untruncated, so the distillation figure is an upper bound where the chosen layer is shallow. Data loading
is not timed; `StageProgress` corrects the rest from the measured rate as stages finish.
"""

from __future__ import annotations

import copy
import math
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from ..analysis.controls import steps_per_epoch
from ..students import build_student
from ..teachers import DiffusionTeacher, model_pixels
from .config import PretrainRun
from .inspect import DataFacts

LOOP_STEPS = 16  # steps an epoch in time_loop's per-step measurement
SAMPLES, SAMPLE_STEPS = 16, 50  # the teacher stage's sample grid (pipeline.run.teacher_run)
_LOOP_TIMES: dict[str, tuple[float, float, float]] = {}  # device -> (run, epoch, step) overhead, once a process


def time_step(step: Callable[[], object], repeats: int = 2) -> float:
    """Seconds of one call of `step`, after one untimed warm-up call (allocations, kernel choice)."""
    step()
    if torch.cuda.is_available():
        torch.cuda.synchronize()  # the warm-up's queued kernels are not this step's time
    began = time.perf_counter()
    for _ in range(repeats):
        step()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return (time.perf_counter() - began) / repeats


def _tensor(out: object) -> torch.Tensor:
    if isinstance(out, torch.Tensor):
        return out
    for value in (getattr(out, "logits", None), getattr(out, "sample", None)):
        if isinstance(value, torch.Tensor):
            return value
    if isinstance(out, (tuple, list)):
        return out[-1]
    raise TypeError(f"cannot time a model returning {type(out).__name__}")


@dataclass
class StepTimes:
    """Seconds per step here: teacher training, teacher forward (no grad), student train step, student forward."""

    teacher_train: float
    teacher_forward: float
    student_train: float
    student_forward: float
    batch: int
    finetune_batch: int
    run_overhead: float = 0.0  # seconds a training run costs beyond its steps and passes (Trainer, export, plots)
    epoch_overhead: float = 0.0  # seconds an epoch costs beyond its steps (hooks, checkpoint, metrics rows)
    step_overhead: float = 0.0  # seconds the Trainer adds to each optimiser step (hooks, logging, the loader)


def time_loop(device: torch.device) -> tuple[float, float, float]:
    """(seconds a training run costs beyond its steps, seconds each epoch adds beyond its steps, seconds the loop
    adds to each step) on this machine: a Trainer from `build_trainer` (checkpoints, metrics.csv, the project's
    callbacks) fitting a one-weight model for two and then six one-step epochs, and two epochs of `LOOP_STEPS`
    steps, after an untimed one-epoch fit (the first pays for lazy imports). Measured once per process and
    device. On the digits folder of benchmarks/estimate_check.py the per-step cost added 5 s to a 29 s
    fine-tuning estimate that measured 77 to 79 s: most of that gap (image reading, augmentation, callbacks such as
    the EMA) is not in this one-weight loop."""
    if device.type in _LOOP_TIMES:
        return _LOOP_TIMES[device.type]
    import lightning.pytorch as pl

    from ..analysis.plots import plt
    from ..training import TrainerConfig, build_trainer

    class _One(pl.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.weight = torch.nn.Parameter(torch.zeros(1))

        def training_step(self, batch, batch_idx):
            loss = (self.weight - batch[0]).pow(2).mean()
            self.log("train/loss", loss, on_step=False, on_epoch=True)
            return loss

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    seconds = {}
    with tempfile.TemporaryDirectory() as tmp:
        for epochs, steps in ((1, 1), (2, 1), (6, 1), (2, LOOP_STEPS)):
            loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.ones(steps)), batch_size=1)
            cfg = TrainerConfig(max_epochs=epochs, progress=False, logger="csv", ema_decay=None, seed=0,
                                accelerator="gpu" if device.type == "cuda" else "cpu", devices=1)
            began = time.perf_counter()
            trainer = build_trainer(cfg, Path(tmp) / f"{epochs}-{steps}")
            trainer.fit(_One(), train_dataloaders=loader)
            figure, axes = plt.subplots(figsize=(3, 2))  # every run draws its curves
            axes.plot([0, 1], [1, 0])
            figure.savefig(Path(tmp) / f"{epochs}-{steps}.png", dpi=110)
            plt.close(figure)
            seconds[epochs, steps] = time.perf_counter() - began
    epoch = max(0.0, (seconds[6, 1] - seconds[2, 1]) / 4)
    step = max(0.0, (seconds[2, LOOP_STEPS] - seconds[2, 1]) / (2 * (LOOP_STEPS - 1)))
    _LOOP_TIMES[device.type] = (max(0.0, seconds[2, 1] - 2 * epoch), epoch, step)
    return _LOOP_TIMES[device.type]


def time_models(teacher: DiffusionTeacher, arch: str, width: float, image_size: int, batch: int,
                finetune_batch: int, classes: int, train_teacher: bool, device: torch.device) -> StepTimes:
    """A few steps of each model at the stage's batch size, on random images in [-1, 1] (timing only)."""
    generator = torch.Generator().manual_seed(0)
    x = model_pixels(torch.rand(batch, 3, image_size, image_size, generator=generator)).to(device)
    t = torch.zeros(batch, dtype=torch.long, device=device)
    teacher = teacher.to(device)
    teacher_train = 0.0
    if train_teacher:
        unet = copy.deepcopy(teacher.unet).train().requires_grad_(True).to(device)
        optimiser = torch.optim.AdamW(unet.parameters(), lr=1e-4)

        def diffusion_step() -> None:
            noise = torch.randn_like(x)
            loss = F.mse_loss(unet(x + noise, torch.randint(0, 1000, (batch,), device=device)).sample, noise)
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()

        teacher_train = time_step(diffusion_step)
        del unet, optimiser

    def teacher_forward() -> None:
        with torch.no_grad():
            teacher.denoise(teacher.encode(x), t, teacher.class_labels(batch, t, device))

    forward = time_step(teacher_forward)
    student = build_student(arch, width, num_classes=max(classes, 2)).to(device).train()
    optimiser = torch.optim.SGD(student.parameters(), lr=1e-3, momentum=0.9)
    small = x[:finetune_batch]
    labels = torch.zeros(len(small), dtype=torch.long, device=device)

    def student_step() -> None:
        loss = F.cross_entropy(_tensor(student(small)), labels)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()

    student_train = time_step(student_step)

    def student_forward() -> None:
        with torch.no_grad():
            student(x)

    student_fwd = time_step(student_forward)

    from ..run.checkpoint import AtomicCheckpointIO

    def checkpoint() -> None:  # each epoch's last.ckpt (weights, their average, the optimiser's state), written
        AtomicCheckpointIO().save_checkpoint(  # to disk by the run's own checkpoint writer
            {"weights": student.state_dict(), "ema": student.state_dict(), "optim": optimiser.state_dict()},
            Path(scratch) / "last.ckpt")

    with tempfile.TemporaryDirectory() as scratch:
        save = time_step(checkpoint, repeats=1)
    teacher.to("cpu")
    run_overhead, epoch_overhead, step_overhead = time_loop(device)
    epoch_overhead += save
    return StepTimes(teacher_train, forward, student_train * batch / max(1, len(small)), student_fwd, batch,
                     len(small), run_overhead, epoch_overhead, step_overhead)


def stage_seconds(cfg: PretrainRun, facts: DataFacts, times: StepTimes, train_teacher: bool, labelled: bool,
                  labelled_images: int) -> tuple[dict[str, float], dict[str, float]]:
    """Stage -> estimated seconds (the plan StageProgress shows), and each epoch count's seconds per epoch.

    The student step was timed at the distillation batch; a fine-tuning step at a smaller batch is scaled by
    images (small batches on a CPU are a little slower per image: the measured rate corrects it)."""
    n = facts.train_images
    val = cfg.data.val_fraction if labelled else 0.0
    val_images, batch = round(n * val), times.batch
    per_image_student, student_look, teacher_look = (times.student_train / batch, times.student_forward / batch,
                                                     times.teacher_forward / batch)  # seconds an image
    seeds = cfg.seeds if labelled else 1
    distills = 2 * seeds if labelled else 1
    run, epoch_cost, loop = times.run_overhead, times.epoch_overhead, times.step_overhead
    teacher_epoch = steps_per_epoch(n, batch) * (times.teacher_train + loop) + epoch_cost if train_teacher else 0.0
    samples = SAMPLE_STEPS * SAMPLES * teacher_look  # the teacher's sample grid at its end
    distill_steps = steps_per_epoch(round(n * (1 - val)), batch)
    cached = cfg.distill.cache_views > 0 and "noised" not in cfg.choice.modes  # the teacher runs once per view
    distill_epoch = distills * (distill_steps * ((0.0 if cached else times.teacher_forward) + times.student_train
                                                 + loop) + epoch_cost + val_images * (teacher_look + student_look))
    fill = cfg.distill.cache_views * round(n * (1 - val)) * teacher_look if cached else 0.0
    passes = len(cfg.choice.timesteps) * len(cfg.choice.modes) * (2 if labelled else 1)
    choice = passes * math.ceil(min(n, cfg.choice.max_images) / batch) * times.teacher_forward
    per_epoch = {"teacher.epochs": teacher_epoch, "distill.epochs": distill_epoch}
    plan = {"teacher": (teacher_epoch * cfg.teacher.epochs + run + samples) if train_teacher else 0.0,
            "choose the teacher layer and t": choice,
            "distil": distill_epoch * cfg.distill.epochs + distills * (run + fill), "export the backbone": 0.0}
    if labelled:
        probe_images = labelled_images + val_images
        plan["probe the frozen backbones"] = 3 * seeds * math.ceil(probe_images / batch) * times.student_forward
        ft_batch = cfg.finetune.batch_size or times.finetune_batch
        ft_steps = steps_per_epoch(labelled_images, ft_batch)
        student_step = per_image_student * ft_batch
        step = student_step + loop
        in_loop = (2 * (times.teacher_forward * ft_batch / batch + student_step) if cfg.finetune.teacher_in_loop
                   else 0.0)
        # per seed: scratch, RepFusion, random-teacher student (the two distilled with the teacher in the loop if
        # asked), and equal-compute scratch, which adds the distillation's steps to its own as extra epochs
        per_ft_epoch = seeds * (ft_steps * (4 * step + in_loop) + 4 * epoch_cost)
        extra_epochs = distill_steps * cfg.distill.epochs / ft_steps
        equal_extra = seeds * extra_epochs * (ft_steps * step + epoch_cost)
        epochs = cfg.finetune.epochs + cfg.finetune.head_epochs
        # finetune_config's validation interval, then three more: the average and the raw weights compared
        # (ema.keep_better) and the kept ones scored
        val_passes = epochs // max(1, cfg.finetune.epochs // 4) + 1 + 3
        per_run = run + (val_passes * val_images + facts.test_images) * student_look
        per_epoch["finetune.epochs"] = per_ft_epoch
        per_epoch["distill.epochs"] += equal_extra / max(1, cfg.distill.epochs)
        plan["fine-tune the arms"] = per_ft_epoch * epochs + equal_extra + 4 * seeds * per_run
    plan["report"] = 0.0
    return plan, per_epoch
