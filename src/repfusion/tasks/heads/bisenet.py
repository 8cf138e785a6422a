"""BiSeNetV1 (Yu et al., ECCV 2018) around a repfusion ResNet student: the face-parsing network of the paper.

The context path is the student itself (`network.backbone`, built by `build_student(arch, width,
num_classes=0)`), so a distilled student loads strictly into it and only the BiSeNet parts start at
random. Its stride-16 and stride-32 features are refined by attention refinement modules (ARMs) plus a
global-context vector; a spatial path of three stride-2 convolutions keeps detail at stride 8; a feature
fusion module (FFM) joins both. (A CIFAR-stem ResNet, for tiny images, halves every one of these strides
twice; the ratios stay BiSeNet's.) Two auxiliary heads on the context features give BiSeNet's auxiliary
losses; they run in training mode only. Every head width scales with the backbone width, so a CPU-sized
network exists for tests and demos. Upsampling goes to the exact input size, so any image side works.

Reference read (not copied): CoinCheung/BiSeNet `lib/models/bisenetv1.py`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from diffusers import ConfigMixin
from diffusers.configuration_utils import register_to_config
from diffusers.utils import BaseOutput
from torch import nn

from ...errors import RepFusionError
from ...pretrained import PretrainedModel
from ...students import build_student
from ...students.resnet import RESNET_ARCHS, ResNet, scaled


@dataclass
class BiSeNetOutput(BaseOutput):
    """
    Args:
        logits (`torch.Tensor` of shape `(batch, num_classes, height, width)`): the fused prediction at input size.
        aux_logits (`tuple[torch.Tensor, ...]`, *optional*): the two auxiliary predictions (from the stride-8 and
            stride-16 context features), at input size; `None` in eval mode.
    """

    logits: torch.Tensor
    aux_logits: tuple[torch.Tensor, ...] | None = None


class ConvBNReLU(nn.Sequential):
    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3, stride: int = 1) -> None:
        super().__init__(
            nn.Conv2d(in_channels, out_channels, kernel_size, stride, kernel_size // 2, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
        )


class AttentionRefinement(nn.Module):
    """ARM: a 3x3 conv, then channel attention from the globally pooled feature (pool, 1x1 conv, BN, sigmoid)."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv = ConvBNReLU(in_channels, out_channels, 3)
        self.attention = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(out_channels, out_channels, 1, bias=False),
                                       nn.BatchNorm2d(out_channels), nn.Sigmoid())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feature = self.conv(x)
        return feature * self.attention(feature)


class FeatureFusion(nn.Module):
    """FFM: concatenate spatial and context features, 1x1 conv, then add a squeeze-excite reweighted copy."""

    def __init__(self, in_channels: int, out_channels: int, reduction: int = 4) -> None:
        super().__init__()
        self.conv = ConvBNReLU(in_channels, out_channels, 1)
        hidden = max(1, out_channels // reduction)
        self.attention = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(out_channels, hidden, 1),
                                       nn.ReLU(inplace=True), nn.Conv2d(hidden, out_channels, 1), nn.Sigmoid())

    def forward(self, spatial: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        feature = self.conv(torch.cat([spatial, context], dim=1))
        return feature + feature * self.attention(feature)


class SegmentationHead(nn.Sequential):
    """3x3 ConvBNReLU then a 1x1 classifier (BiSeNet's output and auxiliary heads)."""

    def __init__(self, in_channels: int, mid_channels: int, num_classes: int) -> None:
        super().__init__(ConvBNReLU(in_channels, mid_channels, 3), nn.Conv2d(mid_channels, num_classes, 1))


def context_channels(arch: str, width: float) -> tuple[int, int]:
    """Channels of the ResNet's layer3 and layer4 outputs (strides 16 and 32 with the ImageNet stem)."""
    block = RESNET_ARCHS[arch][0]
    expansion = 4 if block == "bottleneck" else 1
    return scaled(256, width) * expansion, scaled(512, width) * expansion


def spatial_strides(arch: str) -> tuple[int, int, int]:
    """Strides of the spatial path's three convolutions: it works at the resolution of the backbone's layer2.

    With the ImageNet stem that is BiSeNet's stride 8 (three stride-2 convolutions); the CIFAR stem (no stride
    in the stem) puts layer2 at stride 2, so tiny images keep the paper's spatial : context ratios of 1 : 2 : 4.
    """
    return (2, 2, 2) if RESNET_ARCHS[arch][2] == "imagenet" else (2, 1, 1)


class BiSeNetV1(PretrainedModel, ConfigMixin):
    """BiSeNetV1 whose context path is a repfusion ResNet student.

    Args:
        arch (`str`, *optional*, defaults to `"resnet18"`): the backbone, a ResNet student; the paper's are
            `resnet18` and `resnet50` (ImageNet stem). A CIFAR-stem ResNet (`resnet18_cifar`) serves tiny images:
            the whole network then works at 4x the resolution (see `spatial_strides`).
        width (`float`, *optional*, defaults to 1.0): channel multiplier of the backbone and of every BiSeNet part.
        num_classes (`int`, *optional*, defaults to 19): the CelebAMask-HQ parsing classes.
        in_channels (`int`, *optional*, defaults to 3): image channels.
    """

    config_name = "config.json"

    @register_to_config
    def __init__(self, arch: str = "resnet18", width: float = 1.0, num_classes: int = 19, in_channels: int = 3) -> None:
        super().__init__()
        if num_classes < 2:
            raise RepFusionError(f"BiSeNetV1 needs at least 2 classes, not {num_classes}; check the dataset's classes.")
        self.backbone = build_student(arch, width, num_classes=0, in_channels=in_channels)
        if not isinstance(self.backbone, ResNet):
            raise RepFusionError(f"BiSeNetV1's context path must be a ResNet student ({', '.join(RESNET_ARCHS)}), "
                                 f"not '{arch}'; set student.arch to one of them.")
        c16, c32 = context_channels(arch, width)
        s1, s2, s3 = spatial_strides(arch)
        context, spatial, fused, aux = scaled(128, width), scaled(64, width), scaled(256, width), scaled(64, width)
        # context path (on top of the backbone)
        self.global_context = nn.Sequential(nn.AdaptiveAvgPool2d(1), ConvBNReLU(c32, context, 1))
        self.arm32 = AttentionRefinement(c32, context)
        self.arm16 = AttentionRefinement(c16, context)
        self.refine32 = ConvBNReLU(context, context, 3)
        self.refine16 = ConvBNReLU(context, context, 3)
        # spatial path: three convolutions down to layer2's resolution (stride 8), then a 1x1 projection
        self.spatial_path = nn.Sequential(ConvBNReLU(in_channels, spatial, 7, s1), ConvBNReLU(spatial, spatial, 3, s2),
                                          ConvBNReLU(spatial, spatial, 3, s3), ConvBNReLU(spatial, 2 * spatial, 1))
        self.fusion = FeatureFusion(2 * spatial + context, fused)
        self.head = SegmentationHead(fused, fused, num_classes)
        self.aux_head16 = SegmentationHead(context, aux, num_classes)
        self.aux_head32 = SegmentationHead(context, aux, num_classes)
        for name, module in self.named_modules():
            if isinstance(module, nn.Conv2d) and not name.startswith("backbone."):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
                if module.bias is not None:
                    nn.init.zeros_(module.bias)

    def forward(self, x: torch.Tensor) -> BiSeNetOutput:
        size = x.shape[-2:]
        # 1. context path: ARM-refined stride-32 and stride-16 features plus global context, top-down
        _, _, feat16, feat32 = self.backbone.forward_stages(x)  # layer3, layer4
        spatial = self.spatial_path(x)
        up32 = self.arm32(feat32) + self.global_context(feat32)
        up32 = self.refine32(F.interpolate(up32, size=feat16.shape[-2:], mode="nearest"))  # stride 16
        up16 = self.arm16(feat16) + up32
        up16 = self.refine16(F.interpolate(up16, size=spatial.shape[-2:], mode="nearest"))  # stride 8 (layer2's)
        # 2. fuse with the spatial path and predict at input size
        logits = _upsample(self.head(self.fusion(spatial, up16)), size)
        if not self.training:
            return BiSeNetOutput(logits=logits)
        # 3. auxiliary heads (training only)
        aux = (_upsample(self.aux_head16(up16), size), _upsample(self.aux_head32(up32), size))
        return BiSeNetOutput(logits=logits, aux_logits=aux)


def _upsample(x: torch.Tensor, size: torch.Size) -> torch.Tensor:
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False)
