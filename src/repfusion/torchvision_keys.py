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

Beside them, every export gets a timm/Hub-style folder, `timm/` (`write_timm_folder`): `model.safetensors`
(the network's own state dict, its classifier head included when it has one) and a `config.json` as timm's
Hub loader reads it (`architecture`, `num_classes`, `num_features`, `global_pool`, `pretrained_cfg` with the
input size, mean, std, interpolation and crop_pct the run's data was read with), plus a `repfusion` entry
from which `load_timm_folder` rebuilds the same network. A subfolder, because the export folder's own
`config.json` is diffusers' (what `load_student` reads). `architecture` is timm's model name where timm
builds the same network (a built-in ResNet at width 1 with 3 channels, a `timm:NAME` student), else
repfusion's arch name, and `repfusion.timm_loadable` says which.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .errors import RepFusionError
from .io import load_tensors, save_tensors, write_json

TORCHVISION_NAMES = {"resnet18": "resnet18", "resnet34": "resnet34", "resnet50": "resnet50",
                     "mobilenetv2": "mobilenet_v2"}  # repfusion arch -> torchvision.models builder
HEAD_PREFIXES = ("fc.", "classifier.")
TIMM_NAMES = {"resnet18", "resnet34", "resnet50"}  # timm's ResNet shares torchvision's key names
TIMM_FOLDER = "timm"  # the timm/Hub-style subfolder of an export: model.safetensors + config.json
TIMM_WEIGHTS = "model.safetensors"
INTERPOLATION = "bilinear"  # how repfusion resizes images (datasets.read_image); the full image, no crop


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


def timm_architecture(network: nn.Module) -> tuple[str, bool, str]:
    """(timm's name or repfusion's arch, whether timm builds the same network, why not)."""
    backbone = backbone_of(network)
    arch = str(_config(backbone, "arch", ""))
    library, _, name = arch.partition(":")
    if library == "timm" and name:
        return name, True, ""
    if torchvision_layout(backbone)[0] is not None and arch in TIMM_NAMES:
        return arch, True, ""
    if library == "torchvision" and name:
        return arch, False, f"{arch} is torchvision's (torchvision.models.get_model builds it), not timm's"
    width = float(_config(backbone, "width", 1.0))  # type: ignore[arg-type]
    channels = int(_config(backbone, "in_channels", 3))  # type: ignore[call-overload]
    return arch, False, (f"timm builds no {arch} at width {width:g} with {channels} input channels (only resnet18, "
                         "resnet34 and resnet50 at width 1 with 3, and timm: students)")


def write_timm_folder(network: nn.Module, folder: str | Path, image_size: int | None,
                      mean: list[float] | tuple[float, ...], std: list[float] | tuple[float, ...]) -> dict[str, Any]:
    """`folder/model.safetensors` + `folder/config.json` (timm's Hub layout); returns the model card's fact.

    The network is the export's: a distilled backbone (no head), a fine-tuned classifier (its `fc` head kept,
    `num_classes` set) or, for a segmentation or landmark network, its backbone alone (their heads are not
    timm's). A `module:` student is skipped (it cannot be rebuilt by name), and the fact says so.
    """
    student = network if getattr(network, "fc", None) is not None else backbone_of(network)
    arch = str(_config(student, "arch", ""))
    if arch.startswith("module:"):
        return {"folder": None, "reason": f"{arch} is a module given through the Python API, which cannot be "
                                          "rebuilt by name"}
    architecture, loadable, why = timm_architecture(student)
    fc = getattr(student, "fc", None)
    num_classes = int(fc.out_features) if isinstance(fc, nn.Linear) else 0
    channels = int(_config(student, "in_channels", 3))  # type: ignore[call-overload]
    features = int(getattr(student, "feature_channels", 0) or 0)
    size = int(image_size) if image_size else int(getattr(student, "default_image_size", 0) or 224)
    pretrained_cfg: dict[str, Any] = {
        "tag": "repfusion", "input_size": [channels, size, size], "fixed_input_size": False,
        "interpolation": INTERPOLATION, "crop_pct": 1.0, "crop_mode": "center",
        "mean": [float(v) for v in mean], "std": [float(v) for v in std], "num_classes": num_classes}
    if loadable and architecture in TIMM_NAMES:
        pretrained_cfg.update(first_conv="conv1", classifier="fc")
    config = {"architecture": architecture, "num_classes": num_classes, "num_features": features,
              "global_pool": "avg", "pretrained_cfg": pretrained_cfg,
              "repfusion": {"arch": arch, "width": float(_config(student, "width", 1.0)),  # type: ignore[arg-type]
                            "in_channels": channels, "num_classes": num_classes,
                            "feature_layer": getattr(student, "feature_layer", None),
                            "timm_loadable": loadable, "why_not_timm": why or None}}
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().clone() for k, v in student.state_dict().items()}  # clones: no shared storage
    save_tensors(folder / TIMM_WEIGHTS, tensors, metadata={"format": "pt", "written_by": "repfusion"})
    write_json(folder / "config.json", config)
    return {"folder": folder.name, "architecture": architecture, "timm_loadable": loadable,
            "num_classes": num_classes, "reason": why or None}


def load_timm_folder(folder: str | Path) -> nn.Module:
    """The network of a `timm/` export folder, rebuilt from its `repfusion` entry and loaded strictly."""
    from .students import build_student

    folder = Path(folder)
    try:
        config = json.loads((folder / "config.json").read_text())
        spec = config["repfusion"]
        arch, width = str(spec["arch"]), float(spec["width"])
        num_classes, channels = int(spec.get("num_classes", 0)), int(spec.get("in_channels", 3))
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise RepFusionError(f"{folder} is not a repfusion timm-style folder ({type(e).__name__} reading its "
                             "config.json); export the run again.") from None
    network = build_student(arch, width, num_classes=num_classes, in_channels=channels)
    try:
        network.load_state_dict(load_tensors(folder / TIMM_WEIGHTS), strict=True)
    except RuntimeError as e:
        first = str(e).strip().splitlines()[0]
        raise RepFusionError(f"The weights in {folder / TIMM_WEIGHTS} do not fit {arch} ({first}); export the run "
                             "again.") from None
    return network.eval()
