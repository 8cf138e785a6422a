"""A student backbone's weights under torchvision's key names, for users who load them with torchvision or timm.

Why no renaming table: the built-in `resnet18`, `resnet34`, `resnet50` (ImageNet stem) and `mobilenetv2` at
width 1 and 3 input channels were built with torchvision's module names and shapes (checked against
torchvision's `models/resnet.py` and `models/mobilenetv2.py`): `conv1`, `bn1`, `layerN.B.{conv,bn}K`,
`layerN.0.downsample.{0,1}`; `features.0.{0,1}` (stem conv + BatchNorm), `features.N.conv.M[.K]` (inverted
residuals), `features.18.{0,1}` (the last 1x1 conv to 1280 channels); every BatchNorm with its
`num_batches_tracked`. So the file is the backbone's own state dict without the classifier (`fc.*`,
`classifier.*`), which `torchvision.models.resnet18().load_state_dict(sd, strict=False)` takes with only the
classifier missing. timm's `resnet18/34/50` use the same ResNet names (`timm.create_model("resnet18",
num_classes=0, checkpoint_path=FILE)`); timm's MobileNetV2 names differ, so only torchvision is promised there.

Anything else does not match torchvision's shapes (a CIFAR stem, width != 1, other input channels, HRNet):
no file, and `torchvision_layout` says why in words the model card repeats.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from .io import save_tensors

TORCHVISION_NAMES = {"resnet18": "resnet18", "resnet34": "resnet34", "resnet50": "resnet50",
                     "mobilenetv2": "mobilenet_v2"}  # repfusion arch -> torchvision.models builder
HEAD_PREFIXES = ("fc.", "classifier.")
TIMM_NAMES = {"resnet18", "resnet34", "resnet50"}  # timm's ResNet shares torchvision's key names


def backbone_of(network: nn.Module) -> nn.Module:
    """The student inside a fine-tuned network (segmentation and landmark nets keep it as `.backbone`)."""
    inner = getattr(network, "backbone", None)
    return inner if isinstance(inner, nn.Module) else network


def keyed_layout(backbone: nn.Module) -> tuple[str | None, str | None, str]:
    """(library, model name, "") when the backbone's weights fit that library's model, else (None, None, why).

    A student built by name from torchvision or timm (`torchvision:resnet50`, `timm:convnext_tiny`) already
    holds that library's key names (`students.wrapper`); a built-in one matches torchvision where
    `torchvision_layout` says so.
    """
    arch = str(_config(backbone, "arch", ""))
    library, _, name = arch.partition(":")
    if name and library in ("torchvision", "timm"):
        return library, name, ""
    if name:
        return None, None, (f"{arch} is a module given through the Python API; its export already keeps the "
                            "module's own key names")
    tv_name, reason = torchvision_layout(backbone)
    return ("torchvision", tv_name, "") if tv_name else (None, None, reason)


def _config(backbone: nn.Module, key: str, default: object) -> object:
    config = getattr(backbone, "config", None)
    return getattr(config, key, default) if config is not None else default


def torchvision_layout(backbone: nn.Module) -> tuple[str | None, str]:
    """(torchvision builder name, "") when a built-in backbone's weights fit it exactly, else (None, the reason)."""
    arch = _config(backbone, "arch", None)
    width = float(_config(backbone, "width", 1.0))  # type: ignore[arg-type]
    channels = int(_config(backbone, "in_channels", 3))  # type: ignore[call-overload]
    if arch not in TORCHVISION_NAMES:
        cifar = isinstance(arch, str) and arch.endswith("_cifar")
        why = ("has a CIFAR stem (stride-1 first convolution, no max-pool), whose shapes or strides torchvision's "
               "ImageNet models do not share" if cifar else "has no torchvision counterpart")
        return None, f"{arch} {why}; distil resnet18, resnet34, resnet50 or mobilenetv2 at width 1 for one"
    if width != 1.0:
        return None, (f"{arch} at width {width:g} has other channel counts than torchvision's "
                      f"{TORCHVISION_NAMES[arch]} (width 1); distil at student.width 1 for a torchvision-keyed file")
    if channels != 3:
        return None, f"{arch} takes {channels} input channels, torchvision's {TORCHVISION_NAMES[arch]} takes 3"
    return TORCHVISION_NAMES[arch], ""


def keyed_file_name(library: str, name: str) -> str:
    return f"{library}_{name}.safetensors"


def torchvision_state_dict(backbone: nn.Module) -> dict[str, torch.Tensor]:
    """The backbone's tensors under torchvision's names (its own names, verified above), classifier left out."""
    return {k: v for k, v in backbone.state_dict().items() if not k.startswith(HEAD_PREFIXES)}


def write_torchvision_weights(network: nn.Module, path_or_folder: str | Path) -> dict[str, str | None]:
    """Write the keyed file when the layout matches; returns the model card's `torchvision` fact either way.

    path_or_folder: a folder (the file gets its standard name there, `torchvision_resnet18.safetensors`, or
    `timm_NAME.safetensors` for a timm student) or a `.safetensors` path.
    """
    backbone = backbone_of(network)
    library, name, reason = keyed_layout(backbone)
    if library is None or name is None:
        return {"library": None, "architecture": None, "file": None, "reason": reason}
    target = Path(path_or_folder)
    if target.suffix != ".safetensors":
        target = target / keyed_file_name(library, name)
    save_tensors(target, torchvision_state_dict(backbone),
                 metadata={"format": "pt", f"{library}_arch": name, "written_by": "repfusion"})
    arch = str(_config(backbone, "arch", ""))
    timm = arch if arch in TIMM_NAMES else None  # a built-in ResNet: timm's resnet with num_classes=0 loads strictly
    return {"library": library, "architecture": name, "file": target.name, "timm": timm, "reason": None}
