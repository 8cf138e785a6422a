"""Does RepFusion beat training from scratch on real images? The CIFAR-10 subset ablation.

Data: ../shared/data/cifar10-subset (5,085 train / 1,017 test real CIFAR-10 images); 10 % of the
training images are held out as the validation split, the test split is only reported. Teacher: the
off-the-shelf DDPM in ../shared/teachers (trained on the 5,085 training images, no labels), or
--teacher. Every arm uses the same student, fine-tuning budget and augmentation; several seeds.
Finished runs are kept, so an interrupted ablation continues where it stopped.

    python benchmarks/cifar_ablation.py   # writes benchmarks/results/cifar_ablation.{json,md,png}
"""

from __future__ import annotations

import argparse
import json
import shlex
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"


@dataclass(frozen=True)
class Arm:
    name: str
    loss: str | None  # None: from scratch
    strategy: str = "fixed"
    t: int = 0


ARMS = [
    Arm("scratch", None),
    Arm("hint t=0", "hint", "fixed", 0),
    Arm("hint t=200", "hint", "fixed", 200),
    Arm("hint uniform t", "hint", "uniform"),
    Arm("hint + policy", "hint", "reinforced"),
    Arm("AT + policy", "at", "reinforced"),
    Arm("RKD + policy", "rkd", "reinforced"),
]


def slug(name: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in name).strip("-")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--data", type=Path, default=SHARED / "data" / "cifar10-subset")
    parser.add_argument("--teacher", default=str(SHARED / "teachers" / "cifar10-subset-ddpm-small"))
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--width", type=float, default=0.25)
    parser.add_argument("--distill-epochs", type=int, default=15)
    parser.add_argument("--finetune-epochs", type=int, default=15)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--arms", nargs="+", default=[a.name for a in ARMS])
    parser.add_argument("--work", type=Path, default=ROOT / "runs" / "cifar_ablation")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    parser.add_argument("--train-limit", type=int, default=None, help="Smoke runs only.")
    parser.add_argument("--report-only", action="store_true", help="Report the finished runs, train nothing.")
    args = parser.parse_args()
    if not args.data.exists() or not Path(args.teacher).exists():
        print(f"skipped: {args.data} or {args.teacher} is absent (this benchmark needs ../shared).")
        return

    from repfusion.data import DataConfig
    from repfusion.distill.run import DistillRun, LossSection, StudentSection, TeacherSection, run_distillation
    from repfusion.distill.timesteps import TimestepConfig
    from repfusion.io import write_json
    from repfusion.tasks.finetune import FinetuneRun, ModelSection, run_finetune
    from repfusion.training import OptimConfig, TrainerConfig

    data = DataConfig(source="cifar", root=str(args.data), batch_size=args.batch, val_fraction=0.1,
                      train_limit=args.train_limit)
    trainer = lambda epochs, seed: TrainerConfig(max_epochs=epochs, seed=seed, ema_decay=0.99, progress=False)
    arms = [a for a in ARMS if a.name in args.arms]
    results: dict[str, dict] = {}
    for arm in arms:
        results[arm.name] = {"top1": [], "distill_s": [], "finetune_s": [], "final_t_distribution": []}
        for seed in range(args.seeds):
            run_dir = args.work / slug(arm.name) / f"seed{seed}"
            done_file = run_dir / "summary.json"
            if args.report_only and not done_file.exists():
                continue
            if not done_file.exists():
                distill_s, init = 0.0, None
                if arm.loss is not None:
                    start = time.time()
                    cfg = DistillRun(
                        teacher=TeacherSection(source=args.teacher),
                        student=StudentSection("resnet18_cifar", args.width), loss=LossSection(arm.loss),
                        timesteps=TimestepConfig(strategy=arm.strategy, t=arm.t, entropy_weight=0.1,
                                                 entropy_decay_epochs=args.distill_epochs / 2),
                        data=data, optim=OptimConfig(lr=0.1), trainer=trainer(args.distill_epochs, seed))
                    run_distillation(cfg, run_dir / "distill", resume=(run_dir / "distill/checkpoints/last.ckpt").exists())
                    distill_s, init = time.time() - start, str(run_dir / "distill")
                start = time.time()
                ft = FinetuneRun(init=init, student=ModelSection("resnet18_cifar", args.width), data=data,
                                 optim=OptimConfig(lr=0.1, nesterov=True), trainer=trainer(args.finetune_epochs, seed))
                ft_dir = run_dir / "finetune"
                metrics = run_finetune(ft, ft_dir, resume=(ft_dir / "checkpoints/last.ckpt").exists())
                t_dist = None
                if arm.loss is not None:
                    t_dist = json.loads((run_dir / "distill" / "timesteps.json").read_text())["history"][-1]
                write_json(done_file, {"top1": metrics["test/top1"], "distill_s": distill_s,
                                       "finetune_s": time.time() - start, "final_t_distribution": t_dist})
            summary = json.loads(done_file.read_text())
            for key in results[arm.name]:
                results[arm.name][key].append(summary[key])
            print(f"{arm.name:>16} seed {seed}: test top-1 {100 * summary['top1']:.2f} %", flush=True)
    report(results, args, shlex.join(["python", *sys.argv]))


def report(results: dict, args: argparse.Namespace, command: str) -> None:
    from repfusion.analysis.plots import plot_arms
    from repfusion.io import write_json, write_text

    rows = []
    for name, r in results.items():
        if not r["top1"]:
            continue
        top1 = [100 * x for x in r["top1"]]
        rows.append({"arm": name, "mean": statistics.mean(top1), "std": statistics.stdev(top1) if len(top1) > 1 else 0.0,
                     "runs": top1, "distill_s": statistics.mean(r["distill_s"]),
                     "finetune_s": statistics.mean(r["finetune_s"]),
                     "final_t_distribution": r["final_t_distribution"][0] if r["final_t_distribution"][0] else None})
    write_json(args.out / "cifar_ablation.json", {"command": command, "config": {k: str(v) for k, v in vars(args).items()},
                                                  "rows": rows})
    lines = ["# CIFAR-10 subset ablation", "", f"Command: `{command}`", "",
             f"Student resnet18_cifar width {args.width}; distillation {args.distill_epochs} epochs, fine-tuning "
             f"{args.finetune_epochs} epochs for every arm; {args.seeds} seeds; 10 % of the training images held out "
             "for validation, test split only reported. Times are per seed, on this machine.", "",
             "| arm | test top-1 mean ± std (%) | runs | distill s | finetune s |", "|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['arm']} | {r['mean']:.2f} ± {r['std']:.2f} | {', '.join(f'{x:.2f}' for x in r['runs'])} | "
                     f"{r['distill_s']:.0f} | {r['finetune_s']:.0f} |")
    policy_rows = [r for r in rows if r["final_t_distribution"] and "policy" in r["arm"]]
    if policy_rows:
        lines += ["", "Policy's sampled-t distribution in the last distillation epoch (seed 0), by 50-step bins:", ""]
        for r in policy_rows:
            dist = r["final_t_distribution"]
            below200 = sum(dist[:4])
            lines.append(f"- {r['arm']}: {below200:.0%} of samples below t = 200; bins: "
                         + " ".join(f"{x:.2f}" for x in dist))
    write_text(args.out / "cifar_ablation.md", "\n".join(lines) + "\n")
    plot_arms({r["arm"]: r["runs"] for r in rows}, args.out / "cifar_ablation.png",
              "CIFAR-10 subset: scratch vs RepFusion arms")


if __name__ == "__main__":
    main()
