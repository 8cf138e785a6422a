"""Where does the timestep policy go on real images, in noised mode, where t matters?

On the CIFAR-10 subset the small teacher's noised features probe at ~41 % up to t = 200 and 16 % at
t = 700 (cifar_probe.md), so a policy rewarded by a task head should move below t = 300. This runs our
policy (20 bins, normalised advantage, one-epoch warm-up, entropy 0.1 decaying over half the run) with
the paper's label reward for `--epochs` distillation epochs per seed and reports the share of sampled
t below 300 in the last epoch, with the per-epoch history as a plot.

    python benchmarks/policy_cifar.py   # writes benchmarks/results/policy_cifar.{json,md,png}
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--data", type=Path, default=SHARED / "data" / "cifar10-subset" / "cifar-10-batches-py")
    parser.add_argument("--teacher", default=str(SHARED / "teachers" / "cifar10-subset-ddpm-small"))
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--reward", default="label", choices=["label", "infonce"])
    parser.add_argument("--work", type=Path, default=ROOT / "runs" / "policy_cifar")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args()
    if not args.data.exists() or not Path(args.teacher).exists():
        print(f"skipped: {args.data} or {args.teacher} is absent (this benchmark needs ../shared).")
        return

    from repfusion.analysis.plots import plt, save_figure
    from repfusion.data import DataConfig
    from repfusion.distill.run import DistillRun, LossSection, StudentSection, TeacherSection, run_distillation
    from repfusion.distill.timesteps import TimestepConfig
    from repfusion.io import write_json, write_text
    from repfusion.training import OptimConfig, TrainerConfig

    histories = []
    for seed in range(args.seeds):
        run_dir = args.work / f"{args.reward}-seed{seed}"
        if not (run_dir / "timesteps.json").exists():
            cfg = DistillRun(
                teacher=TeacherSection(source=args.teacher, noise_mode="noised"),
                student=StudentSection("resnet18_cifar", 0.25), loss=LossSection("hint"),
                timesteps=TimestepConfig("reinforced", entropy_weight=0.1, entropy_decay_epochs=args.epochs / 2),
                reward=args.reward, data=DataConfig(source="cifar", root=str(args.data), batch_size=128,
                                                    val_fraction=0.1),
                optim=OptimConfig(lr=0.1), trainer=TrainerConfig(max_epochs=args.epochs, seed=seed, ema_decay=0.99,
                                                                 progress=False))
            run_distillation(cfg, run_dir, resume=(run_dir / "checkpoints" / "last.ckpt").exists())
        history = json.loads((run_dir / "timesteps.json").read_text())["history"]
        histories.append(history)
        print(f"seed {seed}: t < 300 in the last epoch: {sum(history[-1][:6]):.0%}", flush=True)
    command = shlex.join(["python", *sys.argv])
    below = [[sum(epoch[:6]) for epoch in h] for h in histories]
    write_json(args.out / "policy_cifar.json", {"command": command, "reward": args.reward, "epochs": args.epochs,
                                                "mass_below_300_per_epoch": below, "histories": histories})
    fig, ax = plt.subplots(figsize=(5, 3.2))
    for seed, series in enumerate(below):
        ax.plot(range(1, len(series) + 1), [100 * x for x in series], marker="o", label=f"seed {seed}")
    ax.axhline(30, color="grey", ls=":", label="uniform t")
    ax.set(xlabel="distillation epoch", ylabel="sampled t < 300 (%)", ylim=(0, 102),
           title=f"policy on CIFAR-10 subset, noised, {args.reward} reward")
    ax.legend(fontsize=8)
    fig.tight_layout()
    save_figure(fig, args.out / "policy_cifar.png")
    lines = [f"# Timestep policy on the real CIFAR-10 subset (noised mode, {args.reward} reward)", "",
             f"Command: `{command}`", "",
             "Our policy options (20 bins, normalised advantage, one-epoch warm-up; entropy weight 0.1 decaying to 0 "
             f"over {args.epochs / 2:g} epochs), hint on the per-t standardised target, CIFAR ResNet-18 width 0.25, "
             f"{args.epochs} epochs of 4,577 images at batch 128. Share of sampled t below 300 per epoch "
             "(uniform: 30 %):", "", "| seed | " + " | ".join(f"epoch {i + 1}" for i in range(args.epochs)) + " |",
             "|---|" + "---|" * args.epochs]
    lines += [f"| {seed} | " + " | ".join(f"{x:.0%}" for x in series) + " |" for seed, series in enumerate(below)]
    lines += ["", "![policy](policy_cifar.png)"]
    write_text(args.out / "policy_cifar.md", "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
