"""HRNetV2 (Wang et al., "Deep High-Resolution Representation Learning", TPAMI 2019) as a student.

The network keeps a stride-4 branch alive from the stem to the end and adds one lower-resolution branch
per stage (4 stages with 1/2/3/4 branches); every module ends with a multi-resolution fusion in which each
branch receives the sum of all branches brought to its resolution. The HRNetV2 representation upsamples
all branches to the highest resolution and concatenates them (18 + 36 + 72 + 144 = 270 channels at stride
4 for W18), which is what dense heads and dense distillation read (`feature_layer = "representation"`).
Layer names follow the reference code (HRNet/HRNet-Facial-Landmark-Detection, mmpose `HRNet`): conv1,
conv2, layer1, transition1..3, stage2..4 with branches and fuse_layers.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from diffusers import ConfigMixin
from diffusers.configuration_utils import register_to_config
from torch import nn

from ..errors import RepFusionError, unknown_name_error
from ..pretrained import PretrainedModel
from .resnet import BasicBlock, Bottleneck, scaled

# arch -> (base width C: branches are C, 2C, 4C, 8C; modules per stage 2..4; blocks per branch)
HRNET_ARCHS: dict[str, tuple[int, tuple[int, int, int], int]] = {
    "hrnetv2_w18": (18, (1, 4, 3), 4),
}


def conv_bn(cin: int, cout: int, kernel: int, stride: int = 1, relu: bool = True) -> nn.Sequential:
    layers: list[nn.Module] = [nn.Conv2d(cin, cout, kernel, stride, kernel // 2, bias=False), nn.BatchNorm2d(cout)]
    if relu:
        layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


class HighResolutionModule(nn.Module):
    """Parallel branches of BasicBlocks followed by the fusion of every branch into every other one.

    A lower-resolution source reaches a higher-resolution target through a 1x1 conv and nearest
    upsampling; a higher-resolution source reaches a lower one through a chain of stride-2 3x3 convs
    (ReLU between them, none after the last), as in the reference implementation.
    """

    def __init__(self, channels: list[int], blocks: int) -> None:
        super().__init__()
        self.branches = nn.ModuleList(
            nn.Sequential(*(BasicBlock(c, c) for _ in range(blocks))) for c in channels
        )
        fuse = []
        for i, target in enumerate(channels):
            row: list[nn.Module] = []
            for j, source in enumerate(channels):
                if j > i:
                    row.append(conv_bn(source, target, 1, relu=False))
                elif j == i:
                    row.append(nn.Identity())
                else:
                    steps = [conv_bn(source, source, 3, 2) for _ in range(i - j - 1)]
                    row.append(nn.Sequential(*steps, conv_bn(source, target, 3, 2, relu=False)))
            fuse.append(nn.ModuleList(row))
        self.fuse_layers = nn.ModuleList(fuse)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, xs: list[torch.Tensor]) -> list[torch.Tensor]:
        xs = [branch(x) for branch, x in zip(self.branches, xs)]
        fused = []
        for i, row in enumerate(self.fuse_layers):
            total = xs[i]
            for j, layer in enumerate(row):
                if j == i:
                    continue
                y = layer(xs[j])
                if j > i:  # sized to the target, so inputs whose side is not a multiple of 32 work too
                    y = F.interpolate(y, size=xs[i].shape[-2:], mode="nearest")
                total = total + y
            fused.append(self.relu(total))
        return fused


class Transition(nn.Module):
    """Keeps the existing branches (a 3x3 conv where the width changes) and adds the new, half-size one,
    made from the lowest-resolution branch by a stride-2 3x3 conv."""

    def __init__(self, before: list[int], after: list[int]) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        for i, cout in enumerate(after):
            if i < len(before):
                layers.append(nn.Identity() if before[i] == cout else conv_bn(before[i], cout, 3))
            else:
                layers.append(conv_bn(before[-1], cout, 3, 2))
        self.layers = nn.ModuleList(layers)
        self.kept = len(before)

    def forward(self, xs: list[torch.Tensor]) -> list[torch.Tensor]:
        return [layer(xs[i] if i < self.kept else xs[-1]) for i, layer in enumerate(self.layers)]


class Representation(nn.Module):
    """HRNetV2's output: every branch resized (bilinear) to the stride-4 branch and concatenated."""

    def forward(self, xs: list[torch.Tensor]) -> torch.Tensor:
        size = xs[0].shape[-2:]
        return torch.cat([xs[0]] + [F.interpolate(x, size=size, mode="bilinear", align_corners=False)
                                    for x in xs[1:]], dim=1)


class HRNet(PretrainedModel, ConfigMixin):
    """HRNetV2 backbone (+ optional linear classifier on the pooled representation when num_classes > 0).

    Args:
        arch (`str`, *optional*, defaults to `"hrnetv2_w18"`): one of `HRNET_ARCHS`.
        width (`float`, *optional*, defaults to 1.0): channel multiplier; the branch widths become
            (C x width, rounded half up) x (1, 2, 4, 8), 18/36/72/144 at width 1; the stem and stage 1
            scale like a ResNet's.
        num_classes (`int`, *optional*, defaults to 0): 0 gives a backbone whose forward returns pooled
            features.
        in_channels (`int`, *optional*, defaults to 3): input image channels.

    `forward_features` returns the representation [B, feature_channels, H/4, W/4].
    """

    config_name = "config.json"
    feature_layer = "representation"

    @register_to_config
    def __init__(self, arch: str = "hrnetv2_w18", width: float = 1.0, num_classes: int = 0,
                 in_channels: int = 3) -> None:
        super().__init__()
        if arch not in HRNET_ARCHS:
            raise unknown_name_error("HRNet arch", arch, HRNET_ARCHS)
        if width <= 0:
            raise RepFusionError(f"HRNet width must be positive, not {width}.")
        base, modules, blocks = HRNET_ARCHS[arch]
        branch = max(2, int(base * width + 0.5))  # half up: 4.5 -> 5
        channels = [branch * 2 ** i for i in range(4)]
        stem, planes = scaled(64, width), scaled(64, width)
        # 1. stem: two stride-2 3x3 convs (stride 4)
        self.conv1 = nn.Conv2d(in_channels, stem, 3, 2, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(stem)
        self.conv2 = nn.Conv2d(stem, stem, 3, 2, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(stem)
        self.relu = nn.ReLU(inplace=True)
        # 2. stage 1: four Bottlenecks on the single stride-4 branch
        self.layer1 = nn.Sequential(Bottleneck(stem, planes), *(Bottleneck(planes * 4, planes) for _ in range(3)))
        # 3. stages 2-4: one more branch each, then multi-resolution modules
        before = [planes * 4]
        for stage, count in enumerate(modules, start=2):
            after = channels[:stage]
            setattr(self, f"transition{stage - 1}", Transition(before, after))
            setattr(self, f"stage{stage}", nn.Sequential(*(HighResolutionModule(after, blocks) for _ in range(count))))
            before = after
        # 4. the HRNetV2 representation and the optional classifier
        self.representation = Representation()
        self.feature_channels = sum(channels)
        self.default_image_size = 256
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(self.feature_channels, num_classes) if num_classes > 0 else None
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn2(self.conv2(self.relu(self.bn1(self.conv1(x))))))
        xs = [self.layer1(x)]
        for stage in (2, 3, 4):
            xs = getattr(self, f"stage{stage}")(getattr(self, f"transition{stage - 1}")(xs))
        return self.representation(xs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = torch.flatten(self.avgpool(self.forward_features(x)), 1)
        return self.fc(pooled) if self.fc is not None else pooled
