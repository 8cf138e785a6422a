"""Reading a finished run folder: where its exported network lies and what its `config.yaml` says about data.

A distill or pretrain run exports its student to `RUN/student/`, a finetune run its network to `RUN/model/`;
an export folder is one holding `config.json` (save_pretrained). The run's resolved config, `RUN/config.yaml`,
sits one level above the export. Every verb that reads a run (finetune's init, probe --student, export,
embed, the teacher kept in the loop, a fine-tune's model card) finds both here, so the layout is spelled once.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from .errors import RepFusionError

DISTILL_EXPORT = ("student",)  # what a finetune init may name: a distill/pretrain run or its student/
ANY_EXPORT = ("student", "model")  # what probe/export/embed read: those, or a finetune run or its model/
DEFAULT_MEAN_STD = ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))  # the normalisation of a run that records none


def find_export(path: str | Path, subfolders: tuple[str, ...] = DISTILL_EXPORT) -> Path | None:
    """The exported folder (one holding config.json): `path` itself or one of its `subfolders`, else None."""
    path = Path(path)
    for candidate in (path, *(path / name for name in subfolders)):
        if (candidate / "config.json").is_file():
            return candidate
    return None


def distill_export(init: str | Path) -> Path | None:
    """The student a distill or pretrain run exported (RUN/student/, or that folder itself); None when there is
    none, since a finetune init may also be a weights file and the caller words that refusal."""
    return find_export(init, DISTILL_EXPORT)


def run_export(source: str | Path) -> Path:
    """student/ of a distill run, model/ of a finetune run, or an export folder itself (export, embed); one
    sentence otherwise."""
    found = find_export(source, ANY_EXPORT)
    if found is not None:
        return found
    if not Path(source).exists():
        raise RepFusionError(f"Run {source} does not exist; give a distill or finetune run folder.")
    raise RepFusionError(f"{source} is not a repfusion run (no config.json in it, student/ or model/); give a distill "
                         "run folder, a finetune run folder, or their student/ or model/ folder.")


def student_export(source: str | Path) -> Path:
    """The same folders as `run_export`, refused in the words of `probe --student` (which also takes random:ARCH)."""
    found = find_export(source, ANY_EXPORT)
    if found is not None:
        return found
    if not Path(source).exists():
        raise RepFusionError(f"Student {source} does not exist; give a distill or finetune run folder, or "
                             "random:ARCH for a randomly initialised student.")
    raise RepFusionError(f"{source} holds no exported student (no config.json in it, student/ or model/); give a "
                         "distill run folder, its student/ folder or a finetune run's model/ folder.")


def run_data_section(export: str | Path) -> dict[str, Any]:
    """The `data:` section of the config.yaml of the run that wrote `export` (the export folder's own, else its
    run folder's), read with yaml.safe_load; {} when there is none or it holds no data mapping, since every caller
    has a better source or a default for what it holds (the model card, the flags, 0.5/0.5). A config.yaml that
    is there but is not readable YAML is refused rather than skipped: falling back would silently normalise the
    images differently from the run."""
    folder = Path(export)
    for config in (folder / "config.yaml", folder.parent / "config.yaml"):
        if config.is_file():
            try:
                loaded = yaml.safe_load(config.read_text(encoding="utf-8"))
            except (OSError, UnicodeDecodeError, yaml.YAMLError) as error:
                reason = str(error).splitlines()[0] if str(error) else type(error).__name__
                raise RepFusionError(f"{config} cannot be read as YAML ({reason}): repair it or delete it "
                                     "(the run's normalisation then falls back to the flags or 0.5/0.5).") from None
            data = loaded.get("data") if isinstance(loaded, dict) else None
            return data if isinstance(data, dict) else {}
    return {}


def run_normalization(export: str | Path) -> tuple[tuple[float, ...], tuple[float, ...]] | None:
    """(mean, std) the run that wrote `export` normalised its images with, when its config.yaml names both."""
    data = run_data_section(export)
    if data.get("mean") is None or data.get("std") is None:
        return None
    return tuple(map(float, data["mean"])), tuple(map(float, data["std"]))


__all__ = ["ANY_EXPORT", "DEFAULT_MEAN_STD", "DISTILL_EXPORT", "distill_export", "find_export", "run_data_section",
           "run_export", "run_normalization", "student_export"]
