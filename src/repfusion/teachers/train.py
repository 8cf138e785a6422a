"""`repfusion teacher`: train (or continue training) a DDPM and save it with save_pretrained."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import lightning.pytorch as pl

from ..data import DataConfig, ImageDataModule
from ..errors import RepFusionError
from ..training import OptimConfig, TrainerConfig, build_trainer, prepare_run, restore_finished
from .diffusion_teacher import check_unet_input
from .ddpm_training import DDPMTraining, ddpm_augment, export_teacher, sample_grid
from .loading import load_unet_and_scheduler


@dataclass
class TeacherRun:
    """teacher: a preset (random init) or a folder/hub id to fine-tune; the result lands in run_dir/teacher."""

    teacher: str = "tiny-16"
    data: DataConfig = field(default_factory=lambda: DataConfig(crop_padding=0))
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(name="adamw", lr=2e-4, weight_decay=0.0,
                                                                    schedule="constant"))
    trainer: TrainerConfig = field(default_factory=lambda: TrainerConfig(max_epochs=20, ema_decay=0.999))
    samples: int = 16
    sample_steps: int = 50


def check_teacher_run(cfg: TeacherRun) -> None:
    """The teacher verb's own values, checked before anything is built or written."""
    if isinstance(cfg.samples, bool) or not isinstance(cfg.samples, int) or cfg.samples < 0:
        raise RepFusionError(f"samples must be a number of sample images >= 0 (0 draws none), not {cfg.samples}.")
    if isinstance(cfg.sample_steps, bool) or not isinstance(cfg.sample_steps, int) or cfg.sample_steps < 1:
        raise RepFusionError(f"sample_steps must be at least 1 DDIM step (50 is the default), not "
                             f"{cfg.sample_steps}.")


def train_teacher(cfg: TeacherRun, run_dir: Path, resume: bool = False,
                  on_start: Callable[[], None] | None = None) -> Path:
    """Fit the DDPM, export EMA weights + scheduler to run_dir/teacher, and draw a sample grid."""
    check_teacher_run(cfg)
    pl.seed_everything(cfg.trainer.seed, workers=True, verbose=False)
    datamodule = ImageDataModule(cfg.data)
    channels, size, _ = datamodule.sample_shape()
    unet, scheduler = load_unet_and_scheduler(cfg.teacher, image_size=size)
    check_unet_input(unet, (1, channels, size, size))
    steps = scheduler.config.num_train_timesteps
    if cfg.samples > 0 and cfg.sample_steps > steps:
        raise RepFusionError(f"sample_steps {cfg.sample_steps} exceeds the teacher's {steps} diffusion steps; "
                             f"give at most {steps}.")
    module = DDPMTraining(unet, scheduler, cfg.optim, ddpm_augment(size))
    trainer = build_trainer(cfg.trainer, run_dir)
    ckpt = prepare_run(run_dir, resume, module, on_start)  # all checks before the first write
    if not restore_finished(module, ckpt, cfg.trainer.max_epochs, cfg.trainer.max_steps):  # killed in export
        trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt, weights_only=True)
    out = run_dir / "teacher"
    if trainer.is_global_zero:
        # the samples first: the exported teacher/ marks the run finished (a resume skips it), so a kill
        # between the two must not leave a teacher without its samples.png
        if cfg.samples > 0:
            sample_grid(module.unet, scheduler, run_dir / "samples.png", cfg.samples, cfg.sample_steps)
        export_teacher(module.unet, scheduler, out)
    return out
