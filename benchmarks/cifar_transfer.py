"""Does RepFusion beat training from scratch on real images, with scarce and with full labels?

Data: ../shared/data/cifar10-subset (real CIFAR-10 images); 10 % of the training images are held out as
the validation split (model choices), the test split is only reported. Teacher: the DDPM in
../shared/teachers (trained on the training images, no labels), or --teacher. Every distillation
reads every non-validation training image; fine-tuning sees a stratified `label_fraction` of them
(drawn per seed, the same subset for every arm of that seed). Arms:

- scratch: the student from random weights.
- paper: the paper's method as published: hint on the raw teacher feature, 1000-way policy, plain
  REINFORCE, label reward (it reads every training label during distillation, which favours it at
  10 % labels), clean input.
- t0: the paper's "without the policy": hint on the raw feature at fixed t = 0, no labels.
- ours: hint on the per-t standardised feature, 20-bin policy with normalised advantages and a
  one-epoch warm-up, label-free InfoNCE reward, noised input.
- ours-label: ours with the paper's label reward (every training label, like the paper arm); added
  after the first run showed that InfoNCE does not steer the policy to small t (policy_cifar.md).

Each seed runs its own distillations. Finished runs are kept, so an interrupted benchmark continues.

    python benchmarks/cifar_transfer.py   # writes benchmarks/results/cifar_transfer.{json,md,png}
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shlex
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
ARMS = ("scratch", "paper", "t0", "ours", "ours-label")


def distill_config(arm: str, args: argparse.Namespace, data, seed: int):
    from repfusion.distill.run import DistillRun, LossSection, StudentSection, TeacherSection
    from repfusion.distill.timesteps import TimestepConfig
    from repfusion.training import OptimConfig

    half = max(1.0, args.distill_epochs / 2)
    if arm == "paper":
        teacher, loss, reward = TeacherSection(source=args.teacher), LossSection("hint", target_norm="none"), "label"
        timesteps = TimestepConfig("reinforced", entropy_weight=0.1, entropy_decay_epochs=half, policy_bins=1000,
                                   advantage="raw", policy_warmup_epochs=0.0)
    elif arm == "t0":
        teacher, loss, reward = TeacherSection(source=args.teacher), LossSection("hint", target_norm="none"), "none"
        timesteps = TimestepConfig("fixed", t=0)
    else:
        teacher = TeacherSection(source=args.teacher, noise_mode=args.ours_noise_mode)
        loss, reward = LossSection("hint", target_norm="per_t"), "label" if arm == "ours-label" else "infonce"
        timesteps = TimestepConfig("reinforced", entropy_weight=0.1, entropy_decay_epochs=half, policy_bins=20,
                                   advantage="normalized", policy_warmup_epochs=1.0)
    return DistillRun(teacher=teacher, student=StudentSection("resnet18_cifar", args.width), loss=loss,
                      timesteps=timesteps, reward=reward, data=data, optim=OptimConfig(lr=0.1),
                      trainer=trainer(args.distill_epochs, seed))


def trainer(epochs: int, seed: int):
    from repfusion.training import TrainerConfig

    return TrainerConfig(max_epochs=epochs, seed=seed, ema_decay=0.99, progress=False)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--data", type=Path, default=SHARED / "data" / "cifar10-subset")
    parser.add_argument("--teacher", default=str(SHARED / "teachers" / "cifar10-subset-ddpm-small"))
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--width", type=float, default=0.25)
    parser.add_argument("--distill-epochs", type=int, default=4)
    parser.add_argument("--fractions", type=float, nargs="+", default=[0.1, 1.0])
    parser.add_argument("--finetune-epochs", type=int, default=8, help="At 100 % labels; scaled up for fewer labels.")
    parser.add_argument("--arms", nargs="+", default=list(ARMS), choices=ARMS)
    parser.add_argument("--ours-noise-mode", default="noised", choices=["clean", "noised"])
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--work", type=Path, default=ROOT / "runs" / "cifar_transfer")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    parser.add_argument("--train-limit", type=int, default=None, help="Smoke runs only.")
    args = parser.parse_args()
    if not args.data.exists() or not Path(args.teacher).exists():
        print(f"skipped: {args.data} or {args.teacher} is absent (this benchmark needs ../shared).")
        return

    import torch
    from repfusion.analysis.student_probe import probe_student
    from repfusion.data import DataConfig, ImageDataModule
    from repfusion.distill.run import run_distillation
    from repfusion.io import write_json
    from repfusion.tasks.finetune import FinetuneRun, ModelSection, run_finetune
    from repfusion.training import OptimConfig

    root = str(args.data / "cifar-10-batches-py") if (args.data / "cifar-10-batches-py").is_dir() else str(args.data)
    data = DataConfig(source="cifar", root=root, batch_size=args.batch, val_fraction=0.1,
                      train_limit=args.train_limit)
    splits = ImageDataModule(data)
    splits.setup()
    results: dict = {"distill": {}, "finetune": {}}
    for seed in range(args.seeds):
        for arm in args.arms:  # distillations first: every fraction reuses them (scratch: the random init)
            run_dir = args.work / arm / f"seed{seed}" / "distill"
            done = run_dir / "summary.json"
            if not done.exists() and arm == "scratch":
                torch.manual_seed(seed)
                probe = probe_student("random:resnet18_cifar", splits.train_set, splits.val_set, width=args.width)
                write_json(done, {"seconds": 0.0, "final_t_distribution": None, "val_probe": probe})
            if not done.exists():
                start = time.time()
                run_distillation(distill_config(arm, args, data, seed), run_dir,
                                 resume=(run_dir / "checkpoints" / "last.ckpt").exists())
                t_hist = json.loads((run_dir / "timesteps.json").read_text())["history"]
                probe = probe_student(run_dir, splits.train_set, splits.val_set)
                write_json(done, {"seconds": time.time() - start, "final_t_distribution": t_hist[-1],
                                  "val_probe": probe})
            summary = json.loads(done.read_text())
            results["distill"].setdefault(arm, []).append(summary)
            below = sum(summary["final_t_distribution"][:6]) if summary["final_t_distribution"] else float("nan")
            print(f"distill {arm:>6} seed {seed}: val linear probe {100 * summary['val_probe']['linear_probe']:.2f} %,"
                  f" k-NN {100 * summary['val_probe']['knn']:.2f} %, t < 300: {below:.0%}", flush=True)
        for fraction in args.fractions:
            epochs = round(args.finetune_epochs / fraction ** 0.5)  # fewer images per epoch: more epochs
            for arm in args.arms:
                run_dir = args.work / arm / f"seed{seed}" / f"finetune-{fraction:g}"
                done = run_dir / "summary.json"
                if not done.exists():
                    start = time.time()
                    init = None if arm == "scratch" else str(args.work / arm / f"seed{seed}" / "distill")
                    ft = FinetuneRun(init=init, student=ModelSection("resnet18_cifar", args.width),
                                     data=dataclasses.replace(data, label_fraction=fraction, split_seed=seed,
                                                              batch_size=args.batch if fraction >= 0.5 else 64),
                                     optim=OptimConfig(lr=0.1, nesterov=True), trainer=trainer(epochs, seed))
                    metrics = run_finetune(ft, run_dir, resume=(run_dir / "checkpoints" / "last.ckpt").exists())
                    write_json(done, {"top1": metrics["test/top1"], "seconds": time.time() - start, "epochs": epochs})
                summary = json.loads(done.read_text())
                results["finetune"].setdefault(f"{fraction:g}", {}).setdefault(arm, []).append(summary)
                print(f"finetune {arm:>7} {100 * fraction:g} % labels seed {seed}: test top-1 "
                      f"{100 * summary['top1']:.2f} %", flush=True)
    report(results, args, shlex.join(["python", *sys.argv]))


def portable(value: object) -> str:
    """A setting as text, with paths relative to the repository so result files name no machine's folders."""
    text = str(value)
    if isinstance(value, Path) or Path(text).is_absolute():
        return os.path.relpath(text, ROOT)
    return text


def report(results: dict, args: argparse.Namespace, command: str) -> None:
    from repfusion.analysis.plots import plot_arms
    from repfusion.analysis.stats import paired_difference
    from repfusion.io import write_json, write_text

    table = {}
    for fraction, arms in results["finetune"].items():
        scratch = [r["top1"] for r in arms.get("scratch", [])]
        table[fraction] = {}
        for arm, runs in arms.items():
            top1 = [r["top1"] for r in runs]
            row = {"runs": top1, "mean": statistics.mean(top1), "std": statistics.stdev(top1) if len(top1) > 1 else 0.0,
                   "epochs": runs[0]["epochs"], "seconds": statistics.mean(r["seconds"] for r in runs)}
            if arm != "scratch" and len(scratch) == len(top1):
                row["vs_scratch"] = paired_difference(top1, scratch).as_dict()
            if arm not in ("scratch", "ours") and "ours" in arms and len(arms["ours"]) == len(top1):
                row["ours_vs_this"] = paired_difference([r["top1"] for r in arms["ours"]], top1).as_dict()
            table[fraction][arm] = row
    distill = {arm: {"val_linear_probe": [r["val_probe"]["linear_probe"] for r in runs],
                     "val_knn": [r["val_probe"]["knn"] for r in runs],
                     "final_t_distribution": [r["final_t_distribution"] for r in runs],
                     "mass_below_300": [sum(r["final_t_distribution"][:6]) if r["final_t_distribution"] else None
                                        for r in runs],
                     "seconds": statistics.mean(r["seconds"] for r in runs)} for arm, runs in results["distill"].items()}
    write_json(args.out / "cifar_transfer.json", {"command": command, "config": {k: portable(v) for k, v in vars(args).items()},
                                                  "finetune": table, "distill": distill})
    pct = lambda x: f"{100 * x:.2f}"  # noqa: E731
    ci = lambda d: f"{100 * d['mean']:+.2f} [{100 * d['low']:+.2f}, {100 * d['high']:+.2f}]"  # noqa: E731
    lines = ["# CIFAR-10 subset: RepFusion against scratch, scarce and full labels", "", f"Command: `{command}`", "",
             f"Student resnet18_cifar width {args.width}; distillation {args.distill_epochs} epochs on every "
             f"non-validation training image; {args.seeds} seeds, each with its own distillations and its own "
             "labelled subset (shared by the arms of that seed); 10 % of the training images held out for "
             "validation; test split only reported. Paired differences: mean over seeds with a 95 % t interval.",
             "", "| labels | arm | epochs | test top-1 mean ± std (%) | runs | vs scratch (points, 95 % CI) | "
             "ours vs this arm |", "|---|---|---|---|---|---|---|"]
    for fraction, arms in table.items():
        for arm, r in arms.items():
            lines.append(f"| {100 * float(fraction):g} % | {arm} | {r['epochs']} | {pct(r['mean'])} ± {pct(r['std'])} | "
                         f"{', '.join(pct(x) for x in r['runs'])} | {ci(r['vs_scratch']) if 'vs_scratch' in r else ''} | "
                         f"{ci(r['ours_vs_this']) if 'ours_vs_this' in r else ''} |")
    lines += ["", "Frozen backbones before fine-tuning (scratch: the random initialisation; linear probe and 20-NN on "
              "pooled features, fitted on the training images, scored on the validation split), and where each "
              "policy ended (share of sampled t < 300 in "
              "the last distillation epoch):", "", "| arm | val linear probe (%) | val k-NN (%) | t < 300 | seconds |",
              "|---|---|---|---|---|"]
    for arm, d in distill.items():
        lines.append(f"| {arm} | {', '.join(pct(x) for x in d['val_linear_probe'])} | "
                     f"{', '.join(pct(x) for x in d['val_knn'])} | "
                     f"{', '.join(f'{x:.0%}' if x is not None else '-' for x in d['mass_below_300'])} | "
                     f"{d['seconds']:.0f} |")
    write_text(args.out / "cifar_transfer.md", "\n".join(lines) + "\n")
    for fraction, arms in table.items():
        plot_arms({arm: [100 * x for x in r["runs"]] for arm, r in arms.items()},
                  args.out / f"cifar_transfer_{100 * float(fraction):g}pct.png",
                  f"CIFAR-10 subset, {100 * float(fraction):g} % labels")


if __name__ == "__main__":
    main()
