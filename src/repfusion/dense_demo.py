"""`repfusion demo --task segmentation|landmarks`: the dense half of the paper on generated faces, in minutes.

The paper's recipe for faces: a DDPM trained on face images, its features at t = 0 distilled densely
(hint on the feature map, no labels) into the backbone, which is then fine-tuned for face parsing or
landmark detection and compared with the same network trained from scratch. Here the faces are the
embedded generated ones (`data.faces`: part masks and 98 landmarks on every image), every training image
feeds the teacher and the distillation without its targets, and fine-tuning sees only `labelled` of them
(a seeded random subset per seed, shared by every arm) with their targets, the regime where pre-training pays.
Each seed distils from the trained teacher and from a random-weight one of the same architecture, and the
arms of `repfusion.arms` (scratch, equal-compute scratch, RepFusion, random teacher) are compared seed-paired:
the one experiment runner (`experiment.run_arms`) over the task, with this module's configs, data and budgets.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .analysis.plots import plot_arms
from .data import DataConfig
from .arms import cost_section, run_once
from .experiment import Comparison, Experiment, peak_rss_mb, run_arms
from .pipeline.run import check_out
from .distill.run import DistillRun, LossSection, StudentSection, TeacherSection
from .distill.timesteps import TimestepConfig
from .errors import RepFusionError
from .io import write_json, write_text
from .tasks.finetune import FinetuneRun, ModelSection
from .teachers.train import TeacherRun, train_teacher
from .training import OptimConfig, TrainerConfig

DENSE_TASKS = ("segmentation", "landmarks")  # of the task registry; classification's demo is `demo.run_demo`


@dataclass
class DenseDemoConfig:
    """Budgets sized for 2 CPU cores and at most 5 minutes per task."""

    task: str = "segmentation"
    out: str | None = None
    seeds: int = 3
    train_images: int = 1024
    test_images: int = 256
    labelled: int = 48
    image_size: int = 32
    teacher_epochs: int = 5
    distill_epochs: int = 3
    finetune_epochs: int = 20
    arch: str = "resnet18_cifar"
    width: float = 0.25
    teacher_layer: str = "mid_block.resnets.1.conv2"
    progress: bool = True
    resume: bool = False
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def folder(self) -> Path:
        return Path(self.out or f"runs/demo-{self.task}")


def demo_trainer(epochs: int, cfg: DenseDemoConfig, seed: int = 0, ema: float | None = 0.99, **extra: Any) -> TrainerConfig:
    return TrainerConfig(max_epochs=epochs, seed=seed, ema_decay=ema, progress=cfg.progress, log_every_n_steps=5,
                         **extra)


def run_stage(name: str, cfg: DenseDemoConfig, fn: Callable[[], Any]) -> Any:
    print(f"\n== {name}", flush=True)
    start = time.time()
    result = fn()
    cfg.timings[name] = time.time() - start
    print(f"== {name}: {cfg.timings[name]:.1f} s", flush=True)
    return result


def quick_dense(cfg: DenseDemoConfig) -> DenseDemoConfig:
    """The shortened run the tests use: every stage, one or two epochs, tiny data."""
    return DenseDemoConfig(task=cfg.task, out=cfg.out, seeds=cfg.seeds, train_images=64, test_images=32, labelled=16,
                           teacher_epochs=1, distill_epochs=1, finetune_epochs=2, width=0.125, progress=False,
                           resume=cfg.resume)


def dense_settings(cfg: DenseDemoConfig) -> dict[str, Any]:
    return {k: v for k, v in asdict(cfg).items() if k not in ("timings", "progress", "resume", "out")}


def check_dense_demo(cfg: DenseDemoConfig) -> None:
    if cfg.task not in DENSE_TASKS:
        raise RepFusionError(f"--task must be classification, segmentation or landmarks, not '{cfg.task}'.")
    if cfg.seeds < 2:
        raise RepFusionError(f"--seeds must be at least 2 for a confidence interval, not {cfg.seeds}.")
    if not 0 < cfg.labelled <= cfg.train_images:
        raise RepFusionError(f"--labelled must be between 1 and the {cfg.train_images} training images, "
                             f"not {cfg.labelled}.")
    check_out(cfg.folder, cfg.resume, dense_settings(cfg), "demo_config.json")


def faces_data(cfg: DenseDemoConfig, **changes: Any) -> DataConfig:
    base: dict[str, Any] = dict(source="faces", image_size=cfg.image_size, faces_train=cfg.train_images,
                                faces_test=cfg.test_images, batch_size=64, crop_padding=0, flip=False)
    return DataConfig(**{**base, **changes})


def distill_config(cfg: DenseDemoConfig, teacher_dir: Path, init: str = "pretrained", seed: int = 0) -> DistillRun:
    """The paper's dense recipe (hint on the feature map, t = 0, no labels) with two changes of ours: the target
    standardised per channel, and compared on the coarser grid (the teacher's 16x16 map area-pooled to the
    student's 4x4 layer4; `grid: teacher`, the default, upsamples the student instead). Both were chosen on an
    independent generated set (faces_seed 1), not on the reported one."""
    return DistillRun(
        teacher=TeacherSection(source=str(teacher_dir), layer=cfg.teacher_layer, init=init),
        student=StudentSection(arch=cfg.arch, width=cfg.width),
        loss=LossSection(name="hint", options={"mode": "dense", "grid": "coarser"}, target_norm="per_t"),
        timesteps=TimestepConfig(strategy="fixed", t=0), reward="none",
        data=faces_data(cfg, flip=True), optim=OptimConfig(lr=0.05),
        trainer=demo_trainer(cfg.distill_epochs, cfg, seed=seed),
    )


def finetune_config(cfg: DenseDemoConfig, init: Path | None, seed: int) -> FinetuneRun:
    """Both arms: the same labelled images, budget, augmentation and optimiser; only the init differs."""
    optim = (OptimConfig(name="adam", lr=2e-3, weight_decay=0.0) if cfg.task == "landmarks"
             else OptimConfig(lr=0.05, nesterov=True, weight_decay=5e-4, schedule="poly"))
    return FinetuneRun(task=cfg.task, init=str(init) if init else None, student=ModelSection(cfg.arch, cfg.width),
                       data=faces_data(cfg, label_fraction=cfg.labelled / cfg.train_images, batch_size=8,
                                       split_seed=seed, flip=True),
                       optim=optim,
                       trainer=demo_trainer(cfg.finetune_epochs, cfg, seed=seed,
                                            check_val_every_n_epoch=max(1, cfg.finetune_epochs // 3)))


def run_dense_demo(cfg: DenseDemoConfig, on_start: Callable[[], None] | None = None) -> dict:
    """on_start: called once every check has passed, before the first write (the CLI saves config.yaml)."""
    check_dense_demo(cfg)
    out = cfg.folder
    if on_start is not None:
        on_start()
    write_json(out / "demo_config.json", dense_settings(cfg))
    start = time.time()
    teacher_run = TeacherRun(teacher="tiny-16", data=faces_data(cfg, flip=True),
                             optim=OptimConfig(name="adamw", lr=1e-3, weight_decay=0.0, schedule="constant"),
                             trainer=demo_trainer(cfg.teacher_epochs, cfg), samples=16, sample_steps=50)
    teacher_dir = out / "teacher" / "teacher"
    run_stage("1/4 train the teacher DDPM on every training face (no targets)", cfg,
              lambda: run_once(teacher_dir / "config.json", lambda r: train_teacher(teacher_run, out / "teacher", r),
                               out / "teacher", cfg))
    experiment = Experiment(cfg.task, out, cfg.seeds, cfg.resume,
                            distill=lambda init, seed: distill_config(cfg, teacher_dir, init, seed),
                            finetune=lambda init, seed: finetune_config(cfg, init, seed))
    compared = run_arms(
        experiment, lambda name, fn: run_stage(name, cfg, fn),
        f"2/4 dense distillation at t = 0 into the backbone, per seed from the trained and a random-weight "
        f"teacher (no targets, {2 * cfg.seeds} runs)",
        f"3/4 fine-tune {cfg.task} on {cfg.labelled} labelled faces, 4 arms, {cfg.seeds} seeds")
    assert compared is not None  # every demo image is labelled: the arms are always compared
    metric = compared.metric
    wall = time.time() - start
    peak_mb = peak_rss_mb()
    result = {"task": cfg.task, "metric": metric.key, "higher_is_better": metric.higher_is_better,
              "summary": compared.summary, "paired": compared.pairs, "verdict": compared.verdict,
              "timings_s": cfg.timings, "wall_s": wall, "peak_rss_mb": peak_mb,
              "config": {"out": str(out), **dense_settings(cfg)}}
    run_stage("4/4 write the report", cfg, lambda: write_dense_report(out, result, compared))
    write_json(out / "results.json", result)
    print("\n" + compared.table() + "\n\n" + compared.verdict)
    print("\nstage times: " + ", ".join(f"{k.split(' ')[0]} {v:.0f} s" for k, v in cfg.timings.items()))
    print(f"wall time {wall:.0f} s, peak memory {peak_mb:.0f} MB; report: {out / 'report.md'}")
    return result


def write_dense_report(out: Path, result: dict, compared: Comparison) -> None:
    summary, cfg, metric = result["summary"], result["config"], compared.metric
    plot_arms({arm: [metric.scale * r for r in s["runs"]] for arm, s in summary.items()}, out / "metric.png",
              f"generated faces, {cfg['labelled']} labelled: RepFusion and its controls",
              ylabel=f"test {metric.name} ({metric.unit})")
    what = ("face parsing (BiSeNetV1, 19 classes in the CelebAMask-HQ order)" if cfg["task"] == "segmentation"
            else "98-point landmark detection (heatmaps, NME normalised by the outer eye corners)")
    text = f"""# RepFusion dense demo: {cfg['task']}

Generated faces ({cfg['image_size']}x{cfg['image_size']}, {cfg['train_images']} training and
{cfg['test_images']} test images, part masks and WFLW-layout landmarks on each). The teacher DDPM and the dense
distillation (hint on the `{cfg['teacher_layer']}` map at t = 0, per-channel standardised target) use every training
image without targets, per seed from the trained teacher and from a random-weight one; {what} is fine-tuned on
{cfg['labelled']} training images with their targets (a random subset drawn per seed, shared by every arm).
Backbone {cfg['arch']} at width {cfg['width']}; {cfg['seeds']} seeds per arm, the same budget
({cfg['finetune_epochs']} epochs; scratch-equal as many steps as distillation + fine-tuning), augmentation
(flips with left/right swaps, scale and rotation) and optimiser for every arm.

## Result

{compared.table()}

{result['verdict']} Differences are in points; for NME (lower is better) each is control - RepFusion, so a
positive value is a gain.

![metric](metric.png)

Predictions on test images, seed 0 (left: scratch, right: RepFusion):

| scratch | RepFusion |
|---|---|
| ![scratch](finetune-scratch-seed0/predictions.png) | ![repfusion](finetune-repfusion-seed0/predictions.png) |

## The teacher and the distillation

![samples](teacher/samples.png)

![curves](distill-repfusion-seed0/curves.png)

{cost_section(result)}"""
    write_text(out / "report.md", text)
