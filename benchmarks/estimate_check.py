"""Does `pretrain` finish in the time it says up front? (issue 25, item 1)

Writes scikit-learn's 1,797 digits as grayscale PNGs in class sub-folders (a user's folder, not the embedded
source), runs `repfusion pretrain --data.root FOLDER --data.label_fraction 0.1` with no budget given (so the
auto budget of this machine applies), and compares the estimate printed before the first stage with the
measured time of every stage and of the whole run.

    python benchmarks/estimate_check.py [--size 16] [--time 10min]   # writes results/estimate_check.{json,md}
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import platform
import shlex
import shutil
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def write_folder(root: Path, size: int) -> int:
    from PIL import Image

    from repfusion.data.digits import digits

    count = 0
    for train in (True, False):
        data = digits(train, image_size=size)
        for i in range(len(data)):
            image, label = data[i]
            path = root / str(label) / f"{'a' if train else 'b'}{i}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(image[0].numpy()).save(path)
            count += 1
    return count


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--size", type=int, default=16)
    parser.add_argument("--time", default=None, help="pass --time to pretrain (a wall-time target)")
    parser.add_argument("--work", type=Path, default=ROOT / "runs" / "estimate_check")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    parser.add_argument("--name", default="estimate_check")
    parser.add_argument("--seeds", type=int, default=None, help="pass --seeds to pretrain (null: its default, 3)")
    parser.add_argument("--seed-offset", type=int, default=0, help="pass --seed_offset to pretrain (the first seed)")
    args = parser.parse_args()
    from repfusion.cli import main as repfusion
    from repfusion.io import write_json, write_text
    from repfusion.pipeline.progress import clock

    shutil.rmtree(args.work, ignore_errors=True)
    images = write_folder(args.work / "digits", args.size)
    argv = ["pretrain", "--data.root", str(args.work / "digits"), "--data.label_fraction", "0.1",
            "--trainer.progress", "false"]
    if args.time:
        argv += ["--time", args.time]
    if args.seeds is not None:
        argv += ["--seeds", str(args.seeds)]
    if args.seed_offset:
        argv += ["--seed_offset", str(args.seed_offset)]
    argv += ["--run-dir", str(args.work / "run")]  # last: the recorded command leaves it out
    printed = io.StringIO()
    began = time.time()
    with contextlib.redirect_stdout(printed):
        code = repfusion(argv)
    wall = time.time() - began
    sys.stdout.write(printed.getvalue()[-3000:])
    if code != 0:
        raise SystemExit(code)
    result = json.loads((args.work / "run" / "results.json").read_text())
    estimate, spent = result["estimate_s"], result["timings_s"]
    after = result.get("estimate_after_choice_s", estimate)
    said = sum(estimate.values())
    record = {"command": "python " + shlex.join(["benchmarks/estimate_check.py", *sys.argv[1:]]),
              "pretrain": "repfusion " + shlex.join(argv[:1] + ["--data.root", "DIGITS"] + argv[3:-2]),
              "machine": platform.processor() or platform.machine(), "images": images, "size": args.size,
              "seeds": result["seeds"], "paired": result.get("paired", []),
              "budget": result["budget"], "estimate_s": estimate, "timings_s": spent, "estimate_total_s": said,
              "estimate_after_choice_s": after,
              "wall_s": wall, "ratio": wall / said}
    write_json(args.out / f"{args.name}.json", record)
    rows = [f"| {name} | {clock(estimate.get(name, 0))} | {clock(after.get(name, 0))} | {clock(spent.get(name, 0))} |"
            for name in estimate]
    said_after = sum(after.values())
    write_text(args.out / f"{args.name}.md", "\n".join([
        "# Does `pretrain` finish in the time it says up front?", "",
        f"Command: `{record['command']}`, which runs `{record['pretrain']}` on {images} grayscale {args.size} px "
        "digit PNGs in class sub-folders, no budget given.", "",
        f"Budget: {result['budget']['name']} ({result['budget']['reason']}): "
        + ", ".join(f"{k} {v:g}" for k, v in result["budget"]["filled"].items()) + ".", "",
        f"Chosen layer: {result['choice']['layer']}, {result['choice']['mode']}, t = {result['choice']['t']}; after "
        "the choice the pipeline re-plans the later stages with the teacher truncated there.", "",
        "| stage | estimated before the first stage | re-planned after the choice | measured |", "|---|---|---|---|",
        *rows, f"| **whole run** | **{clock(said)}** | **{clock(said_after)}** | **{clock(wall)}** |", "",
        f"Measured / estimated: {wall / said:.2f}.", ""]))
    print(f"\nestimate {clock(said)}, measured {clock(wall)} (ratio {wall / said:.2f})")


if __name__ == "__main__":
    main()
