"""Throughput of one whole distillation step (teacher, student, policy, losses, optimiser):
repfusion's step against a re-creation of the reference implementation's step (the full UNet forward
read by a hook, eager fp32), same models, same batch, same machine.

Arms: `reference` (full UNet, fp32, eager), `repfusion` (truncated teacher with the trainer's default speed
options for the device: `auto`, i.e. fp32 on a CPU, bf16 + channels-last on a GPU) and `repfusion-fast`
(truncated teacher, bf16 autocast + channels-last, plus torch.compile of the student with --compile).
Each arm runs in its own process (so peak memory is its own), alternating A, B, C, A, B, C, ...; medians.

    python benchmarks/distill_speed.py      # writes benchmarks/results/distill_speed.{json,md}
"""

from __future__ import annotations

import shlex
import argparse
import json
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

ARMS = {"reference": "full UNet forward + hook, eager fp32", "repfusion": "truncated teacher, default options",
        "repfusion-fast": "truncated teacher, bf16 + channels-last"}


def worker(arm: str, args: argparse.Namespace) -> dict:
    from repfusion.data import DataConfig
    from repfusion.distill.run import DistillRun, StudentSection, TeacherSection, build_distillation

    class Shape:  # build_distillation only needs shapes and the class count from the data
        config = DataConfig()

        def sample_shape(self):
            return (3, 32, 32)

        num_classes = 10
        train_set = None  # class-labelled images (no dense targets)

    torch.manual_seed(0)
    cfg = DistillRun(teacher=TeacherSection(source=args.teacher), student=StudentSection(args.student, args.width))
    module = build_distillation(cfg, Shape())
    from repfusion.fastpath import FastPaths, apply_fast_paths, autocast_context, resolve_fast_paths
    from repfusion.training import TrainerConfig

    module.truncate_teacher = arm != "reference"
    device = torch.device(args.device)
    fast = {"reference": FastPaths("32-true", False, False),
            "repfusion": resolve_fast_paths(TrainerConfig(), device),
            "repfusion-fast": FastPaths("bf16-mixed", True, args.compile)}[arm]
    module.to(device).train()
    module.teacher.eval()
    apply_fast_paths(module, fast)
    optimizer = torch.optim.SGD([p for n, p in module.named_parameters() if not n.startswith("teacher.")], lr=0.01,
                                momentum=0.9)
    images = torch.rand(args.batch, 3, 32, 32, device=device)
    labels = torch.randint(0, 10, (args.batch,), device=device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)

    def step() -> None:
        with autocast_context(fast, device):
            loss = module.training_step((images, labels), 0)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    import warnings

    warnings.filterwarnings("ignore")
    for _ in range(args.warmup):
        step()
    sync()
    times = []
    for _ in range(args.steps):
        start = time.perf_counter()
        step()
        sync()
        times.append(time.perf_counter() - start)
    peak_gpu = torch.cuda.max_memory_allocated() / 2**20 if device.type == "cuda" else None
    return {"arm": arm, "step_s": times, "peak_gpu_mb": peak_gpu, "fast_paths": str(fast)}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--worker", choices=list(ARMS))
    parser.add_argument("--teacher", default="ddpm-cifar10-32")
    parser.add_argument("--student", default="resnet18_cifar")
    parser.add_argument("--width", type=float, default=1.0)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--compile", action="store_true", help="repfusion-fast also compiles the student")
    parser.add_argument("--arms", nargs="+", default=list(ARMS), choices=list(ARMS))
    parser.add_argument("--name", default="distill_speed", help="result file stem")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args()
    if args.worker:
        result = worker(args.worker, args)
        result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print("RESULT " + json.dumps(result))
        return
    passthrough = [f"--{k}={v}" for k, v in vars(args).items()
                   if k not in ("worker", "out", "rounds", "compile", "arms", "name")] + ["--compile"] * args.compile
    runs: dict[str, list[dict]] = {arm: [] for arm in args.arms}
    for round_ in range(args.rounds):
        for arm in args.arms:
            out = subprocess.run([sys.executable, __file__, "--worker", arm, *passthrough], capture_output=True,
                                 text=True, check=True).stdout
            result = json.loads(next(l for l in out.splitlines() if l.startswith("RESULT "))[7:])
            runs[arm].append(result)
            print(f"round {round_} {arm:>9}: median step {statistics.median(result['step_s']):.3f} s, "
                  f"peak RSS {result['peak_rss_mb']:.0f} MB", flush=True)
    summary = {}
    for arm, results in runs.items():
        step = statistics.median([t for r in results for t in r["step_s"]])
        summary[arm] = {"median_step_s": step, "images_per_s": args.batch / step,
                        "peak_rss_mb": max(r["peak_rss_mb"] for r in results),
                        "peak_gpu_mb": results[0]["peak_gpu_mb"]}
    speedups = {arm: summary["reference"]["median_step_s"] / s["median_step_s"] for arm, s in summary.items()
                if arm != "reference" and "reference" in summary}
    speedup = speedups.get("repfusion", float("nan"))
    command = shlex.join(["python", *sys.argv])
    env = {"device": args.device, "torch": torch.__version__, "threads": torch.get_num_threads(),
           "machine": platform.machine(), "cpu_count": __import__("os").cpu_count()}
    args.out.mkdir(parents=True, exist_ok=True)
    from repfusion.io import write_json, write_text

    config = {k: v for k, v in vars(args).items() if k != "out"}
    write_json(args.out / f"{args.name}.json", {"command": command, "env": env, "config": config, "summary": summary,
                                               "speedup": speedup, "speedups": speedups, "runs": runs})
    rows = "\n".join(f"| {arm} ({ARMS[arm]}) | {s['median_step_s']:.3f} | {s['images_per_s']:.1f} | "
                     f"{s['peak_rss_mb']:.0f} |" + (f" {s['peak_gpu_mb']:.0f} |" if s["peak_gpu_mb"] else " - |")
                     for arm, s in summary.items())
    shown = ", ".join(f"{arm} **{x:.2f}x**" for arm, x in speedups.items())
    write_text(args.out / f"{args.name}.md", f"""# Distillation step throughput

Command: `{command}`

{args.device}, torch {torch.__version__}, {env['threads']} threads. Teacher `{args.teacher}` (random weights,
same architecture), student `{args.student}` width {args.width}, hint loss, reinforced policy, batch {args.batch};
median over {args.rounds} alternating rounds x {args.steps} timed steps (after {args.warmup} warm-up).

| step | median s / step | images / s | peak RSS MB | peak GPU MB |
|---|---|---|---|---|
{rows}

Speed-up over the reference step: {shown}.
""")
    print(f"speed-ups {shown}")


if __name__ == "__main__":
    main()
