"""Initialising a downstream network's backbone from a distillation run (or leaving it random: the baseline).

Every task (classification, segmentation, landmarks) loads the distilled student the same way, so the
comparison with scratch differs only in the initial weights.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

import torch
from torch import nn

from ..errors import RepFusionError
from ..io import load_checkpoint, load_tensors
from ..run_folder import distill_export
from ..students import read_student_config
from ..torchvision_keys import HEAD_PREFIXES  # the classifier head's key prefixes, one list for every reader

WEIGHTS_FILE = "diffusion_pytorch_model.safetensors"


class ModelChoice(Protocol):
    arch: str | None
    width: float | None


def backbone_weights(init: str) -> dict[str, torch.Tensor]:
    """Backbone tensors from an export folder, a safetensors file, or a checkpoint (weights_only)."""
    folder = distill_export(init)
    path = Path(init)
    if folder is not None:
        return load_tensors(folder / WEIGHTS_FILE)
    if path.suffix == ".safetensors":
        return load_tensors(path)
    if path.suffix in (".ckpt", ".pt", ".pth"):
        state = load_checkpoint(path)
        state = state.get("state_dict", state) if isinstance(state, dict) else state
        weights = {k[len("student."):]: v for k, v in state.items() if k.startswith("student.")}
        return weights or {k: v for k, v in state.items() if isinstance(v, torch.Tensor)}
    if not path.exists():
        raise RepFusionError(f"finetune init {init} does not exist; give a distill run folder or leave init empty.")
    raise RepFusionError(f"finetune init {init} is not a distill run folder, .safetensors or .ckpt file.")


def resolve_architecture(init: str | None, student: ModelChoice, default_arch: str = "resnet18_cifar") -> tuple[str, float]:
    """The init's architecture wins; asking for another one is an error, not a silent partial load."""
    folder = distill_export(init) if init else None
    if folder is None:
        if student.width is None:  # a scratch baseline four times wider than a width-0.25 student compares nothing
            import sys

            print(f"note: no init and no student.width: the network is {student.arch or default_arch} at width 1.0; "
                  "set student.arch/width to the distilled student's for a fair baseline.", file=sys.stderr)
        return student.arch or default_arch, student.width or 1.0
    saved = read_student_config(folder)
    arch, width = saved["arch"], float(saved["width"])
    if (student.arch not in (None, arch)) or (student.width not in (None, width)):
        raise RepFusionError(
            f"The distilled student in {folder} is {arch} at width {width} but the config asks for "
            f"{student.arch or arch} at width {student.width or width}; drop student.arch/width or "
            "distil that architecture first."
        )
    return arch, width


def load_backbone(model: nn.Module, weights: dict[str, torch.Tensor], source: str) -> None:
    """Load every backbone tensor strictly; only a classifier head may stay at its random init."""
    own = model.state_dict()
    unexpected = [k for k in weights if k not in own]
    mismatched = [k for k in weights if k in own and own[k].shape != weights[k].shape]
    missing = [k for k in own if k not in weights and not k.startswith(HEAD_PREFIXES)]
    if unexpected or mismatched or missing:
        example = (unexpected or mismatched or missing)[0]
        raise RepFusionError(
            f"The weights in {source} do not fit {type(model).__name__} {model.config.arch} at width "
            f"{model.config.width} ({len(unexpected)} unexpected, {len(mismatched)} mismatched, {len(missing)} "
            f"missing tensors, e.g. '{example}'); set student.arch/width to the distilled architecture."
        )
    model.load_state_dict({**own, **weights})


def init_backbone(backbone: nn.Module, init: str | None) -> None:
    """Distilled weights when `init` names a run, file or checkpoint; otherwise the random init stays."""
    if init:
        load_backbone(backbone, backbone_weights(init), init)
