"""Students by timm or torchvision name (`timm:convnext_tiny`, `torchvision:resnet50`), optional extras.

A name is looked up in the library's own registry (`timm.is_model`, `torchvision.models.list_models`)
and built there with random weights; it is never imported from a path. Everything that could reach an
import (another prefix, a dotted or path-like name) is refused before the library is even imported.
Exported keys are the library's own (`layer4.0.conv1.weight`, see `wrapper`), without any prefix.
"""

from __future__ import annotations

import importlib
import re
from types import ModuleType

from diffusers.configuration_utils import register_to_config
from torch import nn

from ..errors import RepFusionError, unknown_name_error
from ..extras import broken_library, broken_library_error
from .module import MODULE_PREFIX, module_api_error
from .wrapper import NetWrapper

LIBRARIES = ("timm", "torchvision")
PLAIN_NAME = re.compile(r"[A-Za-z0-9_]+")
POOL_NAMES = ("avgpool", "global_pool", "fc", "classifier", "head", "heads", "dropout")
CHANNELS_LAST = ("swin",)  # torchvision models whose feature maps are B x H x W x C


def is_external(arch: str) -> bool:
    return ":" in arch


def split_name(arch: str) -> tuple[str, str]:
    """(library, model name) of `library:name`; anything else is refused here, before any import."""
    library, _, name = arch.partition(":")
    if arch.startswith(MODULE_PREFIX):
        raise module_api_error(arch)
    if library not in LIBRARIES:
        raise unknown_name_error("student library", library, LIBRARIES,
                                 hint=f" (in '{arch}'; name a student timm:NAME, torchvision:NAME or a built-in name)")
    if not PLAIN_NAME.fullmatch(name):
        raise RepFusionError(f"'{arch}' names no {library} model: a name is a plain model name of letters, digits and "
                             f"underscores (e.g. {library}:{'convnext_tiny' if library == 'timm' else 'resnet50'}), "
                             f"looked up in {library}'s own registry.")
    return library, name


def import_library(library: str, arch: str) -> ModuleType:
    """The installed library, or one sentence: not installed (how to install it), or installed but unable to
    load with this torch (`repfusion.extras`: which package, its version, the torch, the matching install)."""
    try:
        return importlib.import_module(library)  # one of LIBRARIES, never a name from the config
    except ModuleNotFoundError as e:
        if e.name != library:  # the library is there; one of its own imports is missing or broken
            raise broken_library_error(broken_library(e) or library, e) from None
        raise RepFusionError(f"The student {arch} needs {library}, which is not installed; pip install {library} "
                             f"through repfusion's extra, pip install 'repfusion[{library}]', whose pin keeps the "
                             "installed torch (docs/usage.md gives the CPU install line).") from None
    except (ImportError, RuntimeError, OSError) as e:  # e.g. torchvision's C++ ops built for another torch
        raise broken_library_error(broken_library(e) or library, e) from None


def check_known(module: ModuleType, library: str, name: str) -> None:
    """`name` is in the library's own registry (and, for torchvision, gives B x C x H x W maps); nothing built."""
    if library == "timm":
        if not module.is_model(name):
            raise unknown_name_error("timm model", name, module.list_models(), hint=" (timm.list_models() lists them)")
        return
    models = module.models
    known = models.list_models(module=models)  # classification models only
    if name not in known:
        raise unknown_name_error("torchvision model", name, known,
                                 hint=" (torchvision.models.list_models() lists them)")
    if name.startswith(CHANNELS_LAST):
        raise RepFusionError(f"torchvision model {name} gives channels-last feature maps, which a student's "
                             "B x C x H x W feature layer cannot be; choose a convolutional model.")


def check_external(arch: str, width: float) -> None:
    """Everything about `timm:NAME` / `torchvision:NAME` that can be told without building it, in the order a
    user fixes them: the name's form (before any import), the library, the model in its registry, the width."""
    library, name = split_name(arch)
    check_known(import_library(library, arch), library, name)
    check_width(arch, width)


def timm_net(timm: ModuleType, name: str, in_channels: int) -> tuple[nn.Module, str, int]:
    """A random timm model without classifier, its last feature_info layer and its input size (`name` checked)."""
    net = timm.create_model(name, pretrained=False, num_classes=0, in_chans=in_channels)
    info = getattr(net, "feature_info", None)
    if not info or not isinstance(info[-1], dict) or "module" not in info[-1]:
        raise RepFusionError(f"timm model {name} lists no feature_info, so its feature layer is unknown; wrap it "
                             "through the Python API with ModuleStudent(net, feature_layer=...).")
    cfg = getattr(net, "pretrained_cfg", None) or getattr(net, "default_cfg", None) or {}
    size = cfg.get("input_size", (in_channels, 224, 224))[-1]
    return net, str(info[-1]["module"]), int(size)


def torchvision_feature_layer(net: nn.Module) -> str:
    """`features` when the model has one (MobileNet, EfficientNet, ConvNeXt, VGG, DenseNet), else the last
    top-level child before its pooling and classifier (ResNet's layer4, RegNet's trunk_output)."""
    names = [name for name, _ in net.named_children()]
    if "features" in names:
        return "features"
    before = [n for n in names[:next((i for i, n in enumerate(names) if n in POOL_NAMES), len(names))]
              if not n.lower().startswith("aux")]
    if not before:
        raise RepFusionError(f"torchvision model {type(net).__name__} has no layer before its pooling.")
    return before[-1]


def first_conv_for(net: nn.Module, in_channels: int) -> None:
    """Rebuild the first convolution for `in_channels` (what timm's in_chans does), randomly initialised."""
    for name, module in net.named_modules():
        if isinstance(module, nn.Conv2d):
            if module.in_channels != in_channels:
                parent, _, attr = name.rpartition(".")
                setattr(net.get_submodule(parent) if parent else net, attr, nn.Conv2d(
                    in_channels, module.out_channels, module.kernel_size, module.stride, module.padding,
                    module.dilation, module.groups, module.bias is not None, module.padding_mode))
            return


def torchvision_net(torchvision: ModuleType, name: str, in_channels: int) -> tuple[nn.Module, str, int]:
    """A random torchvision model, its feature layer and its input size (`name` checked)."""
    net = torchvision.models.get_model(name, weights=None)
    first_conv_for(net, in_channels)
    return net, torchvision_feature_layer(net), 299 if name.startswith("inception") else 224


class ExternalStudent(NetWrapper):
    """A timm or torchvision model by name, built through that library's registry with random weights.

    Args:
        arch (`str`): `timm:NAME` or `torchvision:NAME`.
        width (`float`, *optional*, defaults to 1.0): must be 1.0 (these models have no width multiplier).
        num_classes (`int`, *optional*, defaults to 0): classes of the `fc` head; 0 gives pooled features.
        in_channels (`int`, *optional*, defaults to 3): image channels (torchvision: the first conv is rebuilt).
    """

    @register_to_config
    def __init__(self, arch: str = "torchvision:resnet18", width: float = 1.0, num_classes: int = 0,
                 in_channels: int = 3) -> None:
        super().__init__()
        check_external(arch, width)
        library, name = split_name(arch)
        module = import_library(library, arch)
        build = timm_net if library == "timm" else torchvision_net
        net, feature_layer, size = build(module, name, in_channels)
        self._wrap(net, feature_layer, num_classes, in_channels, size, arch, drop_unused=True)

    @classmethod
    def from_pretrained(cls, *args, **kwargs):  # type: ignore[no-untyped-def]
        student = super().from_pretrained(*args, **kwargs)
        student._share_root()  # own_storage gave the wrapper's root buffers new storage
        return student


def check_width(arch: str, width: float) -> None:
    if width != 1.0:
        raise RepFusionError(f"The student {arch} has no width multiplier: set student.width to 1.0 (or leave it "
                             f"unset), not {width}.")
