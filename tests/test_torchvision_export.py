"""The torchvision-keyed export loads into modules built with torchvision's exact layout.

torchvision cannot be installed here (design.md), so the reference modules below re-state its layout from
its own source (torchvision/models/resnet.py, mobilenetv2.py): module names, shapes, BatchNorm buffers
(num_batches_tracked included), `downsample.{0,1}`, MobileNetV2's `features.N.conv.M` with the stem and the
last 1x1 conv as Conv2dNormActivation (a Sequential of conv, BatchNorm, ReLU6), and the 1000-class heads.
"""

import json
from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from repfusion.cli import main
from repfusion.students import build_student
from repfusion.tasks.heads.bisenet import BiSeNetV1
from repfusion.torchvision_keys import (load_timm_folder, torchvision_layout, write_timm_folder,
                                       write_torchvision_weights)


def conv_norm_act(cin: int, cout: int, kernel: int = 3, stride: int = 1, groups: int = 1) -> nn.Sequential:
    """torchvision.ops.misc.Conv2dNormActivation(norm_layer=BatchNorm2d, activation_layer=ReLU6)."""
    return nn.Sequential(nn.Conv2d(cin, cout, kernel, stride, (kernel - 1) // 2, groups=groups, bias=False),
                         nn.BatchNorm2d(cout), nn.ReLU6(inplace=True))


class TvBasicBlock(nn.Module):
    expansion = 1

    def __init__(self, inplanes, planes, stride=1, downsample=None):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample

    def forward(self, x):
        out = self.bn2(self.conv2(self.relu(self.bn1(self.conv1(x)))))
        return self.relu(out + (x if self.downsample is None else self.downsample(x)))


class TvBottleneck(nn.Module):
    expansion = 4

    def __init__(self, inplanes, planes, stride=1, downsample=None):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * 4, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * 4)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x):
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn3(self.conv3(self.relu(self.bn2(self.conv2(out)))))
        return self.relu(out + (x if self.downsample is None else self.downsample(x)))


class TvResNet(nn.Module):
    """torchvision.models.ResNet(block, layers, num_classes=1000)."""

    def __init__(self, block, layers, num_classes=1000):
        super().__init__()
        self.inplanes = 64
        self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        self.layer1 = self._make_layer(block, 64, layers[0])
        self.layer2 = self._make_layer(block, 128, layers[1], 2)
        self.layer3 = self._make_layer(block, 256, layers[2], 2)
        self.layer4 = self._make_layer(block, 512, layers[3], 2)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(512 * block.expansion, num_classes)

    def _make_layer(self, block, planes, blocks, stride=1):
        downsample = None
        if stride != 1 or self.inplanes != planes * block.expansion:
            downsample = nn.Sequential(nn.Conv2d(self.inplanes, planes * block.expansion, 1, stride, bias=False),
                                       nn.BatchNorm2d(planes * block.expansion))
        layers = [block(self.inplanes, planes, stride, downsample)]
        self.inplanes = planes * block.expansion
        layers += [block(self.inplanes, planes) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def features(self, x):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return torch.flatten(self.avgpool(x), 1)


class TvInvertedResidual(nn.Module):
    def __init__(self, inp, oup, stride, expand_ratio):
        super().__init__()
        hidden = int(round(inp * expand_ratio))
        self.use_res_connect = stride == 1 and inp == oup
        layers = [conv_norm_act(inp, hidden, 1)] if expand_ratio != 1 else []
        layers += [conv_norm_act(hidden, hidden, 3, stride, hidden), nn.Conv2d(hidden, oup, 1, 1, 0, bias=False),
                   nn.BatchNorm2d(oup)]
        self.conv = nn.Sequential(*layers)

    def forward(self, x):
        return x + self.conv(x) if self.use_res_connect else self.conv(x)


class TvMobileNetV2(nn.Module):
    """torchvision.models.MobileNetV2(width_mult=1.0, num_classes=1000)."""

    def __init__(self, num_classes=1000):
        super().__init__()
        setting = [[1, 16, 1, 1], [6, 24, 2, 2], [6, 32, 3, 2], [6, 64, 4, 2], [6, 96, 3, 1], [6, 160, 3, 2],
                   [6, 320, 1, 1]]
        cin, self.last_channel = 32, 1280
        features = [conv_norm_act(3, cin, stride=2)]
        for t, c, n, s in setting:
            for i in range(n):
                features.append(TvInvertedResidual(cin, c, s if i == 0 else 1, t))
                cin = c
        features.append(conv_norm_act(cin, self.last_channel, 1))
        self.features = nn.Sequential(*features)
        self.classifier = nn.Sequential(nn.Dropout(0.2), nn.Linear(self.last_channel, num_classes))


REFERENCES = {"resnet18": lambda: TvResNet(TvBasicBlock, [2, 2, 2, 2]),
              "resnet50": lambda: TvResNet(TvBottleneck, [3, 4, 6, 3]),
              "mobilenetv2": TvMobileNetV2}


def load_into(reference: nn.Module, path) -> tuple[list[str], list[str]]:
    result = reference.load_state_dict(load_file(str(path)), strict=False)  # raises on any shape mismatch
    return sorted(result.missing_keys), sorted(result.unexpected_keys)


@pytest.mark.parametrize("arch", sorted(REFERENCES))
def test_width_one_students_load_into_torchvision_layout_with_only_the_classifier_missing(arch, tmp_path):
    student = build_student(arch, 1.0).eval()
    fact = write_torchvision_weights(student, tmp_path)
    tv_name = "mobilenet_v2" if arch == "mobilenetv2" else arch
    assert fact["file"] == f"torchvision_{tv_name}.safetensors" and fact["architecture"] == tv_name
    reference = REFERENCES[arch]().eval()
    missing, unexpected = load_into(reference, tmp_path / fact["file"])
    head = ["classifier.1.bias", "classifier.1.weight"] if arch == "mobilenetv2" else ["fc.bias", "fc.weight"]
    assert missing == head and unexpected == []
    own = student.state_dict()
    for key, value in reference.state_dict().items():
        if key not in head:
            assert torch.equal(value, own[key]), key  # num_batches_tracked and running stats included
    if arch == "resnet18":  # same numbers, not just the same names: the reference computes the same features
        x = torch.randn(2, 3, 64, 64)
        with torch.no_grad():
            assert torch.allclose(reference.features(x), student(x), atol=1e-5)


def test_finetuned_networks_export_their_backbone_without_head(tmp_path):
    classifier = build_student("resnet18", 1.0, num_classes=10)
    segmenter = BiSeNetV1(arch="resnet18", width=1.0, num_classes=3)
    for name, network in (("cls", classifier), ("seg", segmenter)):
        fact = write_torchvision_weights(network, tmp_path / name)
        missing, unexpected = load_into(TvResNet(TvBasicBlock, [2, 2, 2, 2]), tmp_path / name / fact["file"])
        assert missing == ["fc.bias", "fc.weight"] and unexpected == [], name


@pytest.mark.parametrize("arch,width,why", [("resnet18_cifar", 1.0, "CIFAR stem"), ("resnet18", 0.5, "width 0.5"),
                                            ("mobilenetv2_cifar", 1.0, "CIFAR stem"),
                                            ("hrnetv2_w18", 1.0, "no torchvision")])
def test_other_layouts_write_no_file_and_say_why(arch, width, why, tmp_path):
    fact = write_torchvision_weights(build_student(arch, width), tmp_path)
    assert fact["file"] is None and why in fact["reason"]
    assert list(tmp_path.iterdir()) == []
    assert torchvision_layout(build_student(arch, width))[0] is None


def test_export_verb_writes_the_keyed_file_of_an_existing_run(tmp_path, capsys):
    build_student("resnet34", 1.0).save_pretrained(tmp_path / "run" / "student", safe_serialization=True)
    out = tmp_path / "tv.safetensors"
    assert main(["export", str(tmp_path / "run"), "--format", "torchvision", "--out", str(out)]) == 0
    missing, unexpected = load_into(TvResNet(TvBasicBlock, [3, 4, 6, 3]), out)
    assert missing == ["fc.bias", "fc.weight"] and unexpected == []
    assert main(["export", str(tmp_path / "run"), "--format", "safetensors"]) == 0
    assert (tmp_path / "run" / "student" / "torchvision_resnet34.safetensors").is_file()
    build_student("resnet18_cifar", 0.125).save_pretrained(tmp_path / "cifar", safe_serialization=True)
    capsys.readouterr()
    assert main(["export", str(tmp_path / "cifar"), "--format", "torchvision"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "CIFAR stem" in err
    assert not list((tmp_path / "cifar").glob("torchvision_*"))


class NamedStudent(nn.Module):
    """What a `torchvision:NAME` / `timm:NAME` / `module:NAME` student looks like to the export: its config's arch
    and the library's own key names (students.wrapper), plus the student's `fc` head."""

    def __init__(self, arch):
        super().__init__()
        self.config = SimpleNamespace(arch=arch, width=1.0, in_channels=3)
        self.layer1 = nn.Conv2d(3, 4, 3)
        self.fc = nn.Linear(4, 2)


def test_library_students_keep_their_library_names_and_module_students_get_no_file(tmp_path):
    for arch, file in (("torchvision:resnet50", "torchvision_resnet50.safetensors"),
                       ("timm:convnext_tiny", "timm_convnext_tiny.safetensors")):
        fact = write_torchvision_weights(NamedStudent(arch), tmp_path)
        assert fact["file"] == file and sorted(load_file(str(tmp_path / file))) == ["layer1.bias", "layer1.weight"]
    fact = write_torchvision_weights(NamedStudent("module:MyNet"), tmp_path / "m")
    assert fact["file"] is None and "Python API" in fact["reason"] and not (tmp_path / "m").exists()


def test_timm_folder_of_a_width_one_resnet_is_timms_layout_and_reloads_exactly(tmp_path):
    classifier = build_student("resnet18", 1.0, num_classes=10).eval()
    fact = write_timm_folder(classifier, tmp_path / "timm", 64, [0.4, 0.5, 0.6], [0.2, 0.25, 0.3])
    assert fact == {"folder": "timm", "architecture": "resnet18", "timm_loadable": True, "num_classes": 10,
                    "reason": None}
    config = json.loads((tmp_path / "timm" / "config.json").read_text())
    assert config["architecture"] == "resnet18" and config["num_classes"] == 10 and config["num_features"] == 512
    assert config["pretrained_cfg"].items() >= {"input_size": [3, 64, 64], "mean": [0.4, 0.5, 0.6],
                                             "std": [0.2, 0.25, 0.3], "interpolation": "bilinear", "crop_pct": 1.0,
                                             "num_classes": 10, "first_conv": "conv1", "classifier": "fc"}.items()
    reference = TvResNet(TvBasicBlock, [2, 2, 2, 2], num_classes=10)  # timm's resnet18 keys are torchvision's
    assert load_into(reference, tmp_path / "timm" / "model.safetensors") == ([], [])  # head included, strict fit
    again = load_timm_folder(tmp_path / "timm")
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(again(x), classifier(x))  # difference 0
    assert all(torch.equal(v, classifier.state_dict()[k]) for k, v in again.state_dict().items())


@pytest.mark.parametrize("arch,width", [("resnet18_cifar", 0.125), ("mobilenetv2_cifar", 0.25), ("hrnetv2_w18", 0.25)])
def test_timm_folder_of_other_layouts_says_timm_cannot_build_it_and_repfusion_reloads_it(arch, width, tmp_path):
    student = build_student(arch, width).eval()
    fact = write_timm_folder(student, tmp_path / "timm", 32, [0.5] * 3, [0.5] * 3)
    assert fact["timm_loadable"] is False and "timm builds no" in fact["reason"] and fact["num_classes"] == 0
    config = json.loads((tmp_path / "timm" / "config.json").read_text())
    assert config["architecture"] == arch and config["repfusion"]["width"] == width
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(load_timm_folder(tmp_path / "timm")(x), student(x))


def test_timm_folder_of_a_segmentation_network_is_its_backbone_and_module_students_get_none(tmp_path):
    segmenter = BiSeNetV1(arch="resnet18", width=1.0, num_classes=3).eval()
    fact = write_timm_folder(segmenter, tmp_path / "seg", 64, [0.5] * 3, [0.5] * 3)
    assert fact["num_classes"] == 0 and sorted(load_file(str(tmp_path / "seg" / "model.safetensors"))) == \
        sorted(segmenter.backbone.state_dict())
    fact = write_timm_folder(NamedStudent("module:MyNet"), tmp_path / "m", 32, [0.5] * 3, [0.5] * 3)
    assert fact["folder"] is None and "Python API" in fact["reason"] and not (tmp_path / "m").exists()


def test_export_verb_writes_the_timm_folder_of_an_existing_run(tmp_path, capsys):
    build_student("resnet18_cifar", 0.125, num_classes=10).save_pretrained(tmp_path / "run" / "model",
                                                                           safe_serialization=True)
    assert main(["export", str(tmp_path / "run"), "--format", "timm"]) == 0
    assert "timm's Hub layout" in capsys.readouterr().out
    again = load_timm_folder(tmp_path / "run" / "model" / "timm")
    assert again.fc.out_features == 10
    (tmp_path / "file").write_text("x")
    assert main(["export", str(tmp_path / "run"), "--format", "timm", "--out", str(tmp_path / "file")]) == 1
    assert "writes a folder" in capsys.readouterr().err
    assert main(["export", str(tmp_path / "run"), "--format", "torchvision", "--head"]) == 1
    assert "--format onnx --head" in capsys.readouterr().err
