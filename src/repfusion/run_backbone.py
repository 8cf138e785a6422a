"""The backbone of a finished run and what it expects as input, for `export` and `embed`.

A distill run exports `student/`, a finetune run `model/` (a classifier, or a segmentation / landmark network
whose student is `.backbone`). Both verbs work on the backbone's pooled features, so they load either and
take the input size and pixel normalisation from the run: the model card (which records the size the data
was actually read at), then the run's `config.yaml` (as `probe --student` does), else they must be given.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from .errors import RepFusionError
from .model_card import read_model_card
from .run_folder import DEFAULT_MEAN_STD, run_data_section, run_export
from .students import STUDENT_CLASSES, load_student
from .torchvision_keys import backbone_of


class PooledBackbone(nn.Module):
    """images (normalised, B x C x H x W) -> spatially averaged feature-layer output (B x feature_channels)."""

    def __init__(self, backbone: nn.Module) -> None:
        super().__init__()
        self.backbone = backbone

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.backbone.forward_features(images).mean(dim=(2, 3))


@dataclass
class RunBackbone:
    folder: Path  # the export folder (student/ or model/)
    network: nn.Module  # what the folder holds
    backbone: nn.Module  # the student inside it
    image_size: int | None
    mean: tuple[float, ...]
    std: tuple[float, ...]


def _task_network_classes() -> dict[str, type]:
    from .tasks.heads.bisenet import BiSeNetV1
    from .tasks.heads.heatmap import LandmarkNet

    return {"BiSeNetV1": BiSeNetV1, "LandmarkNet": LandmarkNet}


def load_network(folder: Path) -> nn.Module:
    """A student (distill, or a fine-tuned classifier) or a fine-tuned dense network, from safetensors only."""
    try:
        name = json.loads((folder / "config.json").read_text()).get("_class_name")
    except (OSError, UnicodeDecodeError, ValueError, AttributeError):
        name = None
    if name in STUDENT_CLASSES or name is None:
        return load_student(folder)  # its own one-sentence errors (missing or pickled weights, bad config)
    classes = _task_network_classes()
    if name not in classes:
        raise RepFusionError(f"{folder / 'config.json'} describes a {name}, not a repfusion student or fine-tuned "
                             "network; give a distill or finetune run folder.")
    if not (folder / "diffusion_pytorch_model.safetensors").is_file():
        raise RepFusionError(f"{folder} has a config.json but no diffusion_pytorch_model.safetensors; export it again.")
    try:
        return classes[name].from_pretrained(str(folder), use_safetensors=True)
    except (OSError, ValueError, RuntimeError, TypeError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise RepFusionError(f"The network in {folder} cannot be loaded ({first}); export it again.") from None


def load_run_backbone(source: str | Path) -> RunBackbone:
    """The run's network, its backbone, and the input size / normalisation it was trained with (when known)."""
    folder = run_export(source)
    network = load_network(folder)
    card_data = (read_model_card(folder) or {}).get("data") or {}
    config_data = run_data_section(folder)
    size = card_data.get("image_size") or config_data.get("image_size")
    mean = card_data.get("mean") or config_data.get("mean") or DEFAULT_MEAN_STD[0]
    std = card_data.get("std") or config_data.get("std") or DEFAULT_MEAN_STD[1]
    return RunBackbone(folder, network, backbone_of(network), int(size) if size else None,
                       tuple(map(float, mean)), tuple(map(float, std)))
