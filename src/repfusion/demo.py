"""`repfusion demo`: the whole pipeline on the embedded digits, on a laptop CPU, in minutes.

teacher DDPM -> RepFusion distillation with the reinforced policy -> fine-tuning, against the same
student trained from scratch with the same budget, over several seeds -> report with plots.
"""

from __future__ import annotations

import resource
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path

from .analysis.plots import plot_arms
from .data import DataConfig
from .distill.run import DistillRun, LossSection, StudentSection, TeacherSection, run_distillation
from .distill.timesteps import TimestepConfig
from .io import write_json, write_text
from .tasks.finetune import FinetuneRun, ModelSection, run_finetune
from .teachers.train import TeacherRun, train_teacher
from .training import OptimConfig, TrainerConfig


@dataclass
class DemoConfig:
    out: str = "runs/demo"
    seeds: int = 3
    teacher_epochs: int = 20
    distill_epochs: int = 15
    finetune_epochs: int = 10
    arch: str = "resnet18_cifar"
    width: float = 0.25
    image_size: int = 16
    progress: bool = True
    timings: dict[str, float] = field(default_factory=dict)


def quick(cfg: DemoConfig) -> DemoConfig:
    """The shortened demo the tests run: every stage, one epoch each, two seeds."""
    return DemoConfig(out=cfg.out, seeds=2, teacher_epochs=1, distill_epochs=1, finetune_epochs=1,
                      width=0.125, progress=False)


def _trainer(epochs: int, cfg: DemoConfig, seed: int = 0, ema: float | None = 0.99) -> TrainerConfig:
    return TrainerConfig(max_epochs=epochs, seed=seed, ema_decay=ema, progress=cfg.progress, log_every_n_steps=5)


def _stage(name: str, cfg: DemoConfig, fn):
    print(f"\n== {name}", flush=True)
    start = time.time()
    result = fn()
    cfg.timings[name] = time.time() - start
    print(f"== {name}: {cfg.timings[name]:.1f} s", flush=True)
    return result


def run_demo(cfg: DemoConfig) -> dict:
    out = Path(cfg.out)
    start = time.time()
    data = DataConfig(source="digits", image_size=cfg.image_size, batch_size=64)
    teacher_run = TeacherRun(teacher="tiny-16", data=DataConfig(source="digits", image_size=cfg.image_size,
                                                                batch_size=64, crop_padding=0),
                             optim=OptimConfig(name="adamw", lr=1e-3, weight_decay=0.0, schedule="constant"),
                             trainer=_trainer(cfg.teacher_epochs, cfg, ema=0.99), samples=16, sample_steps=50)
    teacher_dir = _stage("1/4 train the teacher DDPM", cfg, lambda: train_teacher(teacher_run, out / "teacher"))

    distill_run = DistillRun(
        teacher=TeacherSection(source=str(teacher_dir)),
        student=StudentSection(arch=cfg.arch, width=cfg.width),
        loss=LossSection(name="hint"),
        timesteps=TimestepConfig(strategy="reinforced", entropy_weight=0.1,
                                 entropy_decay_epochs=max(1, cfg.distill_epochs // 2), baseline="batch_mean"),
        data=data, optim=OptimConfig(lr=0.05), trainer=_trainer(cfg.distill_epochs, cfg),
    )
    _stage("2/4 distil with the reinforced timestep policy", cfg,
           lambda: run_distillation(distill_run, out / "distill"))

    arms: dict[str, list[float]] = {"scratch": [], "repfusion": []}

    def finetune_all() -> None:
        for seed in range(cfg.seeds):
            for arm in arms:
                run = FinetuneRun(init=str(out / "distill") if arm == "repfusion" else None,
                                  student=ModelSection(cfg.arch, cfg.width), data=data,
                                  optim=OptimConfig(lr=0.05, nesterov=True),
                                  trainer=_trainer(cfg.finetune_epochs, cfg, seed=seed))
                top1 = run_finetune(run, out / f"finetune-{arm}-seed{seed}")["test/top1"]
                arms[arm].append(top1)
                print(f"   seed {seed} {arm:>9}: test top-1 {100 * top1:.2f} %", flush=True)

    _stage(f"3/4 fine-tune RepFusion and scratch, {cfg.seeds} seeds each", cfg, finetune_all)
    summary = {arm: {"mean": statistics.mean(v), "std": statistics.stdev(v) if len(v) > 1 else 0.0, "runs": v}
               for arm, v in arms.items()}
    wall = time.time() - start
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    result = {"summary": summary, "timings_s": cfg.timings, "wall_s": wall, "peak_rss_mb": peak_mb,
              "config": {k: v for k, v in cfg.__dict__.items() if k != "timings"}}
    _stage("4/4 write the report", cfg, lambda: write_report(out, result))
    write_json(out / "results.json", result)
    print("\n" + results_table(summary))
    print(f"\nwall time {wall:.0f} s, peak memory {peak_mb:.0f} MB; report: {out / 'report.md'}")
    return result


def results_table(summary: dict) -> str:
    lines = ["| init | test top-1 (mean ± std) | runs |", "|---|---|---|"]
    for arm, s in summary.items():
        runs = ", ".join(f"{100 * r:.2f}" for r in s["runs"])
        lines.append(f"| {arm} | {100 * s['mean']:.2f} ± {100 * s['std']:.2f} % | {runs} |")
    return "\n".join(lines)


def write_report(out: Path, result: dict) -> None:
    summary = result["summary"]
    plot_arms({arm: [100 * r for r in s["runs"]] for arm, s in summary.items()}, out / "accuracy.png",
              "digits: scratch vs RepFusion")
    timings = "\n".join(f"| {k} | {v:.1f} |" for k, v in result["timings_s"].items())
    text = f"""# RepFusion demo report

Embedded digits (scikit-learn, {result['config']['image_size']}x{result['config']['image_size']} RGB), student
{result['config']['arch']} at width {result['config']['width']}, {result['config']['seeds']} seeds per arm,
identical fine-tuning budget ({result['config']['finetune_epochs']} epochs) for both inits.

## Result

{results_table(summary)}

![accuracy](accuracy.png)

## The teacher

Samples from the DDPM trained in stage 1 (DDIM, 50 steps):

![samples](teacher/samples.png)

## Distillation

Loss terms, task-head accuracy, policy entropy and mean sampled t per epoch:

![curves](distill/curves.png)

Where the policy sampled t, epoch by epoch:

![timesteps](distill/timesteps.png)

## Cost

| stage | seconds |
|---|---|
{timings}

Wall time {result['wall_s']:.0f} s, peak resident memory {result['peak_rss_mb']:.0f} MB.
"""
    write_text(out / "report.md", text)
