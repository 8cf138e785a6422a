"""Teacher feature extraction: full UNet forward with a hook (the reference) vs stopping after the layer.

Both run the same `DiffusionTeacher` on the same inputs, interleaved, so machine noise hits both alike.

    python benchmarks/truncation.py     # writes benchmarks/results/truncation.{json,md}
"""

from __future__ import annotations

import shlex
import argparse
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

from repfusion.io import write_json, write_text
from repfusion.teachers import DEFAULT_TEACHER_LAYER, DiffusionTeacher, load_teacher


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--teacher", default="ddpm-cifar10-32")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--layer", default=DEFAULT_TEACHER_LAYER)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args()
    torch.manual_seed(0)
    teacher = load_teacher(args.teacher).to(args.device)
    size = teacher.sample_size
    x = torch.rand(args.batch, teacher.in_channels, size, size).to(args.device)  # [0, 1]: the teacher maps it
    t = torch.randint(0, teacher.num_timesteps, (args.batch,), device=args.device)
    layers = (args.layer,)
    same = torch.equal(teacher(x, t, layers)[args.layer], teacher(x, t, layers, truncate=False)[args.layer])
    sync = torch.cuda.synchronize if args.device.startswith("cuda") else (lambda: None)
    times: dict[str, list[float]] = {"full": [], "truncated": []}
    for _ in range(args.repeats):
        for name, truncate in (("full", False), ("truncated", True)):
            sync()
            start = time.perf_counter()
            teacher(x, t, layers, truncate=truncate)
            sync()
            times[name].append(time.perf_counter() - start)
    full, trunc = statistics.median(times["full"]), statistics.median(times["truncated"])
    command = shlex.join(["python", *sys.argv])
    result = {
        "command": command, "teacher": args.teacher, "layer": args.layer, "batch": args.batch,
        "device": args.device, "torch": torch.__version__, "threads": torch.get_num_threads(),
        "machine": platform.processor() or platform.machine(), "exactly_equal": same,
        "median_s": {"full": full, "truncated": trunc}, "speedup": full / trunc,
        "images_per_s": {"full": args.batch / full, "truncated": args.batch / trunc}, "all_s": times,
    }
    write_json(args.out / "truncation.json", result)
    write_text(args.out / "truncation.md", f"""# Truncated teacher forward

Command: `{command}` ({args.device}, torch {torch.__version__}, {torch.get_num_threads()} threads)

Teacher `{args.teacher}` (random weights, same architecture), layer `{args.layer}`, batch {args.batch},
median of {args.repeats} interleaved runs. Features identical to the full forward: **{same}**.

| forward | median s / batch | images / s |
|---|---|---|
| full UNet + hook (reference) | {full:.3f} | {args.batch / full:.0f} |
| truncated after the layer | {trunc:.3f} | {args.batch / trunc:.0f} |

Speed-up: **{full / trunc:.2f}x**.
""")
    print(f"full {full:.3f} s, truncated {trunc:.3f} s, speed-up {full / trunc:.2f}x, equal {same}")


if __name__ == "__main__":
    main()
