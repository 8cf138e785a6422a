"""The `repfusion` command: one table of verbs (`VERBS`), each a schema dataclass and a runner, all parsed by
the same jsonargparse path (`config.config_parser`): every verb takes `--config FILE`, `--print_config` and
dotted keys, and saves its resolved config as `config.yaml` (export: beside the file it writes, see
`verbs.ExportRun`). Old spellings are rewritten first by `flags.ALIASES`, with a note.

Schemas and runners are imported only when their verb runs: `repfusion --help` imports neither torch nor
Lightning.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import RepFusionError
from .extras import vision_guard
from .verbs import DemoRun, EmbedRun, ExportRun, LayersRun, ProbeRun


@dataclass(frozen=True)
class Invocation:
    """One parsed command line, as a runner receives it.

    save: writes the resolved config (every key, defaults included) to a path; a runner calls it once
    everything is checked, before (or, for a short verb, with) its first output.
    """

    verb: str
    config: Any
    run_dir: Path | None
    resume: bool
    save: Callable[[Path], None]
    check_resume: Callable[[Path], None]


@dataclass(frozen=True)
class Verb:
    """A verb: its schema (imported on use), its runner, a line of help and the parser's description.

    run_dir / resume: whether it takes --run-dir (an output folder) and --resume; positional: the key a
    leading plain value is (export's RUN).
    """

    schema: Callable[[], type]
    run: Callable[[Invocation], None]
    help: str
    description: str
    run_dir: bool = True
    resume: bool = False
    positional: str | None = None


def _training(inv: Invocation, runner) -> tuple:
    """Shared by the training verbs: check the output folder (and a resume), run, return the result.

    Nothing is written until every check has passed: the runner builds everything, checks the resume
    checkpoint, and only then calls back to save the resolved config (on rank 0 only).
    """
    from .io import check_writable_dir

    run_dir = inv.run_dir or Path("runs") / inv.verb
    check_writable_dir(run_dir)
    if inv.resume:
        inv.check_resume(run_dir)
    result = runner(inv.config, run_dir, inv.resume, on_start=lambda: inv.save(run_dir / "config.yaml"))
    return inv.config, run_dir, result


def _say(message: str) -> None:
    """The final line of a verb, printed by rank 0 only in a multi-process run."""
    from .run import is_rank_zero

    if is_rank_zero():
        print(message)


def _teacher(inv: Invocation) -> None:
    from .teachers.train import train_teacher

    _, run_dir, out = _training(inv, train_teacher)
    _say(f"Teacher saved to {out} (load it with --teacher {out}); samples in {run_dir / 'samples.png'}")


def _distill(inv: Invocation) -> None:
    from .distill.run import run_distillation

    config, _, out = _training(inv, run_distillation)
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


def _finetune(inv: Invocation) -> None:
    from .tasks.finetune import run_finetune

    config, run_dir, results = _training(inv, run_finetune)
    shown = ", ".join(f"{k} {v:.4f}" for k, v in sorted(results.items()) if k.count("/") == 1)  # per-class: results.json
    _say(f"Test results ({config.init or 'scratch'}): {shown} (all in {run_dir / 'results.json'}); model saved to "
         f"{run_dir / 'model'}")


def _pretrain(inv: Invocation) -> None:
    from .pipeline import run_pretrain

    _training(inv, run_pretrain)


def _demo(inv: Invocation) -> None:
    from . import demo

    cfg = inv.config
    if cfg.task != "classification":
        _dense_demo(inv)
        return
    defaults = demo.DemoConfig()
    run = demo.DemoConfig(out=str(inv.run_dir or defaults.out), seeds=cfg.seeds or defaults.seeds,
                          label_fraction=defaults.label_fraction if cfg.data.label_fraction is None
                          else cfg.data.label_fraction, progress=cfg.trainer.progress, resume=inv.resume,
                          protocols=cfg.finetune.protocols)
    run = demo.quick(run) if cfg.quick else run
    demo.run_demo(run, on_start=lambda: inv.save(Path(run.out) / "config.yaml"))


def _dense_demo(inv: Invocation) -> None:
    from . import dense_demo

    cfg = inv.config
    defaults = dense_demo.DenseDemoConfig()
    run = dense_demo.DenseDemoConfig(task=cfg.task, out=None if inv.run_dir is None else str(inv.run_dir),
                                     seeds=cfg.seeds or defaults.seeds, labelled=cfg.labelled or defaults.labelled,
                                     progress=cfg.trainer.progress, resume=inv.resume)
    run = dense_demo.quick_dense(run) if cfg.quick else run
    dense_demo.run_dense_demo(run, on_start=lambda: inv.save(run.folder / "config.yaml"))


def _probe(inv: Invocation) -> None:
    from .analysis import probe
    from .data import train_test_split
    from .io import check_writable_dir
    from .teachers import load_teacher

    cfg = inv.config
    if cfg.student.source is not None:
        _probe_student(inv)
        return
    out = inv.run_dir or Path("runs/probe")
    check_writable_dir(out)
    teacher = load_teacher(cfg.teacher.source, **cfg.teacher.options())
    layers = cfg.teacher.layers() or [teacher.default_layer]
    data = _probe_data(cfg.data, cfg.data.image_size or teacher.sample_size)
    train, test = train_test_split(data)  # a folder without split sub-folders: the training verbs' hold-out
    sample = train[0][0]
    teacher.check_input((1, *sample.shape))
    bad = [t for t in cfg.probe.timesteps if not 0 <= t < teacher.num_timesteps]
    if bad:
        raise RepFusionError(f"Timestep {bad[0]} is outside [0, {teacher.num_timesteps}); pick smaller "
                             "--probe.timesteps.")
    probe_cfg = probe.ProbeConfig(timesteps=cfg.probe.timesteps, modes=cfg.probe.modes, layers=layers)
    print(f"Probing {cfg.teacher.source} ({', '.join(layers)}) on {len(train)} train / {len(test)} test images")
    probe.run_probe(teacher, train, test, probe_cfg, out)
    inv.save(out / "config.yaml")
    print(f"Wrote {out}/probe.md, probe.json, probe.png and config.yaml")


def _probe_data(section, image_size: int | None, run: dict | None = None):
    """The probe's data section: the training verbs' defaults, so a single folder's hold-out is theirs; a
    student run's own data (source, root, size, labels, split) when no --data.source is given."""
    from .data import DataConfig

    defaults = DataConfig()
    if section.source is None and run:
        keep = {k: run[k] for k in ("source", "root", "image_size", "labels", "split_seed") if run.get(k) is not None}
        data = DataConfig(**{**keep, **({"root": section.root} if section.root else {}),
                             **({"image_size": image_size} if image_size else {}),
                             **({"split_seed": section.split_seed} if section.split_seed is not None else {})})
    else:
        data = DataConfig(source=section.source or "digits", root=section.root, image_size=image_size,
                          split_seed=defaults.split_seed if section.split_seed is None else section.split_seed)
    return data


def _run_data(student: str) -> dict | None:
    """The data section of the run that trained `student` (its config.yaml), so a probe reads the same images."""
    from .analysis.student_probe import RANDOM_PREFIX
    from .run_folder import run_data_section, student_export

    if student.split(":")[0] == RANDOM_PREFIX:
        return None
    return run_data_section(student_export(student)) or None


def _probe_student(inv: Invocation) -> None:
    from .analysis import student_probe
    from .data import train_test_split
    from .io import check_writable_dir

    cfg = inv.config
    student = cfg.student
    out = inv.run_dir or Path("runs/student-probe")
    check_writable_dir(out)
    data = _probe_data(cfg.data, cfg.data.image_size, _run_data(student.source))
    train, test = train_test_split(data)  # a folder without split sub-folders: the training verbs' hold-out
    print(f"Probing student {student.source} on {len(train)} train / {len(test)} test images of {data.source}"
          f"{f' ({data.root})' if data.root else ''}")
    result = student_probe.run_student_probe(
        student.source, train, test, out, layer=student.layer, mean=None if cfg.data.mean is None else list(cfg.data.mean),
        std=None if cfg.data.std is None else list(cfg.data.std), arch=student.arch, width=student.width,
        k=cfg.probe.k, data_section={"source": data.source, "root": data.root, "image_size": data.image_size,
                                     "labels": data.labels, "split_seed": data.split_seed})
    inv.save(out / "config.yaml")
    knn = "-" if result["knn"] is None else f"{result['knn']:.4f}"  # None: too few labels per class (knn_note)
    print(f"Linear probe {result['linear_probe']:.4f}, k-NN {knn}; wrote {out}/student_probe.md, "
          "student_probe.json and config.yaml")


def _layers(inv: Invocation) -> None:
    from . import layers
    from .io import check_writable_dir, write_text

    cfg = inv.config
    if inv.run_dir is not None:
        check_writable_dir(inv.run_dir)
    table = layers.list_layers(teacher=cfg.teacher.source, student=cfg.student.arch, image_size=cfg.data.image_size,
                               width=cfg.student.width,
                               teacher_options=cfg.teacher.options() if cfg.teacher.source else None)
    print(table)
    if inv.run_dir is not None:  # without --run-dir the table is only printed, as before
        write_text(inv.run_dir / "layers.txt", table + "\n")
        inv.save(inv.run_dir / "config.yaml")


def _export(inv: Invocation) -> None:
    from .export import run_export

    run_export(inv.config, inv.save)


def _embed(inv: Invocation) -> None:
    from .embed import run_embed

    run_embed(inv.config, inv.run_dir or Path("runs/embed"), inv.save)


# The training verbs' schemas live beside their runners, which import torch: imported when the verb runs.
def _pretrain_schema() -> type:
    from .pipeline import PretrainRun

    return PretrainRun


def _teacher_schema() -> type:
    from .teachers.train import TeacherRun

    return TeacherRun


def _distill_schema() -> type:
    from .distill.run import DistillRun

    return DistillRun


def _finetune_schema() -> type:
    from .tasks.finetune import FinetuneRun

    return FinetuneRun


VERBS: dict[str, Verb] = {
    "demo": Verb(lambda: DemoRun, _demo, "the whole pipeline on embedded data, with a report",
                 "The whole pipeline on embedded data: digits classification (default), or face parsing / "
                 "landmarks on generated faces.", resume=True),
    "pretrain": Verb(_pretrain_schema, _pretrain,
                     "one command: your folder (+ teacher, labels) to a distilled backbone and a report",
                     "One command from a folder of images to a distilled backbone (and, with labels, a report "
                     "against scratch, equal-compute scratch and a random-weight teacher).", resume=True),
    "teacher": Verb(_teacher_schema, _teacher, "train a DDPM teacher",
                    "Train a DDPM teacher (save_pretrained).", resume=True),
    "distill": Verb(_distill_schema, _distill,
                    "RepFusion distillation of a student from a teacher",
                    "RepFusion pre-training of a student from a DPM teacher.", resume=True),
    "finetune": Verb(_finetune_schema, _finetune,
                     "fine-tune a distilled student (or train from scratch)",
                     "Fine-tuning for classification, segmentation or landmarks (--task; init: null = scratch).",
                     resume=True),
    "probe": Verb(lambda: ProbeRun, _probe,
                  "what a teacher knows at each t, or a frozen student's probe accuracy",
                  "What a teacher knows at each t (linear probe, effective rank, variance explained by t), or a "
                  "frozen student's linear-probe and k-NN accuracy."),
    "layers": Verb(lambda: LayersRun, _layers, "list a teacher's or student's layers with output shapes",
                   "List hookable modules with output shapes (with --run-dir, saved there as layers.txt)."),
    "export": Verb(lambda: ExportRun, _export, "a run's backbone as ONNX or torchvision-keyed weights",
                   "repfusion export RUN --format F: a distill or finetune run's backbone (or fine-tuned classifier) "
                   "as ONNX, its weights under torchvision's key names, or timm's Hub layout (RUN is "
                   "--student.source; the resolved config is written beside the output as NAME.config.yaml).",
                   run_dir=False, positional="--student.source"),
    "embed": Verb(lambda: EmbedRun, _embed,
                  "pooled features of every image in a folder, with the file list",
                  "Pooled features of every image under a folder (recursively), with the file list, for your own "
                  "downstream work."),
}


def run_verb(name: str, argv: list[str]) -> None:
    """Parse `argv` for the verb `name` (old spellings rewritten first) and run it."""
    from .config import check_resume_config, config_parser, parse_config, save_resolved
    from .flags import key_types, rewrite, show_shorthands

    verb = VERBS[name]
    schema = verb.schema()
    keys = key_types(schema)
    parser = config_parser(f"repfusion {name}", schema, verb.description, run_dir=verb.run_dir, resume=verb.resume)
    show_shorthands(parser, keys)
    parsed = parse_config(parser, schema, rewrite(name, argv, keys, verb.positional))
    verb.run(Invocation(name, parsed.config, parsed.run_dir, parsed.resume,
                        save=lambda path: save_resolved(parser, parsed.namespace, path),
                        check_resume=lambda run_dir: check_resume_config(parser, parsed.namespace, run_dir)))


def one_line(message: str) -> str:
    """A DataLoader worker wraps our error with its traceback; keep only our sentence."""
    last = message.strip().splitlines()[-1] if message.strip() else message
    return last.split("RepFusionError: ", 1)[-1]


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in VERBS:
        lines = "\n".join(f"  {name:<10} {verb.help}" for name, verb in VERBS.items())
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
            run_verb(verb, rest)
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
