"""What `distill` and `finetune` add to their export folder beside the weights: the model card and, where the
architecture matches, the torchvision-keyed state dict. One call per export point (`finish_distill_export`,
`finish_finetune_export`), made on the staging folder before it is swapped in, so the card, the keyed file
and the weights appear together.

Paths are the user's: the card names a local teacher or data folder by its last component only (a card is
meant to be shared), while the resolved config in it keeps the run's settings as given.
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Any

from torch import nn

from .errors import RepFusionError
from .model_card import command_line, plain, read_model_card, write_model_card
from .torchvision_keys import backbone_of, write_torchvision_weights


def _shown_path(source: str | None) -> str | None:
    """A preset or hub id as given; a local path by its name (the card travels, the home folder should not)."""
    if source is None:
        return None
    path = Path(source)
    return path.name if (path.is_absolute() or path.exists()) and path.name else source


def data_facts(data: Any, image_size: int | None, label_fraction: float | None) -> dict[str, Any]:
    return {"source": data.source, "root": _shown_path(data.root), "image_size": image_size,
            "label_fraction": label_fraction, "labels_per_class": getattr(data, "labels_per_class", None),
            "mean": list(data.mean), "std": list(data.std), "split_seed": data.split_seed}


def student_facts(network: nn.Module) -> dict[str, Any]:
    backbone = backbone_of(network)
    config = backbone.config
    return {"arch": config.arch, "width": float(config.width), "in_channels": int(config.in_channels),
            "feature_layer": getattr(backbone, "feature_layer", None),
            "feature_channels": getattr(backbone, "feature_channels", None)}


def distill_facts(cfg: Any, module: Any, image_size: int | None, steps: int) -> dict[str, Any]:
    """Facts of a `DistillRun` and its built `Distillation` (teacher kind, layers as resolved)."""
    teacher = cfg.teacher
    return {
        "stage": "distill",
        "teacher": {"source": _shown_path(teacher.source), "kind": getattr(module.teacher, "kind", None),
                    "layer": list(module.teacher_layers), "init": teacher.init, "noise_mode": teacher.noise_mode},
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


def _init_facts(init: str | None) -> dict[str, Any]:
    """The distillation facts of a fine-tune's init (its card), so model/ says which teacher taught it."""
    if not init:
        return {"init": "scratch"}
    from .students import find_export

    folder = find_export(init, ("student",))
    try:
        card = read_model_card(folder) if folder is not None else None
    except RepFusionError:  # an init's broken card must not fail a finished fine-tune: its facts stay out
        card = None
    facts: dict[str, Any] = {"init": f"distilled ({_shown_path(init)})"}
    for key in ("teacher", "loss", "timesteps", "reward"):
        if card and key in card:
            facts[key] = card[key]
    return facts


def finetune_facts(cfg: Any, network: nn.Module, image_size: int | None, weights: str | None) -> dict[str, Any]:
    fraction = None if cfg.data.labels_per_class is not None else cfg.data.label_fraction
    return {"stage": "finetune", "task": cfg.task, **_init_facts(cfg.init), "student": student_facts(network),
            "data": data_facts(cfg.data, image_size, fraction), "weights": weights, "config": plain(asdict(cfg))}


def result_metrics(results: dict[str, Any], facts: dict[str, Any]) -> list[dict[str, Any]]:
    """A finetune's `results.json` entries (per-class entries, with two slashes, stay in results.json)."""
    return [{"name": k, "value": float(v), "split": k.split("/")[0]} for k, v in sorted(results.items())
            if isinstance(v, (int, float)) and not isinstance(v, bool) and k.count("/") == 1]


def finish_export(folder: Path, facts: dict[str, Any], network: nn.Module,
                  metrics: list[dict[str, Any]] | None = None) -> None:
    """Keyed state dict (when the layout matches) and the card that says whether there is one."""
    facts = {**facts, "torchvision": write_torchvision_weights(network, folder)}
    write_model_card(folder, facts, metrics, command_line())


def finish_distill_export(folder: Path, cfg: Any, module: Any, image_size: int | None, steps: int) -> None:
    finish_export(folder, distill_facts(cfg, module, image_size, steps), module.student)


def finish_finetune_export(folder: Path, cfg: Any, network: nn.Module, image_size: int | None,
                           results: dict[str, Any]) -> None:
    facts = finetune_facts(cfg, network, image_size, results.get("weights"))
    finish_export(folder, facts, network, result_metrics(results, facts))
