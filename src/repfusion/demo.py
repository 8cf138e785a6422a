"""`repfusion demo`: the whole pipeline on the embedded digits, on a laptop CPU, in minutes.

The regime where pre-training pays: every training image is unlabeled for the teacher and the
distillation, and only a small stratified share of them (`label_fraction`) carries a label for
fine-tuning. Stages: teacher DDPM -> RepFusion distillation (label-free: per-t standardised hint
target on noised inputs, coarse-bin timestep policy with the InfoNCE reward) -> student probe -> 
fine-tuning of the distilled student and of the same student from scratch on the same seeds (each
seed draws its own labelled subset, shared by both arms) -> paired differences with a 95 % interval,
a report and plots.
"""

from __future__ import annotations

import json
import resource
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .analysis.plots import plot_arms
from .analysis.stats import paired_difference
from .analysis.student_probe import probe_student
from .data import DataConfig, build_split
from .data.labels import check_label_budget
from .distill.run import DistillRun, LossSection, StudentSection, TeacherSection, run_distillation
from .distill.timesteps import TimestepConfig
from .errors import RepFusionError
from .io import write_json, write_text
from .tasks.finetune import FinetuneRun, ModelSection, run_finetune
from .teachers.train import TeacherRun, train_teacher
from .training import OptimConfig, TrainerConfig

ARMS = ("scratch", "repfusion")


@dataclass
class DemoConfig:
    """Budgets sized for 2 CPU cores and 5 minutes; digits are 16x16, so crops pad 2 px and never flip."""

    out: str = "runs/demo"
    seeds: int = 5
    label_fraction: float = 0.02
    teacher_epochs: int = 20
    distill_epochs: int = 15
    finetune_epochs: int = 40
    arch: str = "resnet18_cifar"
    width: float = 0.25
    image_size: int = 16
    crop_padding: int = 2
    strategy: str = "reinforced"
    reward: str = "infonce"
    noise_mode: str = "noised"
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


def run_once(done: Path, run: Callable[[bool], Any], run_dir: Path, cfg: DemoConfig) -> Any:
    """Skip a stage whose output exists; continue an interrupted one from its checkpoint (--resume)."""
    if done.exists():
        return None
    resume = cfg.resume and (run_dir / "checkpoints" / "last.ckpt").exists()
    return run(resume)


def data_config(cfg: DemoConfig, **changes: Any) -> DataConfig:
    base: dict[str, Any] = dict(source="digits", image_size=cfg.image_size, batch_size=64,
                                crop_padding=cfg.crop_padding, flip=False)
    return DataConfig(**{**base, **changes})


def distill_config(cfg: DemoConfig, teacher_dir: Path) -> DistillRun:
    """Our label-free RepFusion: per-t standardised hint target, 20-bin policy, normalised advantage."""
    return DistillRun(
        teacher=TeacherSection(source=str(teacher_dir), noise_mode=cfg.noise_mode),
        student=StudentSection(arch=cfg.arch, width=cfg.width),
        loss=LossSection(name="hint", target_norm="per_t"),
        timesteps=TimestepConfig(strategy=cfg.strategy, entropy_weight=0.1,
                                 entropy_decay_epochs=max(1, cfg.distill_epochs // 2), policy_bins=20,
                                 advantage="normalized", policy_warmup_epochs=1.0 if cfg.distill_epochs > 2 else 0.0),
        reward=cfg.reward, data=data_config(cfg), optim=OptimConfig(lr=0.05), trainer=demo_trainer(cfg.distill_epochs, cfg),
    )


def finetune_config(cfg: DemoConfig, init: Path | None, seed: int) -> FinetuneRun:
    """Both arms: the same labelled subset (drawn with the seed), budget, augmentation and optimiser."""
    return FinetuneRun(init=str(init) if init else None, student=ModelSection(cfg.arch, cfg.width),
                       data=data_config(cfg, label_fraction=cfg.label_fraction, split_seed=seed, batch_size=32),
                       optim=OptimConfig(lr=0.05, nesterov=True),
                       trainer=demo_trainer(cfg.finetune_epochs, cfg, seed=seed,
                                        check_val_every_n_epoch=max(1, cfg.finetune_epochs // 4)))


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

    distill_dir = out / "distill"
    run_stage("2/5 distil it into the student (no labels)", cfg,
           lambda: run_once(distill_dir / "student" / "config.json",
                         lambda r: run_distillation(distill_config(cfg, teacher_dir), distill_dir, r), distill_dir, cfg))

    def probes() -> dict[str, dict[str, float]]:
        data = data_config(cfg)
        train, test = build_split(data, train=True), build_split(data, train=False)
        found = {name: probe_student(source, train, test, arch=cfg.arch, width=cfg.width)
                 for name, source in (("random init", "random"), ("distilled", distill_dir))}
        for name, scores in found.items():
            print(f"   {name:>11}: linear probe {100 * scores['linear_probe']:.2f} %, "
                  f"k-NN {100 * scores['knn']:.2f} %", flush=True)
        return found

    probe = run_stage("3/5 probe the frozen backbones (all training labels, no fine-tuning)", cfg, probes)

    arms: dict[str, list[float]] = {arm: [] for arm in ARMS}

    def finetune_all() -> None:
        arms.update(finetune_arms(cfg, out, lambda arm, seed: finetune_config(
            cfg, distill_dir if arm == "repfusion" else None, seed), _read_top1,
            lambda top1: f"test top-1 {100 * top1:.2f} %"))

    run_stage(f"4/5 fine-tune on {100 * cfg.label_fraction:g} % of the labels, RepFusion and scratch, "
              f"{cfg.seeds} seeds each", cfg, finetune_all)
    summary, difference = compare_arms(arms)
    wall = time.time() - start
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    result = {"summary": summary, "paired_difference": difference, "probe": probe, "timings_s": cfg.timings,
              "wall_s": wall, "peak_rss_mb": peak_mb,
              "config": {"out": cfg.out, **settings(cfg)}}
    run_stage("5/5 write the report", cfg, lambda: write_report(out, result))
    write_json(out / "results.json", result)
    print("\n" + results_table(summary, difference))
    print(f"\nwall time {wall:.0f} s, peak memory {peak_mb:.0f} MB; report: {out / 'report.md'}")
    return result


def finetune_arms(cfg: Any, out: Path, make_run: Callable[[str, int], FinetuneRun],
                  score: Callable[[Path], float], show: Callable[[float], str]) -> dict[str, list[float]]:
    """Both arms on every seed (scratch first), each a finished run reused on --resume; one score per run."""
    arms: dict[str, list[float]] = {arm: [] for arm in ARMS}
    for seed in range(cfg.seeds):
        for arm in ARMS:
            run_dir = out / f"finetune-{arm}-seed{seed}"
            run = make_run(arm, seed)
            run_once(run_dir / "results.json", lambda r: run_finetune(run, run_dir, r), run_dir, cfg)
            arms[arm].append(score(run_dir))
            print(f"   seed {seed} {arm:>9}: {show(arms[arm][-1])}", flush=True)
    return arms


def compare_arms(arms: dict[str, list[float]]) -> tuple[dict[str, dict[str, Any]], dict[str, Any]]:
    """Per-arm mean, std and runs, and the seed-paired difference RepFusion - scratch with its 95 % interval."""
    summary = {arm: {"mean": statistics.mean(v), "std": statistics.stdev(v), "runs": v} for arm, v in arms.items()}
    return summary, paired_difference(arms["repfusion"], arms["scratch"]).as_dict()


def cost_section(result: dict) -> str:
    timings = "\n".join(f"| {k} | {v:.1f} |" for k, v in result["timings_s"].items())
    return (f"## Cost\n\n| stage | seconds |\n|---|---|\n{timings}\n\nWall time {result['wall_s']:.0f} s, peak resident "
            f"memory {result['peak_rss_mb']:.0f} MB.\n")


def _read_top1(run_dir: Path) -> float:
    return float(json.loads((run_dir / "results.json").read_text())["test/top1"])


def results_table(summary: dict, difference: dict) -> str:
    lines = ["| init | test top-1 (mean ± std) | runs |", "|---|---|---|"]
    for arm, s in summary.items():
        runs = ", ".join(f"{100 * r:.2f}" for r in s["runs"])
        lines.append(f"| {arm} | {100 * s['mean']:.2f} ± {100 * s['std']:.2f} % | {runs} |")
    lines.append(f"| repfusion - scratch (paired, {difference['n']} seeds) | {100 * difference['mean']:+.2f} points, "
                 f"95 % CI [{100 * difference['low']:+.2f}, {100 * difference['high']:+.2f}] | |")
    return "\n".join(lines)


def write_report(out: Path, result: dict) -> None:
    summary, cfg = result["summary"], result["config"]
    plot_arms({arm: [100 * r for r in s["runs"]] for arm, s in summary.items()}, out / "accuracy.png",
              f"digits, {100 * cfg['label_fraction']:g} % labels: scratch vs RepFusion")
    probes = "\n".join(f"| {name} | {100 * s['linear_probe']:.2f} | {100 * s['knn']:.2f} |"
                       for name, s in result["probe"].items())
    text = f"""# RepFusion demo report

Embedded digits (scikit-learn, {cfg['image_size']}x{cfg['image_size']} RGB). The teacher DDPM and the
distillation use every training image without labels; fine-tuning sees {100 * cfg['label_fraction']:g} % of the
labels (a stratified subset drawn per seed, the same for both arms). Student {cfg['arch']} at width
{cfg['width']}, {cfg['seeds']} seeds per arm, identical fine-tuning budget ({cfg['finetune_epochs']} epochs),
augmentation (crop with {cfg['crop_padding']} px padding, no flips) and optimiser for both inits.

## Result

{results_table(summary, result['paired_difference'])}

![accuracy](accuracy.png)

## What the frozen backbones know

Linear probe and k-NN (k = 20, cosine) on the pooled last-stage features, fitted with every training
label, before any fine-tuning:

| backbone | linear probe (%) | k-NN (%) |
|---|---|---|
{probes}

## The teacher

Samples from the DDPM trained in stage 1 (DDIM, 50 steps):

![samples](teacher/samples.png)

## Distillation

Teacher read on noised inputs x_t; hint target standardised per t-bin (`target_norm: per_t`); timestep
policy over 20 bins with normalised advantages, a one-epoch warm-up and the label-free InfoNCE reward. Loss terms, reward-head accuracy, policy entropy and mean
sampled t per epoch:

![curves](distill/curves.png)

Where the policy sampled t, epoch by epoch:

![timesteps](distill/timesteps.png)

{cost_section(result)}"""
    write_text(out / "report.md", text)
