"""Students by timm / torchvision name, through fakes of those libraries (neither is installable here)."""

import json
import sys

import pytest
import torch
from fake_vision import TVResNet, install_fakes

from repfusion.cli import main
from repfusion.errors import RepFusionError
from repfusion.io import load_tensors
from repfusion.layers import list_layers
from repfusion.students import ExternalStudent, build_student, load_student
from repfusion.students import external

FAST = ["--trainer.max_epochs", "1", "--trainer.limit_train_batches", "2", "--trainer.limit_val_batches", "1",
        "--trainer.progress", "false", "--data.batch_size", "16"]


@pytest.fixture
def calls(monkeypatch):
    return install_fakes(monkeypatch)


def test_torchvision_name_is_built_through_its_registry_with_its_own_key_names(calls):
    student = build_student("torchvision:resnet18", num_classes=0)
    assert isinstance(student, ExternalStudent) and student.config.arch == "torchvision:resnet18"
    assert ("get_model", "resnet18", None) in calls  # weights=None: random, nothing downloaded
    reference = {k for k in TVResNet().state_dict() if not k.startswith("fc.")}
    assert set(student.state_dict()) == reference  # torchvision's keys, no prefix, no 1000-way classifier
    assert student.feature_layer == "layer4" and student.feature_channels == 32 and student.default_image_size == 224
    x = torch.randn(2, 3, 64, 64)
    assert student.forward_features(x).shape == (2, 32, 2, 2) and student(x).shape == (2, 32)
    with_head = build_student("torchvision:resnet18", num_classes=7)
    assert with_head(x).shape == (2, 7) and with_head.state_dict()["fc.weight"].shape == (7, 32)


def test_torchvision_features_layout_and_other_channel_counts(calls):
    student = build_student("torchvision:mobilenet_v2", num_classes=0, in_channels=1)
    assert student.feature_layer == "features"
    assert not any(k.startswith("classifier.") for k in student.state_dict())
    assert student.state_dict()["features.0.0.weight"].shape[1] == 1  # first conv rebuilt for 1 channel
    assert student(torch.randn(2, 1, 32, 32)).shape == (2, 24)


def test_timm_name_uses_create_model_without_classifier_and_its_feature_info(calls):
    student = build_student("timm:convnext_tiny", num_classes=0, in_channels=2)
    assert ("create_model", "convnext_tiny", False, 0, 2) in calls
    assert student.feature_layer == "stages.1" and student.feature_channels == 24
    assert student.default_image_size == 40
    assert student.forward_features(torch.randn(2, 2, 32, 32)).shape == (2, 24, 4, 4)


def test_save_pretrained_round_trip_rebuilds_through_the_registry(calls, tmp_path):
    student = build_student("torchvision:resnet18", num_classes=3).eval()
    student.save_pretrained(tmp_path, safe_serialization=True)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["_class_name"] == "ExternalStudent" and config["arch"] == "torchvision:resnet18"
    assert set(load_tensors(tmp_path / "diffusion_pytorch_model.safetensors")) == set(student.state_dict())
    calls.clear()
    loaded = load_student(tmp_path).eval()
    assert ("get_model", "resnet18", None) in calls
    x = torch.randn(2, 3, 48, 48)
    assert torch.equal(loaded(x), student(x))


@pytest.mark.parametrize("name", ["os:system", "timm:../../x", "timm:timm.models.resnet.ResNet",
                                  "torchvision:models.resnet50", "torchvision:", "timm:hf-hub:org/model",
                                  "builtins:eval", "module:MyNet"])
def test_malformed_or_foreign_names_are_refused_before_any_import(calls, monkeypatch, name):
    def no_import(module_name, *args, **kwargs):
        raise AssertionError(f"imported {module_name}")

    monkeypatch.setattr(external.importlib, "import_module", no_import)
    before = set(sys.modules)
    with pytest.raises(RepFusionError) as error:
        build_student(name)
    message = str(error.value)
    assert message.replace("e.g. ", "").count(". ") == 0 and message.endswith(".") and "\n" not in message
    assert not calls and set(sys.modules) == before
    if name.startswith("os:"):
        assert "timm, torchvision" in message


def test_name_missing_from_the_registry_is_refused_with_close_names(calls):
    with pytest.raises(RepFusionError, match="Unknown timm model 'convnext_tiyn'; closest valid names: convnext_tiny"):
        build_student("timm:convnext_tiyn")
    with pytest.raises(RepFusionError, match="Unknown torchvision model 'resnet81'.*resnet18"):
        build_student("torchvision:resnet81")
    assert not [c for c in calls if c[0] in ("create_model", "get_model")]


def test_missing_library_says_how_to_install_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "timm", None)  # import timm now fails as if it were not installed
    with pytest.raises(RepFusionError, match=r"needs timm, which is not installed; pip install timm"):
        build_student("timm:convnext_tiny")


def test_width_and_token_outputs_are_refused(calls):
    with pytest.raises(RepFusionError, match="no width multiplier.*not 0.25"):
        build_student("torchvision:resnet18", width=0.25)
    with pytest.raises(RepFusionError, match="not a B x C x H x W map"):
        build_student("timm:vit_tiny")


def test_external_student_works_in_distill_finetune_layers_and_probe(monkeypatch, tmp_path):
    install_fakes(monkeypatch, sys_modules=False)  # torchmetrics and Lightning must not find a fake torchvision
    distill = tmp_path / "distill"
    assert main(["distill", "--run-dir", str(distill), "--student.arch", "torchvision:resnet18", *FAST]) == 0
    exported = json.loads((distill / "student" / "config.json").read_text())
    assert exported["arch"] == "torchvision:resnet18" and exported["width"] == 1.0
    finetune = tmp_path / "finetune"
    assert main(["finetune", "--init", str(distill), "--run-dir", str(finetune), *FAST]) == 0
    weights = load_tensors(finetune / "model" / "diffusion_pytorch_model.safetensors")
    assert weights["fc.weight"].shape == (10, 32) and "layer4.0.weight" in weights
    table = list_layers(student="torchvision:resnet18", image_size=32)
    assert "default feature layer: layer4" in table and "layer4.0" in table
    assert main(["probe", "--student", "random:timm:convnext_tiny", "--out", str(tmp_path / "probe")]) == 0
