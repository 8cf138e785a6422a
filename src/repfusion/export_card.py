"""What `distill` and `finetune` add to their export folder beside the weights: the model card, the timm/Hub-style
`timm/` folder and, where the architecture matches, the torchvision-keyed state dict. One call per export
point (`finish_distill_export`, `finish_finetune_export`), made on the staging folder before it is swapped
in, so the card, the extra layouts and the weights appear together. `pretrain_cards` gives a finished
`pretrain` run's cards its numbers: this model's own (with its seed) and every arm's mean.

Paths: the card names a hub id or preset as given and a local teacher (or init) by its path relative to the
run folder (the export folder's parent), so a copied run still finds it; a local data folder by its last
component only. The resolved config in the card keeps the run's settings as given.

License: the teacher's own, where its card says (a local folder's README.md, the Hub card in the local
cache, or `KNOWN_LICENSES` for the paper's Hub teachers), else "unknown", with the reason in the card.
"""

from __future__ import annotations

import os
import re
from dataclasses import asdict
from pathlib import Path
from typing import Any

from torch import nn

from .errors import RepFusionError
from .model_card import (UNKNOWN_LICENSE, command_line, plain, read_model_card, update_model_card_metrics,
                         write_model_card)
from .tasks.protocols import PROTOCOLS
from .torchvision_keys import TIMM_FOLDER, backbone_of, write_timm_folder, write_torchvision_weights

KNOWN_LICENSES = {  # as the teachers' Hub cards state (license: in their front matter)
    "google/ddpm-cifar10-32": "apache-2.0",
    "google/ddpm-celebahq-256": "apache-2.0",
    "google/ddpm-ema-celebahq-256": "apache-2.0",
}
# a pipeline fine-tune's folder; with several fine-tuning protocols each run's name ends in its protocol
ARM_RUN = re.compile(r"finetune-(?P<arm>.+)-seed(?P<seed>[0-9]+)(?:-(?P<protocol>" + "|".join(PROTOCOLS) + "))?")


def _is_local(source: str) -> bool:
    path = Path(source)
    return path.is_absolute() or path.exists()


def shown_path(source: str | os.PathLike | None, base: str | os.PathLike | None = None) -> str | None:
    """A preset or hub id as given; a local path relative to `base` (the run folder), POSIX-style, or by its
    name when there is no base (or no relative path, another drive)."""
    if source is None:
        return None
    source = str(source)
    if not _is_local(source):
        return source
    path = Path(source)
    if base is None:
        return path.name or source
    try:
        return Path(os.path.relpath(path.resolve(), Path(base).resolve())).as_posix()
    except ValueError:
        return path.name or source


def rebased(source: str | None, old_base: Path, new_base: Path) -> str | None:
    """A card's teacher path (relative to `old_base`, the run folder it was written in) relative to
    `new_base`; a hub id or preset, or a path that no longer exists, unchanged."""
    if source is None:
        return None
    candidate = Path(source) if Path(source).is_absolute() else old_base / source
    return shown_path(candidate, new_base) if candidate.exists() else source


def _card_license(folder: Path) -> str | None:
    try:
        card = read_model_card(folder)
    except RepFusionError:
        return None
    value = (card or {}).get("license")
    return str(value) if value else None


def teacher_license(source: str | None, init: str | None) -> tuple[str | None, str]:
    """(the teacher's license or None, where it came from or why it is unknown), read without any download."""
    from .teachers import TEACHER_PRESETS

    if init == "random":
        return None, "the teacher had random weights, so no teacher weights and no teacher license were used"
    if not source:
        return None, "no teacher"
    if _is_local(source):
        folders = (Path(source), Path(source).parent) if Path(source).name == "unet" else (Path(source),)
        for folder in folders:  # a pipeline's unet/ subfolder: its card is the pipeline's
            found = _card_license(folder) if folder.is_dir() else None
            if found:
                return found, f"from the teacher's card, {folder.name}/README.md"
        return None, ("the teacher's folder has no card naming a license (a teacher trained by repfusion takes "
                      "the terms of its training data)")
    if source in TEACHER_PRESETS or source.startswith("adm-"):
        return None, f"{source} is a preset architecture with random weights"
    try:
        from huggingface_hub import try_to_load_from_cache

        cached = try_to_load_from_cache(source, "README.md")
    except (ValueError, OSError):  # not a valid repo id
        cached = None
    if isinstance(cached, str):
        found = _card_license(Path(cached).parent)
        if found:
            return found, f"from the teacher's Hub card ({source})"
    if source in KNOWN_LICENSES:
        return KNOWN_LICENSES[source], f"the teacher {source}'s Hub card"
    return None, f"the Hub card of {source} was not read (not in the local cache)"


def dataset_ids(data: Any) -> list[str]:
    """The card's `datasets`: Hub ids for the public sets, else the data folder's or the source's name."""
    root = str(getattr(data, "root", None) or "")
    if data.source == "cifar":
        return ["uoft-cs/cifar100" if "100" in Path(root).name or "cifar-100" in root else "uoft-cs/cifar10"]
    return [Path(root).name or data.source] if root else [data.source]


def license_facts(teacher_source: str | None, init: str | None) -> dict[str, Any]:
    found, note = teacher_license(teacher_source, init)
    return {"license": found or UNKNOWN_LICENSE, "license_note": note}


def data_facts(data: Any, image_size: int | None, label_fraction: float | None) -> dict[str, Any]:
    return {"source": data.source, "root": shown_path(data.root), "image_size": image_size,
            "label_fraction": label_fraction, "labels_per_class": getattr(data, "labels_per_class", None),
            "mean": list(data.mean), "std": list(data.std), "split_seed": data.split_seed}


def student_facts(network: nn.Module) -> dict[str, Any]:
    backbone = backbone_of(network)
    config = backbone.config
    return {"arch": config.arch, "width": float(config.width), "in_channels": int(config.in_channels),
            "feature_layer": getattr(backbone, "feature_layer", None),
            "feature_channels": getattr(backbone, "feature_channels", None)}


def distill_facts(cfg: Any, module: Any, image_size: int | None, steps: int,
                  run_dir: Path | None = None) -> dict[str, Any]:
    """Facts of a `DistillRun` and its built `Distillation` (teacher kind, layers as resolved); `run_dir`: the
    run folder the teacher's local path is shown relative to."""
    teacher = cfg.teacher
    return {
        "stage": "distill",
        "seed": cfg.trainer.seed,
        "teacher": {"source": shown_path(teacher.source, run_dir), "kind": getattr(module.teacher, "kind", None),
                    "layer": list(module.teacher_layers), "init": teacher.init, "noise_mode": teacher.noise_mode},
        **license_facts(teacher.source, teacher.init),
        "datasets": dataset_ids(cfg.data),
        "student": student_facts(module.student),
        # distillation reads every training image; labels only through the label reward
        "data": data_facts(cfg.data, image_size, 1.0 if cfg.reward == "label" else 0.0),
        "loss": {"name": cfg.loss.name, "kd_weight": cfg.loss.kd_weight, "target_norm": cfg.loss.target_norm,
                 "options": dict(cfg.loss.options)},
        "timesteps": plain(asdict(cfg.timesteps)),
        "reward": cfg.reward,
        "steps": steps,
        "config": plain(asdict(cfg)),
    }


def _init_facts(init: str | None, run_dir: Path | None = None) -> dict[str, Any]:
    """The distillation facts of a fine-tune's init (its card), so model/ says which teacher taught it and
    under which license; the teacher's path is rebased from the init's run folder to this one."""
    if not init:
        return {"init": "scratch", "license": UNKNOWN_LICENSE,
                "license_note": "trained from scratch on its data: the data's terms decide"}
    from .run_folder import distill_export

    folder = distill_export(init)
    try:
        card = read_model_card(folder) if folder is not None else None
    except RepFusionError:  # an init's broken card must not fail a finished fine-tune: its facts stay out
        card = None
    facts: dict[str, Any] = {"init": f"distilled ({shown_path(init, run_dir)})"}
    for key in ("teacher", "loss", "timesteps", "reward", "license", "license_note"):
        if card and key in card:
            facts[key] = card[key]
    if card and isinstance(facts.get("teacher"), dict) and folder is not None and run_dir is not None:
        facts["teacher"] = {**facts["teacher"], "source": rebased(facts["teacher"].get("source"), folder.parent,
                                                                  run_dir)}
    facts.setdefault("license", UNKNOWN_LICENSE)
    facts.setdefault("license_note", "the init's card names no license")
    return facts


def finetune_facts(cfg: Any, network: nn.Module, image_size: int | None, weights: str | None,
                   run_dir: Path | None = None) -> dict[str, Any]:
    fraction = None if cfg.data.labels_per_class is not None else cfg.data.label_fraction
    return {"stage": "finetune", "task": cfg.task, "seed": cfg.trainer.seed, **_init_facts(cfg.init, run_dir),
            "datasets": dataset_ids(cfg.data), "student": student_facts(network),
            "data": data_facts(cfg.data, image_size, fraction), "weights": weights, "config": plain(asdict(cfg))}


def result_metrics(results: dict[str, Any], facts: dict[str, Any]) -> list[dict[str, Any]]:
    """A finetune's `results.json` entries (per-class entries, with two slashes, stay in results.json)."""
    return [{"name": k, "value": float(v), "split": k.split("/")[0]} for k, v in sorted(results.items())
            if isinstance(v, (int, float)) and not isinstance(v, bool) and k.count("/") == 1]


def finish_export(folder: Path, facts: dict[str, Any], network: nn.Module,
                  metrics: list[dict[str, Any]] | None = None) -> None:
    """The timm/Hub-style folder, the keyed state dict (when the layout matches) and the card naming both."""
    data = facts.get("data") or {}
    timm = write_timm_folder(network, folder / TIMM_FOLDER, data.get("image_size"), data.get("mean") or (0.5,) * 3,
                             data.get("std") or (0.5,) * 3)
    facts = {**facts, "torchvision": write_torchvision_weights(network, folder), "timm_folder": timm}
    write_model_card(folder, facts, metrics, command_line())


def finish_distill_export(folder: Path, cfg: Any, module: Any, image_size: int | None, steps: int) -> None:
    """`folder`: the staging copy of RUN/student, beside it in the run folder."""
    finish_export(folder, distill_facts(cfg, module, image_size, steps, folder.parent), module.student)


def finish_finetune_export(folder: Path, cfg: Any, network: nn.Module, image_size: int | None,
                           results: dict[str, Any]) -> None:
    facts = finetune_facts(cfg, network, image_size, results.get("weights"), folder.parent)
    finish_export(folder, facts, network, result_metrics(results, facts))


def pretrain_cards(out: Path, teacher: str | None, metrics: list[dict[str, Any]]) -> list[Path]:
    """A finished `pretrain` run's numbers in its cards; returns the folders whose card was updated.

    teacher: the run's teacher source (a hub id, or the folder it trained); metrics: the report's
    (`pipeline.report.card_metrics(result)`: per arm a mean with its per-seed `runs`, the repfusion arm as
    arm None, probes and paired differences).
    RUN/student/ (the first seed's RepFusion backbone, copied from its distill run): its teacher path rebased to
    RUN, and the metrics, from which the card takes the first seed's own numbers for `model-index` and shows every
    arm's mean in its own section. Each RUN/finetune-ARM-seedS/model/: its arm and seed as facts, its own test
    metrics kept, every arm's means and the paired differences beside them (docs/usage.md: a fine-tune card
    carries the arms).
    """
    done = []
    student = out / "student"
    card = read_model_card(student)
    if card is not None:
        facts: dict[str, Any] = {"arm": "repfusion"}
        if isinstance(card.get("teacher"), dict) and teacher:
            facts["teacher"] = {"source": shown_path(teacher, out)}
        update_model_card_metrics(student, metrics, facts=facts)
        done.append(student)
    named = [{**m, "arm": m.get("arm") or "repfusion"} for m in metrics]  # None meant the student card's own arm
    for run_dir in sorted(p for p in out.iterdir() if p.is_dir() and ARM_RUN.fullmatch(p.name)):
        model = run_dir / "model"
        card = read_model_card(model)
        if card is None:
            continue
        match = ARM_RUN.fullmatch(run_dir.name)
        assert match is not None
        facts = {"arm": match["arm"], "seed": int(match["seed"]), **({"protocol": match["protocol"]}
                                                                      if match["protocol"] else {})}
        if isinstance(card.get("teacher"), dict) and teacher:
            facts["teacher"] = {"source": shown_path(teacher, run_dir)}
        update_model_card_metrics(model, named, facts=facts)
        done.append(model)
    return done
