"""Student networks by name (timm-style names), saved and loaded with diffusers' save/from_pretrained.

Besides the built-in names: `timm:NAME` / `torchvision:NAME` (optional extras, `external`) and any module
through the Python API (`ModuleStudent`).
"""

from __future__ import annotations

import json
from pathlib import Path

from diffusers import ModelMixin

from torch import nn

from ..errors import RepFusionError
from ..registry import Registry
from .external import ExternalStudent, check_external, is_external
from .hrnet import HRNET_ARCHS, HRNet
from .mobilenetv2 import MOBILENET_ARCHS, MobileNetV2
from .module import ModuleStudent, check_given_student
from .resnet import RESNET_ARCHS, ResNet

STUDENTS: Registry[type[ModelMixin]] = Registry("student")
for _name in RESNET_ARCHS:
    STUDENTS.register(ResNet, name=_name)
for _name in MOBILENET_ARCHS:
    STUDENTS.register(MobileNetV2, name=_name)
for _name in HRNET_ARCHS:
    STUDENTS.register(HRNet, name=_name)
STUDENT_CLASSES = {"ResNet": ResNet, "MobileNetV2": MobileNetV2, "HRNet": HRNet, "ExternalStudent": ExternalStudent,
                   "ModuleStudent": ModuleStudent}


def check_student(name: str, width: float = 1.0) -> None:
    """Whether `build_student(name, width)` can build it, told without building anything: a built-in name, or
    `timm:NAME` / `torchvision:NAME` in that library's registry (a malformed name is refused before any import),
    then the width; one sentence naming what is wrong."""
    if is_external(name):
        check_external(name, width)
    else:
        STUDENTS.get(name)
    if width <= 0:
        raise RepFusionError(f"student.width must be positive, not {width}.")


def build_student(name: str, width: float = 1.0, num_classes: int = 0, in_channels: int = 3) -> ModelMixin:
    """A randomly initialised student; num_classes = 0 gives the bare backbone."""
    check_student(name, width)
    if is_external(name):
        return ExternalStudent(arch=name, width=width, num_classes=num_classes, in_channels=in_channels)
    return STUDENTS.get(name)(arch=name, width=width, num_classes=num_classes, in_channels=in_channels)


def read_student_config(folder: str | Path) -> dict:
    path = Path(folder) / "config.json"
    if not path.is_file():
        raise RepFusionError(f"{folder} holds no student (config.json missing); give a folder exported by distill.")
    try:
        config = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise RepFusionError(f"{path} is not readable JSON ({type(e).__name__}); export the student again with "
                             "repfusion distill (or restore the file).") from None
    if not isinstance(config, dict) or config.get("_class_name") not in STUDENT_CLASSES:
        name = config.get("_class_name") if isinstance(config, dict) else type(config).__name__
        raise RepFusionError(f"{path} does not describe a repfusion student (class {name}).")
    for key, kind in (("arch", str), ("width", (int, float))):
        if not isinstance(config.get(key), kind) or isinstance(config.get(key), bool):
            raise RepFusionError(f"{path} has no valid '{key}' (a student's config.json names its arch and width); "
                                 "export the student again with repfusion distill.")
    return config


def load_student(folder: str | Path, module: nn.Module | None = None) -> ModelMixin:
    """A student exported with save_pretrained (safetensors weights + config naming arch and width).

    module: for a `ModuleStudent` export (arch `module:NAME`), a fresh instance of that module's class.
    """
    config = read_student_config(folder)
    folder = Path(folder)
    weights = folder / "diffusion_pytorch_model.safetensors"
    if not weights.is_file():
        pickled = sorted(p.name for p in folder.glob("*.bin"))
        if pickled:
            raise RepFusionError(f"Student folder {folder} holds its weights only as {pickled[0]}, a pickle, which can "
                                 "run code when it is loaded, so repfusion refuses it; export the student again "
                                 "(save_pretrained writes safetensors) or convert the file to safetensors.")
        raise RepFusionError(f"Student folder {folder} has a config.json but no weights ({weights.name}); copy the "
                             "weights file there or export the student again.")
    if config["_class_name"] == "ModuleStudent":
        return ModuleStudent.from_pretrained(folder, module=module)
    try:
        return STUDENT_CLASSES[config["_class_name"]].from_pretrained(str(folder), use_safetensors=True)
    except RepFusionError:
        raise
    except (OSError, ValueError, RuntimeError, TypeError) as e:  # diffusers' errors for a broken file or config
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise RepFusionError(f"The student in {folder} cannot be loaded ({first}); export it again with repfusion "
                             "distill.") from None


__all__ = ["STUDENTS", "ExternalStudent", "HRNet", "MobileNetV2", "ModuleStudent", "ResNet", "build_student",
           "check_given_student", "check_student", "load_student", "read_student_config"]
