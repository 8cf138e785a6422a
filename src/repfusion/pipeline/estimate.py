"""The whole run's time before its first stage, from a few timed steps of each stage's model on this machine.

Each stage's seconds are (optimiser steps it will take) x (seconds one such step took here, on the device the
trainer will use, at the stage's batch size and the data's image size): the teacher's diffusion step, the
distillation step (truncated teacher forward without grad + student forward and backward at the distillation
batch), the fine-tuning step (timed at its own batch: small batches cost more per image on a CPU), and no-grad
forwards for the layer choice, the probes and every validation and test pass. The teacher forward is timed
truncated at each candidate layer: the estimate before the choice uses their mean, and `StepTimes.at_layer`
gives the times for the chosen one, with which the pipeline re-plans the stages after the choice. Data read
from files costs per item (decoding, the dataset's transform) and the device augmentation per image: both are
timed on the run's own images and added to every step and pass that reads them (in-memory datasets are
gathered on the device: no per-item cost). On top of the steps, each training run and each epoch has a cost of
its own (the Trainer's start, its hooks, the epoch's checkpoint and metrics rows, the plots): `time_loop`
measures both with a real Trainer from `build_trainer` on a one-weight model logging a metric each step.
`StageProgress` corrects what is left from the measured rate as stages finish.
"""

from __future__ import annotations

import copy
import math
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from ..analysis.controls import steps_per_epoch
from ..data.augment import Augment
from ..students import build_student
from ..tasks.protocols import DEFAULT_MENU, effective
from ..teachers import DiffusionTeacher, model_pixels
from .budget import AUTO_CACHE_VIEWS
from .config import PretrainRun
from .inspect import DataFacts, unlabeled_view

if TYPE_CHECKING:
    from ..data import DataConfig
    from ..tasks.finetune import FinetuneRun

LOOP_STEPS = 16  # steps an epoch in time_loop's per-step measurement
SAMPLES, SAMPLE_STEPS = 16, 50  # the teacher stage's sample grid (pipeline.run.teacher_run)
_LOOP_TIMES: dict[str, tuple[float, float, float]] = {}  # device -> (run, epoch, step) overhead, once a process


def time_step(step: Callable[[], object], repeats: int = 3) -> float:
    """Seconds of one call of `step`: the median of `repeats` timed calls after one untimed warm-up call
    (allocations, kernel choice). The median, because a CPU's second call can still be as slow as its first
    (a diffusion step here: 0.55, 0.55, 0.33, 0.36 s), and a mean would carry that into every step."""
    def once() -> float:
        began = time.perf_counter()
        step()
        if torch.cuda.is_available():
            torch.cuda.synchronize()  # queued kernels are this call's time
        return time.perf_counter() - began

    once()
    return statistics.median(once() for _ in range(max(1, repeats)))


def _tensor(out: object) -> torch.Tensor:
    if isinstance(out, torch.Tensor):
        return out
    for value in (getattr(out, "logits", None), getattr(out, "sample", None)):
        if isinstance(value, torch.Tensor):
            return value
    if isinstance(out, (tuple, list)):
        return out[-1]
    raise TypeError(f"cannot time a model returning {type(out).__name__}")


SHORT_EPOCHS, SHORT_STEPS = 3, 6  # the clocked fine-tuning: three epochs of (at most) six steps
SHORT_VAL_EVERY = 2  # it validates after its second epoch only: one epoch boundary with a validation, one without
SHORT_PASSES = 5  # its evaluation passes: that validation, two in keep_better, the kept weights' score, the test


@dataclass
class LoopCosts:
    """A fine-tuning loop's costs on this machine, clocked in a real short run (`time_finetune_loop`):
    `step`, an optimiser step with everything around it (reading and augmenting the batch, the EMA, logging,
    metrics); `epoch`, what an epoch adds (its checkpoint, hooks, a new loader); `run`, what a run adds beyond
    its steps, epochs and passes (model and Trainer built, the first steps' allocations, the kept weights
    chosen, the export with its card, the plots); `eval_pass`, what a validation or test pass adds beyond its
    images (the loop's start, the metrics computed and logged, the best weights' checkpoint)."""

    step: float
    epoch: float
    run: float
    eval_pass: float = 0.0


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
    finetune_train: float | None = None  # a student train step at finetune_batch (None: student_train by images)
    teacher_forward_at: dict[str, float] = field(default_factory=dict)  # truncated at each candidate layer
    teacher_full: float | None = None  # the whole denoiser's forward (sampling); None: teacher_forward
    item_read: float = 0.0  # seconds to read one training image from its file (0 for in-memory datasets)
    augment: float = 0.0  # seconds of the device augmentation per training image
    finetune_loop: LoopCosts | None = None  # clocked in a real short fine-tuning (None: modelled from the above)

    @property
    def sampling_forward(self) -> float:
        """The whole denoiser's forward, which sampling runs (teacher_forward where it was not timed apart)."""
        return self.teacher_full if self.teacher_full is not None else self.teacher_forward

    def at_layer(self, layer: str) -> StepTimes:
        """These times with the teacher forward truncated at `layer` (after the choice; unchanged if untimed)."""
        return replace(self, teacher_forward=self.teacher_forward_at.get(layer, self.teacher_forward),
                       teacher_full=self.sampling_forward)


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
    from ..tasks.classification import accuracy_metrics
    from ..training import TrainerConfig, build_trainer

    class _One(pl.LightningModule):
        """One weight, logged as a classification step logs: the loss and the accuracy metrics, every step."""

        def __init__(self) -> None:
            super().__init__()
            self.weight = torch.nn.Parameter(torch.zeros(1))
            self.train_metrics = accuracy_metrics(10, "train/")

        def training_step(self, batch, batch_idx):
            loss = (self.weight - batch[0]).pow(2).mean()
            logits = self.weight * torch.ones(len(batch[0]), 10, device=self.device)
            self.train_metrics.update(logits, torch.zeros(len(batch[0]), dtype=torch.long, device=self.device))
            self.log("train/loss", loss, on_step=False, on_epoch=True, batch_size=len(batch[0]))
            self.log_dict(self.train_metrics, on_step=False, on_epoch=True)
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
                finetune_batch: int, classes: int, train_teacher: bool, device: torch.device,
                layers: Sequence[str] = ()) -> StepTimes:
    """A few steps of each model at the stage's batch size, on random images (timing only).

    `layers`: the candidate teacher layers; the forward is timed truncated at each (`teacher_forward` is their
    mean), or untruncated when none are given."""
    generator = torch.Generator().manual_seed(0)
    images01 = torch.rand(batch, 3, image_size, image_size, generator=generator).to(device)
    x = model_pixels(images01)
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

    at = {layer: time_step(lambda layer=layer: teacher(images01, t, layers=(layer,)), repeats=1)
          for layer in layers}
    full = time_step(teacher_forward)
    forward = sum(at.values()) / len(at) if at else full
    student = build_student(arch, width, num_classes=max(classes, 2)).to(device).train()
    optimiser = torch.optim.SGD(student.parameters(), lr=1e-3, momentum=0.9)

    def student_step(images: torch.Tensor) -> None:
        loss = F.cross_entropy(_tensor(student(images)), torch.zeros(len(images), dtype=torch.long, device=device))
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()

    small = x[:finetune_batch]
    student_train = time_step(lambda: student_step(x))
    finetune_train = student_train if len(small) == batch else time_step(lambda: student_step(small))

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
    return StepTimes(teacher_train, forward, student_train, student_fwd, batch, len(small), run_overhead,
                     epoch_overhead, step_overhead, finetune_train=finetune_train, teacher_forward_at=at,
                     teacher_full=full)


def time_data(dataset: torch.utils.data.Dataset, augment: Augment, items: int = 24) -> tuple[float, float]:
    """(seconds to read one item of `dataset`, seconds to augment one image on the CPU): `items` items read
    (spread over the set) and one batch of them augmented as training does. An in-memory dataset is gathered on
    the device as whole batches (`data.device_data`), so its read costs nothing per item."""
    from ..data.augment import BatchAugment
    from ..data.device_data import tensor_source

    count = min(items, len(dataset))
    if count == 0:
        return 0.0, 0.0
    picks = [round(i * (len(dataset) - 1) / max(1, count - 1)) for i in range(count)]
    dataset[picks[0]]  # the first read opens files and caches what the dataset keeps
    began = time.perf_counter()
    images = [dataset[i][0] for i in picks]  # also the batch the augmentation is timed on
    read = 0.0 if tensor_source(dataset) is not None else (time.perf_counter() - began) / count
    batch = torch.stack([torch.as_tensor(image) for image in images])
    step = BatchAugment(augment)
    return read, time_step(lambda: step(batch, train=True)) / count


def modelled_step(times: StepTimes, batch: int) -> float:
    """A fine-tuning step of `batch` images from its parts: the student's step (timed at the nearer batch and
    scaled by images), the loop's own cost and reading and augmenting the batch."""
    near = times.finetune_train is not None and abs(batch - times.finetune_batch) < abs(batch - times.batch)
    student = (times.finetune_train / times.finetune_batch if near else times.student_train / times.batch) * batch
    return student + times.step_overhead + batch * (times.item_read + times.augment)


def time_finetune_loop(run: Callable[[Path, list], object], times: StepTimes, eval_images: int) -> LoopCosts:
    """`run(folder, callbacks)`: a real fine-tuning cut to `SHORT_EPOCHS` epochs of `SHORT_STEPS` steps that
    validates once (`SHORT_VAL_EVERY`) and tests, each on one batch, and scores `eval_images` images in all
    over its `SHORT_PASSES` passes; it runs in a temporary folder, its printing kept out of the pipeline's. A callback
    clocks each step's start: the median interval within an epoch is a step; the gap across the first epoch
    boundary less a step is an epoch's own cost, and the second boundary's extra over the first is a validation
    pass's; the rest of the run's time, less its steps, epochs and passes, is the run's."""
    import contextlib
    import io

    import lightning.pytorch as pl

    class _Clock(pl.Callback):
        def __init__(self) -> None:
            self.starts: list[tuple[int, float]] = []

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
            self.starts.append((trainer.current_epoch, time.perf_counter()))

    clock = _Clock()
    with tempfile.TemporaryDirectory() as tmp, contextlib.redirect_stdout(io.StringIO()):
        began = time.perf_counter()
        run(Path(tmp) / "run", [clock])
        seconds = time.perf_counter() - began
    by_epoch = [[at for epoch, at in clock.starts if epoch == e] for e in range(SHORT_EPOCHS)]
    gaps = [b - a for starts in by_epoch for a, b in zip(starts[1:-1], starts[2:])] or \
        [b - a for starts in by_epoch for a, b in zip(starts, starts[1:])]  # the first step's warm-up left out
    if not all(by_epoch):  # the run stopped early: nothing clocked
        return LoopCosts(modelled_step(times, times.finetune_batch), times.epoch_overhead, times.run_overhead)
    step = statistics.median(gaps) if gaps else modelled_step(times, times.finetune_batch)
    boundary = [by_epoch[e + 1][0] - by_epoch[e][-1] - step for e in range(SHORT_EPOCHS - 1)]
    epoch = max(0.0, boundary[0])
    eval_pass = max(0.0, boundary[SHORT_VAL_EVERY - 1] - boundary[0] - times.finetune_batch * (
        times.student_forward / times.batch + times.item_read))
    steps = sum(map(len, by_epoch))
    images = eval_images * (times.student_forward / times.batch + times.item_read)
    rest = seconds - steps * step - SHORT_EPOCHS * epoch - SHORT_PASSES * eval_pass - images
    return LoopCosts(step, epoch, max(times.run_overhead, rest), eval_pass)


def clock_finetune(cfg: FinetuneRun, times: StepTimes, test_images: int) -> LoopCosts:
    """The loop costs of `cfg`'s fine-tuning here: the same run cut to `SHORT_EPOCHS` epochs of `SHORT_STEPS`
    steps, validated after `SHORT_VAL_EVERY` and tested on one batch each, clocked (`time_finetune_loop`)."""
    from ..tasks.finetune import run_finetune

    short = replace(cfg, head_epochs=0, trainer=replace(
        cfg.trainer, max_epochs=SHORT_EPOCHS, max_steps=-1, limit_train_batches=SHORT_STEPS, limit_val_batches=1,
        check_val_every_n_epoch=SHORT_VAL_EVERY, progress=False, logger="csv",
        extra={**cfg.trainer.extra, "limit_test_batches": 1}))
    eval_images = SHORT_PASSES * min(short.data.batch_size, test_images)  # one batch a pass
    return time_finetune_loop(lambda folder, callbacks: run_finetune(short, folder, callbacks=callbacks), times,
                              eval_images)


def time_images(data: DataConfig, labelled: bool) -> tuple[float, float]:
    """`time_data` on the training images the stages will read (the labelled split's, or all of them)."""
    from ..data import ImageDataModule

    split = ImageDataModule(replace(data, label_seed=0) if labelled else unlabeled_view(data), labelled_only=False)
    split.setup()
    return time_data(split.train_set, Augment(data.image_size, data.crop_padding, data.flip))


def distill_images(facts: DataFacts, val_fraction: float) -> int:
    """The images each distillation trains on: the training images less the validation split."""
    return round(facts.train_images * (1 - val_fraction))


def stage_seconds(cfg: PretrainRun, facts: DataFacts, times: StepTimes, train_teacher: bool, labelled: bool,
                  labelled_images: int) -> tuple[dict[str, float], dict[str, float]]:
    """Stage -> estimated seconds (the plan StageProgress shows), and each epoch count's seconds per epoch.

    A fine-tuning step at a batch other than the one timed is scaled by images from the nearest timed one."""
    n, val = facts.train_images, cfg.data.val_fraction
    # every stage, label-free ones too, holds the validation split out and validates on it each epoch (on the
    # test split where val_fraction is 0: ImageDataModule.setup)
    train_n = distill_images(facts, val)
    val_images, batch = (n - train_n) if val > 0 else facts.test_images, times.batch
    student_look, teacher_look = times.student_forward / batch, times.teacher_forward / batch  # seconds an image
    read, train_read = times.item_read, times.item_read + times.augment  # an image read; read and augmented
    seeds = cfg.seeds if labelled else 1
    distills = 2 * seeds if labelled else 1
    run, epoch_cost, loop = times.run_overhead, times.epoch_overhead, times.step_overhead
    if times.finetune_loop is not None:  # a clocked run's own cost (export, card, plots) stands for every run's
        run = times.finetune_loop.run  # (never below time_loop's: time_finetune_loop keeps the larger)
    teacher_epoch = (steps_per_epoch(train_n, batch) * (times.teacher_train + loop) + train_n * train_read
                     + epoch_cost + val_images * (times.sampling_forward / batch + read) if train_teacher else 0.0)
    samples = SAMPLE_STEPS * SAMPLES * times.sampling_forward / batch  # the teacher's sample grid at its end
    distill_steps = steps_per_epoch(train_n, batch)
    views = AUTO_CACHE_VIEWS if cfg.distill.cache_views is None else cfg.distill.cache_views  # null: if it fits
    cached = views > 0 and "noised" not in cfg.choice.modes  # the teacher runs once per view
    distill_epoch = distills * (distill_steps * ((0.0 if cached else times.teacher_forward) + times.student_train
                                                 + loop) + train_n * train_read + epoch_cost
                                + val_images * (teacher_look + student_look + read))
    fill = views * train_n * (teacher_look + read) if cached else 0.0
    passes = len(cfg.choice.timesteps) * len(cfg.choice.modes) * (2 if labelled else 1)
    deepest = max(times.teacher_forward_at.values(), default=times.teacher_forward)  # every candidate read at once
    looked = min(n, cfg.choice.max_images)
    choice = passes * (math.ceil(looked / batch) * deepest + looked * read)
    per_epoch = {"teacher.epochs": teacher_epoch, "distill.epochs": distill_epoch}
    plan = {"teacher": (teacher_epoch * cfg.teacher.epochs + run + samples) if train_teacher else 0.0,
            "choose the teacher layer and t": choice,
            "distil": distill_epoch * cfg.distill.epochs + distills * (run + fill), "export the backbone": 0.0}
    if labelled:
        probe_images = labelled_images + val_images
        plan["probe the frozen backbones"] = 3 * seeds * (math.ceil(probe_images / batch) * times.student_forward
                                                          + probe_images * read)
        ft_batch = cfg.finetune.batch_size or times.finetune_batch
        ft_steps = steps_per_epoch(labelled_images, ft_batch)
        clocked = times.finetune_loop if ft_batch == times.finetune_batch else None
        step = clocked.step if clocked else modelled_step(times, ft_batch)
        student_step = step - loop - ft_batch * train_read  # the teacher in the loop adds a second student pass
        ft_epoch_cost, ft_run, ft_pass = (clocked.epoch, clocked.run, clocked.eval_pass) if clocked else (
            epoch_cost, run, 0.0)
        protocols = cfg.finetune.protocols or DEFAULT_MENU  # null (before run.with_menu): the default menu
        joint = cfg.finetune.teacher_in_loop or "joint" in protocols
        in_loop = 2 * (times.teacher_forward * ft_batch / batch + student_step) if joint else 0.0
        # per seed and protocol: scratch, RepFusion, random-teacher student (the two distilled with the teacher in
        # the loop if asked), and equal-compute scratch, which adds the distillation's steps to its own as extra
        # epochs; a scratch arm's joint is its plain run (not run twice); lp is counted as a whole fine-tune
        distilled, scratch = len(protocols), len({effective(name, False) for name in protocols})
        runs = 2 * distilled + 2 * scratch
        per_ft_epoch = seeds * (ft_steps * (runs * step + in_loop) + runs * ft_epoch_cost)
        extra_epochs = distill_steps * cfg.distill.epochs / ft_steps
        equal_extra = scratch * seeds * extra_epochs * (ft_steps * step + ft_epoch_cost)
        epochs = cfg.finetune.epochs + cfg.finetune.head_epochs
        # finetune_config's validation interval, then three more: the average and the raw weights compared
        # (ema.keep_better) and the kept ones scored
        val_passes = epochs // max(1, cfg.finetune.epochs // 4) + 1 + 3
        per_run = ft_run + (val_passes + 1) * ft_pass + (val_passes * val_images + facts.test_images) * (
            student_look + read)
        per_epoch["finetune.epochs"] = per_ft_epoch
        per_epoch["distill.epochs"] += equal_extra / max(1, cfg.distill.epochs)
        plan["fine-tune the arms"] = per_ft_epoch * epochs + equal_extra + runs * seeds * per_run
    plan["report"] = 0.0
    return plan, per_epoch
