"""Student networks by name (timm-style names), saved and loaded with diffusers' save/from_pretrained."""

from __future__ import annotations

import json
from pathlib import Path

from diffusers import ModelMixin

from ..errors import RepFusionError
from ..registry import Registry
from .hrnet import HRNET_ARCHS, HRNet
from .mobilenetv2 import MOBILENET_ARCHS, MobileNetV2
from .resnet import RESNET_ARCHS, ResNet

STUDENTS: Registry[type[ModelMixin]] = Registry("student")
for _name in RESNET_ARCHS:
    STUDENTS.register(ResNet, name=_name)
for _name in MOBILENET_ARCHS:
    STUDENTS.register(MobileNetV2, name=_name)
for _name in HRNET_ARCHS:
    STUDENTS.register(HRNet, name=_name)
STUDENT_CLASSES = {"ResNet": ResNet, "MobileNetV2": MobileNetV2, "HRNet": HRNet}


def build_student(name: str, width: float = 1.0, num_classes: int = 0, in_channels: int = 3) -> ModelMixin:
    """A randomly initialised student; num_classes = 0 gives the bare backbone."""
    if width <= 0:
        raise RepFusionError(f"student.width must be positive, not {width}.")
    return STUDENTS.get(name)(arch=name, width=width, num_classes=num_classes, in_channels=in_channels)


def read_student_config(folder: str | Path) -> dict:
    path = Path(folder) / "config.json"
    if not path.is_file():
        raise RepFusionError(f"{folder} holds no student (config.json missing); give a folder exported by distill.")
    config = json.loads(path.read_text())
    if config.get("_class_name") not in STUDENT_CLASSES:
        raise RepFusionError(f"{path} does not describe a repfusion student (class {config.get('_class_name')}).")
    return config


def find_export(path: str | Path, subfolders: tuple[str, ...] = ("student",)) -> Path | None:
    """The exported student folder (one holding config.json): `path` itself or one of its `subfolders`."""
    path = Path(path)
    for candidate in (path, *(path / name for name in subfolders)):
        if (candidate / "config.json").is_file():
            return candidate
    return None


def load_student(folder: str | Path) -> ModelMixin:
    """A student exported with save_pretrained (safetensors weights + config naming arch and width)."""
    config = read_student_config(folder)
    return STUDENT_CLASSES[config["_class_name"]].from_pretrained(str(folder), use_safetensors=True)


__all__ = ["STUDENTS", "HRNet", "MobileNetV2", "ResNet", "build_student", "find_export", "load_student", "read_student_config"]
