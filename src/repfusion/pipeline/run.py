"""`repfusion pretrain`: from a folder of images to a distilled backbone, and, with labels, to a report on
whether pre-training paid off against scratch, equal-compute scratch and a random-weight teacher.

Stages (each skipped on --resume once finished; an interrupted one continues from its checkpoint):
teacher (read, or trained on the folder without labels) -> layer / t choice -> distillation per seed from
the trained teacher and, with labels, from a random-weight one -> exported backbone (RUN/student) ->
with labels: frozen probes on the validation split and fine-tuning of the four arms (`repfusion.arms`) on a
stratified label fraction drawn per seed -> report (Markdown, plots, JSON). The distillations, fine-tunes and
their comparison are the one experiment runner (`experiment.run_arms`) over `classification`, with this
module's configs.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import torch

from ..analysis.controls import labelled_images, paired_entry, steps_per_epoch
from ..analysis.student_probe import probe_student
from ..data import DataConfig, ImageDataModule
from ..arms import ARMS, TEACHERS, distill_dir, run_once, seed_range
from ..distill.run import DistillRun, LossSection, StudentSection, TeacherSection
from ..distill.timesteps import TimestepConfig
from ..errors import RepFusionError
from ..experiment import Experiment, Plan, peak_rss_mb, run_arms
from ..io import replace_dir, staging_dir, write_json
from ..section import whole_number
from ..students import check_student
from ..tasks.finetune import FinetuneRun, ModelSection
from ..tasks.classification import check_probe_head, has_probe_head
from ..tasks.protocols import LPFT_LR, default_menu
from ..tasks.protocols import apply as apply_protocol
from ..tasks.teacher_in_loop import TeacherInLoopSection
from ..teachers import DiffusionTeacher
from ..teachers import load_teacher as teacher_from_source
from ..teachers.train import TeacherRun, train_teacher
from ..training import OptimConfig
from .choice import Choice, candidate_layers, check_choice, choose, read_choice
from .budget import (BudgetChoice, accelerated, apply_budget, auto_cache_views, budget_record, check_budget, fit_to_time,
                     parse_duration, raise_for_cache, undo_cache_raise)
from .config import PretrainRun
from .estimate import SAMPLE_STEPS, SAMPLES, clock_finetune, distill_images, stage_seconds, time_images, time_models
from .inspect import DataFacts, inspect_data, unlabeled_view
from .progress import TIMINGS_FILE, StageProgress, clock
from .report import card_metrics, write_report

SETTINGS_FILE = "pretrain.json"
BUDGET_FILE = "budget.json"  # what the budget filled in, so a resume keeps it
MIN_PROBE_LABELS = 200  # below this the trained - random probe gap is mostly sampling noise


def check_pretrain(cfg: PretrainRun) -> None:
    """What the pipeline's sections cannot check when built (each checks its own values, `repfusion.section`),
    before anything is loaded or written: the seeds, the budget and time target, a folder source's root, and
    whether the student can be built (kept here, not in `StudentChoice`: it imports the student's library)."""
    if not whole_number(cfg.seeds) or cfg.seeds < 1:
        raise RepFusionError(f"seeds must be a whole number >= 1 (or null for the budget's), not {cfg.seeds}.")
    if not whole_number(cfg.seed_offset) or cfg.seed_offset < 0:
        raise RepFusionError(f"seed_offset must be a whole number >= 0 (the first seed), not {cfg.seed_offset}.")
    check_budget(cfg)
    if cfg.data.source == "folder" and not cfg.data.root:
        raise RepFusionError("Give the folder of images with --data.root PATH (any nesting; class sub-folders or "
                             "--data.labels FILE.csv add labels).")
    if cfg.student.arch is not None:  # the default (resnet18_cifar or resnet18, from the image size) is built in
        check_student(cfg.student.arch, 1.0 if cfg.student.width is None else cfg.student.width)


def check_out(out: Path, resume: bool, wanted: dict[str, Any], saved_name: str = SETTINGS_FILE) -> None:
    """A run folder is reused only with --resume and the same settings, so a report never mixes two runs."""
    if out.exists() and not out.is_dir():
        raise RepFusionError(f"--run-dir {out} is a file; give a folder for the pipeline's runs and report.")
    if out.is_dir() and any(p.name != ".repfusion.lock" for p in out.iterdir()) and not resume:
        raise RepFusionError(f"{out} already holds a run; pass --resume to continue or reuse it, or choose another "
                             "--run-dir.")
    saved = out / saved_name
    if resume and saved.is_file() and with_later_keys(json.loads(saved.read_text()), wanted) != wanted:
        raise RepFusionError(f"{out} holds a pipeline run with other settings ({saved}); --resume reuses finished "
                             "stages, so give the same settings or choose another --run-dir.")


# settings added after runs were saved without them, with the value those runs had: such a run still resumes
LATER_KEYS = {"finetune": {"protocols": ["plain"], "lpft_lr": LPFT_LR, "joint_weight": 1.0}}
LATER_TOP_KEYS = {"seed_offset": 0}


def with_later_keys(saved: dict[str, Any], wanted: dict[str, Any]) -> dict[str, Any]:
    """A saved run's settings with the keys added since (`LATER_KEYS`, `LATER_TOP_KEYS`) at the value it ran with."""
    for key, value in LATER_TOP_KEYS.items():
        if key in wanted:
            saved.setdefault(key, value)
    for section, keys in LATER_KEYS.items():
        if isinstance(saved.get(section), dict) and isinstance(wanted.get(section), dict):
            for key, value in keys.items():
                if key in wanted[section]:
                    saved[section].setdefault(key, value)
    return saved


def with_menu(cfg: PretrainRun, arch: str, validation: bool, labelled: bool, saved: Path | None) -> PretrainRun:
    """`cfg` with its fine-tuning menu named. Given (finetune.protocols), it stays; null: a resumed run keeps the
    menu it ran with (plain for a run saved before menus existed), a protocol set by hand or a run without labels is
    plain, and otherwise `tasks.protocols.default_menu` decides (plain and LP-FT where the student has a linear fc
    head and the data a validation split)."""
    if cfg.finetune.protocols is not None:
        return cfg
    if cfg.finetune.by_hand or not labelled:
        menu = ["plain"]  # a resumed run that ran a menu then differs in its settings, and check_out says so
    elif saved is not None and saved.is_file():
        menu = json.loads(saved.read_text()).get("finetune", {}).get("protocols") or LATER_KEYS["finetune"]["protocols"]
    else:
        menu = default_menu(has_probe_head(arch, cfg.student.width or 1.0), validation)
    return replace(cfg, finetune=replace(cfg.finetune, protocols=list(menu)))


def with_saved_cache(cfg: PretrainRun, saved: Path | None) -> PretrainRun:
    """A resumed run whose `distill.cache_views` is null keeps the count it started with (0 for a run saved before
    the cache became the default, 2026-12-07): its finished distillations were made that way."""
    if cfg.distill.cache_views is not None or saved is None or not saved.is_file():
        return cfg
    started = json.loads(saved.read_text()).get("distill", {}).get("cache_views", 0)
    return replace(cfg, distill=replace(cfg.distill, cache_views=started))


def settings(cfg: PretrainRun) -> dict[str, Any]:
    """What the stages depend on (progress and hardware may change on resume)."""
    found = asdict(cfg)
    for key in ("progress", "devices", "num_nodes", "accelerator", "strategy", "log_every_n_steps"):
        found["trainer"].pop(key, None)
    found["data"].pop("num_workers", None)
    return json.loads(json.dumps(found))  # as pretrain.json reads back (tuples as lists)


def load_teacher(cfg: PretrainRun, source: str, init: str = "pretrained") -> DiffusionTeacher:
    return teacher_from_source(source, class_label=cfg.teacher.class_label, adm_flags=cfg.teacher.adm_flags,
                                        uncond_embedding=cfg.teacher.uncond_embedding, init=init, init_seed=0)


def teacher_run(cfg: PretrainRun, data: DataConfig, preset: str) -> TeacherRun:
    return TeacherRun(teacher=preset, data=replace(unlabeled_view(data), crop_padding=0),
                      optim=OptimConfig(name="adamw", lr=cfg.teacher.lr, weight_decay=0.0, schedule="constant"),
                      trainer=replace(cfg.trainer, max_epochs=cfg.teacher.epochs, ema_decay=cfg.teacher.ema_decay), samples=SAMPLES,
                      sample_steps=SAMPLE_STEPS)


def distill_config(cfg: PretrainRun, data: DataConfig, source: str, arch: str, choice: Choice, init: str,
                   seed: int, native: bool) -> DistillRun:
    """The recipe the CIFAR benchmark measured: label-free dense hint on the chosen layer at the chosen t,
    standardised per channel; `init: random` is the same recipe from the random-weight teacher."""
    batch = cfg.distill.batch_size or data.batch_size
    return DistillRun(
        teacher=TeacherSection(source=source, layer=choice.layer, noise_mode=choice.mode, init=init,
                               allow_other_size=not native, class_label=cfg.teacher.class_label,
                               adm_flags=cfg.teacher.adm_flags, uncond_embedding=cfg.teacher.uncond_embedding),
        student=StudentSection(arch=arch, width=cfg.student.width),
        loss=LossSection(name=cfg.distill.loss, target_norm="per_t", target_bins=1,
                         target_stats=cfg.distill.target_stats,
                         options={"mode": "dense", "grid": "coarser", **({"projector": cfg.distill.projector}
                                                                         if cfg.distill.projector != "linear" else {})}),
        timesteps=TimestepConfig(strategy="fixed", t=choice.t), reward="none",
        data=replace(unlabeled_view(data), batch_size=batch), optim=OptimConfig(lr=cfg.distill.lr),
        trainer=replace(cfg.trainer, max_epochs=cfg.distill.epochs, seed=seed),
        cache_views=cfg.distill.views_for(choice.mode))


def with_cache(cfg: PretrainRun, choice: Choice, teacher: DiffusionTeacher, images: int, size: int) -> PretrainRun:
    """`cfg` with a null `distill.cache_views` decided for the chosen layer (`budget.auto_cache_views`), said."""
    if cfg.distill.cache_views is not None:
        return cfg
    from ..distill.module import teacher_target

    with torch.no_grad():  # one image through the truncated teacher: the size of a stored target
        one = teacher_target(teacher, torch.zeros(1, 3, size, size), torch.full((1,), choice.t, dtype=torch.long),
                             [choice.layer], choice.mode, torch.zeros(1, dtype=torch.long))
    views, why = auto_cache_views(choice.mode, images, 3 * size * size, one.numel() * one.element_size())
    print(f"   teacher targets: {why}", flush=True)
    return replace(cfg, distill=replace(cfg.distill, cache_views=views))


def finetune_config(cfg: PretrainRun, data: DataConfig, arch: str, init: Path | None, seed: int) -> FinetuneRun:
    """Every arm: the labelled subset drawn with the seed (splits fixed), the same augmentation and optimiser."""
    epochs = cfg.finetune.epochs
    batch = cfg.finetune.batch_size or finetune_batch(data, labelled_images(replace(data, label_seed=seed)))
    protocol = cfg.finetune
    in_loop = TeacherInLoopSection(weight=protocol.teacher_in_loop if init else 0.0)  # scratch has no teacher
    return FinetuneRun(init=str(init) if init else None, student=ModelSection(arch, cfg.student.width),
                       data=replace(data, label_seed=seed, batch_size=batch),
                       optim=OptimConfig(lr=protocol.lr, nesterov=True, backbone_lr_scale=protocol.backbone_lr_scale),
                       trainer=replace(cfg.trainer, max_epochs=epochs, seed=seed,
                                       check_val_every_n_epoch=max(1, epochs // 4)),
                       head_init=protocol.head_init, head_epochs=protocol.head_epochs, teacher_in_loop=in_loop)


def finetune_batch(data: DataConfig, labelled: int) -> int:
    """data.batch_size, or less for a small label budget: at least six steps an epoch, a power of two >= 16."""
    batch = 16
    while batch * 2 <= min(data.batch_size, labelled / 6):
        batch *= 2
    return min(batch, data.batch_size)


def probe_backbones(data: DataConfig, arch: str, width: float, seeds: range, out: Path) -> dict[str, Any]:
    """Linear probe and k-NN of every frozen backbone, fitted on the labelled training images, scored on
    the validation split."""
    import torch

    splits = ImageDataModule(replace(data, label_seed=0), labelled_only=True)
    splits.setup()
    found: dict[str, list[dict[str, float]]] = {"random init": [], **{arm: [] for arm in TEACHERS}}
    for seed in seeds:
        torch.manual_seed(seed)
        found["random init"].append(probe_student("random", splits.train_set, splits.val_set, arch=arch, width=width))
        for arm in TEACHERS:
            found[arm].append(probe_student(distill_dir(out, arm, seed), splits.train_set, splits.val_set))
    for name, scores in found.items():
        shown = ", ".join(f"{100 * score['linear_probe']:.2f}" for score in scores)
        print(f"   {name:>14}: val linear probe {shown} %", flush=True)
    for note in dict.fromkeys(s["knn_note"] for scores in found.values() for s in scores if s.get("knn_note")):
        print(f"   k-NN: {note}", flush=True)  # the same labelled images for every backbone: said once
    linear = {name: [s["linear_probe"] for s in scores] for name, scores in found.items()}
    pairs = [paired_entry("repfusion", control, linear["repfusion"], linear[control], "val_probe")
             for control in ("random-teacher", "random init")]
    return {"runs": found, "paired": pairs}


def default_arch(size: int) -> str:
    return "resnet18_cifar" if size <= 64 else "resnet18"


def estimate(cfg: PretrainRun, facts: DataFacts, data: DataConfig, shape: DiffusionTeacher, arch: str,
             train_teacher_too: bool, labelled: bool, saved: dict[str, Any] | None = None
             ) -> tuple[PretrainRun, BudgetChoice, dict[str, float], Callable[[str, PretrainRun], dict[str, float]]]:
    """The budget filled in (and sized to `time` if given) with its estimate: stage -> seconds on this machine,
    and the estimate again for a chosen teacher layer (the teacher forward truncated there) and the settings
    resolved after the choice (the cache).

    `saved`: the budget a resumed run's first invocation filled, kept as it was (a time target is sized once)."""
    on_gpu = accelerated(cfg.trainer.accelerator)
    # the label cut as a count (labelled_images() would read the folder again; an estimate needs no exact count)
    labelled_n = max(1, round(facts.train_images * (1 - data.val_fraction) * data.label_fraction)) if labelled else 0
    distill_batch_size = cfg.distill.batch_size or data.batch_size  # the budget fills no batch
    finetune_batch_size = cfg.finetune.batch_size or finetune_batch(data, labelled_n)
    finetune_steps = steps_per_epoch(labelled_n, finetune_batch_size) if labelled else None
    cfg, budget = apply_budget(cfg, on_gpu, steps_per_epoch(distill_images(facts, data.val_fraction),
                                                            distill_batch_size), finetune_steps)
    if saved is not None:
        cfg, budget = with_saved_budget(cfg, saved), BudgetChoice(**saved)
    times = time_models(shape, arch, cfg.student.width, data.image_size, distill_batch_size,
                        finetune_batch_size, max(2, facts.classes),
                        train_teacher_too, torch.device("cuda" if on_gpu else "cpu"),
                        layers=cfg.choice.layers or candidate_layers(shape))
    read, augment = time_images(data, labelled)
    times = replace(times, item_read=read, augment=augment)
    if labelled:  # a real fine-tuning of the scratch arm, cut short and clocked, gives its loop's own costs
        times = replace(times, finetune_loop=clock_finetune(finetune_config(cfg, data, arch, None, seed=0), times,
                                                            facts.test_images))
    if saved is None and cfg.time is None:  # the time cached targets save, given back as distillation epochs
        cfg, budget = raise_for_cache(cfg, budget, lambda c: stage_seconds(c, facts, times, train_teacher_too,
                                                                           labelled, labelled_n)[0]["distil"])
    plan, per_epoch = stage_seconds(cfg, facts, times, train_teacher_too, labelled, labelled_n)
    if cfg.time is not None and saved is None:
        cfg, budget = fit_to_time(cfg, budget, plan, per_epoch, parse_duration(cfg.time))
        plan, _ = stage_seconds(cfg, facts, times, train_teacher_too, labelled, labelled_n)
    return cfg, budget, plan, lambda layer, chosen: stage_seconds(chosen, facts, times.at_layer(layer),
                                                                  train_teacher_too, labelled, labelled_n)[0]


def with_saved_budget(cfg: PretrainRun, saved: dict[str, Any]) -> PretrainRun:
    """A resumed run keeps the epoch counts and width its first invocation filled (a time target is sized once)."""
    for key, value in saved["filled"].items():
        section, name = key.split(".")
        cfg = replace(cfg, **{section: replace(getattr(cfg, section), **{name: value})})
    return cfg


def run_pretrain(cfg: PretrainRun, run_dir: Path, resume: bool = False,
                 on_start: Callable[[], None] | None = None) -> dict[str, Any]:
    check_pretrain(cfg)
    out = Path(run_dir)
    given = cfg.teacher.source
    teacher = load_teacher(cfg, given) if given else None  # a teacher that does not load stops here
    data, facts = inspect_data(cfg.data, teacher.sample_size if teacher is not None else None, cfg.auto_flip)
    preset = cfg.teacher.preset or ("tiny-16" if data.image_size <= 16 else "small-32")
    # the teacher to be trained is checked through its architecture (random weights), before anything trains
    shape = teacher if teacher is not None else load_teacher(cfg, preset, init="random")
    native = shape.sample_size == data.image_size
    shape.check_input((1, 3, data.image_size, data.image_size))
    check_choice(cfg.choice, shape)
    arch = cfg.student.arch or default_arch(data.image_size)
    labelled = facts.labelled
    menu_given = cfg.finetune.protocols is not None  # a null menu's lpft is named only where the probe head exists
    cfg = with_menu(cfg, arch, data.val_fraction > 0, labelled, out / SETTINGS_FILE if resume else None)
    cfg = with_saved_cache(cfg, out / SETTINGS_FILE if resume else None)
    if labelled and len(cfg.finetune.protocols) > 1 and not data.val_fraction > 0:
        raise RepFusionError("finetune.protocols names several protocols, which are chosen between on the validation "
                             "split, but data.val_fraction is 0 (the test split would choose); give data.val_fraction "
                             "> 0 (e.g. 0.1) or one protocol.")
    if labelled and (cfg.finetune.head_init == "probe" or menu_given and {"lpft", "lp"} & set(cfg.finetune.protocols)):
        check_probe_head(arch, cfg.student.width or 1.0)  # told now, not after the teacher and the distillations
    if labelled and cfg.seeds < 2:
        raise RepFusionError(f"seeds must be at least 2 for a confidence interval, not {cfg.seeds}.")
    wanted = settings(cfg)  # what the user asked; the budget fills the rest
    check_out(out, resume, wanted)
    saved = json.loads((out / BUDGET_FILE).read_text()) if resume and (out / BUDGET_FILE).is_file() else None
    cfg, budget, estimate_s, at_layer = estimate(cfg, facts, data, shape, arch, given is None, labelled, saved)
    print("\n".join(["Data:"] + [f"   {line}" for line in facts.lines()]))
    protocols = cfg.finetune.protocols
    menu = (f" x {len(protocols)} fine-tuning protocols ({', '.join(protocols)}; kept per arm and seed on validation)"
            if len(protocols) > 1 else f", fine-tuning protocol {protocols[0]}")
    print(f"Teacher: {given or f'a {preset} DDPM trained here on the images, no labels'}; student {arch} at width "
          f"{cfg.student.width}; {'4 arms x ' + str(cfg.seeds) + ' seeds at ' + format(100 * data.label_fraction, 'g') + ' % labels' + (menu if protocols != ['plain'] else '') if labelled else 'label-free: distillation and export only'}")
    print(f"Budget: {budget.line()}")
    print(f"Estimate: about {clock(sum(estimate_s.values()))} in all on this machine ("
          + ", ".join(f"{name} {clock(s)}" for name, s in estimate_s.items() if s >= 0.5)
          + "), from a few timed steps of each stage's model"
          + (" and a clocked short fine-tuning" if labelled else ""), flush=True)
    out.mkdir(parents=True, exist_ok=True)
    if on_start is not None:
        on_start()
    write_json(out / SETTINGS_FILE, wanted)
    write_json(out / BUDGET_FILE, budget_record(budget))
    plan = Plan(cfg.seeds, resume, cfg.seed_offset)
    progress = StageProgress(estimate_s, record=out / TIMINGS_FILE)  # earlier invocations' seconds kept

    teacher_dir = out / "teacher" / "teacher"
    if given is None:
        progress.run("teacher", lambda: run_once(teacher_dir / "config.json", lambda r: train_teacher(
            teacher_run(cfg, data, preset), out / "teacher", r), out / "teacher", plan),
            skipped=(teacher_dir / "config.json").exists())
        teacher = load_teacher(cfg, str(teacher_dir))
    else:
        progress.run("teacher", lambda: print(f"   using {given}"), skipped=True)
    source = given or str(teacher_dir)

    def choose_now() -> Choice:
        found = read_choice(out)
        if found is not None:
            return found
        split = ImageDataModule(replace(data, label_seed=0) if labelled else unlabeled_view(data),
                                labelled_only=labelled)
        split.setup()
        scored = labelled and len(split.train_set) >= MIN_PROBE_LABELS
        if labelled and not scored:
            print(f"   only {len(split.train_set)} labelled training images (fewer than {MIN_PROBE_LABELS}): a probe "
                  "on them is noise, so the choice is label-free")
            split = ImageDataModule(unlabeled_view(data))
            split.setup()
        random_teacher = load_teacher(cfg, source, init="random") if scored else None
        return choose(teacher, random_teacher, split.train_set, split.val_set, cfg.choice, out)

    choice = progress.run("choose the teacher layer and t", choose_now, skipped=read_choice(out) is not None)
    print(f"   chosen: {choice.layer}, {choice.mode} input, t = {choice.t} ({choice.reason})")
    cfg = with_cache(cfg, choice, teacher, distill_images(facts, data.val_fraction), data.image_size)
    cfg, budget, undone = undo_cache_raise(cfg, budget, cfg.distill.views_for(choice.mode))
    if undone:
        print(f"   {undone}", flush=True)
        write_json(out / BUDGET_FILE, budget_record(budget))
    chosen = replace(cfg.choice, modes=[choice.mode])  # the estimate now knows which input the distillations read
    replanned = at_layer(choice.layer, replace(cfg, choice=chosen))
    progress.replan(replanned, after="choose the teacher layer and t")

    experiment = Experiment(
        "classification", out, cfg.seeds, resume, compare=labelled, fraction=data.label_fraction,
        distill=lambda init, seed: distill_config(cfg, data, source, arch, choice, init, seed, native),
        finetune=lambda init, seed: finetune_config(cfg, data, arch, init, seed),
        protocols=tuple(cfg.finetune.protocols), apply=lambda run, name: apply_protocol(run, name, cfg.finetune.settings),
        first_seed=cfg.seed_offset)
    probe: dict[str, Any] = {}

    def on_the_backbones() -> None:  # between the distillations and the fine-tunes
        progress.run("export the backbone", lambda: export_backbone(out, cfg.seed_offset))
        if labelled:
            probe.update(progress.run("probe the frozen backbones", lambda: probe_backbones(
                data, arch, cfg.student.width, seed_range(experiment), out)))

    compared = run_arms(experiment, progress.run, "distil", "fine-tune the arms", on_the_backbones)
    result: dict[str, Any] = {"data": {**asdict(data), "facts": asdict(facts)}, "choice": asdict(choice),
                              "teacher": source, "student": {"arch": arch, "width": cfg.student.width},
                              "seeds": list(seed_range(experiment.distilled))}
    if compared is not None:
        result.update(summary=compared.summary, paired=compared.pairs + probe["paired"], probe=probe["runs"],
                      verdict=compared.verdict, protocols=compared.protocols)
        if compared.by_protocol:
            result["by_protocol"] = compared.by_protocol
    result.update(budget=budget_record(budget), estimate_s=estimate_s, estimate_after_choice_s=replanned,
                  timings_s=progress.timings,
                  wall_s=progress.wall_s(), invocations=progress.invocations(), config=settings(cfg),
                  peak_rss_mb=peak_rss_mb())
    progress.run("report", lambda: write_report(out, result, cfg))
    result.update(wall_s=progress.wall_s(), invocations=progress.invocations())  # the report's seconds too
    write_json(out / "results.json", result)
    card_to(out / "student", result)
    if compared is not None:
        print("\n" + compared.table(probe["paired"]) + "\n\n" + compared.verdict)
    print("\nstage times: " + ", ".join(f"{name} {clock(s)}" for name, s in progress.timings.items()))
    print(f"wall time {clock(result['wall_s'])}, peak memory {result['peak_rss_mb']:.0f} MB; backbone: "
          f"{out / 'student'}; report: {out / 'report.md'}")
    return result


def card_to(folder: Path, result: dict[str, Any]) -> None:
    """The exported backbone's model card gains the report's numbers (its facts came with the export)."""
    from ..export_card import pretrain_cards

    pretrain_cards(folder.parent, result.get("teacher"), card_metrics(result))


def export_backbone(out: Path, first_seed: int = 0) -> None:
    """RUN/student: the trained teacher's student of the first seed, what a later finetune or embed reads."""
    source = distill_dir(out, "repfusion", first_seed) / "student"
    if (out / "student" / "config.json").is_file():
        return
    tmp = staging_dir(out / "student")
    shutil.copytree(source, tmp, dirs_exist_ok=True)
    replace_dir(tmp, out / "student")


__all__ = ["ARMS", "check_pretrain", "run_pretrain"]
