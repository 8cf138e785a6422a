"""Stand-ins for timm and torchvision (not installable here): their registry functions over tiny models with
the real libraries' layouts and key names, installed in `sys.modules` by `install_fakes(monkeypatch)`."""

from __future__ import annotations

import sys
import types

import torch
from torch import nn


def conv_bn(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class TVResNet(nn.Module):
    """torchvision.models.ResNet's children and forward (conv1 .. layer4, avgpool, flatten, fc), 8 to 32 channels."""

    def __init__(self, num_classes: int = 1000) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(8)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        self.layer1 = conv_bn(8, 8)
        self.layer2 = conv_bn(8, 16, 2)
        self.layer3 = conv_bn(16, 16, 2)
        self.layer4 = conv_bn(16, 32, 2)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(32, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


class TVMobileNet(nn.Module):
    """torchvision's MobileNetV2 layout: `features`, then pooling in forward, then `classifier`."""

    def __init__(self, num_classes: int = 1000) -> None:
        super().__init__()
        self.features = nn.Sequential(conv_bn(3, 8, 2), conv_bn(8, 24, 2))
        self.classifier = nn.Sequential(nn.Dropout(0.2), nn.Linear(24, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = nn.functional.adaptive_avg_pool2d(self.features(x), 1)
        return self.classifier(torch.flatten(x, 1))


class TimmNet(nn.Module):
    """timm's layout: stem, stages, head; forward_features / forward_head; feature_info and pretrained_cfg."""

    def __init__(self, num_classes: int = 1000, in_chans: int = 3, tokens: bool = False) -> None:
        super().__init__()
        self.stem = conv_bn(in_chans, 8, 2)
        self.stages = nn.Sequential(conv_bn(8, 16, 2), conv_bn(16, 24, 2))
        self.tokens = tokens  # a ViT-like model: its last feature layer gives B x N x C tokens
        self.flat = nn.Flatten(2)
        self.head = nn.Linear(24, num_classes) if num_classes else nn.Identity()
        self.num_features = 24
        last = "flat" if tokens else "stages.1"
        self.feature_info = [{"module": "stages.0", "num_chs": 16, "reduction": 4},
                             {"module": last, "num_chs": 24, "reduction": 8}]
        self.pretrained_cfg = {"input_size": (in_chans, 40, 40)}

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stages(self.stem(x))
        return self.flat(x).transpose(1, 2) if self.tokens else x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.forward_features(x)
        return self.head(x.mean(1) if self.tokens else x.mean((2, 3)))


class Calls(list):
    """What the fakes were asked for, to assert that a refused name reached no registry."""


def fake_torchvision(calls: Calls) -> types.ModuleType:
    builders = {"resnet18": TVResNet, "mobilenet_v2": TVMobileNet}
    torchvision = types.ModuleType("torchvision")
    models = types.ModuleType("torchvision.models")

    def list_models(module=None):
        calls.append(("list_models", module))
        return sorted(builders)

    def get_model(name, weights=None):
        calls.append(("get_model", name, weights))
        return builders[name]()

    models.list_models, models.get_model = list_models, get_model
    torchvision.models = models
    return torchvision


def fake_timm(calls: Calls) -> types.ModuleType:
    names = ["convnext_tiny", "resnet26d", "vit_tiny"]
    timm = types.ModuleType("timm")

    def list_models(*args, **kwargs):
        calls.append(("list_models",))
        return list(names)

    def is_model(name):
        calls.append(("is_model", name))
        return name in names

    def create_model(name, pretrained=False, num_classes=1000, in_chans=3):
        calls.append(("create_model", name, pretrained, num_classes, in_chans))
        return TimmNet(num_classes, in_chans, tokens=name.startswith("vit"))

    timm.list_models, timm.is_model, timm.create_model = list_models, is_model, create_model
    return timm


def install_fakes(monkeypatch, sys_modules: bool = True) -> Calls:
    """The fakes as `import timm` / `import torchvision` find them; with sys_modules=False only repfusion's
    import of them sees the fakes (for runs that import Lightning or torchmetrics, which probe torchvision)."""
    calls = Calls()
    fakes = {"torchvision": fake_torchvision(calls), "timm": fake_timm(calls)}
    if sys_modules:
        monkeypatch.setitem(sys.modules, "torchvision", fakes["torchvision"])
        monkeypatch.setitem(sys.modules, "torchvision.models", fakes["torchvision"].models)
        monkeypatch.setitem(sys.modules, "timm", fakes["timm"])
    else:
        from repfusion.students import external

        monkeypatch.setattr(external, "import_library", lambda library, arch: fakes[library])
    return calls
