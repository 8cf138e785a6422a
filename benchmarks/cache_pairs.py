"""Does caching the teacher's targets change the distilled student? Paired by seed, on the CIFAR subset.

`pretrain` caches the teacher's targets by default where they fit (`pipeline.budget.auto_cache_views`): the
teacher runs once per image and stored view instead of every step, so each image is seen in 2 fixed augmentations
(itself and its mirror image) instead of a fresh random crop and flip every epoch. For each seed this distils the
`ours` recipe of cifar_transfer.py for the same epochs with the teacher every step and with the cache, and compares
the frozen students' validation linear probes (fitted on the training images outside the validation split), paired
by seed, with the seconds each took.

    python benchmarks/cache_pairs.py --seed-list 800 801 802 803 804 --epochs 6 --lock LOCK
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).parent))
from cifar_transfer import SHARED, distil_and_probe, distill_config, portable, portable_command  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--data", type=Path, default=SHARED / "data" / "cifar10-subset")
    parser.add_argument("--teacher", default=str(SHARED / "teachers" / "cifar10-subset-ddpm-small"))
    parser.add_argument("--seed-list", type=int, nargs="+", default=[800, 801, 802, 803, 804])
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--views", type=int, default=2)
    parser.add_argument("--width", type=float, default=0.25)
    parser.add_argument("--work", type=Path, default=ROOT / "runs" / "cache_pairs")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    parser.add_argument("--lock", type=Path, default=None, help="A lock file each training takes on its own.")
    args = parser.parse_args()
    if not args.data.exists() or not Path(args.teacher).exists():
        print(f"skipped: {args.data} or {args.teacher} is absent (this benchmark needs ../shared).")
        return
    from repfusion.analysis.stats import paired_difference
    from repfusion.data import DataConfig, ImageDataModule
    from repfusion.io import write_json, write_text

    data = DataConfig(source="cifar", root=str(args.data / "cifar-10-batches-py"), batch_size=128, val_fraction=0.1,
                      flip=True)
    splits = ImageDataModule(data)
    splits.setup()
    ns = argparse.Namespace(teacher=args.teacher, width=args.width, distill_epochs=args.epochs)
    found: dict[str, dict[str, list[float]]] = {"every step": {"probe": [], "seconds": []},
                                                "cached": {"probe": [], "seconds": []}}
    for seed in args.seed_list:
        for name, views in (("every step", 0), ("cached", args.views)):
            cfg = dataclasses.replace(distill_config("ours", ns, data, seed), cache_views=views)
            summary = distil_and_probe(cfg, args.work / f"seed{seed}-views{views}", splits, args.lock)
            found[name]["probe"].append(100 * summary["val_probe"]["linear_probe"])
            found[name]["seconds"].append(summary["seconds"])
            print(f"seed {seed} {name:>10}: val probe {found[name]['probe'][-1]:.2f} % "
                  f"({summary['seconds']:.0f} s)", flush=True)
    diff = paired_difference(found["cached"]["probe"], found["every step"]["probe"])
    speed = sum(found["every step"]["seconds"]) / sum(found["cached"]["seconds"])
    command = portable_command()
    write_json(args.out / "cache_pairs.json", {
        "command": command, "config": {k: portable(v) for k, v in vars(args).items()}, "seeds": args.seed_list,
        "runs": found, "paired": [{"a": "cached", "b": "every step", "metric": "val_probe", **diff.as_dict()}],
        "time_ratio": speed})
    mean = {name: sum(v["probe"]) / len(v["probe"]) for name, v in found.items()}
    lines = ["# Cached teacher targets against the teacher every step, paired by seed", "",
             f"Command: `{command}`", "",
             f"CIFAR subset, `ours` recipe of cifar_transfer.py (teacher decoder `up_blocks.0`, clean t = 0, dense hint),"
             f" student resnet18_cifar width {args.width}, {args.epochs} distillation epochs; seeds "
             f"{', '.join(map(str, args.seed_list))}, each distilled both ways; frozen student's linear probe fitted on "
             "the training images outside the validation split, scored on the validation split; 2-core AMD EPYC, one "
             "run at a time.", "",
             "| seed | every step: val probe (%) | cached, " + f"{args.views} views: val probe (%) | every step (s) | "
             "cached (s) |", "|---|---|---|---|---|"]
    for i, seed in enumerate(args.seed_list):
        lines.append(f"| {seed} | {found['every step']['probe'][i]:.2f} | {found['cached']['probe'][i]:.2f} | "
                     f"{found['every step']['seconds'][i]:.0f} | {found['cached']['seconds'][i]:.0f} |")
    lines += ["", f"Mean: every step {mean['every step']:.2f} %, cached {mean['cached']:.2f} %; cached - every step "
              f"**{diff.mean:+.2f} [{diff.low:+.2f}, {diff.high:+.2f}]** points (95 % t interval, "
              f"{len(args.seed_list)} seeds). Each run's seconds include its validation passes and the probe's fit: "
              f"the teacher every step took {speed:.2f}x the cached runs' time."]
    write_text(args.out / "cache_pairs.md", "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
