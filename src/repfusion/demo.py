"""`repfusion demo`: the whole pipeline on the embedded digits, on a laptop CPU, in minutes, with its controls.

The regime where pre-training pays: every training image is unlabeled for the teacher and the
distillation, and only a small stratified share of them (`label_fraction`) carries a label for
fine-tuning. Stages: teacher DDPM -> per seed, a label-free distillation from it and one from a
random-weight teacher of the same architecture -> frozen-backbone probes on the validation split ->
fine-tuning of scratch, equal-compute scratch, RepFusion and the random-teacher student on the same
labelled subset per seed (`repfusion.arms`) -> paired differences with 95 % intervals, a report and plots.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from .data import DataConfig
from .data.labels import check_label_budget
from .errors import RepFusionError
from .pipeline import DistillBudget, FinetuneBudget, LayerChoice, PretrainRun, StudentChoice, TeacherChoice, run_pretrain
from .training import TrainerConfig


@dataclass
class DemoConfig:
    """Budgets sized for 2 CPU cores and well under 5 minutes on the slowest machine of the project's kind;
    digits are 16x16, so crops pad 2 px and never flip (a flipped digit is another glyph)."""

    out: str = "runs/demo"
    seeds: int = 3
    label_fraction: float = 0.02
    teacher_epochs: int = 12
    distill_epochs: int = 5
    finetune_epochs: int = 30
    arch: str = "resnet18_cifar"
    width: float = 0.25
    image_size: int = 16
    crop_padding: int = 2
    teacher_layer: str = "up_blocks.0"  # the decoder layer the CIFAR probe chose (teacher_layers_cifar.md)
    noise_mode: str = "clean"
    # fine-tuning protocols every arm runs, the best on validation kept per seed and arm (`tasks.protocols`);
    # null: pretrain's default menu (plain and LP-FT)
    protocols: list[str] | None = None
    progress: bool = True
    resume: bool = False


def quick(cfg: DemoConfig) -> DemoConfig:
    """The shortened demo the tests run: every stage, one or two epochs each, the seeds asked for."""
    return DemoConfig(out=cfg.out, seeds=cfg.seeds, label_fraction=cfg.label_fraction, teacher_epochs=1,
                      distill_epochs=1, finetune_epochs=2, width=0.125, protocols=cfg.protocols, progress=False,
                      resume=cfg.resume)


def check_demo(cfg: DemoConfig) -> None:
    """One sentence for each bad setting, before anything is written."""
    if cfg.seeds < 2:
        raise RepFusionError(f"--seeds must be at least 2 for a confidence interval, not {cfg.seeds}.")
    check_label_budget(cfg.label_fraction, None)


def demo_pretrain(cfg: DemoConfig) -> PretrainRun:
    """The demo is `repfusion pretrain` on the embedded digits with budgets sized for 2 CPU cores: the teacher
    trained here (tiny-16, 16 px), the layer the CIFAR probe chose (2 % labels are too few for the choice probe),
    no flips (a mirrored digit is another glyph), fine-tuning on `label_fraction` of the labels."""
    return PretrainRun(
        data=DataConfig(source="digits", image_size=cfg.image_size, batch_size=64, crop_padding=cfg.crop_padding,
                        flip=False, val_fraction=0.1, label_fraction=cfg.label_fraction),
        teacher=TeacherChoice(preset="tiny-16", epochs=cfg.teacher_epochs, lr=1e-3, ema_decay=0.99),
        student=StudentChoice(arch=cfg.arch, width=cfg.width),
        choice=LayerChoice(layers=[cfg.teacher_layer], timesteps=[0], modes=[cfg.noise_mode]),
        distill=DistillBudget(epochs=cfg.distill_epochs, lr=0.05),
        finetune=FinetuneBudget(epochs=cfg.finetune_epochs, lr=0.05, batch_size=32,
                                protocols=None if cfg.protocols is None else list(cfg.protocols)),
        seeds=cfg.seeds, auto_flip=False,
        trainer=TrainerConfig(ema_decay=0.99, progress=cfg.progress, log_every_n_steps=5))


def run_demo(cfg: DemoConfig, on_start: Callable[[], None] | None = None) -> dict:
    """on_start: called once every check has passed, before the first write (the CLI saves config.yaml)."""
    check_demo(cfg)
    return run_pretrain(demo_pretrain(cfg), Path(cfg.out), cfg.resume, on_start=on_start)
