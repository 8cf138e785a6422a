"""ResNets with CIFAR (3x3 stem, no max-pool) or ImageNet (7x7 stem + max-pool) stems.

Layer names follow torchvision (conv1, bn1, layer1..layer4, fc) so hooks and weights line up with
what users know. `width` scales every stage's channels for CPU-sized experiments.
"""

from __future__ import annotations

import torch
from diffusers import ConfigMixin
from diffusers.configuration_utils import register_to_config
from torch import nn

from ..errors import unknown_name_error
from ..pretrained import PretrainedModel


def scaled(channels: int, width: float) -> int:
    """Channels times the width multiplier, rounded to a multiple of 8 (at least 8)."""
    return max(8, int(round(channels * width / 8)) * 8)


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = _shortcut(in_planes, planes, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + (self.downsample(x) if self.downsample is not None else x))


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        out_planes = planes * self.expansion
        self.conv1 = nn.Conv2d(in_planes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, out_planes, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_planes)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = _shortcut(in_planes, out_planes, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + (self.downsample(x) if self.downsample is not None else x))


def _shortcut(in_planes: int, out_planes: int, stride: int) -> nn.Module | None:
    if stride == 1 and in_planes == out_planes:
        return None
    return nn.Sequential(nn.Conv2d(in_planes, out_planes, 1, stride, bias=False), nn.BatchNorm2d(out_planes))


RESNET_ARCHS: dict[str, tuple[str, tuple[int, ...], str]] = {
    "resnet18_cifar": ("basic", (2, 2, 2, 2), "cifar"),
    "resnet34_cifar": ("basic", (3, 4, 6, 3), "cifar"),
    "resnet18": ("basic", (2, 2, 2, 2), "imagenet"),
    "resnet34": ("basic", (3, 4, 6, 3), "imagenet"),
    "resnet50": ("bottleneck", (3, 4, 6, 3), "imagenet"),
}


class ResNet(PretrainedModel, ConfigMixin):
    """ResNet backbone (+ optional linear classifier when num_classes > 0).

    Args:
        arch (`str`): one of `RESNET_ARCHS`.
        width (`float`, *optional*, defaults to 1.0): channel multiplier.
        num_classes (`int`, *optional*, defaults to 0): 0 gives a backbone whose forward returns pooled features.
    """

    config_name = "config.json"
    feature_layer = "layer4"

    @register_to_config
    def __init__(self, arch: str = "resnet18_cifar", width: float = 1.0, num_classes: int = 0,
                 in_channels: int = 3) -> None:
        super().__init__()
        if arch not in RESNET_ARCHS:
            raise unknown_name_error("ResNet arch", arch, RESNET_ARCHS)
        block_name, depths, stem = RESNET_ARCHS[arch]
        block = BasicBlock if block_name == "basic" else Bottleneck
        stem_width = scaled(64, width)
        if stem == "cifar":
            self.conv1 = nn.Conv2d(in_channels, stem_width, 3, 1, 1, bias=False)
            self.maxpool: nn.Module = nn.Identity()
        else:
            self.conv1 = nn.Conv2d(in_channels, stem_width, 7, 2, 3, bias=False)
            self.maxpool = nn.MaxPool2d(3, 2, 1)
        self.bn1 = nn.BatchNorm2d(stem_width)
        self.relu = nn.ReLU(inplace=True)
        in_planes = stem_width
        for index, (depth, base) in enumerate(zip(depths, (64, 128, 256, 512))):
            planes = scaled(base, width)
            layers = []
            for i in range(depth):
                layers.append(block(in_planes, planes, stride=2 if index > 0 and i == 0 else 1))
                in_planes = planes * block.expansion
            setattr(self, f"layer{index + 1}", nn.Sequential(*layers))
        self.feature_channels = in_planes
        self.default_image_size = 32 if stem == "cifar" else 224
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(in_planes, num_classes) if num_classes > 0 else None
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward_stages(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """The outputs of layer1..layer4 (strides 4, 8, 16, 32 with the ImageNet stem), for dense heads."""
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        stages = []
        for layer in (self.layer1, self.layer2, self.layer3, self.layer4):
            x = layer(x)
            stages.append(x)
        return tuple(stages)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = torch.flatten(self.avgpool(self.forward_features(x)), 1)
        return self.fc(pooled) if self.fc is not None else pooled
