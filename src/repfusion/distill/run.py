"""`repfusion distill`: build the parts from a config, fit, export the student backbone and plots."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import ClassVar

import lightning.pytorch as pl
import torch
from torch import nn

from ..analysis.plots import plot_curves, plot_timestep_history
from ..config import JSONValue
from ..data import DataConfig, ImageDataModule, Normalize
from ..data.augment import Augment
from ..data.datasets import dataset_targets
from ..errors import RepFusionError
from ..features import layer_output, resolve_modules
from ..io import replace_dir, save_tensors, staging_dir, write_json
from ..section import Section, finite_number
from ..students import build_student, check_given_student
from ..teachers import DEFAULT_TEACHER_LAYER, load_teacher
from ..training import OptimConfig, TrainerConfig, build_trainer, prepare_run, restore_finished
from .losses import build_loss
from .module import Distillation
from .parts import Objective, StudentTap, TeacherTap, TimestepPolicy
from .rewards import build_reward
from .target_norm import build_target_norm
from .timesteps import TimestepConfig, build_strategy

HEAD_FILE = "distillation_head.safetensors"  # read back by tasks.teacher_in_loop


@dataclass
class TeacherSection:
    """source: preset name, save_pretrained folder, hub id (google/ddpm-cifar10-32), diffusers pipeline folder
    (latent diffusion, DiT) or guided-diffusion .pt file; see `repfusion.teachers.kinds`.

    class_label: class input of class-conditional teachers (ADM ImageNet, DiT): auto | dataset | null | an
    index; class_map: the teacher class of each dataset label (for dataset); adm_flags: an ADM preset or the
    checkpoint's model flags; uncond_embedding: empty-prompt embedding file of a latent teacher.
    """

    source: str = "tiny-16"
    layer: str | list[str] = DEFAULT_TEACHER_LAYER  # several: their pooled features fused into one target
    noise_mode: str = "clean"
    allow_other_size: bool = False
    class_label: int | str = "auto"
    class_map: list[int] | None = None
    adm_flags: str | dict[str, JSONValue] = "imagenet-64"
    uncond_embedding: str | None = None
    init: str = "pretrained"  # random: the random-teacher control (same architecture, seeded, no trained weight read)
    init_seed: int | None = None  # random init's seed; default the run's trainer.seed, so each seed has its own


@dataclass
class StudentSection:
    """arch: a registered student name (`repfusion layers --student NAME`); layer defaults to the last stage."""

    arch: str = "resnet18_cifar"
    width: float = 1.0
    layer: str | None = None


@dataclass
class LossSection(Section):
    """name: hint | at | rkd | cosine | l1; options go to the loss (e.g. mode: dense, weight: 1000).

    target_norm: per_t (ours: the teacher feature standardised per t-bin, `target_bins` bins, so the
    target carries no per-t offset) or none (the paper's raw teacher feature).
    """

    name: str = "hint"
    kd_weight: float = 1.0
    options: dict[str, JSONValue] = field(default_factory=dict)  # plain data, never a class_path
    target_norm: str = "per_t"
    target_bins: int = 20
    # statistics of the standardised target: auto (dense losses per position, pooled ones of the pooled feature)
    # or pooled (the pooled feature's across-image std, also for a dense loss: a target of about unit scale where
    # a dense standardisation over the teacher's finer grid leaves the coarser loss grid a mean square of ~0.06)
    target_stats: str = "auto"

    KEY: ClassVar[str] = "loss"

    def __post_init__(self) -> None:
        if self.target_stats not in ("auto", "pooled", "dense"):
            raise RepFusionError(f"{self.KEY}.target_stats must be auto, pooled or dense, not '{self.target_stats}'.")
        if not finite_number(self.kd_weight) or self.kd_weight < 0:
            raise RepFusionError(f"{self.KEY}.kd_weight must be a number >= 0, not {self.kd_weight}.")

    @property
    def dense(self) -> bool:
        """Whether the loss compares maps (AT, or mode dense) rather than pooled vectors."""
        return self.name == "at" or self.options.get("mode") == "dense"

    def pooled_stats(self) -> bool:
        return self.target_stats == "pooled" or (self.target_stats == "auto" and not self.dense)


@dataclass
class DistillRun:
    """RepFusion pre-training: teacher, student, loss, timesteps and reward, on one data section."""

    teacher: TeacherSection = field(default_factory=TeacherSection)
    student: StudentSection = field(default_factory=StudentSection)
    loss: LossSection = field(default_factory=LossSection)
    timesteps: TimestepConfig = field(default_factory=TimestepConfig)
    reward: str = "infonce"  # label-free by default: distillation never reads a label unless asked (label)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    trainer: TrainerConfig = field(default_factory=lambda: TrainerConfig(ema_decay=0.999))
    # > 0: teacher targets computed once per training image and stored augmentation (that many views per image)
    # at the start of training instead of every step; needs a fixed t and clean input (`distill.cache`)
    cache_views: int = 0

    def __post_init__(self) -> None:
        if isinstance(self.cache_views, bool) or not isinstance(self.cache_views, int) or self.cache_views < 0:
            raise RepFusionError(f"cache_views must be a whole number >= 0 (0: no cache), not {self.cache_views}.")


def teacher_layers(section: TeacherSection) -> list[str]:
    layers = [section.layer] if isinstance(section.layer, str) else list(section.layer)
    if not layers:
        raise RepFusionError("teacher.layer is an empty list; name one layer or several (repfusion layers).")
    return layers


def build_distillation(cfg: DistillRun, datamodule: ImageDataModule, student: nn.Module | None = None) -> Distillation:
    """Every part built and checked against the data's shape before any training step.

    student: a built student (e.g. `ModuleStudent(module, feature_layer)`) instead of `cfg.student.arch`.
    """
    if cfg.teacher.noise_mode not in ("clean", "noised"):
        raise RepFusionError(f"teacher.noise_mode must be 'clean' or 'noised', not '{cfg.teacher.noise_mode}'.")
    teacher = load_teacher(cfg.teacher.source, class_label=cfg.teacher.class_label,
                                           class_map=cfg.teacher.class_map, adm_flags=cfg.teacher.adm_flags,
                                           uncond_embedding=cfg.teacher.uncond_embedding, init=cfg.teacher.init,
                                           init_seed=cfg.trainer.seed if cfg.teacher.init_seed is None
                                           else cfg.teacher.init_seed)
    channels, height, width = datamodule.sample_shape()
    teacher.check_input((1, channels, height, width), require_native_size=not cfg.teacher.allow_other_size)
    layers = teacher_layers(cfg.teacher)
    resolve_modules(teacher.unet, layers, kind="teacher layer")
    if student is None:
        student = build_student(cfg.student.arch, cfg.student.width, num_classes=0, in_channels=channels)
    else:
        check_given_student(student, channels)
    student_layer = cfg.student.layer or student.feature_layer
    resolve_modules(student, [student_layer], kind="student layer")

    shapes = [teacher.feature_shape(layer, height) for layer in layers]
    teacher_shape = shapes[0] if len(shapes) == 1 else (sum(shape[0] for shape in shapes),)
    with torch.no_grad():
        student.eval()
        student_shape = tuple(layer_output(student, student_layer, torch.zeros(2, channels, height, width)).shape[1:])
        student.train()
    if cfg.loss.dense and len(layers) > 1:
        raise RepFusionError(f"Several teacher layers ({', '.join(layers)}) make one pooled target, which the dense "
                             f"{cfg.loss.name} loss cannot use; give one teacher.layer or a pooled loss.")
    loss = build_loss(cfg.loss.name, student_shape, teacher_shape, **cfg.loss.options)
    with torch.no_grad():  # alignment check on dummy tensors: a mismatch fails here, not mid-epoch
        loss(torch.zeros(2, *student_shape), torch.zeros(2, *teacher_shape))
    if cfg.reward == "none" and cfg.timesteps.strategy == "reinforced":
        raise RepFusionError("The reinforced policy needs a reward: set reward to label or infonce, or use a "
                             "fixed/uniform timestep strategy.")
    carried = dataset_targets(datamodule.train_set)
    if cfg.reward == "label" and carried:
        raise RepFusionError(f"reward 'label' needs class labels but data source '{cfg.data.source}' carries "
                             f"{' and '.join(carried)}; set reward to infonce or none (with a fixed or uniform "
                             "timestep strategy).")
    reward = build_reward(cfg.reward, teacher_shape[0], student_shape[0], datamodule.num_classes)
    target_norm = build_target_norm(cfg.loss.target_norm, teacher_shape[0], teacher.num_timesteps,
                                    cfg.loss.target_bins, pooled=cfg.loss.pooled_stats())
    module = Distillation(
        TeacherTap(teacher, layers, cfg.teacher.noise_mode, target_norm),
        StudentTap(student, student_layer, Normalize(cfg.data.mean, cfg.data.std)),
        Objective(loss, cfg.loss.kd_weight),
        TimestepPolicy(build_strategy(cfg.timesteps, teacher.num_timesteps), reward),
        Augment(height, cfg.data.crop_padding, cfg.data.flip),
        cfg.optim,
    )
    if cfg.cache_views:
        module.enable_cache(cfg.cache_views, cfg.trainer.seed)
    return module


def export_student(module: Distillation, cfg: DistillRun, out: Path, steps: int = 0,
                   image_size: int | None = None) -> Path:
    """The backbone (safetensors + config.json naming arch and width) plus how it was distilled, its model
    card and, where the architecture matches, its torchvision-keyed weights (`repfusion.export_card`)."""
    from ..export_card import finish_distill_export

    tmp = staging_dir(out)
    module.student.save_pretrained(tmp, safe_serialization=True)
    # the adapter / projector and the target statistics: not part of the backbone, kept beside it so that
    # fine-tuning can put the same teacher back in the loop (tasks.teacher_in_loop)
    head = {f"distill_loss.{k}": v for k, v in module.distill_loss.state_dict().items()}
    if module.target_norm is not None:
        head |= {f"target_norm.{k}": v for k, v in module.target_norm.state_dict().items()}
    save_tensors(tmp / HEAD_FILE, {k: v.detach().cpu().contiguous() for k, v in head.items()})
    teacher = asdict(cfg.teacher)
    if cfg.teacher.init == "random" and cfg.teacher.init_seed is None:
        teacher["init_seed"] = cfg.trainer.seed  # the random teacher it had, so it can be rebuilt exactly
    write_json(tmp / "distillation.json", {
        "teacher": teacher, "student": asdict(cfg.student), "loss": asdict(cfg.loss),
        "timesteps": asdict(cfg.timesteps), "reward": cfg.reward,
        "final_t_distribution": module.t_history[-1] if module.t_history else None,
        "steps": steps,  # optimiser steps taken: what an equal-compute baseline must match
    })
    finish_distill_export(tmp, cfg, module, image_size, steps)
    return replace_dir(tmp, out)


def run_distillation(cfg: DistillRun, run_dir: Path, resume: bool = False,
                     on_start: Callable[[], None] | None = None, student: nn.Module | None = None) -> Path:
    """Everything is built and checked (resume included) before `on_start` and the first write.

    student: your own network, e.g. `ModuleStudent(module, feature_layer="layer4")`; it replaces
    `cfg.student.arch`/`width` (the export and distillation.json name its arch).
    """
    if student is not None:  # the record names the network that was distilled
        cfg = replace(cfg, student=replace(cfg.student, arch=str(student.config.get("arch", type(student).__name__)),
                                           width=float(student.config.get("width", 1.0))))
    pl.seed_everything(cfg.trainer.seed, workers=True, verbose=False)
    datamodule = ImageDataModule(cfg.data)
    module = build_distillation(cfg, datamodule, student)
    trainer = build_trainer(cfg.trainer, run_dir)
    ckpt = prepare_run(run_dir, resume, module, on_start)
    if restore_finished(module, ckpt, cfg.trainer.max_epochs, cfg.trainer.max_steps):  # killed in export
        steps = int(torch.load(ckpt, map_location="cpu", weights_only=True).get("global_step", 0))
    else:
        trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt, weights_only=True)
        steps = trainer.global_step
    out = run_dir / "student"
    if trainer.is_global_zero:  # records and plots first: the exported student/ marks the run finished
        write_json(run_dir / "timesteps.json", {"bins": len(module.t_history[0]) if module.t_history else 0,
                                                 "num_timesteps": module.teacher.num_timesteps,
                                                 "history": module.t_history})
        plot_timestep_history(module.t_history, module.teacher.num_timesteps, run_dir / "timesteps.png")
        plot_curves(run_dir / "metrics.csv", run_dir / "curves.png",
                    ["train/distill", "train/head_loss", "train/head_acc", "train/entropy", "train/t_mean"],
                    title=f"distillation ({cfg.loss.name}, {cfg.timesteps.strategy})")
        export_student(module, cfg, out, steps, image_size=datamodule.sample_shape()[1])
    return out
