"""The `repfusion` command: teacher, distill, finetune, probe, layers, demo."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .errors import RepFusionError
from .extras import vision_guard
from .flags import add_flag, add_old, boolean, three_floats


def _configured_run(verb: str, argv: list[str], schema: type, description: str, runner) -> tuple:
    """Shared by the training verbs: parse YAML + flags, check, run, return its result.

    Nothing is written until every check has passed: the runner builds everything, checks the resume
    checkpoint, and only then calls back to save the resolved config (on rank 0 only).
    """
    from .config import check_resume_config, config_parser, parse_config, save_resolved
    from .io import check_writable_dir

    parser = config_parser(f"repfusion {verb}", schema, description)
    run = parse_config(parser, schema, argv)
    run_dir = run.run_dir or Path("runs") / verb
    check_writable_dir(run_dir)
    if run.resume:
        check_resume_config(parser, run.namespace, run_dir)
    result = runner(run.config, run_dir, run.resume,
                    on_start=lambda: save_resolved(parser, run.namespace, run_dir / "config.yaml"))
    return run.config, run_dir, result


def _say(message: str) -> None:
    """The final line of a verb, printed by rank 0 only in a multi-process run."""
    from .run import is_rank_zero

    if is_rank_zero():
        print(message)


def _teacher(argv: list[str]) -> None:
    from .teachers.train import TeacherRun, train_teacher

    _, run_dir, out = _configured_run("teacher", argv, TeacherRun, "Train a DDPM teacher (save_pretrained).",
                                      train_teacher)
    _say(f"Teacher saved to {out} (load it with --teacher {out}); samples in {run_dir / 'samples.png'}")


def _distill(argv: list[str]) -> None:
    from .distill.run import DistillRun, run_distillation

    config, _, out = _configured_run("distill", argv, DistillRun, "RepFusion pre-training of a student from a DPM "
                                     "teacher.", run_distillation)
    _say(f"Distilled student saved to {out}; fine-tune it with: repfusion finetune --init {out.parent}"
         f"{data_flags(config.data)}")


def data_flags(data) -> str:
    """The data keys that differ from the defaults, as flags: the hint's next stage reads the same data."""
    import json
    import shlex
    from dataclasses import fields

    from .data import DataConfig

    defaults = DataConfig()
    shown = []
    for f in fields(DataConfig):
        value = getattr(data, f.name)
        if f.name not in ("label_fraction", "labels_per_class", "label_seed") and value != getattr(defaults, f.name):
            text = str(value).lower() if isinstance(value, bool) else (
                json.dumps(list(value)) if isinstance(value, (list, tuple)) else str(value))
            shown.append(f" --data.{f.name} {shlex.quote(text)}")
    return "".join(shown)


def _finetune(argv: list[str]) -> None:
    from .tasks.finetune import FinetuneRun, run_finetune

    description = "Fine-tuning for classification, segmentation or landmarks (--task; init: null = scratch)."
    config, run_dir, results = _configured_run("finetune", argv, FinetuneRun, description, run_finetune)
    shown = ", ".join(f"{k} {v:.4f}" for k, v in sorted(results.items()) if k.count("/") == 1)  # per-class: results.json
    _say(f"Test results ({config.init or 'scratch'}): {shown} (all in {run_dir / 'results.json'}); model saved to "
         f"{run_dir / 'model'}")


def _pretrain(argv: list[str]) -> None:
    from .pipeline import PretrainRun, run_pretrain

    _configured_run("pretrain", argv, PretrainRun, "One command from a folder of images to a distilled backbone "
                    "(and, with labels, a report against scratch, equal-compute scratch and a random-weight teacher).",
                    run_pretrain)


def _demo(argv: list[str]) -> None:
    from .demo import DemoConfig, quick, run_demo

    defaults = DemoConfig()
    parser = argparse.ArgumentParser(prog="repfusion demo", description="The whole pipeline on embedded data: "
                                     "digits classification (default), or face parsing / landmarks on generated faces.")
    parser.add_argument("--task", default="classification", choices=["classification", "segmentation", "landmarks"])
    add_flag(parser, "--run-dir", "--out", dest="out", default=None,
             help="Output folder (default runs/demo, runs/demo-<task> when dense).")
    parser.add_argument("--seeds", type=int, default=None, help="Fine-tuning seeds per arm (>= 2; default 5, dense 3).")
    add_flag(parser, "--data.label_fraction", "--label-fraction", dest="label_fraction", type=float,
             default=defaults.label_fraction,
             help="Classification: share of training labels fine-tuning sees (stratified, drawn per seed).")
    parser.add_argument("--labelled", type=int, default=None, help="Dense tasks: labelled training faces per seed.")
    parser.add_argument("--quick", action="store_true", help="One or two epochs per stage (a smoke run).")
    parser.add_argument("--resume", action="store_true", help="Reuse finished stages of --run-dir, continue the rest.")
    _add_progress(parser)
    args = parser.parse_args(argv)
    if args.task != "classification":
        _dense_demo(args)
        return
    cfg = DemoConfig(out=args.out or defaults.out, seeds=args.seeds or defaults.seeds,
                     label_fraction=args.label_fraction, progress=args.progress, resume=args.resume)
    run_demo(quick(cfg) if args.quick else cfg)


def _dense_demo(args: argparse.Namespace) -> None:
    from .dense_demo import DenseDemoConfig, quick_dense, run_dense_demo

    defaults = DenseDemoConfig()
    cfg = DenseDemoConfig(task=args.task, out=args.out, seeds=args.seeds or defaults.seeds,
                          labelled=args.labelled or defaults.labelled, progress=args.progress,
                          resume=args.resume)
    run_dense_demo(quick_dense(cfg) if args.quick else cfg)


def _add_progress(parser: argparse.ArgumentParser) -> None:
    """The training verbs' `--trainer.progress true|false`; `--no-progress` is its old spelling."""
    parser.add_argument("--trainer.progress", dest="progress", type=boolean, default=True, metavar="{true,false}",
                        help="Progress bars (default true).")
    add_old(parser, "--no-progress", "progress", "--trainer.progress false", nargs=0, const=False)


def _add_teacher_options(parser: argparse.ArgumentParser) -> None:
    """Options of class-conditional, ADM and latent teachers, shared by `probe` and `layers`."""
    add_flag(parser, "--teacher.class_label", "--class-label", dest="class_label", default="auto",
             help="Class-conditional teachers (ADM ImageNet, DiT): auto | dataset | null | a class index (default "
             "auto: DiT's null class, else class 0; dataset labels leak the label into the features).")
    add_flag(parser, "--teacher.adm_flags", "--adm-flags", dest="adm_flags", default="imagenet-64",
             help="ADM checkpoint's model flags: a preset (imagenet-64, imagenet-256, imagenet-256-uncond, lsun-256), "
             "a JSON object of flags, or guided-diffusion's MODEL_FLAGS string (\"--image_size 64 --num_channels "
             "192 ...\").")
    add_flag(parser, "--teacher.uncond_embedding", "--uncond-embedding", dest="uncond_embedding", default=None,
             help="Latent teachers without a text encoder: file with the empty-prompt embedding (default zeros, "
             "with a warning).")


def _teacher_options(args: argparse.Namespace) -> dict:
    import json

    flags = args.adm_flags
    if flags.lstrip().startswith("{"):
        try:
            flags = json.loads(flags)
        except ValueError:
            raise RepFusionError("--teacher.adm_flags is not valid JSON; give a preset name or a JSON object of "
                                 "flags.") from None
    return {"class_label": args.class_label, "adm_flags": flags, "uncond_embedding": args.uncond_embedding}


def _probe(argv: list[str]) -> None:
    from .analysis.probe import ProbeConfig, run_probe
    from .data import train_test_split
    from .teachers import load_teacher

    parser = argparse.ArgumentParser(prog="repfusion probe", description="What a teacher knows at each t (linear "
                                     "probe, effective rank, variance explained by t), or a frozen student's "
                                     "linear-probe and k-NN accuracy.")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--teacher", "--teacher.source", dest="teacher", help="Preset, save_pretrained folder, "
                        "pipeline folder (latent, DiT), guided-diffusion .pt file or hub id.")
    source.add_argument("--student", help="Distill run folder (or its student/), finetune run folder (or its "
                        "model/), or random[:ARCH] for a randomly initialised student.")
    _add_data_flags(parser)
    parser.add_argument("--timesteps", type=int, nargs="+", default=ProbeConfig().timesteps, help="Teacher only.")
    parser.add_argument("--modes", nargs="+", default=["clean", "noised"], choices=["clean", "noised"],
                        help="Teacher only.")
    parser.add_argument("--teacher.layer", dest="teacher_layer", nargs="+", default=None, metavar="LAYER",
                        help=f"One or more teacher layers (default its default_layer, {ProbeConfig().layers[0]} "
                        "for UNets).")
    parser.add_argument("--student.layer", dest="student_layer", default=None, metavar="LAYER",
                        help="The student's layer (default its feature layer).")
    add_old(parser, "--layer", "layer", "--teacher.layer (or --student.layer)", nargs="+")
    add_flag(parser, "--student.arch", "--arch", dest="arch", default=None,
             help="Architecture of a random student (default resnet18_cifar).")
    add_flag(parser, "--student.width", "--width", dest="width", type=float, default=1.0,
             help="Width of a random student.")
    add_flag(parser, "--data.mean", "--mean", dest="mean", nargs="+", default=None,
             help="Student pixel mean, [R,G,B] (default: its run's).")
    add_flag(parser, "--data.std", "--std", dest="std", nargs="+", default=None,
             help="Student pixel std, [R,G,B] (default: its run's).")
    parser.add_argument("--k", type=int, default=20, help="Neighbours of the student's k-NN classifier.")
    add_flag(parser, "--run-dir", "--out", dest="out", default=None,
             help="Output folder (default runs/probe or runs/student-probe).")
    _add_teacher_options(parser)
    args = parser.parse_args(argv)
    if args.student is not None:
        _probe_student(args)
        return
    if args.student_layer is not None:
        raise RepFusionError("--student.layer names a student's layer; a teacher's layers are --teacher.layer.")
    out = args.out or "runs/probe"
    teacher = load_teacher(args.teacher, **_teacher_options(args))
    layers = args.teacher_layer or getattr(args, "layer", None) or [teacher.default_layer]
    data = _probe_data(args, args.image_size or teacher.sample_size)
    train, test = train_test_split(data)  # a folder without split sub-folders: the training verbs' hold-out
    sample = train[0][0]
    teacher.check_input((1, *sample.shape))
    bad = [t for t in args.timesteps if not 0 <= t < teacher.num_timesteps]
    if bad:
        raise RepFusionError(f"Timestep {bad[0]} is outside [0, {teacher.num_timesteps}); pick smaller --timesteps.")
    cfg = ProbeConfig(timesteps=args.timesteps, modes=args.modes, layers=layers)
    print(f"Probing {args.teacher} ({', '.join(layers)}) on {len(train)} train / {len(test)} test images")
    run_probe(teacher, train, test, cfg, Path(out))
    print(f"Wrote {out}/probe.md, probe.json and probe.png")


def _add_data_flags(parser: argparse.ArgumentParser) -> None:
    """The probe's data keys, spelled as the training verbs' data section."""
    add_flag(parser, "--data.source", "--data", dest="data", default=None,
             help="digits | cifar | folder | tiny-imagenet (default: a student run's own data, else digits)")
    add_flag(parser, "--data.root", "--root", dest="root", default=None,
             help="Dataset folder (not needed for digits).")
    add_flag(parser, "--data.image_size", "--image-size", dest="image_size", type=int, default=None)
    add_flag(parser, "--data.split_seed", "--split-seed", dest="split_seed", type=int, default=None,
             help="A folder without train/ and val/: seed of the test hold-out the training verbs draw (the same "
             "key and default as theirs).")


def _probe_data(args: argparse.Namespace, image_size: int | None, run: dict | None = None):
    """The probe's data section: the training verbs' defaults, so a single folder's hold-out is theirs; a
    student run's own data (source, root, size, labels, split) when no --data.source is given."""
    from .data import DataConfig

    defaults = DataConfig()
    if args.data is None and run:
        keep = {k: run[k] for k in ("source", "root", "image_size", "labels", "split_seed") if run.get(k) is not None}
        data = DataConfig(**{**keep, **({"root": args.root} if args.root else {}),
                             **({"image_size": image_size} if image_size else {}),
                             **({"split_seed": args.split_seed} if args.split_seed is not None else {})})
    else:
        data = DataConfig(source=args.data or "digits", root=args.root, image_size=image_size,
                          split_seed=defaults.split_seed if args.split_seed is None else args.split_seed)
    return data


def _run_data(student: str) -> dict | None:
    """The data section of the run that trained `student` (its config.yaml), so a probe reads the same images."""
    import yaml

    from .analysis.student_probe import RANDOM_PREFIX, student_folder

    if student.split(":")[0] == RANDOM_PREFIX:
        return None
    folder = student_folder(student)
    for config in (folder / "config.yaml", folder.parent / "config.yaml"):
        if config.is_file():
            data = (yaml.safe_load(config.read_text()) or {}).get("data")
            return data if isinstance(data, dict) else None
    return None


def _probe_student(args: argparse.Namespace) -> None:
    from .analysis.student_probe import run_student_probe
    from .data import train_test_split

    if args.teacher_layer is not None:
        raise RepFusionError("--teacher.layer names a teacher's layers; a student's layer is --student.layer.")
    old_layer = getattr(args, "layer", None)  # the old --layer
    if old_layer is not None and len(old_layer) > 1:
        raise RepFusionError("A student is probed at one --student.layer; give a single layer name.")
    layer = args.student_layer or (old_layer[0] if old_layer else None)
    out = Path(args.out or "runs/student-probe")
    data = _probe_data(args, args.image_size, _run_data(args.student))
    train, test = train_test_split(data)  # a folder without split sub-folders: the training verbs' hold-out
    print(f"Probing student {args.student} on {len(train)} train / {len(test)} test images of {data.source}"
          f"{f' ({data.root})' if data.root else ''}")
    result = run_student_probe(args.student, train, test, out, layer=layer, mean=three_floats(args.mean, "--data.mean"),
                               std=three_floats(args.std, "--data.std"), arch=args.arch, width=args.width, k=args.k,
                               data_section={"source": data.source, "root": data.root, "image_size": data.image_size,
                                     "labels": data.labels, "split_seed": data.split_seed})
    knn = "-" if result["knn"] is None else f"{result['knn']:.4f}"  # None: too few labels per class (knn_note)
    print(f"Linear probe {result['linear_probe']:.4f}, k-NN {knn}; wrote {out}/student_probe.md "
          "and student_probe.json")


def _layers(argv: list[str]) -> None:
    from .layers import list_layers

    parser = argparse.ArgumentParser(prog="repfusion layers", description="List hookable modules with output shapes.")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--teacher", "--teacher.source", dest="teacher", help="Preset, save_pretrained folder, "
                        "pipeline folder (latent, DiT), guided-diffusion .pt file or hub id.")
    source.add_argument("--student.arch", "--student", dest="student", metavar="ARCH",
                        help="Student architecture name: built-in, timm:NAME or torchvision:NAME.")
    add_flag(parser, "--data.image_size", "--image-size", dest="image_size", type=int, default=None)
    add_flag(parser, "--student.width", "--width", dest="width", type=float, default=1.0,
             help="Student width multiplier.")
    _add_teacher_options(parser)
    args = parser.parse_args(argv)
    print(list_layers(teacher=args.teacher, student=args.student, image_size=args.image_size, width=args.width,
                      teacher_options=_teacher_options(args) if args.teacher else None))


def _export(argv: list[str]) -> None:
    from .export import run

    run(argv)


def _embed(argv: list[str]) -> None:
    from .embed import run

    run(argv)


VERBS = {
    "demo": (_demo, "the whole pipeline on embedded data, with a report"),
    "pretrain": (_pretrain, "one command: your folder (+ teacher, labels) to a distilled backbone and a report"),
    "teacher": (_teacher, "train a DDPM teacher"),
    "distill": (_distill, "RepFusion distillation of a student from a teacher"),
    "finetune": (_finetune, "fine-tune a distilled student (or train from scratch)"),
    "probe": (_probe, "what a teacher knows at each t, or a frozen student's probe accuracy"),
    "layers": (_layers, "list a teacher's or student's layers with output shapes"),
    "export": (_export, "a run's backbone as ONNX or torchvision-keyed weights"),
    "embed": (_embed, "pooled features of every image in a folder, with the file list"),
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
        with vision_guard():  # a torchvision built for another torch breaks Lightning's import: one sentence
            VERBS[verb][0](rest)
    except RepFusionError as e:
        print(f"error: {one_line(str(e))}", file=sys.stderr)
        return 1
    except OSError as e:  # a folder that turned read-only, a full disk: say what and where, not a traceback
        where = f" ({e.filename})" if getattr(e, "filename", None) else ""
        print(f"error: cannot write or read{where}: {e.strerror or e}; check the folder's permissions and free "
              "space, then rerun (with --resume if a checkpoint was written).", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("error: interrupted; rerun with --resume to continue from the last checkpoint.", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
