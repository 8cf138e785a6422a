"""Is the digits folder's distilled student under its random initialisation because distillation, or the
teacher's training, is too short? (issue 23, item 2)

On the grayscale digits PNG folder `estimate_check.py` writes (1,287 distillation images, batch 128: 10 steps an
epoch), reruns `repfusion pretrain` with the teacher that run trained (12 epochs, 120 steps) or a teacher trained
for the epochs given, and the distillation epochs (and cache) given, and compares the frozen probes of the
distilled students with the random initialisation's and the random-weight teacher's student's. Fine-tuning is cut
to one plain epoch: only the frozen probes (fitted before fine-tuning) are read here.

    python benchmarks/estimate_check.py        # the folder and its teacher, in runs/estimate_check
    python benchmarks/distill_steps_digits.py [--lock LOCK]   # writes results/distill_steps_digits.{json,md}
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# (teacher.epochs: None for estimate_check's 12-epoch teacher; distill.epochs; distill.cache_views; the teacher's
# input: "choice" (the pretrain's own label-free choice) or a pinned mode:t, which reuses the teacher its epochs'
# "choice" run trained)
RUNS = ((None, "6", "0", "choice"), (None, "6", "2", "choice"), (None, "24", "2", "choice"),
        (None, "60", "2", "choice"), ("48", "24", "2", "choice"), ("120", "24", "2", "choice"),
        ("120", "24", "2", "clean:0"), ("120", "24", "0", "noised:100"))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--work", type=Path, default=ROOT / "runs" / "estimate_check")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    parser.add_argument("--lock", default=None, help="a lock file each pretrain run takes")
    parser.add_argument("--seeds", type=int, default=3, help="pretrain --seeds")
    parser.add_argument("--name", default="distill_steps_digits", help="Stem of the result files.")
    parser.add_argument("--seed-offset", type=int, default=0,
                        help="pretrain --seed_offset: the first seed (runs on other seeds are named -sK and kept apart)")
    args = parser.parse_args()
    from repfusion.analysis.controls import steps_per_epoch
    from repfusion.analysis.stats import paired_difference
    from repfusion.io import write_json, write_text
    from repfusion.pipeline.estimate import distill_images
    from repfusion.pipeline.inspect import DataFacts

    shown = ["LOCK" if args.lock and arg == args.lock else arg for arg in sys.argv[1:]]  # no machine's path
    rows, record = [], {"command": "python " + shlex.join(["benchmarks/distill_steps_digits.py", *shown]), "runs": {}}
    for teacher_epochs, epochs, views, feed in RUNS:
        trained = f"t{teacher_epochs}-e{epochs}-c2" if teacher_epochs else None  # the run that trained it (seeds 0-2)
        name = (f"t{teacher_epochs}-" if teacher_epochs else "") + f"e{epochs}-c{views}" + (
            "" if feed == "choice" else "-" + feed.replace(":", "")) + (
            f"-s{args.seed_offset}" if args.seed_offset or args.seeds != 3 else "")
        run = args.out / "distill_steps_digits" / f"{name}.json"
        if not run.exists():
            work = args.work / f"steps-{name}"
            if feed == "choice" and teacher_epochs:
                teacher = ["--teacher.epochs", teacher_epochs]
            else:
                source = args.work / (f"steps-{trained}" if teacher_epochs else "run") / "teacher" / "teacher"
                teacher = ["--teacher.source", str(source)]
            if feed != "choice":
                mode, t = feed.split(":")
                teacher += ["--choice.modes", f"[{mode}]", "--choice.timesteps", f"[{t}]"]
            argv = ["repfusion", "pretrain", "--data.root", str(args.work / "digits"), "--data.label_fraction", "0.1",
                    *teacher, "--distill.epochs", epochs,
                    "--distill.cache_views", views, "--finetune.epochs", "1", "--finetune.protocols", "[plain]",
                    "--seeds", str(args.seeds), "--seed_offset", str(args.seed_offset),
                    "--trainer.progress", "false", "--run-dir", str(work)]
            subprocess.run((["flock", args.lock] if args.lock else []) + argv, check=True)
            run.parent.mkdir(parents=True, exist_ok=True)
            run.write_text((work / "results.json").read_text().replace(f"{ROOT}/", ""))  # paths from the repo
        result = json.loads(run.read_text())
        probe = {arm: [100 * s["linear_probe"] for s in scores] for arm, scores in result["probe"].items()}
        init = paired_difference(probe["repfusion"], probe["random init"])
        random = paired_difference(probe["repfusion"], probe["random-teacher"])
        data = result["data"]  # the steps of one distillation epoch on this folder, as the budget counts them
        epoch_steps = steps_per_epoch(distill_images(DataFacts(**data["facts"]), data["val_fraction"]),
                                      result["config"]["distill"]["batch_size"] or data["batch_size"])
        steps = int(epochs) * epoch_steps
        record["runs"][name] = {"teacher_epochs": int(teacher_epochs or 12), "epochs": int(epochs),
                                "cache_views": int(views), "steps": steps, "choice": result["choice"], "probe": probe,
                                "seeds": result.get("seeds", list(range(result["config"]["seeds"]))),
                                "teacher_s": result["timings_s"]["teacher"], "distil_s": result["timings_s"]["distil"],
                                "paired": {"repfusion - random init": init.as_dict(),
                                           "repfusion - random-teacher": random.as_dict()}}
        mean = {arm: sum(v) / len(v) for arm, v in probe.items()}
        chosen = result["choice"]
        fed = f"`{chosen['layer']}` {chosen['mode']} t = {chosen['t']}" + (" (pinned)" if feed != "choice" else "")
        rows.append(f"| {teacher_epochs or 12} | {fed} | {epochs} | {views} | {steps} | {mean['random init']:.2f} | "
                    f"{mean['repfusion']:.2f} | "
                    f"{mean['random-teacher']:.2f} | {init.mean:+.2f} [{init.low:+.2f}, {init.high:+.2f}] | "
                    f"{random.mean:+.2f} [{random.low:+.2f}, {random.high:+.2f}] | {result['timings_s']['distil']:.0f} |")
    write_json(args.out / f"{args.name}.json", record)
    write_text(args.out / f"{args.name}.md", "\n".join([
        "# Distillation steps on the digits PNG folder: the frozen probe against its random initialisation", "",
        f"Command: `{record['command']}` (after `python benchmarks/estimate_check.py`)", "",
        "1,797 digits as 16 px grayscale PNGs, 1,287 distillation images (10 steps an epoch at batch 128), 143 "
        "labelled training images fit each linear probe, scored on the 143-image validation split; the teacher "
        "input the pretrain chose (label-free: `up_blocks.0`, and the t of largest effective rank there) or the "
        f"one pinned; seeds {args.seed_offset}-{args.seed_offset + args.seeds - 1}, each with its own distillations; 2-core AMD EPYC. Teachers trained "
        "by `pretrain` at its defaults (lr 2e-4, batch 128): 12 epochs (120 steps) end at a training loss of 0.113, "
        "48 at 0.036, 120 at 0.023.", "",
        "| teacher epochs | teacher input | distill epochs | cache views | steps | random init probe (%) | "
        "repfusion (%) | random-teacher student (%) | repfusion - random init [95 % CI] | "
        "repfusion - random teacher [95 % CI] | distil s (6 runs) |",
        "|---|---|---|---|---|---|---|---|---|---|---|", *rows, "",
        "Six epochs (the CPU budget before this benchmark) are 60 steps here: the student has left its random "
        "initialisation without yet learning the teacher's features. From 240 steps on, both distilled students "
        "probe above the random initialisation; the CPU budget now raises the distillation epochs it fills to at "
        "least 240 steps (`pipeline.budget.MIN_DISTILL_STEPS`). The random-weight teacher's student is above the "
        "trained teacher's in every row, also with a teacher trained 4 and 10 times longer, at the t the choice "
        "took, at t = 0 and with noised input at t = 100: on this folder the gap to the random teacher does not "
        "come from an undertrained teacher. Random features of digits are already nearly as separable as the "
        "trained teacher's (probe with every label 93.7 against 96.5 % at `up_blocks.0`, "
        "choice_label_free_digits.md), so the trained teacher has little to give that a random one does not.", ""]))


if __name__ == "__main__":
    main()
