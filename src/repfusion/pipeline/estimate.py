"""The whole run's time before its first stage, from a few timed steps of each stage's model on this machine.

Each stage's seconds are (optimiser steps it will take) x (seconds one such step took here, on the device the
trainer will use, at the stage's batch size and the data's image size): the teacher's diffusion step, the
distillation step (teacher forward without grad + student forward and backward), the fine-tuning step, and
no-grad forwards for the layer choice and the probes. The teacher forward is timed untruncated, so the
distillation figure is an upper bound where the chosen layer is shallow. Data loading, validation and plots
are not timed: on small images they add a few per cent, which `StageProgress` corrects from the measured rate
as stages finish.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..analysis.controls import steps_per_epoch
from ..students import build_student
from ..teachers import DiffusionTeacher, model_pixels
from .config import PretrainRun
from .inspect import DataFacts

EVAL_OVERHEAD = 1.1  # validation passes and the test pass of each run, on top of its training steps


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
    teacher.to("cpu")
    return StepTimes(teacher_train, forward, student_train * batch / max(1, len(small)), student_fwd, batch,
                     len(small))


def stage_seconds(cfg: PretrainRun, facts: DataFacts, times: StepTimes, train_teacher: bool, labelled: bool,
                  labelled_images: int) -> tuple[dict[str, float], dict[str, float]]:
    """Stage -> estimated seconds (the plan StageProgress shows), and each epoch count's seconds per epoch.

    The student step was timed at the distillation batch; a fine-tuning step at a smaller batch is scaled by
    images (small batches on a CPU are a little slower per image: the measured rate corrects it)."""
    n = facts.train_images
    val = cfg.data.val_fraction if labelled else 0.0
    batch = times.batch
    per_image_student = times.student_train / batch
    seeds = cfg.seeds if labelled else 1
    distills = 2 * seeds if labelled else 1
    teacher_epoch = steps_per_epoch(n, batch) * times.teacher_train if train_teacher else 0.0
    distill_epoch = distills * steps_per_epoch(round(n * (1 - val)), batch) * (times.teacher_forward +
                                                                                  times.student_train)
    passes = len(cfg.choice.timesteps) * len(cfg.choice.modes) * (2 if labelled else 1)
    choice = passes * math.ceil(min(n, cfg.choice.max_images) / batch) * times.teacher_forward
    per_epoch = {"teacher.epochs": teacher_epoch * EVAL_OVERHEAD, "distill.epochs": distill_epoch * EVAL_OVERHEAD}
    plan = {"teacher": teacher_epoch * cfg.teacher.epochs * EVAL_OVERHEAD, "choose the teacher layer and t": choice,
            "distil": distill_epoch * cfg.distill.epochs * EVAL_OVERHEAD, "export the backbone": 0.0}
    if labelled:
        probe_images = labelled_images + round(n * val)
        plan["probe the frozen backbones"] = 3 * seeds * math.ceil(probe_images / batch) * times.student_forward
        ft_batch = cfg.finetune.batch_size or times.finetune_batch
        ft_steps = steps_per_epoch(labelled_images, ft_batch)
        step = per_image_student * ft_batch
        in_loop = 2 * (times.teacher_forward * ft_batch / batch + step) if cfg.finetune.teacher_in_loop else 0.0
        # per seed: scratch, RepFusion, random-teacher student (the two distilled with the teacher in the loop if
        # asked), and equal-compute scratch, which adds the distillation's steps to its own
        per_ft_epoch = seeds * ft_steps * (4 * step + in_loop)
        equal_extra = seeds * steps_per_epoch(round(n * (1 - val)), batch) * cfg.distill.epochs * step
        per_epoch["finetune.epochs"] = per_ft_epoch * EVAL_OVERHEAD
        per_epoch["distill.epochs"] += equal_extra * EVAL_OVERHEAD / max(1, cfg.distill.epochs)
        plan["fine-tune the arms"] = (per_ft_epoch * (cfg.finetune.epochs + cfg.finetune.head_epochs)
                                      + equal_extra) * EVAL_OVERHEAD
    plan["report"] = 0.0
    return plan, per_epoch
