import pytest
import torch

from repfusion.errors import RepFusionError
from repfusion.students import STUDENTS, build_student, load_student


def n_params(m):
    return sum(p.numel() for p in m.parameters())


@pytest.mark.parametrize("name,count", [("resnet18_cifar", 11_173_962), ("resnet50", 25_557_032),
                                        ("mobilenetv2", 3_504_872)])
def test_parameter_counts_match_the_reference_architectures(name, count):
    classes = 10 if name.endswith("cifar") else 1000
    assert n_params(build_student(name, num_classes=classes)) == count


@pytest.mark.parametrize("name", STUDENTS.names())
def test_every_student_runs_and_exposes_its_feature_layer(name):
    model = build_student(name, width=0.25, num_classes=7)
    size = 32
    x = torch.randn(2, 3, size, size)
    assert model(x).shape == (2, 7)
    feature = dict(model.named_modules())[model.feature_layer]
    assert feature is not None
    assert model.forward_features(x).shape[1] == model.feature_channels


def test_cifar_stem_keeps_resolution_imagenet_stem_does_not():
    x = torch.randn(2, 3, 32, 32)
    assert build_student("resnet18_cifar", 0.25).forward_features(x).shape[-1] == 4
    assert build_student("resnet18", 0.25).forward_features(x).shape[-1] == 1
    assert build_student("mobilenetv2_cifar", 0.25).forward_features(x).shape[-1] == 4


def test_width_multiplier_shrinks_channels():
    assert build_student("resnet18_cifar", 0.5).feature_channels == 256
    assert n_params(build_student("resnet18_cifar", 0.5)) < n_params(build_student("resnet18_cifar")) / 3


def test_save_pretrained_round_trip(tmp_path):
    model = build_student("mobilenetv2_cifar", width=0.5).eval()
    model.save_pretrained(tmp_path)
    loaded = load_student(tmp_path).eval()
    assert loaded.config.arch == "mobilenetv2_cifar" and loaded.config.width == 0.5
    assert all(torch.equal(v, loaded.state_dict()[k]) for k, v in model.state_dict().items())
    x = torch.randn(2, 3, 32, 32)
    assert torch.equal(model(x), loaded(x))  # exact: load_student gives loaded weights aligned storage of their own
    assert (tmp_path / "diffusion_pytorch_model.safetensors").exists()


def test_unknown_student():
    with pytest.raises(RepFusionError, match="resnet18_cifar"):
        build_student("resnet18-cifar")
