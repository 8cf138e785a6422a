"""MobileNetV2 with ImageNet strides or CIFAR strides (stride-1 stem and first stage, for 32x32)."""

from __future__ import annotations

import torch
from diffusers import ConfigMixin
from diffusers.configuration_utils import register_to_config
from torch import nn

from ..errors import unknown_name_error
from ..pretrained import PretrainedModel

# expansion t, channels c, repeats n, stride s (torchvision / the MobileNetV2 paper)
SETTINGS = [(1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1)]
MOBILENET_ARCHS = {"mobilenetv2": "imagenet", "mobilenetv2_cifar": "cifar"}


def make_divisible(value: float, divisor: int = 8) -> int:
    new = max(divisor, int(value + divisor / 2) // divisor * divisor)
    return new + divisor if new < 0.9 * value else new


def conv_bn_relu(cin: int, cout: int, kernel: int = 3, stride: int = 1, groups: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, kernel, stride, kernel // 2, groups=groups, bias=False),
                         nn.BatchNorm2d(cout), nn.ReLU6(inplace=True))


class InvertedResidual(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, expand: int) -> None:
        super().__init__()
        hidden = cin * expand
        layers: list[nn.Module] = [conv_bn_relu(cin, hidden, 1)] if expand != 1 else []
        layers += [conv_bn_relu(hidden, hidden, 3, stride, groups=hidden),
                   nn.Conv2d(hidden, cout, 1, bias=False), nn.BatchNorm2d(cout)]
        self.conv = nn.Sequential(*layers)
        self.use_residual = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv(x) if self.use_residual else self.conv(x)


class MobileNetV2(PretrainedModel, ConfigMixin):
    """MobileNetV2 backbone (+ optional classifier). Below width 1 the last 1x1 conv shrinks too."""

    config_name = "config.json"
    feature_layer = "features"

    @register_to_config
    def __init__(self, arch: str = "mobilenetv2_cifar", width: float = 1.0, num_classes: int = 0,
                 in_channels: int = 3) -> None:
        super().__init__()
        if arch not in MOBILENET_ARCHS:
            raise unknown_name_error("MobileNetV2 arch", arch, MOBILENET_ARCHS)
        cifar = MOBILENET_ARCHS[arch] == "cifar"
        cin = make_divisible(32 * width)
        last = make_divisible(1280 * width)
        layers: list[nn.Module] = [conv_bn_relu(in_channels, cin, 3, 1 if cifar else 2)]
        for stage, (t, c, n, s) in enumerate(SETTINGS):
            cout = make_divisible(c * width)
            stride = 1 if cifar and stage == 1 else s
            for i in range(n):
                layers.append(InvertedResidual(cin, cout, stride if i == 0 else 1, t))
                cin = cout
        layers.append(conv_bn_relu(cin, last, 1))
        self.features = nn.Sequential(*layers)
        self.feature_channels = last
        self.default_image_size = 32 if cifar else 224
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(nn.Dropout(0.2), nn.Linear(last, num_classes)) if num_classes > 0 else None
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out")

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = torch.flatten(self.avgpool(self.features(x)), 1)
        return self.classifier(pooled) if self.classifier is not None else pooled
