"""Which teacher layer, mode and t carry what the trained teacher knows beyond a random one?

Both teachers of one architecture (the trained CIFAR teacher of ../shared/teachers and the same
config with seeded random weights, `init: random`) are probed layer by layer on the CIFAR-10 subset:
logistic regression on pooled features fitted on the training images outside the validation split and
scored on the validation split (10 % of the training images, the split every benchmark holds out), so
the choice of layer and t never sees the test split. The column that matters is trained - random.

    python benchmarks/teacher_layers_cifar.py   # writes benchmarks/results/teacher_layers_cifar.{json,md}
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
LAYERS = ["down_blocks.1", "down_blocks.2", "mid_block", "mid_block.resnets.1.conv2", "up_blocks.0.resnets.1",
          "up_blocks.0", "up_blocks.1.resnets.1", "up_blocks.1", "up_blocks.2.resnets.1"]


def cifar_splits(data: Path, teacher: str):
    """The CIFAR subset set up with the 10 % validation split every benchmark holds out, or None (said) where the
    data or the teacher of ../shared is absent."""
    if not data.exists() or not Path(teacher).exists():
        print(f"skipped: {data} or {teacher} is absent (this benchmark needs ../shared).")
        return None
    from repfusion.data import DataConfig, ImageDataModule

    root = data / "cifar-10-batches-py"
    splits = ImageDataModule(DataConfig(source="cifar", root=str(root if root.is_dir() else data), val_fraction=0.1))
    splits.setup()
    return splits


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--data", type=Path, default=SHARED / "data" / "cifar10-subset")
    parser.add_argument("--teacher", default=str(SHARED / "teachers" / "cifar10-subset-ddpm-small"))
    parser.add_argument("--layers", nargs="+", default=LAYERS)
    parser.add_argument("--points", nargs="+", default=["clean:0", "noised:50", "noised:150"],
                        help="mode:t pairs to probe")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    parser.add_argument("--name", default="teacher_layers_cifar", help="Stem of the result files.")
    args = parser.parse_args()
    splits = cifar_splits(args.data, args.teacher)
    if splits is None:
        return
    from repfusion.analysis.probe import probe_gap
    from repfusion.io import write_json, write_text
    from repfusion.teachers import load_teacher

    trained, random = load_teacher(args.teacher), load_teacher(args.teacher, init="random", init_seed=0)
    rows = []
    for point in args.points:
        mode, t = point.split(":")
        probed = probe_gap(trained, random, splits.train_set, splits.val_set, int(t), mode, args.layers, 2000)
        for name, scores in (("trained", probed.trained), ("random", probed.random)):
            for layer in args.layers:
                rows.append({"teacher": name, "mode": mode, "t": int(t), "layer": layer, "val_probe": scores[layer]})
                print(f"{name:>7} {mode:>6} t={t:<4} {layer:<28} {100 * scores[layer]:.2f} %", flush=True)
    command = shlex.join(["python", *sys.argv])
    write_json(args.out / f"{args.name}.json", {"command": command, "rows": rows})
    lines = ["# Teacher layers on the CIFAR-10 subset: trained vs random weights", "", f"Command: `{command}`", "",
             f"Teacher: `{args.teacher}`.", "",
             "Linear probe on pooled features, fitted on the training images outside the validation split, scored on "
             "the validation split (10 % of the training images; the test split is not used).", "",
             "| mode | t | layer | trained (%) | random (%) | trained - random |", "|---|---|---|---|---|---|"]
    get = {(r["teacher"], r["mode"], r["t"], r["layer"]): r["val_probe"] for r in rows}
    for point in args.points:
        mode, t = point.split(":")
        for layer in args.layers:
            a, b = get[("trained", mode, int(t), layer)], get[("random", mode, int(t), layer)]
            lines.append(f"| {mode} | {t} | `{layer}` | {100 * a:.2f} | {100 * b:.2f} | {100 * (a - b):+.2f} |")
    write_text(args.out / f"{args.name}.md", "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
