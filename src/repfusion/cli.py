"""The `repfusion` command: teacher, distill, finetune, probe, layers, demo."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .errors import RepFusionError


def _configured_run(verb: str, argv: list[str], schema: type, description: str, runner) -> tuple:
    """Shared by the training verbs: parse YAML + flags, save the resolved config, run, return its result."""
    from .config import config_parser, parse_config, save_resolved

    parser = config_parser(f"repfusion {verb}", schema, description)
    run = parse_config(parser, schema, argv)
    run_dir = run.run_dir or Path("runs") / verb
    save_resolved(parser, run.namespace, run_dir / "config.yaml")
    return run.config, run_dir, runner(run.config, run_dir, run.resume)


def _teacher(argv: list[str]) -> None:
    from .teachers.train import TeacherRun, train_teacher

    _, run_dir, out = _configured_run("teacher", argv, TeacherRun, "Train a DDPM teacher (save_pretrained).",
                                      train_teacher)
    print(f"Teacher saved to {out} (load it with --teacher {out}); samples in {run_dir / 'samples.png'}")


def _distill(argv: list[str]) -> None:
    from .distill.run import DistillRun, run_distillation

    _, _, out = _configured_run("distill", argv, DistillRun, "RepFusion pre-training of a student from a DPM teacher.",
                                run_distillation)
    print(f"Distilled student saved to {out}; fine-tune it with: repfusion finetune --init {out.parent}")


def _finetune(argv: list[str]) -> None:
    from .tasks.finetune import FinetuneRun, run_finetune

    config, run_dir, results = _configured_run("finetune", argv, FinetuneRun,
                                               "Classification fine-tuning (init: null = scratch).", run_finetune)
    shown = ", ".join(f"{k} {v:.4f}" for k, v in sorted(results.items()))
    print(f"Test results ({config.init or 'scratch'}): {shown}; model saved to {run_dir / 'model'}")


def _demo(argv: list[str]) -> None:
    from .demo import DemoConfig, quick, run_demo

    parser = argparse.ArgumentParser(prog="repfusion demo", description="The whole pipeline on embedded data.")
    parser.add_argument("--out", default="runs/demo")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="One epoch per stage (a smoke run).")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    cfg = DemoConfig(out=args.out, seeds=args.seeds, progress=not args.no_progress)
    run_demo(quick(cfg) if args.quick else cfg)


def _probe(argv: list[str]) -> None:
    from .analysis.probe import ProbeConfig, run_probe
    from .data import DataConfig, build_split
    from .teachers import DiffusionTeacher

    parser = argparse.ArgumentParser(prog="repfusion probe", description="Linear probe / effective rank per t.")
    parser.add_argument("--teacher", required=True, help="Preset, save_pretrained folder or hub id.")
    parser.add_argument("--data", default="digits", help="digits | cifar | folder | tiny-imagenet")
    parser.add_argument("--root", default=None, help="Dataset folder (not needed for digits).")
    parser.add_argument("--image-size", type=int, default=None)
    parser.add_argument("--timesteps", type=int, nargs="+", default=ProbeConfig().timesteps)
    parser.add_argument("--modes", nargs="+", default=["clean", "noised"], choices=["clean", "noised"])
    parser.add_argument("--layer", default=ProbeConfig().layer)
    parser.add_argument("--out", default="runs/probe")
    args = parser.parse_args(argv)
    teacher = DiffusionTeacher.from_source(args.teacher)
    data = DataConfig(source=args.data, root=args.root, image_size=args.image_size or teacher.sample_size)
    train, test = build_split(data, train=True), build_split(data, train=False)
    sample = train[0][0]
    teacher.check_input((1, *sample.shape))
    bad = [t for t in args.timesteps if not 0 <= t < teacher.num_timesteps]
    if bad:
        raise RepFusionError(f"Timestep {bad[0]} is outside [0, {teacher.num_timesteps}); pick smaller --timesteps.")
    cfg = ProbeConfig(timesteps=args.timesteps, modes=args.modes, layer=args.layer)
    print(f"Probing {args.teacher} ({args.layer}) on {len(train)} train / {len(test)} test images")
    run_probe(teacher, train, test, cfg, Path(args.out))
    print(f"Wrote {args.out}/probe.md, probe.json and probe.png")


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
    "demo": (_demo, "the whole pipeline on embedded data, with a report"),
    "teacher": (_teacher, "train a DDPM teacher"),
    "distill": (_distill, "RepFusion distillation of a student from a teacher"),
    "finetune": (_finetune, "fine-tune a distilled student (or train from scratch)"),
    "probe": (_probe, "what the teacher knows at each t (linear probe, effective rank)"),
    "layers": (_layers, "list a teacher's or student's layers with output shapes"),
}


def one_line(message: str) -> str:
    """A DataLoader worker wraps our error with its traceback; keep only our sentence."""
    last = message.strip().splitlines()[-1] if message.strip() else message
    return last.split("RepFusionError: ", 1)[-1]


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
        print(f"error: {one_line(str(e))}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("error: interrupted; rerun with --resume to continue from the last checkpoint.", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
