"""The `repfusion` command: teacher, distill, finetune, probe, layers, demo."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .errors import RepFusionError


def _teacher(argv: list[str]) -> None:
    from .config import config_parser, parse_config, save_resolved
    from .teachers.train import TeacherRun, train_teacher

    parser = config_parser("repfusion teacher", TeacherRun, "Train a DDPM teacher; saved with save_pretrained.")
    run = parse_config(parser, TeacherRun, argv)
    run_dir = run.run_dir or Path("runs/teacher")
    save_resolved(parser, run.namespace, run_dir / "config.yaml")
    out = train_teacher(run.config, run_dir, run.resume)
    print(f"Teacher saved to {out} (load it with --teacher {out}); samples in {run_dir / 'samples.png'}")


def _distill(argv: list[str]) -> None:
    from .config import config_parser, parse_config, save_resolved
    from .distill.run import DistillRun, run_distillation

    parser = config_parser("repfusion distill", DistillRun, "RepFusion pre-training of a student from a DPM teacher.")
    run = parse_config(parser, DistillRun, argv)
    run_dir = run.run_dir or Path("runs/distill")
    save_resolved(parser, run.namespace, run_dir / "config.yaml")
    out = run_distillation(run.config, run_dir, run.resume)
    print(f"Distilled student saved to {out}; fine-tune it with: repfusion finetune --init {out}")


def _finetune(argv: list[str]) -> None:
    from .config import config_parser, parse_config, save_resolved
    from .tasks.finetune import FinetuneRun, run_finetune

    parser = config_parser("repfusion finetune", FinetuneRun, "Classification fine-tuning (init: null = scratch).")
    run = parse_config(parser, FinetuneRun, argv)
    run_dir = run.run_dir or Path("runs/finetune")
    save_resolved(parser, run.namespace, run_dir / "config.yaml")
    results = run_finetune(run.config, run_dir, run.resume)
    shown = ", ".join(f"{k} {v:.4f}" for k, v in sorted(results.items()))
    print(f"Test results ({run.config.init or 'scratch'}): {shown}; model saved to {run_dir / 'model'}")


def _layers(argv: list[str]) -> None:
    from .layers import list_layers

    parser = argparse.ArgumentParser(prog="repfusion layers", description="List hookable modules with output shapes.")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--teacher", help="Preset, save_pretrained folder or hub id.")
    source.add_argument("--student", help="Student architecture name.")
    parser.add_argument("--image-size", type=int, default=None)
    parser.add_argument("--width", type=float, default=1.0, help="Student width multiplier.")
    args = parser.parse_args(argv)
    print(list_layers(teacher=args.teacher, student=args.student, image_size=args.image_size, width=args.width))


VERBS = {
    "teacher": (_teacher, "train a DDPM teacher"),
    "distill": (_distill, "RepFusion distillation of a student from a teacher"),
    "finetune": (_finetune, "fine-tune a distilled student (or train from scratch)"),
    "layers": (_layers, "list a teacher's or student's layers with output shapes"),
}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in VERBS:
        lines = "\n".join(f"  {name:<10} {help_}" for name, (_, help_) in VERBS.items())
        print(f"usage: repfusion VERB [options]\n\nverbs:\n{lines}")
        if argv and argv[0] not in ("-h", "--help"):
            from .errors import closest

            near = closest(argv[0], VERBS)
            print(f"error: unknown verb '{argv[0]}'" + (f"; did you mean {near[0]}?" if near else "."), file=sys.stderr)
            return 2
        return 0
    verb, rest = argv[0], argv[1:]
    try:
        VERBS[verb][0](rest)
    except RepFusionError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("error: interrupted; rerun with --resume to continue from the last checkpoint.", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
