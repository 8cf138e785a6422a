"""Would a target averaged over noise levels carry more of the teacher than clean t = 0? (issue 23, item 1)

Before distilling from "features averaged over noise levels", measure what such a target holds: the pooled
features of the layer cifar_transfer distils (`up_blocks.0`) for the trained CIFAR teacher and its random-weight
twin, at clean t = 0 and at noised t, alone and averaged over sets of t (each t with its own seeded noise; a
repeated t with a second draw). A linear probe fitted on the training images outside the validation split and
scored on that split (the test split is not used) says how much of the label each target carries; trained -
random says how much of it the teacher's training put there. A target that probes no better than t = 0 is not
worth a distillation run.

    python benchmarks/t_average_probe.py   # writes benchmarks/results/t_average_probe.{json,md}
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from cifar_transfer import PROBE_LAYER, SHARED, portable_command
from teacher_layers_cifar import cifar_splits

# each target: the (mode, t, noise seed) points whose pooled features are averaged
TARGETS = {
    "clean t=0": [("clean", 0, 0)],
    "noised t=50": [("noised", 50, 0)],
    "noised t=100": [("noised", 100, 0)],
    "noised t=200": [("noised", 200, 0)],
    "noised t=100, 2 noise draws": [("noised", 100, 0), ("noised", 100, 5)],
    "mean of clean 0, noised 50, 100, 200": [("clean", 0, 0), ("noised", 50, 0), ("noised", 100, 0),
                                               ("noised", 200, 0)],
    "mean of clean 0, noised 100, 200, 400": [("clean", 0, 0), ("noised", 100, 0), ("noised", 200, 0),
                                                ("noised", 400, 0)],
    "mean of noised 50, 100, 200": [("noised", 50, 0), ("noised", 100, 0), ("noised", 200, 0)],
}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--data", type=Path, default=SHARED / "data" / "cifar10-subset")
    parser.add_argument("--teacher", default=str(SHARED / "teachers" / "cifar10-subset-ddpm-small"))
    parser.add_argument("--layer", default=PROBE_LAYER)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    parser.add_argument("--name", default="t_average_probe", help="Stem of the result files.")
    args = parser.parse_args()
    splits = cifar_splits(args.data, args.teacher)
    if splits is None:
        return
    from repfusion.analysis.probe import linear_probe, pooled_features
    from repfusion.io import write_json, write_text
    from repfusion.teachers import load_teacher

    points = sorted({point for target in TARGETS.values() for point in target})
    rows = []
    for name, teacher in (("trained", load_teacher(args.teacher)),
                          ("random", load_teacher(args.teacher, init="random", init_seed=0))):
        found = {}
        for mode, t, seed in points:  # fit and score images get different noise (seed, seed + 1), as probe_gap
            fit, y_fit = pooled_features(teacher, splits.train_set, t, mode, [args.layer], 256, seed)
            score, y_score = pooled_features(teacher, splits.val_set, t, mode, [args.layer], 256, seed + 1)
            found[(mode, t, seed)] = fit[args.layer], score[args.layer]
        for target, parts in TARGETS.items():
            fit = np.mean([found[p][0] for p in parts], axis=0)
            score = np.mean([found[p][1] for p in parts], axis=0)
            accuracy = linear_probe((fit, y_fit), (score, y_score), 2000)
            rows.append({"teacher": name, "target": target, "points": [list(p) for p in parts], "val_probe": accuracy})
            print(f"{name:>7} {target:<40} {100 * accuracy:.2f} %", flush=True)
    command = portable_command()
    teacher = Path(args.teacher).name  # the folder's name: its path is the machine's (../shared when run here)
    write_json(args.out / f"{args.name}.json", {"command": command, "teacher": teacher,
                                                "layer": args.layer, "rows": rows})
    get = {(r["teacher"], r["target"]): r["val_probe"] for r in rows}
    lines = ["# Targets averaged over noise levels: what they carry (CIFAR-10 subset)", "", f"Command: `{command}`", "",
             f"Teacher: `{teacher}` (the shared CIFAR teacher by default) and its random-weight twin (seed 0); layer `{args.layer}` (the one "
             "cifar_transfer distils). Linear probe on pooled features (averaged over the listed points, each with its "
             "own seeded noise), fitted on the training images outside the validation split, scored on the validation "
             "split (10 % of the training images; the test split is not used).", "",
             "| target | trained (%) | random (%) | trained - random |", "|---|---|---|---|"]
    for target in TARGETS:
        a, b = get[("trained", target)], get[("random", target)]
        lines.append(f"| {target} | {100 * a:.2f} | {100 * b:.2f} | {100 * (a - b):+.2f} |")
    write_text(args.out / f"{args.name}.md", "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
