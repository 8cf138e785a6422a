"""Any `torch.nn.Module` as a student, through the Python API (a config can only name registered students).

    student = ModuleStudent(MyNet(), feature_layer="layer4")
    run_distillation(cfg, run_dir, student=student)               # exports run_dir/student
    run_finetune(cfg, run_dir, student=ModuleStudent(MyNet(), "layer4"))   # cfg.init = the distill run

The export is the usual folder (safetensors weights in the module's own key names + config.json naming
`module:MyNet` and its feature layer). The class is not imported from the folder (configs never import
code): loading it needs the module again, `ModuleStudent.from_pretrained(folder, module=MyNet())`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from torch import nn

from ..errors import RepFusionError
from ..io import load_tensors
from .wrapper import NetWrapper

MODULE_PREFIX = "module:"
WEIGHTS_FILE = "diffusion_pytorch_model.safetensors"


def module_arch(module: nn.Module) -> str:
    return f"{MODULE_PREFIX}{type(module).__name__}"


def module_api_error(arch: str, where: str = "") -> RepFusionError:
    """What a config or folder naming a module student gets: the module itself must come from Python."""
    name = arch.removeprefix(MODULE_PREFIX)
    return RepFusionError(f"The student {arch}{where} is a module given through the Python API, which a name "
                          f"cannot rebuild; pass it again, e.g. student=ModuleStudent({name}(), feature_layer=...) "
                          f"to run_distillation/run_finetune or ModuleStudent.from_pretrained(folder, module={name}()).")


class ModuleStudent(NetWrapper):
    """`module`'s layers up to `feature_layer`, pooled, with an optional `fc` head: a student like the built-in ones.

    Args:
        module (`nn.Module`): the network; its forward must call `feature_layer` (its later layers are not used).
        feature_layer (`str`): dotted name of the submodule whose B x C x H x W output is the feature map.
        num_classes (`int`, *optional*, defaults to 0): classes of the `fc` head; 0 gives pooled features.
        in_channels, image_size (`int`, *optional*, default to 3 and 32): the dummy image traced at construction.
    """

    def __init__(self, module: nn.Module, feature_layer: str, num_classes: int = 0, in_channels: int = 3,
                 image_size: int = 32) -> None:
        super().__init__()
        if not isinstance(module, nn.Module):
            raise RepFusionError(f"ModuleStudent needs a torch.nn.Module, not {type(module).__name__}.")
        arch = module_arch(module)
        # config by hand: diffusers' @register_to_config misaligns positional arguments after an ignored one
        self.register_to_config(arch=arch, width=1.0, feature_layer=feature_layer, num_classes=num_classes,
                                in_channels=in_channels, image_size=image_size)
        self._wrap(module, feature_layer, num_classes, in_channels, image_size, arch)

    @classmethod
    def from_pretrained(cls, folder: str | Path, module: nn.Module | None = None, **_: Any) -> ModuleStudent:  # type: ignore[override]
        """The export in `folder` loaded into `module` (a fresh instance of the class that was distilled)."""
        folder = Path(folder)
        config = json.loads((folder / "config.json").read_text())
        arch = str(config.get("arch"))
        if module is None:
            raise module_api_error(arch, f" in {folder}")
        if module_arch(module) != arch:
            raise RepFusionError(f"The student in {folder} is {arch}, not {module_arch(module)}; pass an instance "
                                 f"of {arch.removeprefix(MODULE_PREFIX)}.")
        student = cls(module, config["feature_layer"], int(config.get("num_classes", 0)),
                      int(config.get("in_channels", 3)), int(config.get("image_size", 32)))
        weights = load_tensors(folder / WEIGHTS_FILE)
        own = student.state_dict()
        wrong = sorted(set(own) ^ set(weights)) or [k for k in own if own[k].shape != weights[k].shape]
        if wrong:
            raise RepFusionError(f"The weights in {folder} do not fit this {type(module).__name__} (e.g. "
                                 f"'{wrong[0]}'); pass the module exactly as it was distilled.")
        student.load_state_dict(weights)
        return student


def check_given_student(student: nn.Module, in_channels: int) -> None:
    """A student passed through the API must be a repfusion student that takes the data's channels."""
    if not hasattr(student, "feature_layer") or not hasattr(student, "config"):
        raise RepFusionError(f"student must be a repfusion student, not a bare {type(student).__name__}; wrap it: "
                             "ModuleStudent(module, feature_layer='layer4').")
    expected = student.config.get("in_channels", in_channels)
    if expected != in_channels:
        raise RepFusionError(f"The student {student.config['arch']} takes {expected}-channel images but the data has "
                             f"{in_channels} channels; build it with in_channels={in_channels}.")
