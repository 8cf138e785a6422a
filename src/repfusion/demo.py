"""`repfusion demo`: the whole pipeline on the embedded digits, on a laptop CPU, in minutes, with its controls.

The regime where pre-training pays: every training image is unlabeled for the teacher and the
distillation, and only a small stratified share of them (`label_fraction`) carries a label for
fine-tuning. Stages: teacher DDPM -> per seed, a label-free distillation from it and one from a
random-weight teacher of the same architecture -> frozen-backbone probes on the validation split ->
fine-tuning of scratch, equal-compute scratch, RepFusion and the random-teacher student on the same
labelled subset per seed (`demo_arms`) -> paired differences with 95 % intervals, a report and plots.
"""

from __future__ import annotations

import json
import resource
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .analysis.controls import paired_entry
from .analysis.plots import plot_arms
from .analysis.student_probe import probe_student
from .data import DataConfig, ImageDataModule
from .data.labels import check_label_budget
from .demo_arms import (ARMS, TEACHERS, compare_arms, cost_section, distill_arms, distill_dir, finetune_arms,
                        pairs_lines, run_once, verdict)
from .distill.run import DistillRun, LossSection, StudentSection, TeacherSection
from .distill.timesteps import TimestepConfig
from .errors import RepFusionError
from .io import write_json, write_text
from .tasks.finetune import FinetuneRun, ModelSection
from .teachers.train import TeacherRun, train_teacher
from .training import OptimConfig, TrainerConfig

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
    strategy: str = "fixed"
    reward: str = "none"
    noise_mode: str = "clean"
    progress: bool = True
    resume: bool = False
    timings: dict[str, float] = field(default_factory=dict)


def quick(cfg: DemoConfig) -> DemoConfig:
    """The shortened demo the tests run: every stage, one or two epochs each, the seeds asked for."""
    return DemoConfig(out=cfg.out, seeds=cfg.seeds, label_fraction=cfg.label_fraction, teacher_epochs=1,
                      distill_epochs=1, finetune_epochs=2, width=0.125, progress=False, resume=cfg.resume)


def check_demo(cfg: DemoConfig) -> None:
    """One sentence for each bad setting, before anything is written."""
    if cfg.seeds < 2:
        raise RepFusionError(f"--seeds must be at least 2 for a confidence interval, not {cfg.seeds}.")
    check_label_budget(cfg.label_fraction, None)
    check_out(Path(cfg.out), cfg.resume, settings(cfg))


def check_out(out: Path, resume: bool, wanted: dict[str, Any]) -> None:
    """A demo folder is reused only with --resume and the same settings, so a report never mixes two runs."""
    if out.exists() and not out.is_dir():
        raise RepFusionError(f"--out {out} is a file; give a folder for the demo's runs and report.")
    if out.is_dir() and any(out.iterdir()) and not resume:
        raise RepFusionError(f"{out} already holds a demo; pass --resume to continue or reuse it, or choose "
                             "another --out.")
    saved = out / "demo_config.json"
    if resume and saved.is_file() and json.loads(saved.read_text()) != wanted:
        raise RepFusionError(f"{out} holds a demo run with other settings ({saved}); --resume reuses finished "
                             "stages, so give the same settings or choose another --out.")


def settings(cfg: DemoConfig) -> dict[str, Any]:
    """What the demo's stages depend on: a resumed demo must match it, or it would mix two runs."""
    return {k: v for k, v in asdict(cfg).items() if k not in ("timings", "progress", "resume", "out")}


def demo_trainer(epochs: int, cfg: DemoConfig, seed: int = 0, ema: float | None = 0.99, **extra: Any) -> TrainerConfig:
    return TrainerConfig(max_epochs=epochs, seed=seed, ema_decay=ema, progress=cfg.progress, log_every_n_steps=5,
                         **extra)


def run_stage(name: str, cfg: DemoConfig, fn: Callable[[], Any]) -> Any:
    print(f"\n== {name}", flush=True)
    start = time.time()
    result = fn()
    cfg.timings[name] = time.time() - start
    print(f"== {name}: {cfg.timings[name]:.1f} s", flush=True)
    return result


def data_config(cfg: DemoConfig, **changes: Any) -> DataConfig:
    """Every stage reads the same data section; 10 % of the training images are the validation split."""
    base: dict[str, Any] = dict(source="digits", image_size=cfg.image_size, batch_size=64,
                                crop_padding=cfg.crop_padding, flip=False, val_fraction=0.1)
    return DataConfig(**{**base, **changes})


def distill_config(cfg: DemoConfig, teacher_dir: Path, init: str, seed: int) -> DistillRun:
    """Label-free: per-channel standardised pooled hint on the decoder layer at clean t = 0 (the recipe the
    CIFAR benchmark measured); `init: random` is the same recipe from the random-weight teacher."""
    reinforced = cfg.strategy == "reinforced"
    return DistillRun(
        teacher=TeacherSection(source=str(teacher_dir), layer=cfg.teacher_layer, noise_mode=cfg.noise_mode,
                               init=init),
        student=StudentSection(arch=cfg.arch, width=cfg.width),
        loss=LossSection(name="hint", target_norm="per_t", target_bins=20 if reinforced else 1),
        timesteps=TimestepConfig(strategy=cfg.strategy, t=0, entropy_weight=0.1,
                                 entropy_decay_epochs=max(1, cfg.distill_epochs // 2), policy_bins=20,
                                 advantage="normalized", policy_warmup_epochs=1.0 if cfg.distill_epochs > 2 else 0.0),
        reward=cfg.reward, data=data_config(cfg), optim=OptimConfig(lr=0.05),
        trainer=demo_trainer(cfg.distill_epochs, cfg, seed=seed),
    )


def finetune_config(cfg: DemoConfig, init: Path | None, seed: int) -> FinetuneRun:
    """Every arm: the same labelled subset (drawn with the seed), augmentation and optimiser."""
    return FinetuneRun(init=str(init) if init else None, student=ModelSection(cfg.arch, cfg.width),
                       data=data_config(cfg, label_fraction=cfg.label_fraction, split_seed=seed, batch_size=32),
                       optim=OptimConfig(lr=0.05, nesterov=True),
                       trainer=demo_trainer(cfg.finetune_epochs, cfg, seed=seed,
                                            check_val_every_n_epoch=max(1, cfg.finetune_epochs // 4)))


def probe_backbones(cfg: DemoConfig, out: Path) -> dict[str, Any]:
    """Linear probe and k-NN of every frozen backbone, fitted on the training images, scored on validation."""
    import torch

    splits = ImageDataModule(data_config(cfg))
    splits.setup()
    found: dict[str, list[dict[str, float]]] = {"random init": [], **{arm: [] for arm in TEACHERS}}
    for seed in range(cfg.seeds):
        torch.manual_seed(seed)
        found["random init"].append(probe_student("random", splits.train_set, splits.val_set, arch=cfg.arch,
                                                  width=cfg.width))
        for arm in TEACHERS:
            found[arm].append(probe_student(distill_dir(out, arm, seed), splits.train_set, splits.val_set))
    for name, scores in found.items():
        shown = ", ".join(f"{100 * score['linear_probe']:.2f}" for score in scores)
        print(f"   {name:>14}: val linear probe {shown} %", flush=True)
    linear = {name: [s["linear_probe"] for s in scores] for name, scores in found.items()}
    pairs = [paired_entry("repfusion", control, linear["repfusion"], linear[control], "val_probe")
             for control in ("random-teacher", "random init")]
    return {"runs": found, "paired": pairs}


def run_demo(cfg: DemoConfig) -> dict:
    check_demo(cfg)
    out = Path(cfg.out)
    write_json(out / "demo_config.json", settings(cfg))
    start = time.time()
    teacher_run = TeacherRun(teacher="tiny-16", data=data_config(cfg, crop_padding=0),
                             optim=OptimConfig(name="adamw", lr=1e-3, weight_decay=0.0, schedule="constant"),
                             trainer=demo_trainer(cfg.teacher_epochs, cfg), samples=16, sample_steps=50)
    teacher_dir = out / "teacher" / "teacher"
    run_stage("1/5 train the teacher DDPM on every training image (no labels)", cfg,
              lambda: run_once(teacher_dir / "config.json", lambda r: train_teacher(teacher_run, out / "teacher", r),
                               out / "teacher", cfg))

    def distill_all() -> None:
        distill_arms(cfg, out, lambda init, seed: distill_config(cfg, teacher_dir, init, seed))

    run_stage(f"2/5 distil, per seed, the trained teacher and a random-weight one into the student (no labels, "
              f"{2 * cfg.seeds} runs)", cfg, distill_all)
    probe = run_stage("3/5 probe the frozen backbones (validation split, no fine-tuning)", cfg,
                      lambda: probe_backbones(cfg, out))
    arms: dict[str, list[float]] = {}

    def finetune_all() -> None:
        arms.update(finetune_arms(cfg, out, lambda init, seed: finetune_config(cfg, init, seed), _read_top1,
                                  lambda top1: f"test top-1 {100 * top1:.2f} %"))

    run_stage(f"4/5 fine-tune on {100 * cfg.label_fraction:g} % of the labels, {len(ARMS)} arms, "
              f"{cfg.seeds} seeds each", cfg, finetune_all)
    summary, pairs = compare_arms(arms, "test_top1", fraction=cfg.label_fraction)
    wall = time.time() - start
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    result = {"summary": summary, "paired": pairs + probe["paired"], "probe": probe["runs"],
              "verdict": verdict(pairs), "timings_s": cfg.timings, "wall_s": wall, "peak_rss_mb": peak_mb,
              "config": {"out": cfg.out, **settings(cfg)}}
    run_stage("5/5 write the report", cfg, lambda: write_report(out, result))
    write_json(out / "results.json", result)
    print("\n" + results_table(summary, result["paired"]) + "\n\n" + result["verdict"])
    print("\nstage times: " + ", ".join(f"{k.split(' ')[0]} {v:.0f} s" for k, v in cfg.timings.items()))
    print(f"wall time {wall:.0f} s, peak memory {peak_mb:.0f} MB; report: {out / 'report.md'}")
    return result


def _read_top1(run_dir: Path) -> float:
    return float(json.loads((run_dir / "results.json").read_text())["test/top1"])


def results_table(summary: dict, pairs: list[dict], scale: float = 100.0, unit: str = "%",
                  heading: str = "test top-1 (mean ± std)") -> str:
    lines = [f"| arm | {heading} | runs |", "|---|---|---|"]
    for arm, s in summary.items():
        runs = ", ".join(f"{scale * r:.2f}" for r in s["runs"])
        lines.append(f"| {arm} | {scale * s['mean']:.2f} ± {scale * s['std']:.2f} {unit} | {runs} |")
    return "\n".join(lines + pairs_lines(pairs))


def write_report(out: Path, result: dict) -> None:
    summary, cfg = result["summary"], result["config"]
    plot_arms({arm: [100 * r for r in s["runs"]] for arm, s in summary.items()}, out / "accuracy.png",
              f"digits, {100 * cfg['label_fraction']:g} % labels: RepFusion and its controls")
    def shown(runs: list[dict[str, float]], key: str) -> str:
        return ", ".join(f"{100 * run[key]:.2f}" for run in runs)

    probes = "\n".join(f"| {name} | {shown(runs, 'linear_probe')} | {shown(runs, 'knn')} |"
                       for name, runs in result["probe"].items())
    text = f"""# RepFusion demo report

Embedded digits (scikit-learn, {cfg['image_size']}x{cfg['image_size']} RGB; 10 % of the training images are
the validation split, which picks checkpoints; the test split is only reported). The teacher DDPM and every
distillation use the training images without labels; fine-tuning sees {100 * cfg['label_fraction']:g} % of the
labels (a stratified subset drawn per seed, the same for every arm). Student {cfg['arch']} at width
{cfg['width']}, {cfg['seeds']} seeds, each with its own two distillations (trained teacher, and a random-weight
teacher of the same architecture seeded with the seed). Arms: scratch ({cfg['finetune_epochs']} epochs),
scratch-equal (as many optimiser steps as distillation + fine-tuning), repfusion (the trained teacher's student)
and random-teacher (the random teacher's student), with the same augmentation (crop with {cfg['crop_padding']} px
padding, no flips) and optimiser.

## Result

{results_table(summary, result['paired'])}

{result['verdict']}

![accuracy](accuracy.png)

## What the frozen backbones know

Linear probe and k-NN (k = 20, cosine) on the pooled last-stage features, fitted on the training images,
scored on the validation split, before any fine-tuning (one value per seed):

| backbone | linear probe (%) | k-NN (%) |
|---|---|---|
{probes}

## The teacher

Samples from the DDPM trained in stage 1 (DDIM, 50 steps):

![samples](teacher/samples.png)

## Distillation (seed 0, trained teacher)

Hint on the teacher's `{cfg['teacher_layer']}` output ({cfg['noise_mode']} input, timesteps `{cfg['strategy']}`),
pooled and standardised per channel:

![curves](distill-repfusion-seed0/curves.png)

{cost_section(result)}"""
    write_text(out / "report.md", text)
